"""What a build-dataset run produced, in numbers and one figure: the end-of-flow report.

`curation_report` reads the stage outputs (Arrow tables) and returns plain JSON-able sections:

- `stages`: per stage, cached or computed, rows written, failures, seconds;
- `selection`: strategy, selected / dropped counts and the drop reasons;
- `margins`: the distribution of the learning potential p (all instructions, and the selected);
- `generators`: per generator, responses, failed generations, scored / unscored, mean/min/max s_j;
- `ladders`: rung counts and the score gaps between consecutive rungs;
- `failures`: every failed generation or judgment (instruction, generator, error), capped.

`plot_curation_report` draws p (selected vs dropped) and the ladder-level gaps to a PNG. The flow
publishes both as Prefect artifacts and the CLI prints them (flows/reporting.py).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from tasks.plotting import drawn_before, png_figure

MAX_LISTED_FAILURES = 50  # the report lists this many; the counts cover all of them


def _quantiles(values: Sequence[float]) -> dict[str, float | int | None]:
    """min / p25 / median / p75 / max / mean (linear interpolation), n; all None when empty."""
    xs = sorted(v for v in values if v is not None and not math.isnan(v))
    out: dict[str, float | int | None] = {"n": len(xs)}
    if not xs:
        return out | dict.fromkeys(("min", "p25", "median", "p75", "max", "mean"))

    def at(q: float) -> float:
        pos = q * (len(xs) - 1)
        low, high = math.floor(pos), math.ceil(pos)
        return xs[low] + (xs[high] - xs[low]) * (pos - low)

    out.update(min=xs[0], p25=at(0.25), median=at(0.5), p75=at(0.75), max=xs[-1], mean=sum(xs) / len(xs))
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def _generator_rows(generations: pa.Table | None, judgments: pa.Table | None) -> list[dict[str, Any]]:
    gens = generations.select(["generator", "role", "error"]).to_pylist() if generations is not None else []
    judged = (
        judgments.select(["generator", "role", "score", "error"]).to_pylist() if judgments is not None else []
    )
    names = list(dict.fromkeys([g["generator"] for g in gens] + [j["generator"] for j in judged]))
    rows = []
    for name in names:
        own_gens = [g for g in gens if g["generator"] == name]
        own_judged = [j for j in judged if j["generator"] == name]
        scores = [j["score"] for j in own_judged if j["score"] is not None]
        role = (own_gens or own_judged)[0]["role"]
        stats = _quantiles(scores)
        rows.append(
            {
                "generator": name,
                "role": role,
                "responses": sum(1 for g in own_gens if g["error"] is None),
                "failed_generations": sum(1 for g in own_gens if g["error"] is not None),
                "scored": len(scores),
                "unscored": len(own_judged) - len(scores),
                "mean_score": stats["mean"],
                "min_score": stats["min"],
                "max_score": stats["max"],
            }
        )
    return rows


def _failure_rows(generations: pa.Table | None, judgments: pa.Table | None) -> list[dict[str, Any]]:
    failures: list[dict[str, Any]] = []
    for stage, table in (("generate", generations), ("score", judgments)):
        if table is None:
            continue
        columns = ["instruction_id", "generator", "error"]
        retryable = "retryable" in table.column_names  # judgments: API failure vs unparsable reply
        for row in table.select(columns + (["retryable"] if retryable else [])).to_pylist():
            if row["error"] is not None:
                # Failed generations are always retried; unparsable judge replies are final.
                again = bool(row.pop("retryable")) if retryable else True
                failures.append({"stage": stage, **row, "retried_next_run": again})
    return failures


def curation_report(
    stage_summaries: Sequence[Mapping[str, Any]], tables: Mapping[str, pa.Table]
) -> dict[str, Any]:
    """The report of one run. `stage_summaries` are the flow's per-stage entries (stage, cached,
    elapsed_s, summary, outputs); `tables` the stage outputs read back, by dataset name (any of
    generations, judgments, selections, ladders may be missing when the flow stopped early)."""
    generations, judgments = tables.get("generations"), tables.get("judgments")
    selections, ladders = tables.get("selections"), tables.get("ladders")
    failures = _failure_rows(generations, judgments)
    failures_by_stage = Counter(f["stage"] for f in failures)
    report: dict[str, Any] = {
        "stages": [
            {
                "stage": s["stage"],
                "status": "cached" if s["cached"] else "computed",
                "rows": {name: tables[name].num_rows for name in s["outputs"] if name in tables},
                "failures": failures_by_stage.get(s["stage"], int(s["summary"].get("failures", 0))),
                "seconds": s["elapsed_s"],
            }
            for s in stage_summaries
        ],
        "generators": _generator_rows(generations, judgments),
        "failures": {
            "total": len(failures),
            "by_stage": dict(failures_by_stage),
            "listed": failures[:MAX_LISTED_FAILURES],
        },
    }
    if selections is not None:
        rows = selections.select(["instruction_id", "p", "selected", "reason"]).to_pylist()
        report["selection"] = {
            "strategy": selections["strategy"][0].as_py() if selections.num_rows else None,
            "instructions": len(rows),
            "selected": sum(r["selected"] for r in rows),
            "dropped": sum(not r["selected"] for r in rows),
            # The reason's head ("below competitor floor", "outside top-k", ...); details stay in the table.
            "drop_reasons": dict(Counter(r["reason"].split(" (")[0] for r in rows if not r["selected"])),
        }
        report["margins"] = {
            "all": _quantiles([r["p"] for r in rows]),
            "selected": _quantiles([r["p"] for r in rows if r["selected"]]),
            "p_at_most_zero": sum(1 for r in rows if r["p"] is not None and r["p"] <= 0),
            "p_missing": sum(1 for r in rows if r["p"] is None),
            "values": [
                {"instruction_id": r["instruction_id"], "p": r["p"], "selected": r["selected"]} for r in rows
            ],
        }
    if ladders is not None:
        gaps_by_level: dict[int, list[float]] = defaultdict(list)
        for gaps in ladders["score_gaps"].to_pylist():
            for level, gap in enumerate(gaps or ()):
                if gap is not None:
                    gaps_by_level[level].append(gap)
        report["ladders"] = {
            "ladders": ladders.num_rows,
            "rungs": dict(sorted(Counter(ladders["n_rungs"].to_pylist()).items())),
            # where the policy's own response sits (ordering.policy_rung: by-score sorts it)
            "policy_rungs": (
                dict(sorted(Counter(ladders["policy_rung"].to_pylist()).items()))
                if "policy_rung" in ladders.column_names
                else None
            ),
            # level k: the gap from rung k to rung k+1. by-score ladders ascend, so every gap is >= 0;
            # under policy_rung "first" level 0 is the policy to its first reference, and can be < 0.
            "gaps_by_level": {str(k): _quantiles(v) for k, v in sorted(gaps_by_level.items())},
            "gap_values": {str(k): v for k, v in sorted(gaps_by_level.items())},
        }
    return report


def plot_curation_report(report: Mapping[str, Any], path: Path, figures: Path | None = None) -> Path | None:
    """Two panels: p per instruction (selected vs dropped), and the score gap at each ladder level.
    Returns the PNG path, or None when there is nothing to plot (no selection stage ran).
    `figures`: a folder of figures drawn before (tasks/plotting.py)."""
    margins, ladders = report.get("margins"), report.get("ladders")
    if margins is None:
        return None
    before = drawn_before(figures, plot_curation_report, margins, ladders)
    if before is not None and before.copy_to(path):
        return path
    with png_figure(path, 2, (11, 4.2), before) as (left, right):
        values = [v for v in margins["values"] if v["p"] is not None]
        values.sort(key=lambda v: v["p"], reverse=True)
        colors = ["tab:blue" if v["selected"] else "tab:gray" for v in values]
        left.bar(range(len(values)), [v["p"] for v in values], color=colors)
        left.axhline(0, color="black", linewidth=0.8)
        left.set_title(
            f"Learning potential p = max_j (s_j - s_policy)\n"
            f"{sum(v['selected'] for v in values)} selected (blue), "
            f"{sum(not v['selected'] for v in values)} dropped (gray)"
        )
        left.set_xlabel("instructions, by p")
        left.set_ylabel("p (judge score points)")

        levels = sorted((ladders or {}).get("gap_values", {}).items(), key=lambda kv: int(kv[0]))
        if levels:
            right.boxplot([v for _, v in levels], tick_labels=[f"{k}->{int(k) + 1}" for k, _ in levels])
            for i, (_, gaps) in enumerate(levels, start=1):
                right.scatter([i] * len(gaps), gaps, s=12, alpha=0.6, color="tab:orange", zorder=3)
        else:
            right.text(0.5, 0.5, "no ladders", ha="center", va="center", transform=right.transAxes)
        right.axhline(0, color="black", linewidth=0.8)
        right.set_title("Ladder score gaps between consecutive rungs")
        right.set_xlabel("rung -> next rung (0 = the policy's own response)")
        right.set_ylabel("score gap")
    return path
