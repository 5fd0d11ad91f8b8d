"""The evaluation flow on the tiny model: two candidates on the four benchmarks, the comparison
table and its artifacts, lineage in storage, caching per (candidate, benchmark), and training
checkpoints evaluated over steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from configs.loading import load_recipe
from storage import open_storage
from tests.support.artifacts import latest_artifacts
from tests.support.recipes import BENCH_FILES
from tests.support.recipes import eval_candidates as _candidates
from tests.support.recipes import evaluation_recipe as _recipe


def _stage_statuses(storage, run_id: str) -> list[str]:
    with storage.catalog.connect() as con:
        rows = con.execute(
            "SELECT status FROM stage_runs WHERE run_id = ? AND stage = 'evaluate' ORDER BY started_at",
            [run_id],
        ).fetchall()
    return [r[0] for r in rows]


def _requests(storage, run_id: str) -> int:
    with storage.catalog.connect() as con:
        return con.execute(
            "SELECT coalesce(sum(u.requests), 0) FROM llm_usage u JOIN stage_runs s USING (stage_run_id)"
            " WHERE s.run_id = ?",
            [run_id],
        ).fetchone()[0]


def test_two_candidates_give_the_comparison_table_with_lineage_and_artifacts(
    prefect_harness, tiny_model_dir, shared_benchmarks, tmp_path
):

    from flows.evaluate import evaluate_candidates

    recipe_path = _recipe(
        tmp_path, tiny_model_dir, shared_benchmarks, _candidates(tiny_model_dir, "alpha", "beta")
    )
    summary = evaluate_candidates(recipe_path=str(recipe_path))

    table = summary["table"]
    assert [row["candidate"] for row in table] == ["alpha", "beta"]
    # The paper's layout: Table 1's three writing benchmarks and their average, then Table 3's.
    writing = ["WritingBench", "Creative Writing v3", "LongBench-Write"]
    columns = [*writing, "LongBench v2"]
    assert list(table[0])[:7] == ["candidate", "step", *writing, "writing average", "LongBench v2"]
    for row in table:
        scores = [row[c] for c in writing]
        if all(s is not None for s in scores):
            assert row["writing average"] == pytest.approx(sum(scores) / 3, abs=0.01)
            low, high = row["writing average CI"]  # each benchmark's items resampled on its own
            assert low <= row["writing average"] <= high
            assert f"{row['writing average']} [{low}, {high}]" in summary["markdown"]
        else:
            assert row["writing average"] is None
        assert row["LongBench v2"] is not None  # extraction never fails to give a verdict
        assert row["partial"] == [] and row["failed items"] == 0
    assert "| alpha | WritingBench |" in summary["markdown"] and "| complete |" in summary["markdown"]
    assert "**Judge per column**: WritingBench: local/" in summary["markdown"]
    assert "LongBench v2: none (no judge)" in summary["markdown"]
    assert "| alpha |" in summary["markdown"] and "LongBench v2" in summary["markdown"]
    for row in table:  # each score with its interval, in the table and in the markdown
        for column in columns:
            interval = row[f"{column} CI"]
            assert (interval is None) == (row[column] is None)
            if interval is not None:
                assert interval[0] <= row[column] <= interval[1]
                assert f"{row[column]} [{interval[0]}, {interval[1]}]" in summary["markdown"]
    assert "95% bootstrap interval over items" in summary["markdown"]
    # beta against alpha on each benchmark, on the items both were scored on, paired.
    differences = {d["benchmark"]: d for d in summary["differences"]}
    assert set(differences) == {"writingbench", "longbench_write", "creative_writing_v3", "longbench_v2"}
    for benchmark, d in differences.items():
        assert (d["candidate"], d["baseline"]) == ("beta", "alpha") and d["items"] >= 1
        (a,) = [row for row in table if row["candidate"] == "alpha"]
        (b,) = [row for row in table if row["candidate"] == "beta"]
        column = {"writingbench": "WritingBench", "longbench_write": "LongBench-Write",
                  "creative_writing_v3": "Creative Writing v3", "longbench_v2": "LongBench v2"}[benchmark]  # fmt: skip
        if a[column] is not None and b[column] is not None:
            assert d["difference"] == pytest.approx(b[column] - a[column], abs=0.02)
            assert d["interval"][0] <= d["difference"] <= d["interval"][1]
    assert "**Differences from alpha**" in summary["markdown"]

    storage = open_storage(load_recipe(recipe_path).storage)
    results = storage.evaluations.results(eval_run_id=summary["run_id"])
    assert len(results) == 8
    for r in results:
        assert r["candidate_model"] == str(tiny_model_dir) and r["candidate_source"] == "model"
        assert r["benchmark_version"].startswith(f"{r['benchmark']}-v")
        assert r["judge"] == (
            None if r["benchmark"] == "longbench_v2" else f"local/{tiny_model_dir}/logprob/v1"
        )
        items = storage.datasets.read_pandas(_ref(r["items_ref"]))
        assert set(items["candidate"]) == {r["candidate"]} and len(items) == r["n_items"]
        metrics = json.loads(r["metrics_json"])
        assert metrics["headline"] == r["score"]
        # The bootstrap interval is stored with the result (the nightly history keeps it).
        assert (metrics["ci/level"], metrics["ci/resamples"], metrics["ci/seed"]) == (0.95, 1000, 0)
        if r["score"] is not None:
            assert metrics["ci/low"] <= r["score"] <= metrics["ci/high"]
    lv2 = [r for r in results if r["benchmark"] == "longbench_v2"]
    assert all(r["n_items"] == 2 for r in lv2)
    assert _stage_statuses(storage, summary["run_id"]) == ["completed"] * 8

    artifacts = latest_artifacts(summary["artifacts"])
    assert artifacts["test-evaluation-comparison"].type == "table"
    assert "alpha" in str(artifacts["test-evaluation-comparison"].data)
    assert artifacts["test-evaluation-summary"].type == "markdown"
    summary_md = str(artifacts["test-evaluation-summary"].data)
    assert "Benchmark versions" in summary_md
    assert "[test-evaluation-comparison](/artifacts/key/test-evaluation-comparison)" in summary_md
    (wb_alpha,) = [r for r in results if (r["candidate"], r["benchmark"]) == ("alpha", "writingbench")]
    (task_run_id,) = storage.catalog.query(
        "SELECT prefect_task_run_id FROM stage_runs WHERE stage_run_id = ?", [wb_alpha["stage_run_id"]]
    )["prefect_task_run_id"]
    assert f"| alpha | writingbench | `{wb_alpha['items_ref']}` | [evaluate · stage run" in summary_md
    assert f"(/runs/task-run/{task_run_id})" in summary_md

    # A third candidate: only its four pairs are computed; the eight others are stage cache hits.
    recipe_path = _recipe(
        tmp_path, tiny_model_dir, shared_benchmarks, _candidates(tiny_model_dir, "alpha", "beta", "gamma")
    )
    again = evaluate_candidates(recipe_path=str(recipe_path))
    assert [row["candidate"] for row in again["table"]] == ["alpha", "beta", "gamma"]
    assert again["table"][:2] == table
    assert sorted(_stage_statuses(storage, again["run_id"])) == ["cached"] * 8 + ["completed"] * 4
    gamma = [r for r in storage.evaluations.results(eval_run_id=again["run_id"]) if r["candidate"] == "gamma"]
    assert len(gamma) == 4 and not any(r["cached"] for r in gamma)


def _ref(text: str):
    from storage import DatasetRef

    return DatasetRef.parse(text)


def test_training_checkpoints_are_evaluated_and_plotted_over_steps(
    tiny_model_dir, shared_benchmarks, tmp_path
):
    """`from_training: all` merges each LoRA checkpoint once and evaluates it at its step; with the
    base (step 0) the plot has one point per step for every benchmark."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from flows.evaluate import evaluate_candidates
    from tasks.training.checkpoints import training_run_paths

    candidates = "    - {name: base, from_training: base}\n    - {name: ckpt, from_training: all}\n"
    recipe_path = _recipe(tmp_path, tiny_model_dir, shared_benchmarks, candidates)
    recipe = load_recipe(recipe_path)
    storage = open_storage(recipe.storage)
    # A training run as the train stage records it: the run, its stage run (cache key) and two
    # LoRA checkpoints with different adapter weights.
    run_id = storage.catalog.start_run(flow="train", recipe="test", recipe_path=str(recipe_path), config_hash="c", code_version="x", prefect_flow_run_id=None)  # fmt: skip
    storage.catalog.start_stage_run(run_id=run_id, stage="train", stage_version=2, config_hash="c",
                                    cache_key="k" * 64, code_version="x", prefect_flow_run_id=None,
                                    prefect_task_run_id=None, inputs={})  # fmt: skip
    paths = training_run_paths(storage.root, "test", "k" * 64)
    for step in (2, 4):
        torch.manual_seed(step)
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir),
            LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
        )
        folder = paths.work_dir / f"checkpoint-{step}"
        model.save_pretrained(folder)
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (paths.work_dir / "checkpoint-6").mkdir()  # being written: no trainer_state.json, not evaluated

    summary = evaluate_candidates(
        recipe_path=str(recipe_path), benchmarks=["longbench_write", "longbench_v2"]
    )
    assert [(row["candidate"], row["step"]) for row in summary["table"]] == [
        ("base", 0),
        ("ckpt@2", 2),
        ("ckpt@4", 4),
    ]
    merged = sorted(p.name for p in (storage.root / "models" / "checkpoints").iterdir())
    assert merged == [f"{paths.work_dir.name}-checkpoint-2", f"{paths.work_dir.name}-checkpoint-4"]
    results = storage.evaluations.results(train_run_id=paths.curriculum_id)
    assert {(r["candidate_source"], r["step"]) for r in results} == {
        ("training:base", 0),
        ("checkpoint", 2),
        ("checkpoint", 4),
    }
    plot = summary["plots"][paths.curriculum_id]
    assert Path(plot["path"]).read_bytes()[:4] == b"\x89PNG"
    assert [step for step, _ in plot["series"]["longbench_write"]] == [0, 2, 4]
    assert [step for step, _ in plot["series"]["longbench_v2"]] == [0, 2, 4]
    # The merged checkpoints are different models: their responses differ from the base's.
    texts = {}
    for r in results:
        if r["benchmark"] == "longbench_write":
            texts[r["step"]] = tuple(storage.datasets.read_pandas(_ref(r["items_ref"]))["response"])
    assert len(set(texts.values())) == 3

    # Pinned to another training run: its checkpoints, not the most recent run's.
    from configs.loading import ConfigError
    from tasks.evaluation.candidates import resolve_candidates

    pinned = load_recipe(recipe_path, {"evaluation.training_run": "train-" + "0" * 16})
    with pytest.raises(ConfigError, match="train-0000000000000000 has no checkpoint"):
        resolve_candidates(pinned, storage)


def test_ids_pick_items_in_file_order_and_an_unknown_id_is_named(shared_benchmarks):
    from configs.loading import ConfigError
    from configs.schema import BenchmarkConfig
    from tasks.evaluation.registry import SUITES
    from tasks.stages.evaluate import select_items

    path = shared_benchmarks / BENCH_FILES["writingbench"]
    items = select_items(SUITES["writingbench"], BenchmarkConfig(path=path, ids=("wb-90", "wb-23")))
    assert [i.id for i in items] == ["wb-23", "wb-90"]  # file order, not the order asked
    first = select_items(SUITES["writingbench"], BenchmarkConfig(path=path, ids=("wb-90", "wb-23"), limit=1))
    assert [i.id for i in first] == ["wb-23"]
    with pytest.raises(ConfigError, match=r"evaluation.benchmarks.writingbench.ids: \['wb-nope'\]"):
        select_items(SUITES["writingbench"], BenchmarkConfig(path=path, ids=("wb-23", "wb-nope")))
