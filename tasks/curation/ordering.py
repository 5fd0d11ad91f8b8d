"""Stage 4, ascending reference ordering: one reference ladder per selected instruction.

Dynamic reference scheduling (Writing-RL section 3.3) walks each instruction's references from
weakest to strongest, moving up a rung whenever the policy beats the current one. The ladder is:

- rung 0: the policy's own initial response, always, whatever its score (even when it beat every
  competitor). An instruction whose policy generation is missing or failed gets no ladder.
- rungs 1..n: competitor responses by judge score ascending; equal scores ordered by generator
  name ascending, so the ladder never depends on input row order.

Left out, and recorded in `excluded` (kind "reference", with the generator and why): a reference
whose generation failed (`error` set, or null/empty text), one with no score, one scored with no
generation row, and, with `drop_below_policy`, one scoring strictly below s_policy (equal stays).
When s_policy itself is missing, `drop_below_policy` drops nothing (nothing to compare with).
Whole instructions are recorded with kind "instruction" (generator null): missing/failed policy
response, instruction absent from `instructions`, or fewer than `min_rungs` rungs.

Generations with a `sample_index` column: only sample 0 is used (the paper has one response per
generator); scores with a `sample_index` column are filtered the same way.

Departures from the paper / official code: the official code takes `target` as a ready list
"from easy to difficult" and starts at index 0 (scripts/create_index_file.py sets every index to 0)
without saying what the list holds; we make rung 0 the policy's own response so the first
comparison is against itself, as the paper describes, and derive the rest from judge scores.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa

from configs.schema import OrderingConfig
from tasks.curation.selection import as_frame

RUNG_TYPE = pa.struct(
    [
        ("rung", pa.int32()),
        ("generator", pa.string()),
        ("score", pa.float64()),  # null only possible for rung 0
        ("text", pa.string()),
    ]
)

LADDERS_SCHEMA = pa.schema(
    [
        ("instruction_id", pa.string()),
        ("prompt", pa.string()),
        ("criteria_json", pa.string()),  # as in the instructions table: JSON list of criteria
        ("rungs", pa.list_(RUNG_TYPE)),  # rung 0 = policy, then references by score ascending
        ("n_rungs", pa.int32()),
        ("score_gaps", pa.list_(pa.float64())),  # rungs[i+1].score - rungs[i].score; n_rungs - 1 items
    ]
)

EXCLUDED_SCHEMA = pa.schema(
    [
        ("instruction_id", pa.string()),
        ("kind", pa.string()),  # "instruction" (no ladder) or "reference" (one rung left out)
        ("generator", pa.string()),  # null for kind "instruction"
        ("reason", pa.string()),
    ]
)


def _first_sample(df: pd.DataFrame) -> pd.DataFrame:
    if "sample_index" in df.columns:
        df = df[df["sample_index"].fillna(0) == 0]
    return df


def _failure(row: pd.Series) -> str | None:
    """Why a generation row cannot be a rung, or None when it can."""
    error = row.get("error")
    if isinstance(error, str) and error:
        return f"generation failed: {error}"
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        return "generation has no text"
    return None


def _instruction_lookup(instructions: pd.DataFrame | pa.Table | None) -> dict[str, dict] | None:
    if instructions is None:
        return None
    df = as_frame(instructions)
    key = "id" if "id" in df.columns else "instruction_id"
    cols = [c for c in ("prompt", "criteria_json") if c in df.columns]
    return {r[key]: {c: r[c] for c in cols} for r in df[[key, *cols]].to_dict("records")}


def build_ladders(
    selected_ids: Iterable[str],
    generations: pd.DataFrame | pa.Table,
    scores: pd.DataFrame | pa.Table,
    cfg: OrderingConfig,
    *,
    instructions: pd.DataFrame | pa.Table | None = None,
) -> tuple[pa.Table, pa.Table]:
    """Ladders (`LADDERS_SCHEMA`) for `selected_ids`, in their given order, and what was left out
    (`EXCLUDED_SCHEMA`).

    `generations`: instruction_id, generator, role, text, error (as the generations dataset).
    `scores`: instruction_id, generator, score (the tidy table `select` reads).
    `instructions`: id (or instruction_id), prompt, criteria_json; when omitted, `prompt` and
    `criteria_json` are taken from `generations` if it has them, else left null.
    """
    gens = _first_sample(as_frame(generations))
    scored = _first_sample(as_frame(scores))
    score_of = {
        (r["instruction_id"], r["generator"]): (None if pd.isna(r["score"]) else float(r["score"]))
        for r in (scored[["instruction_id", "generator", "score"]] if len(scored) else scored).to_dict(
            "records"
        )
    }
    scored_names: dict[str, list[str]] = {}
    for (sid, name), score in score_of.items():
        if score is not None:
            scored_names.setdefault(sid, []).append(name)
    info = _instruction_lookup(instructions)
    gens_by_id = {iid: g for iid, g in gens.groupby("instruction_id", sort=False)}

    ladders: list[dict] = []
    excluded: list[dict] = []

    def exclude(iid: str, reason: str, generator: str | None = None) -> None:
        kind = "instruction" if generator is None else "reference"
        excluded.append({"instruction_id": iid, "kind": kind, "generator": generator, "reason": reason})

    for iid in dict.fromkeys(selected_ids):  # dedupe, keep order
        group = gens_by_id.get(iid)
        if info is not None and iid not in info:
            exclude(iid, "instruction not found in the instructions table")
            continue
        if group is None or not (group["role"] == "policy").any():
            exclude(iid, "policy response missing")
            continue
        policy_rows = group[group["role"] == "policy"]
        if len(policy_rows) > 1:
            raise ValueError(f"instruction '{iid}' has more than one policy response")
        policy = policy_rows.iloc[0]
        failure = _failure(policy)
        if failure is not None:
            exclude(iid, f"policy {failure}")
            continue
        s_policy = score_of.get((iid, policy["generator"]))

        refs: list[tuple[float, str, str]] = []
        competitor_names = set()
        for _, row in group[group["role"] == "competitor"].iterrows():
            name = row["generator"]
            competitor_names.add(name)
            failure = _failure(row)
            score = score_of.get((iid, name))
            if failure is not None:
                exclude(iid, failure, name)
            elif score is None:
                exclude(iid, "no score", name)
            elif cfg.drop_below_policy and s_policy is not None and score < s_policy:
                exclude(iid, f"scored below the policy ({score} < {s_policy})", name)
            else:
                refs.append((score, name, row["text"]))
        # A score without a generation row is an upstream inconsistency worth surfacing.
        policy_name = policy["generator"]
        for name in sorted(scored_names.get(iid, [])):
            if name != policy_name and name not in competitor_names:
                exclude(iid, "scored but no generation row", name)

        refs.sort(key=lambda r: (r[0], r[1]))  # ascending score, ties by generator name
        rungs = [{"rung": 0, "generator": policy_name, "score": s_policy, "text": policy["text"]}]
        rungs += [{"rung": i, "generator": g, "score": s, "text": t} for i, (s, g, t) in enumerate(refs, 1)]
        if len(rungs) < cfg.min_rungs:
            exclude(iid, f"only {len(rungs)} rung(s) including the policy's; min_rungs={cfg.min_rungs}")
            continue

        meta = (info or {}).get(iid) or {}
        prompt = meta.get("prompt", policy.get("prompt"))
        criteria = meta.get("criteria_json", policy.get("criteria_json"))
        gaps = [
            None if a["score"] is None or b["score"] is None else b["score"] - a["score"]
            for a, b in itertools.pairwise(rungs)
        ]
        ladders.append(
            {
                "instruction_id": iid,
                "prompt": None if _isnull(prompt) else prompt,
                "criteria_json": None if _isnull(criteria) else criteria,
                "rungs": rungs,
                "n_rungs": len(rungs),
                "score_gaps": gaps,
            }
        )
    return (
        pa.Table.from_pylist(ladders, schema=LADDERS_SCHEMA),
        pa.Table.from_pylist(excluded, schema=EXCLUDED_SCHEMA),
    )


def _isnull(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def criteria_text(criteria_json: str | None) -> str | None:
    """Criteria as the plain text the official judge template puts under "consider the following
    dimensions" (verl/utils/reward_score/judge_prompts.py); None when there are none, so the
    official code falls back to its default template."""
    if not criteria_json:
        return None
    items = json.loads(criteria_json)
    if not items:
        return None
    lines = []
    for i, c in enumerate(items, 1):
        head = f"{i}. {c.get('name', '')}"
        lines.append(f"{head}: {c['description']}" if c.get("description") else head)
        for band, meaning in (c.get("rubric") or {}).items():
            lines.append(f"   - {band}: {meaning}")
    return "\n".join(lines)
