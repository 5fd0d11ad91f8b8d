"""A separate process that runs the curation stages and then stage 5, train (no Prefect).

usage: python -m tests.support.train_worker RECIPE [STEP_DELAY_S] [CALLS_FILE]
Used by the training kill-and-resume test and the training kill drill (benchmarks/kill_drill.py),
which start it with `start`. STEP_DELAY_S holds each step after its curriculum update, so that a
kill lands between two checkpoints. CALLS_FILE gets one line per judge call of the train stage that
reached the backend (`chat <prompt head>` or `probe <prompt head>`). Both work inside the trainer's
ranks, through tests/support/trainer_plugin.py. Prints the train stage's
summary as JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import tasks.stages.runner as runner
from configs.loading import load_recipe
from configs.schema import Recipe
from tasks.stages import generate, ingest, order, score, select, train

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def start(recipe: str | Path, delay_s: float = 0.0, calls_file: str | Path | None = None) -> subprocess.Popen:
    """This worker as a subprocess (stdout: the summary; stderr: the logs)."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    args = [str(recipe), str(delay_s), *([str(calls_file)] if calls_file else [])]
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.train_worker", *args],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def summary_of(stdout: str) -> dict:
    """The train stage's summary, from the worker's stdout."""
    return json.loads(stdout.strip().splitlines()[-1])


def weights_digest(model_path: str | Path) -> str:
    """sha256 over a saved model's safetensors files: equal digests, bit-identical weights."""
    digest = hashlib.sha256()
    for weights in sorted(Path(model_path).glob("*.safetensors")):
        digest.update(weights.read_bytes())
    return digest.hexdigest()


def run_curation(recipe: Recipe) -> dict:
    """Stages 1-4 in this process; returns their outputs (train's inputs among them)."""
    outputs = {}
    for stage in (ingest, generate, score, select, order):
        result = runner.run_stage(
            stage.SPEC, stage.compute, recipe, {k: outputs[k] for k in stage.SPEC.inputs}
        )
        outputs.update(result.outputs)
    return outputs


def run_train(recipe: Recipe, outputs: dict) -> runner.StageResult:
    return runner.run_stage(train.SPEC, train.compute, recipe, {k: outputs[k] for k in train.SPEC.inputs})


def main(recipe_path: str, step_delay_s: str = "0", calls_file: str = "") -> None:
    # The trainer runs in processes of its own: instrument them (tests/support/trainer_plugin.py).
    os.environ["WRL_TRAINER_PLUGINS"] = "tests.support.trainer_plugin"
    os.environ["WRL_TEST_STEP_DELAY_S"] = step_delay_s
    if calls_file:
        os.environ["WRL_TEST_CALLS_FILE"] = calls_file  # only the train stage's calls
    recipe = load_recipe(recipe_path)
    outputs = run_curation(recipe)
    print(json.dumps(run_train(recipe, outputs).summary))


if __name__ == "__main__":
    main(*sys.argv[1:])
