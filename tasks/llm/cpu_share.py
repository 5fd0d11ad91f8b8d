"""Sharing the CPU cores between this process's models and the local model servers it started.

A `serve_locally` server on the CPU computes with `threads` cores of its own. While it runs (from
its start, which is busy loading, to its stop when its last client closes), the in-process models
(the transformers backend) leave it those cores: on 2 cores, a 2-thread in-process decode beside a
busy 1-thread server ran 2.6-4.5x slower than alone (OpenMP threads spinning at barriers on an
oversubscribed machine), while a 1-thread decode beside it lost about a third (docs/llm.md). Once
no local server runs, in-process work gets every core back.

The in-process backend asks `apply_in_process_threads()` in the thread that computes (torch's
thread count is set per computing thread), at the start of each batch and, when generating, at
every decoding step, so a batch that started before a server did moves over at once.
"""

from __future__ import annotations

import os
import threading

_LOCK = threading.Lock()
_RESERVED: dict[int, int] = {}  # id(server) -> the cores it computes with
_FULL: int | None = None


def _full_threads() -> int:
    """The in-process thread count when no local server runs: torch's own setting at first use."""
    global _FULL
    if _FULL is None:
        import torch

        _FULL = torch.get_num_threads()
    return _FULL


def reserve(server: object, threads: int) -> None:
    """`server` computes with `threads` of this machine's cores until `release(server)`."""
    if threads > 0:
        _full_threads()  # read before anything lowers it
        with _LOCK:
            _RESERVED[id(server)] = threads


def release(server: object) -> None:
    with _LOCK:
        _RESERVED.pop(id(server), None)


def reserved_threads() -> int:
    """Cores the running local servers compute with right now."""
    with _LOCK:
        return sum(_RESERVED.values())


def in_process_threads() -> int:
    """Threads an in-process computation may use now: all but the local servers' (at least 1)."""
    full = _full_threads()
    return max(1, min(full, len(os.sched_getaffinity(0)) - reserved_threads()))


def apply_in_process_threads() -> int:
    """Set torch's thread count for the calling thread's next computation; returns it."""
    import torch

    threads = in_process_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
