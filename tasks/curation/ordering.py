"""Stage 4, ascending reference ordering: one reference ladder per selected instruction.

Dynamic reference scheduling (Writing-RL section 3.3) walks each instruction's references from
weakest to strongest, moving up a rung whenever the policy beats the current one. The paper sorts
all of an instruction's responses, the policy's own initial one included, by judge score ascending,
and starts every instruction on the lowest. `ordering.policy_rung` says where the policy's response
goes:

- "by-score" (the paper, the default): sorted among the references. Equal scores: the policy's
  response first, then references by generator name ascending, so the ladder never depends on input
  row order. With a strong (SFT) policy, references that score below it sit under it: the ladder
  still ascends, and the first steps are against responses the policy should beat quickly. A
  policy response without a score cannot be placed by score: it goes first (rung 0).
- "first": the policy's own response is always rung 0, whatever its score, and the references
  ascend above it. The first comparison is then always against itself; a reference scoring below
  the policy sits above it, so such a ladder goes down after rung 0.

Each ladder records `policy_rung`, the rung holding the policy's response (0 under "first"): the
static schedule's "self" and the reports read it.

Validation split: `ordering.validation_size` ladders are held out (`split` "validation"), drawn by a
permutation seeded with `ordering.seed` over the built ladders' ids sorted, so the draw depends on
neither row order nor which instructions were excluded before it. Training never sees them; the
trainer's periodic validation and the verl export's test.parquet do.

Left out, and recorded in `excluded` (kind "reference", with the generator and why): a reference
whose generation failed (`error` set, or null/empty text), one with no score, one scored with no
generation row, and, with `drop_below_policy`, one scoring strictly below s_policy (equal stays;
in both modes the policy's response is then the lowest rung, so the two modes give the same
ladders). When s_policy itself is missing, `drop_below_policy` drops nothing (nothing to compare
with). Whole instructions are recorded with kind "instruction" (generator null): missing/failed
policy response, instruction absent from `instructions`, or fewer than `min_rungs` rungs (the
policy's counted).

Generations with a `sample_index` column: only sample 0 is used (the paper has one response per
generator); scores with a `sample_index` column are filtered the same way.

The official code takes `target` as a ready list "from easy to difficult" and starts at index 0
(scripts/create_index_file.py sets every index to 0); the ladder is that list.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from configs.schema import OrderingConfig
from tasks.curation.selection import as_frame
from tasks.instructions.schema import Criterion
from tasks.rewards.pairwise import official_criteria_text

RUNG_TYPE = pa.struct(
    [
        ("rung", pa.int32()),
        ("generator", pa.string()),
        ("score", pa.float64()),  # null only possible for the policy's rung
        ("text", pa.string()),
    ]
)

LADDERS_SCHEMA = pa.schema(
    [
        ("instruction_id", pa.string()),
        ("prompt", pa.string()),
        ("criteria_json", pa.string()),  # as in the instructions table: JSON list of criteria
        ("rungs", pa.list_(RUNG_TYPE)),  # ascending (ordering.policy_rung places the policy's)
        ("n_rungs", pa.int32()),
        ("policy_rung", pa.int32()),  # the rung holding the policy's own response
        ("split", pa.string()),  # "train", or "validation" (held out: ordering.validation_size)
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
        # The policy's response goes below the first reference scoring strictly more (equal: first).
        below = sum(1 for r in refs if s_policy is not None and r[0] < s_policy)
        policy_rung = below if cfg.policy_rung == "by-score" else 0
        ordered = list(refs)
        ordered.insert(policy_rung, (s_policy, policy_name, policy["text"]))
        rungs = [{"rung": i, "generator": g, "score": s, "text": t} for i, (s, g, t) in enumerate(ordered)]
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
                "policy_rung": policy_rung,
                "score_gaps": gaps,
            }
        )
    held_out = validation_ids([lad["instruction_id"] for lad in ladders], cfg)
    for ladder in ladders:
        ladder["split"] = "validation" if ladder["instruction_id"] in held_out else "train"
    return (
        pa.Table.from_pylist(ladders, schema=LADDERS_SCHEMA),
        pa.Table.from_pylist(excluded, schema=EXCLUDED_SCHEMA),
    )


def validation_ids(ladder_ids: Sequence[str], cfg: OrderingConfig) -> set[str]:
    """The `validation_size` ladders held out, by a seeded permutation of the sorted ids. At least
    one ladder must stay for training."""
    if cfg.validation_size == 0:
        return set()
    if cfg.validation_size >= len(ladder_ids):
        raise ValueError(
            f"ordering.validation_size={cfg.validation_size} leaves no ladder to train on: only "
            f"{len(ladder_ids)} ladders were built"
        )
    ids = sorted(ladder_ids)
    order = np.random.default_rng(cfg.seed).permutation(len(ids))
    return {ids[i] for i in order[: cfg.validation_size]}


def _isnull(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def criteria_text(criteria_json: str | None) -> str | None:
    """Criteria as the plain text the official judge template puts under "consider the following
    dimensions" (verl/utils/reward_score/judge_prompts.py); None when there are none, so the
    official code falls back to its default template. The text is
    `tasks.rewards.pairwise.official_criteria_text`'s, so the "official" pairwise prompt version
    shows our own reward judge exactly what the official code shows its judge given this export."""
    if not criteria_json:
        return None
    items = json.loads(criteria_json) or []
    return official_criteria_text([Criterion.model_validate(c) for c in items])
