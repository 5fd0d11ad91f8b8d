"""Runs a trainer as its own process tree: `accelerate launch` with a configuration written from
the recipe, one rank per GPU (or per CPU process over gloo), each rank the spec's worker module:
`tasks.training.worker` for RL (LaunchSpec), `tasks.training.sft_worker` for SFT
(tasks/training/sft.py: SFTLaunchSpec).

The stage stays in the orchestrating process: it writes the job's spec, waits here for the
trainer, logs each step's line as rank 0 reports it, and records the exit. The ranks never run
Prefect, never take stage claims, and only rank 0 opens the catalog (the SFT ranks open none).

Nothing is orphaned:
- the launcher leads a process group of its own, and gets SIGTERM when the orchestrating process
  dies (PR_SET_PDEATHSIG), which accelerate's elastic agent passes on to the ranks;
- each rank gets SIGKILL when its launcher dies (the worker sets that up first thing), since the
  elastic agent starts ranks in sessions of their own;
- a SIGTERM to the orchestrating process (Prefect's cancel) or any exception while waiting stops
  the launcher's group: SIGTERM, then SIGKILL after a grace period.

Accelerate configurations start from the ones TRL ships (trl/accelerate_configs), with the recipe's
processes, precision and offload written over them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import yaml

from configs.schema import JudgeConfig, Recipe
from tasks.processes import die_with_parent, stop_group

logger = logging.getLogger(__name__)

EVENT_PREFIX = "WRL_EVENT "  # rank 0's lines to the stage; anything else goes to the trainer's log
SPEC_FILE = "launch_spec.pkl"
ACCELERATE_FILE = "accelerate_config.yaml"
OUTPUT_LOG = "trainer_output.log"
PLUGINS_ENV = "WRL_TRAINER_PLUGINS"  # modules each rank imports first (drills instrument ranks with it)
# Prefect's runner cancels a flow run with SIGTERM and SIGKILLs it 30 s later: stop the trainer
# within that window (were it cut short, the ranks still die with their launcher: see above).
STOP_GRACE_S = 20.0


class TrainerFailedError(RuntimeError):
    """The trainer's process tree exited with an error; the message ends with its output's tail."""


class Layout(Protocol):
    """Where a trainer runs: the layout fields `training:` and `sft:` share (configs/schema.py)."""

    device: str
    bf16: bool
    gpus: int
    processes: int | None
    distributed: Literal["ddp", "fsdp2", "zero3"]
    cpu_offload: bool


class Spec(Protocol):
    """A job run_trainer launches: pickled into its work folder, read by `worker` on every rank."""

    worker: ClassVar[str]  # the module each rank runs: `python -m <worker> <spec file>`
    work_dir: Path

    @property
    def layout(self) -> Layout: ...

    def write(self, path: Path) -> Path: ...


@dataclass
class LaunchSpec:
    """Everything a rank needs, pickled into the work folder by the train stage (same code, same
    machine: pickle is the handoff, not a format anyone keeps)."""

    recipe: Recipe
    judge: JudgeConfig  # the reward's judge
    items: dict[str, Any]  # instruction id -> TrainingItem
    base_model: str
    work_dir: Path
    model_dir: Path
    curriculum_id: str
    stage_run_id: str
    lineage: dict[str, Any] = field(default_factory=dict)
    validation_items: dict[str, Any] = field(default_factory=dict)  # the held-out ladders
    budget: Any = None  # tasks.llm.budget.Allowance: what the judge may still spend (None: no budget)

    worker: ClassVar[str] = "tasks.training.worker"

    @property
    def layout(self) -> Layout:
        assert self.recipe.training is not None
        return self.recipe.training

    @property
    def usage_file(self) -> Path:
        """Where rank 0 leaves its judge's usage rows for the stage run's meter."""
        return Path(self.work_dir) / f"usage-{self.stage_run_id}.json"

    def write(self, path: Path) -> Path:
        return write_spec(self, path)

    @staticmethod
    def read(path: Path) -> LaunchSpec:
        return read_spec(path)


@dataclass
class VerlLaunchSpec(LaunchSpec):
    """`training.engine: verl`: the same fields (the reward actor reads them as rank 0 does) plus
    verl's configuration generated from the recipe (tasks/training/verl_launch.py)."""

    verl_overrides: dict[str, Any] = field(default_factory=dict)  # verl key -> value
    checkpoint_dir: Path = Path()  # trainer.default_local_dir

    worker: ClassVar[str] = "tasks.training.verl_main"  # the driver, in verl's environment


def write_spec(spec: Any, path: Path) -> Path:
    """Pickle `spec` to `path` (written aside and renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(pickle.dumps(spec))
    partial.replace(path)
    return path


def read_spec(path: Path) -> Any:
    return pickle.loads(Path(path).read_bytes())


def processes(training: Layout) -> int:
    """Ranks to launch: `training.processes`, else one per GPU the recipe declares on a GPU and one
    on the CPU."""
    if training.processes is not None:
        return training.processes
    return 1 if training.device == "cpu" else training.gpus


def accelerate_config(training: Layout, *, port: int, section: str = "training") -> dict[str, Any]:
    """The accelerate configuration for this layout (a recipe's `training` or `sft` block, named by
    `section` in errors): TRL's shipped file for its strategy, with the layout's processes,
    precision and offload written over it."""
    ranks, cpu = processes(training), training.device == "cpu"
    if ranks == 1:
        base = "single_gpu"
    else:
        base = {"ddp": "multi_gpu", "fsdp2": "fsdp2", "zero3": "zero3"}[training.distributed]
    config = yaml.safe_load(resources.files("trl").joinpath("accelerate_configs", f"{base}.yaml").read_text())
    config.update(
        num_processes=ranks,
        mixed_precision="bf16" if training.bf16 and not cpu else "no",
        use_cpu=cpu,
        main_process_port=port,
    )
    if cpu:
        if training.distributed != "ddp" and ranks > 1:
            raise ValueError(
                f"{section}.distributed: {training.distributed} needs GPUs; on the CPU the ranks run DDP over gloo"
            )
        # accelerate launches several CPU processes only through MPI (MULTI_CPU); its torchrun
        # launcher (MULTI_GPU) starts them without, and each rank's TrainingArguments(use_cpu=True)
        # then sets up gloo instead of NCCL.
        config["distributed_type"] = "MULTI_GPU" if ranks > 1 else "NO"
        config["use_cpu"] = ranks == 1
        config.pop("gpu_ids", None)
    if "fsdp_config" in config:
        config["fsdp_config"]["fsdp_offload_params"] = training.cpu_offload
    if "deepspeed_config" in config:
        config["deepspeed_config"]["offload_optimizer_device"] = "cpu" if training.cpu_offload else "none"
    return config


def launch_command(config_file: Path, spec_file: Path, worker: str = LaunchSpec.worker) -> list[str]:
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
        "-m", worker, str(spec_file),
    ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM (a cancel) raises SystemExit here so the `finally` below stops the trainer. Only in
    the main thread, where Python runs signal handlers; elsewhere the default stays."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_trainer(
    spec: Spec,
    *,
    on_event: Callable[[dict[str, Any]], None],
    env: dict[str, str] | None = None,
    section: str = "training",
) -> None:
    """Launch the trainer for `spec` (its `worker` on every rank, laid out by `spec.layout`, the
    recipe block `section`) and wait until it has trained and saved (TrainerFailedError otherwise).
    Rank 0's events go to `on_event` as they arrive; every other line of output goes to
    `<work_dir>/trainer_output.log`, whose tail a failure's message carries."""
    layout = spec.layout
    work_dir = Path(spec.work_dir)
    config = accelerate_config(layout, port=_free_port(), section=section)
    spec_file = spec.write(work_dir / SPEC_FILE)
    config_file = work_dir / ACCELERATE_FILE
    config_file.write_text(yaml.safe_dump(config, sort_keys=True))
    command = launch_command(config_file, spec_file, spec.worker)
    logger.info("%s: launching %d rank(s): %s", section, processes(layout), " ".join(command))
    run_process_tree(command, work_dir, on_event=on_event, env=env)


def run_process_tree(
    command: list[str],
    work_dir: Path,
    *,
    on_event: Callable[[dict[str, Any]], None],
    env: dict[str, str] | None = None,
    what: str = "the trainer",
) -> None:
    """Run `command` as a process tree this process owns (see the module's docstring: nothing is
    orphaned) and wait for it. Lines starting with EVENT_PREFIX go to `on_event`; the rest to
    `<work_dir>/trainer_output.log`, whose tail a failure's TrainerFailedError carries."""
    project_root = Path(__file__).resolve().parents[2]
    child_env = {**os.environ, **(env or {}), "TOKENIZERS_PARALLELISM": "false"}
    # The tree imports this project's packages whatever the working directory (or the environment).
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project_root), child_env.get("PYTHONPATH")]))
    tail: deque[str] = deque(maxlen=60)
    with _sigterm_raises(), (work_dir / OUTPUT_LOG).open("a") as output:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
            env=child_env, start_new_session=True, preexec_fn=die_with_parent,
        )  # fmt: skip
        try:
            assert process.stdout is not None
            for line in process.stdout:
                if line.startswith(EVENT_PREFIX):
                    on_event(json.loads(line[len(EVENT_PREFIX) :]))
                else:
                    output.write(line)
                    output.flush()
                    tail.append(line.rstrip("\n"))
            code = process.wait()
        finally:
            stop_group(process, STOP_GRACE_S, what=what)
    if code != 0:
        raise TrainerFailedError(
            f"{what} exited with code {code}; the last lines of {work_dir / OUTPUT_LOG}:\n" + "\n".join(tail)
        )


def emit(event: str, **fields: Any) -> None:
    """From rank 0: one event line to the stage."""
    sys.stdout.write(EVENT_PREFIX + json.dumps({"event": event, **fields}, default=str) + "\n")
    sys.stdout.flush()
