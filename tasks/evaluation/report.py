"""The evaluation report: a comparison table laid out as the paper's and a score-over-steps plot.

Pure functions over result rows (dicts with candidate, benchmark, score, step, train_run_id, ...:
the `eval_results` rows of storage/evaluations.py). Every headline is on 0-100 (WritingBench x10,
LongBench-Write S, Creative Writing v3 rubric x5, LongBench v2 accuracy), but the optional Creative
Writing v3 Elo's, a normalised Elo (`NOT_ON_0_100`).

The layout is the paper's. Table 1 (writing) has WritingBench, EQ-Bench Creative Writing and
LongBench-Write, in that order, and its "Average" is their plain mean: the `writing average`
column. It exists only when all three are evaluated, and is left empty for a candidate missing one
of them, rather than averaged over fewer. LongBench v2 is the paper's Table 3, a column after the
average and outside it, and the Creative Writing v3 Elo (when run) after it. Other registered
suites come last, outside the average too.

A result with items that went unscored (`n_failed` > 0) is partial: its cell says so, as does a
writing average that rests on one. The markdown lists, per candidate and benchmark, the items
scored and failed, the judge, and whether the run is complete.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from configs.schema import BENCHMARKS
from tasks.evaluation.bootstrap import Difference
from tasks.plotting import drawn_before, png_figure

TITLES = {
    "writingbench": "WritingBench",
    "longbench_write": "LongBench-Write",
    "creative_writing_v3": "Creative Writing v3",
    "longbench_v2": "LongBench v2",
    "creative_writing_v3_elo": "Creative Writing v3 Elo",
}


def title(benchmark: str) -> str:
    """A column's title: the built-in benchmarks' names as their papers write them, else the key."""
    return TITLES.get(benchmark, benchmark)


# The paper's Table 1, in its column order; its "Average" is the mean of exactly these.
WRITING = ("writingbench", "creative_writing_v3", "longbench_write")
# LongBench v2: the paper's Table 3, after the average; then the leaderboard's Creative Writing Elo,
# an option that is in no table of the paper.
TABLE_ORDER = (*WRITING, "longbench_v2", "creative_writing_v3_elo")
NOT_ON_0_100 = ("creative_writing_v3_elo",)  # a normalised Elo: in the table, not on the 0-100 plot
WRITING_AVERAGE = "writing average"
assert set(TABLE_ORDER) == set(BENCHMARKS)


def _in_order(names: Iterable[str]) -> list[str]:
    """The built-in benchmarks in the paper's order, then any other (a registered suite) by name."""
    present = set(names)
    return [b for b in TABLE_ORDER if b in present] + sorted(present - set(TABLE_ORDER))


def _ordered_benchmarks(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return _in_order(r["benchmark"] for r in rows)


def interval_of(row: Mapping[str, Any]) -> tuple[float, float] | None:
    """A result row's bootstrap interval (stored in its metrics: tasks/evaluation/bootstrap.py);
    None for results recorded before intervals were, or with no score."""
    metrics = _metrics(row)
    low, high = metrics.get("ci/low"), metrics.get("ci/high")
    return None if low is None or high is None else (float(low), float(high))


CI_SUFFIX = " CI"  # a table row's "<benchmark title> CI": that score's [low, high]


def ci_column(benchmark: str) -> str:
    return f"{title(benchmark)}{CI_SUFFIX}"


PARTIAL = "partial"  # a table row's columns whose score rests on unscored items


def scale_note(columns: Iterable[str]) -> str:
    """What a table's numbers are on: 0-100, and the columns that are not."""
    off = [title(b) for b in NOT_ON_0_100 if title(b) in columns]
    return "0-100" + "".join(f"; {c}: normalised Elo" for c in off)


def shown_columns(row: Mapping[str, Any]) -> list[str]:
    """A table row's columns as a reader sees them: the intervals and the partial mark go inside
    their scores' cells."""
    return [c for c in row if not c.endswith(CI_SUFFIX) and c != PARTIAL]


def score_cell(row: Mapping[str, Any], column: str) -> str:
    """`score [low, high]` where the column has an interval, else the value, then "(partial)"
    where items went unscored; "-" for none. The markdown summary and `wrl evaluate` both write
    cells this way."""
    if row[column] is None:
        return "-"
    interval = row.get(f"{column}{CI_SUFFIX}")
    cell = f"{row[column]} [{interval[0]}, {interval[1]}]" if interval else str(row[column])
    return f"{cell} (partial)" if column in row.get(PARTIAL, ()) else cell


def comparison_table(
    rows: Sequence[Mapping[str, Any]],
    average_intervals: Mapping[str, tuple[float, float] | None] | None = None,
) -> list[dict[str, Any]]:
    """One row per candidate (in the order given): its score per benchmark in the paper's order,
    the writing average after the writing benchmarks (when all three are evaluated), the unscored
    items, each score's bootstrap interval ("<column> CI": [low, high], after the scores; the
    average's from `average_intervals`, candidate -> interval) and the columns that are partial."""
    benchmarks = _ordered_benchmarks(rows)
    with_average = all(b in benchmarks for b in WRITING)
    requirements = sorted(  # per requirement, R (the subset's score) before C (its own criterion)
        {
            m
            for r in rows
            if r["benchmark"] == "writingbench"
            for m in _metrics(r)
            if m.startswith(REQUIREMENT)
        },
        key=lambda m: (m.rsplit("/", 1)[0], m.endswith("/C")),
    )
    by_candidate: dict[str, dict[str, Any]] = {}
    for r in rows:
        by_candidate.setdefault(r["candidate"], {})[r["benchmark"]] = r
    table = []
    for candidate, results in by_candidate.items():
        row: dict[str, Any] = {
            "candidate": candidate,
            "step": next((r.get("step") for r in results.values() if r.get("step") is not None), None),
        }
        partial = [title(b) for b in benchmarks if b in results and int(results[b]["n_failed"]) > 0]
        for b in benchmarks:
            score = results[b]["score"] if b in results else None
            row[title(b)] = None if score is None else round(score, 2)
            if with_average and b == WRITING[-1]:
                scores = [results[w]["score"] if w in results else None for w in WRITING]
                complete = all(s is not None for s in scores)
                row[WRITING_AVERAGE] = round(sum(scores) / len(scores), 2) if complete else None  # type: ignore[arg-type]
                if complete and any(title(w) in partial for w in WRITING):
                    partial.append(WRITING_AVERAGE)
        for metric in requirements:  # WritingBench's requirement dimensions, when it was run with them
            value = _metrics(results["writingbench"]).get(metric) if "writingbench" in results else None
            row[requirement_column(metric)] = None if value is None else round(value, 2)
        row["failed items"] = sum(int(r["n_failed"]) for r in results.values())
        for b in benchmarks:
            row[ci_column(b)] = _rounded(interval_of(results[b])) if b in results else None
            if with_average and b == WRITING[-1]:
                interval = (
                    (average_intervals or {}).get(candidate) if row[WRITING_AVERAGE] is not None else None
                )
                row[f"{WRITING_AVERAGE}{CI_SUFFIX}"] = _rounded(interval)
        row[PARTIAL] = partial
        table.append(row)
    return table


REQUIREMENT = "requirement/"  # WritingBench's requirement metrics: requirement/<name>/<R|C>


def requirement_column(metric: str) -> str:
    """`requirement/length/C` -> "WritingBench length C" (the leaderboard's requirement dimensions)."""
    _, name, part = metric.split("/")
    return f"{title('writingbench')} {name} {part}"


def _metrics(row: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(row.get("metrics_json") or "{}")


def _rounded(interval: tuple[float, float] | None) -> list[float] | None:
    return None if interval is None else [round(interval[0], 2), round(interval[1], 2)]


def difference_row(difference: Difference) -> dict[str, Any]:
    interval = difference.interval
    return {
        "benchmark": difference.benchmark, "candidate": difference.candidate, "baseline": difference.baseline,
        "difference": None if difference.value is None else round(difference.value, 2),
        "interval": None if interval is None else [round(interval.low, 2), round(interval.high, 2)],
        "level": None if interval is None else interval.level,
        "significant": interval is not None and interval.excludes_zero(), "items": difference.n_items,
    }  # fmt: skip


def differences_markdown(differences: Sequence[Difference]) -> list[str]:
    """Each candidate minus the first, per benchmark, with the paired interval; `*` where it
    excludes 0. Says plainly when none does."""
    if not differences:
        return []
    baseline = differences[0].baseline
    candidates = list(dict.fromkeys(d.candidate for d in differences))
    benchmarks = _in_order(d.benchmark for d in differences)
    by_pair = {(d.candidate, d.benchmark): d for d in differences}
    level = next((d.interval.level for d in differences if d.interval is not None), 0.95)

    def cell(d: Difference | None) -> str:
        if d is None or d.value is None:
            return "-"
        if d.interval is None:
            return f"{d.value:+.2f}"
        mark = " *" if d.interval.excludes_zero() else ""
        return f"{d.value:+.2f} [{d.interval.low:+.2f}, {d.interval.high:+.2f}]{mark}"

    lines = [f"**Differences from {baseline}** (paired {level:.0%} bootstrap over the items both were "
             "scored on; * where the interval excludes 0):", "",
             "| candidate | " + " | ".join(title(b) for b in benchmarks) + " |",
             "|---|" + "---:|" * len(benchmarks)]  # fmt: skip
    for candidate in candidates:
        lines.append(
            f"| {candidate} | " + " | ".join(cell(by_pair.get((candidate, b))) for b in benchmarks) + " |"
        )
    lines.append("")
    if not any(d.interval is not None and d.interval.excludes_zero() for d in differences):
        lines += [f"No difference excludes 0: at these numbers of items, every difference from {baseline} "
                  "is within the noise of which items were drawn.", ""]  # fmt: skip
    return lines


def comparison_markdown(
    table: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    differences: Sequence[Difference] = (),
) -> str:
    """The table as markdown, with what it rests on: judge, benchmark versions, items per cell, and
    each candidate's paired difference from the first."""
    if not table:
        return "# Evaluation\n\nNo results."
    columns = [c for c in shown_columns(table[0]) if c != "failed items"]
    lines = [
        f"# Evaluation: candidates x benchmarks ({scale_note(columns)}), laid out as the paper's Tables 1 and 3",
        "",
    ]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|")
    for row in table:
        lines.append("| " + " | ".join(score_cell(row, c) for c in columns) + " |")
    lines.append("")
    levels = sorted({json.loads(r.get("metrics_json") or "{}").get("ci/level") for r in rows} - {None})
    if levels:
        lines += [
            f"Brackets: the {', '.join(f'{level:.0%}' for level in levels)} bootstrap interval over items "
            "(the suite's own aggregate on resampled items; docs/evaluation.md).",
            "",
        ]
    lines += differences_markdown(differences)
    versions = sorted({r["benchmark_version"] for r in rows})
    failed = sum(int(r["n_failed"]) for r in rows)
    judges = {b: sorted({r.get("judge") or "none (no judge)" for r in rows if r["benchmark"] == b})
              for b in _in_order(r["benchmark"] for r in rows)}  # fmt: skip
    lines += [
        "**Judge per column**: " + "; ".join(f"{title(b)}: {', '.join(j)}" for b, j in judges.items()),
        "",
        f"**Benchmark versions**: {', '.join(versions)}",
        "",
        f"**Items without a score**: {failed} (excluded or counted wrong per benchmark; see docs/evaluation.md)",
        "",
        *coverage_markdown(rows),
        "Scales: WritingBench x10 (leaderboard), LongBench-Write S = (S_l + S_q)/2, Creative Writing v3 "
        "rubric x5, LongBench v2 accuracy %, Creative Writing v3 Elo: the leaderboard's normalised Elo on "
        "this run's pool (not 0-100). The writing average is the paper's Table 1 Average: the mean "
        "of WritingBench, Creative Writing v3 and LongBench-Write, left empty when one has no score; "
        "LongBench v2 (the paper's Table 3) is outside it.",
    ]
    return "\n".join(lines)


def coverage_markdown(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Per candidate and benchmark: the items scored and failed, the judge, complete or partial."""
    lines = ["**Coverage** (a partial result is marked in the table too):", "",
             "| candidate | benchmark | items scored | items failed | judge | run |", "|---|---|---:|---:|---|---|"]  # fmt: skip
    candidates = list(dict.fromkeys(r["candidate"] for r in rows))
    order = {b: i for i, b in enumerate(_in_order(r["benchmark"] for r in rows))}
    for r in sorted(rows, key=lambda r: (candidates.index(r["candidate"]), order[r["benchmark"]])):
        failed, total = int(r["n_failed"]), int(r["n_items"])
        lines.append(f"| {r['candidate']} | {title(r['benchmark'])} | {total - failed} | {failed} | "
                     f"{r.get('judge') or 'none'} | {'partial' if failed else 'complete'} |")  # fmt: skip
    return [*lines, ""]


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
        if benchmark not in NOT_ON_0_100:  # the plot's axis is 0-100
            series[benchmark].append((step, score))
    return {b: series[b] for b in _in_order(series)}


def intervals_over_steps(
    rows: Sequence[Mapping[str, Any]], train_run_id: str
) -> dict[str, dict[int, tuple[float, float]]]:
    """benchmark -> {step: (low, high)}: the bootstrap interval of the points `score_over_steps`
    keeps (the newest result per step), where the result has one."""
    latest: dict[tuple[str, int], tuple[float, float] | None] = {}
    for r in rows:
        if r.get("train_run_id") == train_run_id and r.get("step") is not None and r["score"] is not None:
            latest[(r["benchmark"], int(r["step"]))] = interval_of(r)
    out: dict[str, dict[int, tuple[float, float]]] = defaultdict(dict)
    for (benchmark, step), interval in latest.items():
        if interval is not None:
            out[benchmark][step] = interval
    return dict(out)


def plot_score_over_steps(
    series: Mapping[str, list[tuple[int, float]]], train_run_id: str, path: Path, figures: Path | None = None,
    intervals: Mapping[str, Mapping[int, tuple[float, float]]] | None = None,
) -> Path | None:  # fmt: skip
    """One line per benchmark, score (0-100) against training step, with each point's bootstrap
    interval as an error bar where `intervals` has it; None when there is nothing.
    `figures`: a folder of figures drawn before (tasks/plotting.py)."""
    if not series:
        return None
    intervals = intervals or {}
    before = drawn_before(figures, plot_score_over_steps, series, train_run_id, intervals)
    if before is not None and before.copy_to(path):
        return path
    with png_figure(path, 1, (7, 4), before) as ax:
        for benchmark, points in series.items():
            xs, ys = zip(*points, strict=True)
            line = ax.plot(xs, ys, marker="o", label=title(benchmark))[0]
            bars = [(x, y, intervals.get(benchmark, {}).get(x)) for x, y in points]
            bars = [(x, y, ci) for x, y, ci in bars if ci is not None]
            if bars:
                ax.errorbar(
                    [x for x, _, _ in bars], [y for _, y, _ in bars],
                    yerr=[[y - ci[0] for _, y, ci in bars], [ci[1] - y for _, y, ci in bars]],
                    fmt="none", ecolor=line.get_color(), capsize=3, alpha=0.6,
                )  # fmt: skip
        ax.set_xlabel("training step (0 = before training)")
        ax.set_ylabel("score (0-100)")
        ax.set_title(f"Benchmark score over training: {train_run_id}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return path
