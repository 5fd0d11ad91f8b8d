"""Child processes that never outlive their parent, and stop as a group.

Used by every process this project starts and must not orphan: the local Prefect API
(flows/local_api.py), a local model server (tasks/llm/serving.py) and the trainer's launcher and
ranks (tasks/training/launch.py, worker.py). Standard library only: the CLI imports it on its
first line.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> None:
    """Have the kernel send `sig` to this process when its parent dies (Linux; elsewhere a no-op).
    As a Popen `preexec_fn` it runs in the child between fork and exec."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)


def signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    """`sig` to the process group `process` leads (it was started with start_new_session), so
    whatever it spawned gets it too; nothing if it is gone already."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def stop_group(process: subprocess.Popen, grace_s: float, what: str = "process") -> int | None:
    """SIGTERM `process`'s group and wait up to `grace_s`; then SIGKILL the group and wait.
    Returns the exit code (None if the group's leader outlived both)."""
    if process.poll() is not None:
        return process.returncode
    signal_group(process, signal.SIGTERM)
    try:
        return process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        logger.warning("%s: pid %d ignored SIGTERM for %.0f s; killing its group", what, process.pid, grace_s)
    signal_group(process, signal.SIGKILL)
    try:
        return process.wait(timeout=10.0)
    except subprocess.TimeoutExpired:
        return None
