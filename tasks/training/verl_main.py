"""The verl engine's driver: `python -m tasks.training.verl_main SPEC`, run in verl's environment by
the train stage (tasks/training/verl_launch.py) as a process tree the stage owns.

1. Reads the stage's spec (the recipe, the ladders, verl's overrides generated from the recipe).
2. Composes verl's configuration and starts Ray as verl's `run_ppo` would, then the run's reward
   actor under its name (tasks/training/reward_service.py): every reward worker finds it there.
3. Trains (verl's v1 PPO trainer with the Writing-RL mixins: tasks/training/verl_entry.py), while
   a thread relays the actor's events (each finished step) to the stage as event lines.
4. Exports the newest checkpoint's actor into the spec's model folder (written aside, renamed into
   place), leaves the judge's usage for the stage, and stops Ray.

`WRL_VERL_ENTRY` names another module with verl_entry's three functions (`start`, `train`,
`export_model`): the stage's tests run this driver with a stand-in trainer, since verl's own needs
a GPU rollout engine.

Exit codes as the TRL worker's: 0 trained and saved; 3 the judge stopped answering and 4 its
budget ran out (either way a checkpoint of the last finished step was written first).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

ENTRY_ENV = "WRL_VERL_ENTRY"
DEFAULT_ENTRY = "tasks.training.verl_entry"
RELAY_INTERVAL_S = 0.5

logger = logging.getLogger(__name__)


class EventRelay(threading.Thread):
    """Polls the reward actor for new events and prints them for the stage, until stopped (and
    once more then, so the last step's event is never lost)."""

    def __init__(self, actor: Any) -> None:
        super().__init__(daemon=True, name="wrl-event-relay")
        self.actor, self.sent = actor, 0
        self.done = threading.Event()

    def relay(self) -> None:
        import ray

        from tasks.training.launch import emit

        for event in ray.get(self.actor.events.remote(self.sent)):
            emit(event.pop("event"), **event)
            self.sent += 1

    def run(self) -> None:
        while not self.done.wait(RELAY_INTERVAL_S):
            self.relay()

    def stop(self) -> None:
        self.done.set()
        self.join()
        self.relay()


def kill_tree_on_sigterm() -> None:
    """SIGTERM (the stage stopping the tree, or the stage gone: its death signal) takes the whole
    tree down at once. Ray's processes share this driver's process group (it leads it: the stage
    starts it in a session of its own), and Ray's agents have been seen to outlive a driver that
    merely died. Nothing is lost: verl writes its checkpoint tracker last, so a checkpoint cut short
    is never resumed from."""
    signal.signal(signal.SIGTERM, lambda *_: os.killpg(os.getpgrp(), signal.SIGKILL))


def main(spec_path: str) -> int:
    kill_tree_on_sigterm()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import ray

    from tasks.training.launch import LaunchSpec, emit
    from tasks.training.reward_service import start_reward_actor
    from tasks.training.verl_config import override_args
    from tasks.training.verl_hooks import newest_checkpoint
    from tasks.training.worker import BUDGET_EXIT, JUDGE_FAILED_EXIT

    spec = LaunchSpec.read(Path(spec_path))
    entry = importlib.import_module(os.environ.get(ENTRY_ENV) or DEFAULT_ENTRY)
    config = entry.start(override_args(spec.verl_overrides))
    code, actor = 0, None
    try:
        actor = start_reward_actor(Path(spec_path), spec.stage_run_id)
        relay = EventRelay(actor)
        relay.start()
        try:
            entry.train(config)
        except Exception:
            stop = ray.get(actor.stopped.remote())
            if stop is None:
                raise
            relay.stop()
            emit("budget" if stop["kind"] == "budget" else "failed", step=stop["step"], error=stop["error"])
            code = BUDGET_EXIT if stop["kind"] == "budget" else JUDGE_FAILED_EXIT
        else:
            relay.stop()
            found = newest_checkpoint(spec.checkpoint_dir)
            if found is None:
                raise RuntimeError(f"{spec.checkpoint_dir}: verl finished without a checkpoint to export")
            export(entry, found[1], Path(spec.model_dir))
            emit("done", final_step=found[0], resumed_from=ray.get(actor.resumed_from.remote()))
    finally:
        if actor is not None:  # the judge's calls, for the stage run's meter
            spec.usage_file.write_text(json.dumps(ray.get(actor.usage.remote())))
            ray.get(actor.close.remote())
        ray.shutdown()
    return code


def export(entry: Any, checkpoint: Path, model_dir: Path) -> None:
    """The final policy as a plain model folder, written aside and renamed into place."""
    partial = model_dir.with_name(f".{model_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    entry.export_model(checkpoint, partial)
    shutil.rmtree(model_dir, ignore_errors=True)
    partial.rename(model_dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
