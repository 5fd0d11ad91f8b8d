"""Instruments the trainer's ranks for the training kill drill and tests (`WRL_TRAINER_PLUGINS`
names this module; each rank imports it before anything else, tasks/training/worker.py).

- WRL_TEST_CALLS_FILE: rank 0's judge client logs every call that reaches the backend there;
- WRL_TEST_STEP_DELAY_S: rank 0 holds each step after its curriculum update, so that a kill
  lands between two checkpoints;
- WRL_TEST_RUNGS_DIR: every rank appends the rungs it holds after each step (and at the start) to
  `<dir>/rank-<rank>.jsonl`, to show that all ranks hold the same curriculum.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import tasks.llm.registry as registry
from tasks.training.rank_reward import RankReward
from tests.support.curation_worker import log_calls

if os.environ.get("WRL_TEST_CALLS_FILE"):
    log_calls(os.environ["WRL_TEST_CALLS_FILE"], module=registry)

_delay = float(os.environ.get("WRL_TEST_STEP_DELAY_S", "0"))
_rungs_dir = os.environ.get("WRL_TEST_RUNGS_DIR")
_finish_step, _start = RankReward.finish_step, RankReward.start


def _record(self: RankReward, label: str) -> None:
    if _rungs_dir:
        path = Path(_rungs_dir) / f"rank-{self.ranks.rank}.jsonl"
        with path.open("a") as handle:
            handle.write(json.dumps({"at": label, "rungs": self.current_rungs()}, sort_keys=True) + "\n")


def finish_step(self, step):
    result = _finish_step(self, step)
    _record(self, f"step {step}")
    if _delay and self.ranks.is_main:
        time.sleep(_delay)
    return result


def start(self, checkpoint_step, forget_after):
    _start(self, checkpoint_step, forget_after)
    _record(self, f"start {checkpoint_step}")


RankReward.finish_step, RankReward.start = finish_step, start
