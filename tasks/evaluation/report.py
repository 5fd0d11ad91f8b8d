"""The evaluation report: a comparison table like the paper's Table 1 and a score-over-steps plot.

Pure functions over result rows (dicts with candidate, benchmark, score, step, train_run_id, ...:
the `eval_results` rows of storage/evaluations.py). Every headline is on 0-100 (WritingBench x10,
LongBench-Write S, Creative Writing v3 rubric x5, LongBench v2 accuracy), so the average is a
plain mean; it is left empty when one of the candidate's benchmarks has no score, rather than
averaging fewer numbers than the other rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from configs.schema import BENCHMARKS
from tasks.plotting import drawn_before, png_figure

TITLES = {
    "writingbench": "WritingBench",
    "longbench_write": "LongBench-Write",
    "creative_writing_v3": "Creative Writing v3",
    "longbench_v2": "LongBench v2",
}


def title(benchmark: str) -> str:
    """A column's title: the built-in benchmarks' names as their papers write them, else the key."""
    return TITLES.get(benchmark, benchmark)


def _in_order(names: Iterable[str]) -> list[str]:
    """The built-in benchmarks in their usual order, then any other (a registered suite) by name."""
    present = set(names)
    return [b for b in BENCHMARKS if b in present] + sorted(present - set(BENCHMARKS))


def _ordered_benchmarks(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return _in_order(r["benchmark"] for r in rows)


def comparison_table(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per candidate (in the order given): its score per benchmark and the average."""
    benchmarks = _ordered_benchmarks(rows)
    by_candidate: dict[str, dict[str, Any]] = {}
    for r in rows:
        by_candidate.setdefault(r["candidate"], {})[r["benchmark"]] = r
    table = []
    for candidate, results in by_candidate.items():
        scores = [results[b]["score"] if b in results else None for b in benchmarks]
        complete = all(s is not None for s in scores)
        step = next((r.get("step") for r in results.values() if r.get("step") is not None), None)
        table.append(
            {
                "candidate": candidate,
                "step": step,
                **{
                    title(b): (None if s is None else round(s, 2))
                    for b, s in zip(benchmarks, scores, strict=True)
                },
                "average": round(sum(scores) / len(scores), 2) if complete and scores else None,
                "failed items": sum(int(r["n_failed"]) for r in results.values()),
            }
        )
    return table


def comparison_markdown(table: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]) -> str:
    """The table as markdown, with what it rests on: judge, benchmark versions, items per cell."""
    if not table:
        return "# Evaluation\n\nNo results."
    columns = [c for c in table[0] if c != "failed items"]
    lines = ["# Evaluation: candidates x benchmarks (0-100)", ""]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|")
    for row in table:
        lines.append("| " + " | ".join("-" if row[c] is None else str(row[c]) for c in columns) + " |")
    lines.append("")
    judges = sorted({r["judge"] for r in rows if r.get("judge")})
    versions = sorted({r["benchmark_version"] for r in rows})
    items = {r["benchmark"]: r["n_items"] for r in rows}
    failed = sum(int(r["n_failed"]) for r in rows)
    lines += [
        f"**Judge**: {', '.join(judges) or 'none'}",
        "",
        f"**Benchmark versions**: {', '.join(versions)}",
        "",
        "**Items per cell**: " + ", ".join(f"{title(b)} {items[b]}" for b in _in_order(items)),
        "",
        f"**Items without a score**: {failed} (excluded or counted wrong per benchmark; see docs/evaluation.md)",
        "",
        "Scales: WritingBench x10 (leaderboard), LongBench-Write S = (S_l + S_q)/2, Creative Writing v3 "
        "rubric x5, LongBench v2 accuracy %. The average is left empty when a benchmark has no score.",
    ]
    return "\n".join(lines)


def score_over_steps(
    rows: Sequence[Mapping[str, Any]], train_run_id: str
) -> dict[str, list[tuple[int, float]]]:
    """benchmark -> [(step, score)] for one training run, the newest result per (step, benchmark)
    (rows oldest first, as `EvaluationLog.results` returns them)."""
    latest: dict[tuple[str, int], float] = {}
    for r in rows:
        if r.get("train_run_id") == train_run_id and r.get("step") is not None and r["score"] is not None:
            latest[(r["benchmark"], int(r["step"]))] = float(r["score"])
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for (benchmark, step), score in sorted(latest.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        series[benchmark].append((step, score))
    return {b: series[b] for b in _in_order(series)}


def plot_score_over_steps(
    series: Mapping[str, list[tuple[int, float]]], train_run_id: str, path: Path, figures: Path | None = None
) -> Path | None:
    """One line per benchmark, score (0-100) against training step; None when there is nothing.
    `figures`: a folder of figures drawn before (tasks/plotting.py)."""
    if not series:
        return None
    before = drawn_before(figures, plot_score_over_steps, series, train_run_id)
    if before is not None and before.copy_to(path):
        return path
    with png_figure(path, 1, (7, 4), before) as ax:
        for benchmark, points in series.items():
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=title(benchmark))
        ax.set_xlabel("training step (0 = before training)")
        ax.set_ylabel("score (0-100)")
        ax.set_title(f"Benchmark score over training: {train_run_id}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return path
