"""The comparison table and the score-over-steps series, on hand-made result rows."""

from __future__ import annotations

import json

from tasks.evaluation.report import (
    comparison_markdown,
    comparison_table,
    intervals_over_steps,
    plot_score_over_steps,
    score_over_steps,
)


def _row(candidate, benchmark, score, *, step=None, run=None, failed=0, ci=None):
    metrics = {} if ci is None else {"ci/low": ci[0], "ci/high": ci[1], "ci/level": 0.95}
    return {"candidate": candidate, "benchmark": benchmark, "score": score, "step": step, "train_run_id": run,
            "n_items": 4, "n_failed": failed, "judge": "api/gpt-4o/json/v1", "benchmark_version": f"{benchmark}-v1-abc",
            "metrics_json": json.dumps(metrics)}  # fmt: skip


def test_rows_are_candidates_and_a_partial_result_is_marked_wherever_it_shows():
    rows = [
        _row("base", "longbench_v2", 30.0, step=0, run="train-x"),
        _row("base", "writingbench", 60.0, step=0, run="train-x"),
        _row("trained", "writingbench", 70.5, step=10, run="train-x", ci=(65.123, 75.0)),
        _row("trained", "longbench_v2", 29.5, step=10, run="train-x", failed=1, ci=(20.0, 39.5)),
    ]
    table = comparison_table(rows)
    # Without all three writing benchmarks there is no writing average (the paper's needs all three).
    assert table == [
        {"candidate": "base", "step": 0, "WritingBench": 60.0, "LongBench v2": 30.0, "failed items": 0,
         "WritingBench CI": None, "LongBench v2 CI": None, "partial": []},
        {"candidate": "trained", "step": 10, "WritingBench": 70.5, "LongBench v2": 29.5, "failed items": 1,
         "WritingBench CI": [65.12, 75.0], "LongBench v2 CI": [20.0, 39.5], "partial": ["LongBench v2"]},
    ]  # fmt: skip
    markdown = comparison_markdown(table, rows)
    assert "| trained | 10 | 70.5 [65.12, 75.0] | 29.5 [20.0, 39.5] (partial) |" in markdown
    assert "| base | 0 | 60.0 | 30.0 |" in markdown  # recorded before intervals were: none shown
    assert "95% bootstrap interval over items" in markdown
    assert "Items without a score**: 1" in markdown
    assert "| trained | LongBench v2 | 3 | 1 | api/gpt-4o/json/v1 | partial |" in markdown
    assert "| base | WritingBench | 4 | 0 | api/gpt-4o/json/v1 | complete |" in markdown
    assert (
        "**Judge per column**: WritingBench: api/gpt-4o/json/v1; LongBench v2: api/gpt-4o/json/v1" in markdown
    )


def test_the_paper_layout_averages_its_three_writing_benchmarks_and_keeps_longbench_v2_apart():
    # The paper's own Qwen2.5-7B PPO row: Table 1 is 87.23 / 73.19 / 93.06, average 84.49; Table 3
    # (LongBench v2) is 31.8. Averaging all four would give 71.32.
    rows = [
        _row("ppo", "longbench_v2", 31.8),
        _row("ppo", "longbench_write", 93.06),
        _row("ppo", "writingbench", 87.23),
        _row("ppo", "creative_writing_v3", 73.19),
        _row("sft", "writingbench", 80.0, failed=2),
        _row("sft", "creative_writing_v3", 70.0),
        _row("sft", "longbench_write", 90.0),
        _row("sft", "longbench_v2", 29.6),
    ]
    table = comparison_table(rows, {"ppo": (83.0, 85.5)})
    assert list(table[0])[:7] == ["candidate", "step", "WritingBench", "Creative Writing v3", "LongBench-Write",
                                  "writing average", "LongBench v2"]  # fmt: skip
    ppo, sft = table
    assert ppo["writing average"] == 84.49 and ppo["writing average CI"] == [83.0, 85.5]
    assert sft["writing average"] == 80.0 and sft["writing average CI"] is None
    # A partial benchmark makes the average that rests on it partial too.
    assert sft["partial"] == ["WritingBench", "writing average"]
    markdown = comparison_markdown(table, rows)
    assert "| ppo | - | 87.23 | 73.19 | 93.06 | 84.49 [83.0, 85.5] | 31.8 |" in markdown
    assert "| sft | - | 80.0 (partial) | 70.0 | 90.0 | 80.0 (partial) | 29.6 |" in markdown


def test_a_benchmark_without_a_score_leaves_the_average_empty_not_averaged_over_fewer():
    rows = [
        _row("a", "writingbench", 60.0),
        _row("a", "creative_writing_v3", 50.0),
        _row("a", "longbench_write", None),
        _row("b", "writingbench", 50.0),
        _row("b", "creative_writing_v3", 40.0),
    ]
    table = comparison_table(rows)
    assert table[0]["LongBench-Write"] is None and table[0]["writing average"] is None
    assert table[1]["LongBench-Write"] is None and table[1]["writing average"] is None  # b was not run on it
    assert "| a | - | 60.0 | 50.0 | - | - |" in comparison_markdown(table, rows)


def test_score_over_steps_keeps_the_newest_result_per_step_and_only_the_run(tmp_path):
    rows = [
        _row("base", "writingbench", 50.0, step=0, run="train-x"),
        _row("nightly", "writingbench", 55.0, step=45, run="train-x", ci=(40.0, 70.0)),
        _row("nightly", "writingbench", 57.0, step=45, run="train-x", ci=(50.0, 64.0)),  # newer: wins
        _row("nightly", "writingbench", 61.0, step=90, run="train-x", ci=(55.5, 66.5)),
        _row("nightly", "longbench_v2", None, step=90, run="train-x"),  # no score: no point
        _row("other", "writingbench", 99.0, step=45, run="train-y"),
        _row("gpt-4o", "writingbench", 80.0),
    ]
    series = score_over_steps(rows, "train-x")
    assert series == {"writingbench": [(0, 50.0), (45, 57.0), (90, 61.0)]}
    intervals = intervals_over_steps(rows, "train-x")  # the same points' intervals, where they have one
    assert intervals == {"writingbench": {45: (50.0, 64.0), 90: (55.5, 66.5)}}
    path = plot_score_over_steps(series, "train-x", tmp_path / "p.png", intervals=intervals)
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"
    assert plot_score_over_steps({}, "train-x", tmp_path / "q.png") is None


def test_empty_results_give_an_empty_table():
    assert comparison_table([]) == []
    assert "No results" in comparison_markdown([], [])


def test_differences_are_marked_where_their_interval_excludes_zero_and_noise_is_said_plainly():
    from tasks.evaluation.bootstrap import Difference, Interval
    from tasks.evaluation.report import differences_markdown

    real = Difference("writingbench", "trained", "base", 5.0, Interval(1.5, 8.25, 0.95), 40)
    noise = Difference("longbench_v2", "trained", "base", 0.2, Interval(-3.0, 3.4, 0.95), 2)
    lines = "\n".join(differences_markdown([real, noise]))
    assert "**Differences from base** (paired 95% bootstrap" in lines
    assert "| trained | +5.00 [+1.50, +8.25] * | +0.20 [-3.00, +3.40] |" in lines
    assert "No difference excludes 0" not in lines
    only_noise = "\n".join(differences_markdown([noise]))
    assert "No difference excludes 0" in only_noise and "within the noise" in only_noise
    assert differences_markdown([]) == []


def test_writingbench_requirement_dimensions_get_their_own_columns():
    wb = _row("a", "writingbench", 71.0)
    wb["metrics_json"] = json.dumps({"requirement/length/R": 71.0, "requirement/length/C": 64.456})
    table = comparison_table([wb, _row("b", "writingbench", 60.0)])
    assert (table[0]["WritingBench length R"], table[0]["WritingBench length C"]) == (71.0, 64.46)
    assert (table[1]["WritingBench length R"], table[1]["WritingBench length C"]) == (None, None)
    assert "| a | - | 71.0 | 71.0 | 64.46 |" in comparison_markdown(table, [wb])
