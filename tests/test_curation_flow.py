"""Stages 1-4 end to end on the tiny model: ladders, exports, and what a change recomputes."""

from __future__ import annotations

import datasets
import pandas as pd
import pytest

from configs.loading import load_recipe
from flows.build_dataset import build_dataset
from storage import DatasetRef, open_storage
from tests.support.recipes import curation_recipe as _recipe


@pytest.fixture
def counted(monkeypatch):
    """Counts generation calls (chat) and judge calls (next_token_logprobs) reaching the backend."""
    import tasks.stages.runner as runner

    counts = {"generate": 0, "judge": 0}
    real = runner.create_client

    def wrapped(recipe, backend, model):
        client = real(recipe, backend, model)
        chat, probe = client.chat, client.next_token_logprobs

        async def counted_chat(*args, **kwargs):
            counts["generate"] += 1
            return await chat(*args, **kwargs)

        async def counted_probe(*args, **kwargs):
            counts["judge"] += 1
            return await probe(*args, **kwargs)

        client.chat, client.next_token_logprobs = counted_chat, counted_probe
        return client

    monkeypatch.setattr(runner, "create_client", wrapped)
    return counts


def _stages(summary):
    return {s["stage"]: s for s in summary["stages"]}


def test_build_dataset_writes_ladders_and_exports_that_load_back(
    prefect_harness, tiny_model_dir, tmp_path, counted
):
    recipe_path = _recipe(tmp_path, tiny_model_dir)
    stages = _stages(build_dataset(recipe_path=recipe_path))
    assert list(stages) == ["ingest", "generate", "score", "select", "order"]
    assert counted["generate"] == 8 and counted["judge"] > 0

    storage = open_storage(load_recipe(recipe_path).storage)
    ladders = storage.datasets.read(DatasetRef.parse(stages["order"]["outputs"]["ladders"])).to_pylist()
    judgments = storage.datasets.read(DatasetRef.parse(stages["score"]["outputs"]["judgments"])).to_pylist()
    score_of = {(j["instruction_id"], j["generator"]): j["score"] for j in judgments}
    assert len(ladders) == 4
    for ladder in ladders:
        rungs = ladder["rungs"]
        assert ladder["n_rungs"] == len(rungs) == 2 and ladder["split"] == "train"
        assert rungs[ladder["policy_rung"]]["generator"] == "policy"  # sorted among the references
        assert [r["score"] for r in rungs] == sorted(r["score"] for r in rungs)
        assert all(r["score"] == score_of[(ladder["instruction_id"], r["generator"])] for r in rungs)

    exports = stages["order"]["summary"]["exports"]
    hf = datasets.load_from_disk(f"{exports}/hf_dataset")
    assert len(hf) == 4 and hf[0]["prompt"][0]["role"] == "user" and len(hf[0]["references"]) == 2
    verl = pd.read_parquet(f"{exports}/train.parquet")
    truth = verl.iloc[0]["reward_model"]["ground_truth"]
    assert list(truth["target"]) == [r["text"] for r in ladders[0]["rungs"]]
    assert truth["prompt"] == ladders[0]["prompt"]


def test_a_judge_change_recomputes_stages_2_to_4_with_zero_generation_calls(
        prefect_harness, tiny_model_dir, tmp_path, counted):  # fmt: skip
    build_dataset(recipe_path=_recipe(tmp_path, tiny_model_dir))
    counted.update(generate=0, judge=0)
    changed = _stages(
        build_dataset(
            recipe_path=_recipe(
                tmp_path, tiny_model_dir, judge_extra=", prompt_version: v1, max_parse_retries: 3"
            )
        )
    )
    # max_parse_retries is part of the judge block: a judge change
    assert [changed[s]["cached"] for s in ("ingest", "generate")] == [True, True]
    assert [changed[s]["cached"] for s in ("score", "select", "order")] == [False, False, False]
    assert counted["generate"] == 0


def test_a_k_change_recomputes_only_selection_and_ordering(
    prefect_harness, tiny_model_dir, tmp_path, counted
):
    build_dataset(recipe_path=_recipe(tmp_path, tiny_model_dir))
    counted.update(generate=0, judge=0)
    stages = _stages(
        build_dataset(recipe_path=_recipe(tmp_path, tiny_model_dir, selection="strategy: margin, top_k: 2"))
    )
    assert [stages[s]["cached"] for s in ("ingest", "generate", "score")] == [True, True, True]
    assert [stages[s]["cached"] for s in ("select", "order")] == [False, False]
    assert counted == {"generate": 0, "judge": 0}
    assert stages["select"]["summary"]["selected"] == 2 and stages["order"]["summary"]["ladders"] == 2


def test_the_flow_runs_on_a_writingbench_file(prefect_harness, tiny_model_dir, tmp_path, shared_benchmarks):
    recipe_path = _recipe(tmp_path, tiny_model_dir)
    overrides = {"data": {"format": "writingbench", "path": str(shared_benchmarks / "writingbench" / "length_subset.jsonl"),
                          "limit": 2}}  # fmt: skip
    stages = _stages(build_dataset(recipe_path=recipe_path, overrides=overrides))
    assert stages["ingest"]["summary"]["instructions"] == 2
    assert stages["score"]["summary"]["criteria_sources"] == {"data": 4}  # 2 instructions x 2 generators
    assert stages["order"]["summary"]["ladders"] == 2
