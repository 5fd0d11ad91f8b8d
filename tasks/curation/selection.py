"""Stage 3, margin-aware data selection (Writing-RL, Lei et al. 2025, section 3.1).

Input is a tidy score table, one row per (instruction_id, generator, role, score): pandas or
pyarrow, `score` a float 1-10 or null when judging failed. `select` returns one row per instruction
(`SELECTIONS_SCHEMA`) saying what was kept, its learning potential and why anything was dropped.

Learning potential: p = max_j (s_j - s_policy) over the competitors j that have a score.

Rules (all deterministic; no input row order matters):
- Drops, applied in this order and shared by every strategy so ablations compare the same pool:
  1. no policy row for the instruction -> "no policy response";
  2. the policy row has no score -> "policy response has no score" (p is undefined);
  3. no competitor has a score -> "no competitor has a score" (unscored competitors are ignored
     for p, for `best_competitor` and for the floor);
  4. the best competitor scores below `competitor_floor` -> "every competitor below floor 6.0
     (best 4.5 by gpt-4o)". The paper drops such instructions as too hard or flawed.
- `best_competitor`: the scored competitor with the highest score; ties go to the smallest name.
- Ranking of the remaining candidates (column `rank`, 1 = first kept):
  margin: p descending; difficulty: s_policy ascending (hardest first); random: a permutation
  drawn with `numpy.random.default_rng(cfg.seed)` over the candidates sorted by instruction_id,
  so the same seed and pool give the same pick; full: same order as margin (for inspection only).
- Ties in margin/difficulty (integer judge scores make large blocks of equal p): `tie_break`
  "shuffle" (default) orders them by the same kind of seeded permutation, recorded per candidate
  in column `tie_break` (its position in the permutation), so the cut through a tie block is a
  fair draw; "instruction_id" orders them by id ascending, lexicographic and so biased for ids
  like wb-<index> (wb-10 before wb-2).
- Size: `top_k` keeps the first k (all when k exceeds the pool); `top_fraction` keeps
  round-half-up(fraction * n_candidates), at least 1 when there is any candidate; computed in
  decimal so 0.7 * 10 is 7, not 8. `full` ignores both and keeps every candidate.
- `per_source`: the ranking and the cut are made within each data source (the instructions'
  `source`, column `source`), so `top_k` is k per source (the paper's top 1.5k of each of
  LongWriter and WritingBench) and `rank` counts within the source.

Departures from the paper / official code: the official repository ships no selection script, so
the floor, tie rules and fraction rounding are ours; p may be negative (the policy beat every
competitor) and such instructions stay ranked, last under margin.

Duplicate (instruction_id, generator) rows, or two policy generators for one instruction, are
refused with ValueError: the caller must pick one sample per generator first.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pandas as pd
import pyarrow as pa

from configs.schema import SelectionConfig
from tasks.registry import Registry

SCORE_COLUMNS = ("instruction_id", "generator", "role", "score")

SELECTIONS_SCHEMA = pa.schema(
    [
        ("instruction_id", pa.string()),
        ("strategy", pa.string()),
        ("s_policy", pa.float64()),
        ("best_competitor", pa.string()),
        ("best_competitor_score", pa.float64()),
        ("p", pa.float64()),
        ("n_competitors_scored", pa.int32()),
        ("selected", pa.bool_()),
        ("rank", pa.int32()),  # among candidates that passed the drops (per source with per_source)
        ("reason", pa.string()),  # null when selected
        ("source", pa.string()),  # the instruction's data source; null when not given
        ("tie_break", pa.int32()),  # tie_break shuffle: position in the seeded permutation
    ]
)

# A selector orders the candidate pool (one row per instruction, columns as SELECTIONS_SCHEMA);
# `select` then keeps the first k.
Selector = Callable[[pd.DataFrame, SelectionConfig], list[str]]

SELECTORS: Registry[Selector] = Registry(
    "selector", allowed=typing.get_args(SelectionConfig.model_fields["strategy"].annotation)
)


def seeded_positions(instruction_ids: list[str], seed: int) -> dict[str, int]:
    """Each id's position in a permutation seeded with `seed`; ids are sorted first so input row
    order cannot change the draw."""
    ids = sorted(instruction_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    return {ids[i]: position for position, i in enumerate(order)}


def _ranked(candidates: pd.DataFrame, cfg: SelectionConfig, key: str, descending: bool) -> list[str]:
    """Candidates by `key`, ties by `tie_break` (the shuffle position, or instruction_id)."""
    tie = "tie_break" if cfg.tie_break == "shuffle" else "instruction_id"
    ordered = candidates.sort_values([key, tie], ascending=[not descending, True], kind="mergesort")
    return ordered["instruction_id"].tolist()


@SELECTORS.register("margin")
def rank_by_margin(candidates: pd.DataFrame, cfg: SelectionConfig) -> list[str]:
    """Highest learning potential first; ties as `cfg.tie_break`."""
    return _ranked(candidates, cfg, "p", descending=True)


@SELECTORS.register("difficulty")
def rank_by_difficulty(candidates: pd.DataFrame, cfg: SelectionConfig) -> list[str]:
    """Lowest policy score first (the paper's difficulty-based baseline); ties as `cfg.tie_break`."""
    return _ranked(candidates, cfg, "s_policy", descending=False)


@SELECTORS.register("random")
def rank_randomly(candidates: pd.DataFrame, cfg: SelectionConfig) -> list[str]:
    """A seeded permutation (`seeded_positions`)."""
    positions = seeded_positions(candidates["instruction_id"].tolist(), cfg.seed)
    return sorted(positions, key=positions.__getitem__)


@SELECTORS.register("full")
def rank_full(candidates: pd.DataFrame, cfg: SelectionConfig) -> list[str]:
    """Keeps everything; ranked like margin so the table still reads best-first."""
    return rank_by_margin(candidates, cfg)


def as_frame(table: pd.DataFrame | pa.Table) -> pd.DataFrame:
    """A pandas copy of a pyarrow or pandas table."""
    if isinstance(table, pa.Table):
        return table.to_pandas()
    return pd.DataFrame(table).copy()


def cut_size(n_candidates: int, cfg: SelectionConfig) -> int:
    """How many of the ranked candidates to keep (see the module docstring for rounding)."""
    if n_candidates == 0:
        return 0
    if cfg.strategy == "full":
        return n_candidates
    if cfg.top_k is not None:
        return min(cfg.top_k, n_candidates)
    if cfg.top_fraction is not None:
        k = (Decimal(str(cfg.top_fraction)) * n_candidates).to_integral_value(rounding=ROUND_HALF_UP)
        return max(1, min(int(k), n_candidates))
    # The schema requires a size for every strategy except full; keep all if it ever lacks one.
    return n_candidates


def _cut_reason(cfg: SelectionConfig, k: int) -> str:
    where = " of its source" if cfg.per_source else ""
    if cfg.top_k is not None:
        return f"below the top-k cut{where} (k={cfg.top_k})"
    return f"below the top-fraction cut{where} (fraction={cfg.top_fraction} -> k={k})"


def _check_scores(df: pd.DataFrame) -> None:
    missing = [c for c in SCORE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"score table lacks columns {missing}; expected {list(SCORE_COLUMNS)}")
    bad_roles = sorted(set(df["role"].dropna()) - {"policy", "competitor"})
    if bad_roles or df["role"].isna().any():
        raise ValueError(f"score table: role must be 'policy' or 'competitor', got {bad_roles or [None]}")
    dup = df.duplicated(["instruction_id", "generator"], keep=False)
    if dup.any():
        first = df.loc[dup, ["instruction_id", "generator"]].iloc[0].tolist()
        raise ValueError(f"score table has several rows for (instruction_id, generator) {first}; keep one")
    policies = df[df["role"] == "policy"].groupby("instruction_id")["generator"].nunique()
    if (policies > 1).any():
        raise ValueError(f"instruction '{policies[policies > 1].index[0]}' has more than one policy response")


def summarize(scores: pd.DataFrame | pa.Table) -> pd.DataFrame:
    """Per instruction: s_policy, best competitor, p and the config-free drop reason (null for
    candidates; the floor and the cut are applied by `select`)."""
    df = as_frame(scores)
    _check_scores(df)
    df["score"] = pd.to_numeric(df["score"], errors="coerce").astype("float64")  # NaN == missing
    rows = []
    for iid, group in df.groupby("instruction_id", sort=True):
        policy = group[group["role"] == "policy"]
        comps = group[(group["role"] == "competitor") & group["score"].notna()]
        comps = comps.sort_values(["score", "generator"], ascending=[False, True], kind="mergesort")
        s_policy = float(policy["score"].iloc[0]) if len(policy) else float("nan")
        best = comps.iloc[0] if len(comps) else None
        best_score = float(best["score"]) if best is not None else None
        p = best_score - s_policy if best is not None and not np.isnan(s_policy) else None
        if policy.empty:
            reason = "no policy response"
        elif np.isnan(s_policy):
            reason = "policy response has no score"
        elif best is None:
            reason = "no competitor has a score"
        else:
            reason = None  # the floor depends on the config: applied in select()
        rows.append(
            {
                "instruction_id": iid,
                "s_policy": None if np.isnan(s_policy) else s_policy,
                "best_competitor": None if best is None else best["generator"],
                "best_competitor_score": best_score,
                "p": p,
                "n_competitors_scored": len(comps),
                "reason": reason,
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "instruction_id",
            "s_policy",
            "best_competitor",
            "best_competitor_score",
            "p",
            "n_competitors_scored",
            "reason",
        ],
    )


def select(
    scores: pd.DataFrame | pa.Table, cfg: SelectionConfig, sources: Mapping[str, str] | None = None
) -> pa.Table:
    """One row per instruction in `scores` (`SELECTIONS_SCHEMA`): kept ones first in rank order,
    then the other ranked candidates, then the dropped ones by instruction_id. `sources`
    (instruction id -> data source) fills column `source`; `per_source` needs it."""
    table = summarize(scores)
    table["strategy"] = cfg.strategy
    table["source"] = table["instruction_id"].map(dict(sources)) if sources is not None else None
    if cfg.per_source and (sources is None or table["source"].isna().any()):
        missing = table.loc[table["source"].isna(), "instruction_id"].tolist() if sources is not None else []
        raise ValueError(
            "selection.per_source: every instruction needs its data source"
            + (f"; none for {missing[:5]}" if missing else "")
        )
    below = table["reason"].isna() & (table["best_competitor_score"] < cfg.competitor_floor)
    table.loc[below, "reason"] = [
        f"every competitor below floor {cfg.competitor_floor} (best {s} by {g})"
        for s, g in zip(
            table.loc[below, "best_competitor_score"], table.loc[below, "best_competitor"], strict=True
        )
    ]
    is_candidate = table["reason"].isna()
    table["tie_break"] = None
    if cfg.tie_break == "shuffle" and cfg.strategy != "random":
        positions = seeded_positions(table.loc[is_candidate, "instruction_id"].tolist(), cfg.seed)
        table.loc[is_candidate, "tie_break"] = table.loc[is_candidate, "instruction_id"].map(positions)
    candidates = table[is_candidate]
    pools = candidates.groupby("source", sort=True) if cfg.per_source else [(None, candidates)]
    rank: dict[str, int] = {}
    cuts: dict[str, int] = {}
    for _, pool in pools:
        order = SELECTORS[cfg.strategy](pool, cfg)
        k = cut_size(len(order), cfg)
        for i, iid in enumerate(order):
            rank[iid], cuts[iid] = i + 1, k
    table["rank"] = table["instruction_id"].map(rank)
    table["selected"] = table["rank"].notna() & (table["rank"] <= table["instruction_id"].map(cuts))
    cut = table["rank"].notna() & ~table["selected"]
    table.loc[cut, "reason"] = [_cut_reason(cfg, cuts[iid]) for iid in table.loc[cut, "instruction_id"]]
    table = table.sort_values(
        ["rank", "source", "instruction_id"], na_position="last", kind="mergesort"
    ).reset_index(drop=True)
    records = table.astype(object).where(table.notna(), None).to_dict("records")
    for r in records:
        for column in ("rank", "tie_break"):
            r[column] = None if r[column] is None else int(r[column])
    return pa.Table.from_pylist(records, schema=SELECTIONS_SCHEMA)


def selected_ids(selections: pd.DataFrame | pa.Table) -> list[str]:
    """The kept instruction ids, in rank order."""
    df = as_frame(selections)
    return df[df["selected"]].sort_values("rank", kind="mergesort")["instruction_id"].tolist()
