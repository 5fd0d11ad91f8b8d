"""A separate process that runs the curation stages and then stage 5, train (no Prefect).

usage: python -m tests.support.train_worker RECIPE [STEP_DELAY_S] [CALLS_FILE]
Used by the training kill-and-resume test and the training kill drill (benchmarks/kill_drill.py).
STEP_DELAY_S holds each step after its curriculum update, so that a kill lands between two
checkpoints. CALLS_FILE gets one line per judge call of the train stage that reached the backend
(`chat <prompt head>` or `probe <prompt head>`). Prints the train stage's summary as JSON.
"""

from __future__ import annotations

import json
import sys
import time

import tasks.stages.runner as runner
import tasks.training.reward as reward_module
from configs.loading import load_recipe
from tasks.stages import generate, ingest, order, score, select, train
from tests.support.curation_worker import log_calls


def main(recipe_path: str, step_delay_s: str = "0", calls_file: str = "") -> None:
    delay = float(step_delay_s)
    if delay:
        finish_step = reward_module.WritingRLReward.finish_step

        def slow_finish_step(self, step):
            result = finish_step(self, step)
            time.sleep(delay)
            return result

        reward_module.WritingRLReward.finish_step = slow_finish_step
    recipe = load_recipe(recipe_path)
    outputs = {}
    for stage in (ingest, generate, score, select, order, train):
        if stage is train and calls_file:
            log_calls(calls_file)
        result = runner.run_stage(
            stage.SPEC, stage.compute, recipe, {k: outputs[k] for k in stage.SPEC.inputs}
        )
        outputs.update(result.outputs)
    print(json.dumps(result.summary))


if __name__ == "__main__":
    main(*sys.argv[1:])
