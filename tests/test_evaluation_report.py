"""The comparison table and the score-over-steps series, on hand-made result rows."""

from __future__ import annotations

from tasks.evaluation.report import (
    comparison_markdown,
    comparison_table,
    plot_score_over_steps,
    score_over_steps,
)


def _row(candidate, benchmark, score, *, step=None, run=None, failed=0):
    return {"candidate": candidate, "benchmark": benchmark, "score": score, "step": step, "train_run_id": run,
            "n_items": 4, "n_failed": failed, "judge": "api/gpt-4o/json/v1", "benchmark_version": f"{benchmark}-v1-abc"}  # fmt: skip


def test_rows_are_candidates_columns_are_benchmarks_in_paper_order_and_the_average():
    rows = [
        _row("base", "longbench_v2", 30.0, step=0, run="train-x"),
        _row("base", "writingbench", 60.0, step=0, run="train-x"),
        _row("trained", "writingbench", 70.5, step=10, run="train-x"),
        _row("trained", "longbench_v2", 29.5, step=10, run="train-x", failed=1),
    ]
    table = comparison_table(rows)
    assert table == [
        {"candidate": "base", "step": 0, "WritingBench": 60.0, "LongBench v2": 30.0, "average": 45.0,
         "failed items": 0},
        {"candidate": "trained", "step": 10, "WritingBench": 70.5, "LongBench v2": 29.5, "average": 50.0,
         "failed items": 1},
    ]  # fmt: skip
    assert list(table[0]) == ["candidate", "step", "WritingBench", "LongBench v2", "average", "failed items"]
    markdown = comparison_markdown(table, rows)
    assert "| trained | 10 | 70.5 | 29.5 | 50.0 |" in markdown
    assert "api/gpt-4o/json/v1" in markdown and "Items without a score**: 1" in markdown


def test_a_benchmark_without_a_score_leaves_the_average_empty_not_averaged_over_fewer():
    rows = [
        _row("a", "writingbench", 60.0),
        _row("a", "longbench_write", None),
        _row("b", "writingbench", 50.0),
    ]
    table = comparison_table(rows)
    assert table[0]["LongBench-Write"] is None and table[0]["average"] is None
    assert table[1]["LongBench-Write"] is None and table[1]["average"] is None  # b was not run on it
    assert "| a | - | 60.0 | - | - |" in comparison_markdown(table, rows)


def test_score_over_steps_keeps_the_newest_result_per_step_and_only_the_run(tmp_path):
    rows = [
        _row("base", "writingbench", 50.0, step=0, run="train-x"),
        _row("nightly", "writingbench", 55.0, step=45, run="train-x"),
        _row("nightly", "writingbench", 57.0, step=45, run="train-x"),  # re-evaluated later: newest wins
        _row("nightly", "writingbench", 61.0, step=90, run="train-x"),
        _row("nightly", "longbench_v2", None, step=90, run="train-x"),  # no score: no point
        _row("other", "writingbench", 99.0, step=45, run="train-y"),
        _row("gpt-4o", "writingbench", 80.0),
    ]
    series = score_over_steps(rows, "train-x")
    assert series == {"writingbench": [(0, 50.0), (45, 57.0), (90, 61.0)]}
    path = plot_score_over_steps(series, "train-x", tmp_path / "p.png")
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"
    assert plot_score_over_steps({}, "train-x", tmp_path / "q.png") is None


def test_empty_results_give_an_empty_table():
    assert comparison_table([]) == []
    assert "No results" in comparison_markdown([], [])
