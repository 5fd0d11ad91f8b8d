"""The end-of-flow report: its numbers on hand-made stage outputs, its plot, and its artifacts."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tasks.curation.report import curation_report, plot_curation_report


def _tables():
    generations = pa.table({
        "instruction_id": ["a", "a", "b", "b", "c", "c"],
        "generator": ["policy", "rival"] * 3,
        "role": ["policy", "competitor"] * 3,
        "error": [None, None, None, "HTTP 500 after 6 retries", None, None],
    })  # fmt: skip
    judgments = pa.table({
        "instruction_id": ["a", "a", "b", "c", "c"],
        "generator": ["policy", "rival", "policy", "policy", "rival"],
        "role": ["policy", "competitor", "policy", "policy", "competitor"],
        "score": [4.0, 7.0, 5.0, 6.0, None],
        "error": [None, None, None, None, "unparsable judge reply after 2 re-asks"],
        "retryable": [False, False, False, False, False],
    })  # fmt: skip
    selections = pa.table({
        "instruction_id": ["a", "b", "c"],
        "strategy": ["margin"] * 3,
        "p": [3.0, None, None],
        "selected": [True, False, False],
        "reason": [None, "no competitor has a score", "no competitor has a score"],
    })  # fmt: skip
    ladders = pa.table({"n_rungs": [2], "score_gaps": [[3.0]]})
    return {"generations": generations, "judgments": judgments, "selections": selections, "ladders": ladders}


def _stages():
    return [
        {"stage": "generate", "cached": False, "outputs": {"generations": "g@0"}, "elapsed_s": 1.0,
         "summary": {"failures": 1}},
        {"stage": "score", "cached": True, "outputs": {"judgments": "j@0"}, "elapsed_s": 0.1, "summary": {}},
    ]  # fmt: skip


def test_the_report_counts_what_the_stage_outputs_hold():
    report = curation_report(_stages(), _tables())
    assert report["stages"] == [
        {
            "stage": "generate",
            "status": "computed",
            "rows": {"generations": 6},
            "failures": 1,
            "seconds": 1.0,
        },
        {"stage": "score", "status": "cached", "rows": {"judgments": 5}, "failures": 1, "seconds": 0.1},
    ]
    policy, rival = report["generators"]
    assert policy == {"generator": "policy", "role": "policy", "responses": 3, "failed_generations": 0,
                      "scored": 3, "unscored": 0, "mean_score": 5.0, "min_score": 4.0, "max_score": 6.0}  # fmt: skip
    assert (rival["responses"], rival["failed_generations"], rival["scored"], rival["unscored"]) == (
        2,
        1,
        1,
        1,
    )
    assert report["selection"] == {"strategy": "margin", "instructions": 3, "selected": 1, "dropped": 2,
                                   "drop_reasons": {"no competitor has a score": 2}}  # fmt: skip
    assert report["margins"]["all"]["n"] == 1 and report["margins"]["p_missing"] == 2
    assert report["margins"]["selected"]["median"] == 3.0
    assert report["ladders"]["gaps_by_level"]["0"]["mean"] == 3.0
    failures = report["failures"]
    assert failures["total"] == 2 and failures["by_stage"] == {"generate": 1, "score": 1}
    assert {(f["stage"], f["instruction_id"], f["retried_next_run"]) for f in failures["listed"]} == {
        ("generate", "b", True), ("score", "c", False)
    }  # fmt: skip


def test_quantiles_interpolate():
    tables = _tables()
    tables["selections"] = pa.table({
        "instruction_id": list("abcde"), "strategy": ["margin"] * 5, "p": [-1.0, 0.0, 1.0, 2.0, 10.0],
        "selected": [False, False, True, True, True], "reason": ["outside top-k"] * 2 + [None] * 3,
    })  # fmt: skip
    margins = curation_report([], tables)["margins"]
    assert margins["all"] == {
        "n": 5,
        "min": -1.0,
        "p25": 0.0,
        "median": 1.0,
        "p75": 2.0,
        "max": 10.0,
        "mean": 2.4,
    }
    assert margins["p_at_most_zero"] == 2


def test_the_plot_is_a_png(tmp_path):
    path = plot_curation_report(curation_report(_stages(), _tables()), tmp_path / "r" / "curation.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000


def test_no_selection_no_plot(tmp_path):
    tables = {k: v for k, v in _tables().items() if k in ("generations", "judgments")}
    assert plot_curation_report(curation_report(_stages(), tables), tmp_path / "p.png") is None


def test_the_flow_publishes_the_report_as_artifacts(prefect_harness, tiny_model_dir, tmp_path):
    from flows.build_dataset import build_dataset
    from tests.support.artifacts import latest_artifacts
    from tests.support.recipes import write_recipe

    judge = f"judge: {{backend: local, model: {tiny_model_dir}, mode: logprob}}\n"
    rival = (f"  - {{name: rival, backend: local, model: {tiny_model_dir}, "
             f"decoding: {{temperature: 0.0, max_tokens: 12}}}}\n")  # fmt: skip
    recipe = write_recipe(
        tmp_path / "r.yaml", store=tmp_path / "store", model=str(tiny_model_dir), extra=rival + judge
    )
    summary = build_dataset(recipe_path=str(recipe))
    report = summary["report"]
    assert [s["stage"] for s in report["stages"]] == ["ingest", "generate", "score", "select", "order"]
    assert {g["generator"] for g in report["generators"]} == {"policy", "rival"}
    assert report["selection"]["instructions"] == 4
    assert report["plot"].endswith("curation.png") and summary["run_id"] in report["plot"]
    assert sorted(report["artifacts"]) == sorted(
        f"test-curation-{what}" for what in ("stages", "generators", "margins", "failures", "plot", "summary")
    )

    artifacts = latest_artifacts(report["artifacts"])
    assert artifacts["test-curation-generators"].type == "table"
    assert "rival" in str(artifacts["test-curation-generators"].data)
    assert artifacts["test-curation-plot"].type == "image"
    assert str(artifacts["test-curation-plot"].data).startswith("data:image/png;base64,")


@pytest.mark.parametrize(
    "name,key", [("My Recipe_1", "my-recipe-1-curation-x"), ("///", "recipe-curation-x")]
)
def test_artifact_keys_are_valid(name, key):
    from flows.reporting import artifact_key

    assert artifact_key(name, "x") == key
