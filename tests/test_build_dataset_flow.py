"""The first slice end to end on a tiny model: ingest -> generate, stored with lineage, cached."""

from __future__ import annotations

import json
import shutil

import pytest

from configs.loading import load_recipe
from flows.build_dataset import build_dataset
from storage import DatasetRef, open_storage
from tasks.stages import generate, ingest
from tests.support.recipes import write_recipe


@pytest.fixture
def counting_generation(monkeypatch):
    """Counts chat() calls that reach a backend during the flow."""
    import tasks.stages.runner as runner

    calls = []
    real = runner.create_client

    def counted(recipe, backend, model):
        client = real(recipe, backend, model)
        original = client.chat

        async def chat(messages, params, **kwargs):
            calls.append(messages[-1]["content"])
            return await original(messages, params, **kwargs)

        client.chat = chat
        return client

    monkeypatch.setattr(runner, "create_client", counted)
    return calls


def _stages(summary):
    return {s["stage"]: s for s in summary["stages"]}


def test_first_slice_stores_generations_with_lineage_and_reruns_from_cache(
    prefect_harness, tiny_model_dir, tmp_path, counting_generation
):
    recipe_path = write_recipe(tmp_path / "r.yaml", store=tmp_path / "store", model=str(tiny_model_dir))
    first = build_dataset(recipe_path=str(recipe_path))
    stages = _stages(first)
    assert stages["ingest"]["outputs"] == {"instructions": "instructions@0"}
    assert stages["generate"]["outputs"] == {"generations": "generations@0"}
    assert len(counting_generation) == 4

    storage = open_storage(load_recipe(recipe_path).storage)
    generations = storage.datasets.read(DatasetRef("generations", 0)).to_pylist()
    instructions = storage.datasets.read(DatasetRef("instructions", 0)).to_pylist()
    assert [g["instruction_id"] for g in generations] == [i["id"] for i in instructions]
    assert all(
        g["error"] is None and g["text"] is not None and g["generator"] == "policy" for g in generations
    )
    assert all(0 < g["output_tokens"] <= 8 for g in generations)

    lineage = storage.datasets.lineage(DatasetRef("generations", 0))
    assert lineage["stage"] == "generate" and lineage["inputs"] == ["instructions@0"]
    assert lineage["run_id"] == first["run_id"] and lineage["prefect_flow_run_id"]
    with storage.catalog.connect() as con:
        run = con.execute(
            "SELECT status, prefect_flow_run_id FROM runs WHERE run_id = ?", [first["run_id"]]
        ).fetchone()
        stage_rows = con.execute(
            "SELECT stage, stage_version, status, config_hash, code_version, prefect_task_run_id"
            " FROM stage_runs WHERE run_id = ? ORDER BY started_at",
            [first["run_id"]],
        ).fetchall()
    assert run[0] == "completed" and run[1] == lineage["prefect_flow_run_id"]
    assert [(s[0], s[1], s[2]) for s in stage_rows] == [
        ("ingest", ingest.SPEC.version, "completed"),
        ("generate", generate.SPEC.version, "completed"),
    ]
    assert all(s[3] and s[4] and s[5] for s in stage_rows)

    counting_generation.clear()
    second = build_dataset(recipe_path=str(recipe_path))
    assert [s["cached"] for s in second["stages"]] == [True, True]
    assert _stages(second)["generate"]["outputs"] == {"generations": "generations@0"}
    assert counting_generation == []  # nothing generated again


def test_cache_checks_outputs_exist_and_refresh_and_config_changes_recompute(
    prefect_harness, tiny_model_dir, tmp_path, counting_generation
):
    store = tmp_path / "store"
    recipe_path = write_recipe(tmp_path / "r.yaml", store=store, model=str(tiny_model_dir), limit=2)
    build_dataset(recipe_path=str(recipe_path))
    assert len(counting_generation) == 2

    shutil.rmtree(store / "datasets" / "generations")  # the cached version no longer exists
    rebuilt = _stages(build_dataset(recipe_path=str(recipe_path)))
    assert rebuilt["ingest"]["cached"] and not rebuilt["generate"]["cached"]
    assert len(counting_generation) == 2  # rebuilt from the response cache: no call paid twice
    assert rebuilt["generate"]["summary"]["llm"]["cache_hits"] == 2

    forced = _stages(build_dataset(recipe_path=str(recipe_path), refresh=["generate"]))
    assert forced["ingest"]["cached"] and not forced["generate"]["cached"]
    assert forced["generate"]["outputs"] == {"generations": "generations@1"}
    assert len(counting_generation) == 2

    changed = _stages(
        build_dataset(
            recipe_path=str(recipe_path),
            overrides={
                "generators": [
                    {
                        "name": "policy",
                        "role": "policy",
                        "backend": "local",
                        "model": str(tiny_model_dir),
                        "decoding": {"temperature": 0.0, "max_tokens": 4, "seed": 0},
                    }
                ]
            },
        )
    )
    assert changed["ingest"]["cached"] and not changed["generate"]["cached"]
    assert len(counting_generation) == 4  # new decoding params: new calls
    assert changed["generate"]["summary"]["llm"]["requests"] == 2

    # The parameter is typed: Prefect refuses an unknown stage before the flow starts (as it does
    # for a deployment run), and the runner checks again for direct callers of run_pipeline.
    from prefect.exceptions import ParameterTypeError

    from flows.pipeline import run_pipeline

    with pytest.raises(ParameterTypeError, match=r"refresh\.0: Input should be .ingest."):
        build_dataset(recipe_path=str(recipe_path), refresh=["scorre"])
    with pytest.raises(ValueError, match="unknown stage"):
        run_pipeline("build-dataset", str(recipe_path), None, ["scorre"], None, default_last="order")


def test_until_stops_after_the_named_stage(prefect_harness, tiny_model_dir, tmp_path, counting_generation):
    recipe_path = write_recipe(
        tmp_path / "r.yaml", store=tmp_path / "store", model=str(tiny_model_dir), limit=2
    )
    summary = build_dataset(recipe_path=str(recipe_path), until="ingest")
    assert [s["stage"] for s in summary["stages"]] == ["ingest"]
    assert counting_generation == []


JUDGE = """\
judge:
  backend: local
  model: {model}
  mode: logprob
"""


def test_score_stage_judges_every_generation_with_recorded_criteria(
    prefect_harness, tiny_model_dir, tmp_path
):
    recipe_path = write_recipe(
        tmp_path / "r.yaml", store=tmp_path / "store", model=str(tiny_model_dir), limit=3,
        extra=JUDGE.format(model=tiny_model_dir),
    )  # fmt: skip
    summary = build_dataset(recipe_path=str(recipe_path))
    stages = _stages(summary)
    assert list(stages) == ["ingest", "generate", "score", "select", "order"]
    # only the policy answered: no competitor has a score, so selection keeps nothing
    assert stages["select"]["summary"]["selected"] == 0
    assert stages["select"]["summary"]["drop_reasons"] == {"no competitor has a score": 3}
    assert stages["order"]["summary"]["ladders"] == 0
    storage = open_storage(load_recipe(recipe_path).storage)
    judgments = storage.datasets.read(DatasetRef.parse(stages["score"]["outputs"]["judgments"])).to_pylist()
    instructions = {r["id"]: r for r in storage.datasets.read(DatasetRef("instructions", 0)).to_pylist()}
    assert len(judgments) == 3 and {j["generator"] for j in judgments} == {"policy"}
    for j in judgments:
        assert j["error"] is None and 1.0 <= j["score"] <= 10.0, j
        has_criteria = instructions[j["instruction_id"]]["criteria_json"] != "[]"
        assert j["criteria_source"] == ("data" if has_criteria else "holistic")
        per_criterion = json.loads(j["criterion_scores_json"])
        assert j["score"] == pytest.approx(sum(c["score"] for c in per_criterion) / len(per_criterion))
    assert stages["score"]["summary"]["scored"] == 3

    again = _stages(build_dataset(recipe_path=str(recipe_path)))
    assert all(s["cached"] for s in again.values())


def test_stages_after_generate_need_a_judge(prefect_harness, tiny_model_dir, tmp_path):
    from configs.loading import ConfigError

    recipe_path = write_recipe(
        tmp_path / "r.yaml", store=tmp_path / "store", model=str(tiny_model_dir), limit=1
    )
    assert [s["stage"] for s in build_dataset(recipe_path=str(recipe_path))["stages"]] == [
        "ingest",
        "generate",
    ]
    with pytest.raises(ConfigError, match=r"stage\(s\) \['score'\] need a `judge:` block"):
        build_dataset(recipe_path=str(recipe_path), until="score")
