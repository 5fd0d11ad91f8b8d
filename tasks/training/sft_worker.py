"""One rank of the SFT trainer: `python -m tasks.training.sft_worker SPEC`, started by `accelerate
launch` (tasks/training/sft.py writes SPEC, tasks/training/launch.py the accelerate configuration).

Every rank builds TRL's SFTTrainer and trains its share of each batch; rank 0 reports each log line
to the stage as an event on stdout and writes the final model (tasks/training/sft.py: train_rank).
No rank opens the storage, runs Prefect or takes a stage claim: the stage that launched the job
holds its claim, registers the model and records its run.

A rank that fails reports its error as a `failed` event (with its rank) before its traceback goes
to the trainer's log; the stage fails with it. Exit codes: 0 trained (and, on rank 0, saved);
anything else an error.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

from tasks.training.worker import die_with_launcher


def main(spec_path: str) -> int:
    die_with_launcher()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from tasks.training.launch import PLUGINS_ENV, emit

    for plugin in filter(None, os.environ.get(PLUGINS_ENV, "").split(",")):
        importlib.import_module(plugin)

    from tasks.training.sft import SFTLaunchSpec, train_rank

    try:
        train_rank(SFTLaunchSpec.read(Path(spec_path)))
    except Exception as exc:
        emit("failed", rank=int(os.environ.get("RANK", "0")), type=type(exc).__name__, error=str(exc)[:4000])
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
