"""`wrl lineage`: from a dataset version or a checkpoint back to the ladders, scores, generations
and the judge that produced them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from configs.loading import load_recipe
from storage import DatasetRef, open_storage
from tests.support.artifacts import latest_artifacts
from tests.support.recipes import write_recipe


@pytest.fixture(scope="module")
def built(prefect_harness, tiny_model_dir, tmp_path_factory):
    """One build-dataset run of a two-generator recipe: (recipe path, storage, flow summary)."""
    from flows.build_dataset import build_dataset

    tmp_path = tmp_path_factory.mktemp("lineage")
    judge = f"judge: {{backend: local, model: {tiny_model_dir}, mode: logprob}}\n"
    rival = f"  - {{name: rival, backend: local, model: {tiny_model_dir}, decoding: {{temperature: 0.0, max_tokens: 6}}}}\n"
    recipe_path = write_recipe(
        tmp_path / "r.yaml", store=tmp_path / "store", model=str(tiny_model_dir), extra=rival + judge
    )
    summary = build_dataset(recipe_path=str(recipe_path))
    return recipe_path, open_storage(load_recipe(recipe_path).storage), summary


def test_ladders_and_a_checkpoint_walk_back_to_the_judge_and_the_generations(built, tiny_model_dir, tmp_path):
    from flows.lineage import describe_config, resolve_target

    recipe_path, storage, summary = built
    # The flow run is tagged with the dataset versions it wrote (the UI filters runs by tag).
    from prefect.client.orchestration import get_client

    (flow_run_id,) = storage.catalog.query(
        "SELECT prefect_flow_run_id FROM runs WHERE run_id = ?", [summary["run_id"]]
    )["prefect_flow_run_id"]
    with get_client(sync_client=True) as client:
        tags = set(client.read_flow_run(flow_run_id).tags)
        task_runs = client.read_task_runs()
    assert {"ladders@0", "judgments@0", "generations@0"} <= tags
    # ... and with the recipe and its judge; the task runs carry no tags (each tag costs a task run
    # a concurrency lease, and its renewal thread up to 2 s when the task ends).
    assert {"recipe:test", f"judge:{tiny_model_dir}"} <= tags, tags
    mine = [t for t in task_runs if str(t.flow_run_id) == flow_run_id]
    assert len(mine) == 5 and all(not t.tags for t in mine), [(t.name, t.tags) for t in mine]

    found = resolve_target(storage, "ladders@0")
    stages = [hop["stage"] for hop in found["chain"]]
    assert stages[0] == "order" and set(stages) == {"order", "select", "score", "generate", "ingest"}
    score = next(hop for hop in found["chain"] if hop["stage"] == "score")
    assert {str(r) for r in score["inputs"].values()} == {"instructions@0", "generations@0"}
    assert score["config"]["judge"]["model"] == str(tiny_model_dir)
    # The one judge label (JudgeConfig.label), as eval_results stores it.
    assert describe_config("score", score["config"]).startswith(f"judge local/{tiny_model_dir}/logprob/v1")
    generate = next(hop for hop in found["chain"] if hop["stage"] == "generate")
    assert "rival=" in describe_config("generate", generate["config"])

    # A checkpoint names its ladders version (wrl_lineage.json, written by the trainer callback).
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / "wrl_lineage.json").write_text(json.dumps({"ladders": "ladders@0", "step": 4}))
    from_checkpoint = resolve_target(storage, str(checkpoint))
    assert "step 4" in from_checkpoint["label"]
    assert [hop["stage"] for hop in from_checkpoint["chain"]] == stages

    env = {**os.environ, "COLUMNS": "250"}
    env.pop("PREFECT_API_URL", None)
    printed = subprocess.run(
        [sys.executable, "-m", "flows", "lineage", str(checkpoint), "--config", str(recipe_path)],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    assert "ladders@0 <- " in printed.stdout and "judgments@0 <- " in printed.stdout
    assert f"judge local/{tiny_model_dir}" in printed.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "flows", "lineage", "ladders@99", "--config", str(recipe_path)],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert bad.returncode == 2 and "ladders@99 does not exist" in bad.stderr


def _task_run_of(storage, stage: str) -> str:
    (task_run_id,) = storage.catalog.query(
        "SELECT prefect_task_run_id FROM stage_runs WHERE stage = ? AND status = 'completed'", [stage]
    )["prefect_task_run_id"]
    return task_run_id


def test_each_stage_artifact_links_its_inputs_to_the_task_run_that_wrote_them(built, tiny_model_dir):
    """The UI's walk back: the score stage's artifact links generations@0 to the generate task run."""
    from flows.build_dataset import build_dataset

    recipe_path, storage, _ = built
    score = latest_artifacts(["stage-score"])["stage-score"]
    assert score.type == "markdown" and score.task_run_id is not None
    assert "### score (computed in" in score.data
    generate_link = f"(/runs/task-run/{_task_run_of(storage, 'generate')})"
    assert "| input (generations) | `generations@0` | [generate · stage run" in score.data
    assert generate_link in score.data
    assert f"judge: `local/{tiny_model_dir}/logprob/v1`" in score.data  # JudgeConfig.label
    assert "| output (judgments) | `judgments@0` | this run |" in score.data

    # Run again: every stage is a cache hit, and its artifact links the outputs to the run that wrote them.
    build_dataset(recipe_path=str(recipe_path))
    again = latest_artifacts(["stage-score"])["stage-score"]
    assert again.id != score.id and "### score (cache hit)" in again.data
    assert "`judgments@0` | [score · stage run" in again.data
    assert f"(/runs/task-run/{_task_run_of(storage, 'score')})" in again.data
    # The run summary links to the report artifacts and to the task run behind each dataset.
    summary = latest_artifacts(["test-curation-summary"])["test-curation-summary"].data
    assert "[test-curation-plot](/artifacts/key/test-curation-plot)" in summary
    assert "| score | cache hit | `judgments@0` | [score · stage run" in summary
    assert f"(/runs/task-run/{_task_run_of(storage, 'score')})" in summary


def test_computed_stages_emit_prefect_asset_materialization_events(built):
    """The events Prefect Cloud draws its asset graph from: judgments materialised from generations."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    from tasks.stages.publish import asset_key

    _, storage, _ = built
    judgments, generations = (asset_key(storage, DatasetRef(n, 0)) for n in ("judgments", "generations"))
    event_filter = EventFilter(
        event=EventNameFilter(name=["prefect.asset.materialization.succeeded"]),
        resource=EventResourceFilter(id=[judgments]),
    )
    deadline = time.monotonic() + 30  # the server persists events asynchronously
    while True:
        with get_client(sync_client=True) as client:
            events = client.read_events(filter=event_filter, limit=50).events
        found = [e for e in events if e.resource.id == judgments]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(found) == 1, [e.resource.id for e in events]  # the cached re-run emitted none
    (event,) = found
    assert {r.id for r in event.related if r.role == "asset"} == {
        generations,
        asset_key(storage, DatasetRef("instructions", 0)),
    }
    assert event.payload["dataset_version"] == "judgments@0" and event.payload["stage"] == "score"
