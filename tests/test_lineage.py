"""`wrl lineage`: from a dataset version or a checkpoint back to the ladders, scores, generations
and the judge that produced them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from configs.loading import load_recipe
from storage import open_storage
from tests.conftest import write_recipe


def test_ladders_and_a_checkpoint_walk_back_to_the_judge_and_the_generations(
    prefect_harness, tiny_model_dir, tmp_path
):
    from flows.build_dataset import build_dataset
    from flows.lineage import describe_config, resolve_target

    judge = f"judge: {{backend: local, model: {tiny_model_dir}, mode: logprob}}\n"
    rival = f"  - {{name: rival, backend: local, model: {tiny_model_dir}, decoding: {{temperature: 0.0, max_tokens: 6}}}}\n"
    recipe_path = write_recipe(
        tmp_path / "r.yaml", store=tmp_path / "store", model=str(tiny_model_dir), extra=rival + judge
    )
    summary = build_dataset(recipe_path=str(recipe_path))
    storage = open_storage(load_recipe(recipe_path).storage)
    # The flow run is tagged with the dataset versions it wrote (the UI filters runs by tag).
    from prefect.client.orchestration import get_client

    (flow_run_id,) = storage.catalog.query(
        "SELECT prefect_flow_run_id FROM runs WHERE run_id = ?", [summary["run_id"]]
    )["prefect_flow_run_id"]
    with get_client(sync_client=True) as client:
        tags = set(client.read_flow_run(flow_run_id).tags)
    assert {"ladders@0", "judgments@0", "generations@0"} <= tags

    found = resolve_target(storage, "ladders@0")
    stages = [hop["stage"] for hop in found["chain"]]
    assert stages[0] == "order" and set(stages) == {"order", "select", "score", "generate", "ingest"}
    score = next(hop for hop in found["chain"] if hop["stage"] == "score")
    assert {str(r) for r in score["inputs"].values()} == {"instructions@0", "generations@0"}
    assert score["config"]["judge"]["model"] == str(tiny_model_dir)
    assert describe_config("score", score["config"]).startswith(f"judge local/{tiny_model_dir} (logprob")
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
