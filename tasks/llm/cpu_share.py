"""Sharing the CPU cores between this process's models and the local model servers it started.

A `serve_locally` server on the CPU runs with `threads` cores of its own. While it is answering,
the in-process models (the transformers backend) leave it those cores: on 2 cores, a 2-thread
in-process decode next to a busy 1-thread server ran 2.6-4.5x slower than alone (OpenMP threads
spinning at barriers on an oversubscribed machine), while a 1-thread decode beside it lost a
third (docs/benchmarks.md). When no request to a local server is in flight, in-process work gets
every core back.

The in-process backend asks `in_process_threads()` at the start of each batch, in the thread
that computes it (torch's thread count is set per computing thread), so the share follows the
servers' load batch by batch.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import Counter
from collections.abc import Iterator

_LOCK = threading.Lock()
_IN_FLIGHT: Counter[int] = Counter()  # id(server) -> requests in flight
_THREADS: dict[int, int] = {}  # id(server) -> the cores it computes with
_FULL: int | None = None


def _full_threads() -> int:
    """The in-process thread count when no local server is busy: torch's own setting at first use."""
    global _FULL
    if _FULL is None:
        import torch

        _FULL = torch.get_num_threads()
    return _FULL


@contextlib.contextmanager
def serving(server: object, threads: int) -> Iterator[None]:
    """Marks one request to a local CPU server as in flight for the duration of the block."""
    key = id(server)
    with _LOCK:
        _IN_FLIGHT[key] += 1
        _THREADS[key] = threads
    try:
        yield
    finally:
        with _LOCK:
            _IN_FLIGHT[key] -= 1
            if _IN_FLIGHT[key] <= 0:
                del _IN_FLIGHT[key]


def reserved_threads() -> int:
    """Cores the busy local servers compute with right now."""
    with _LOCK:
        return sum(_THREADS[key] for key in _IN_FLIGHT)


def in_process_threads() -> int:
    """Threads an in-process computation may use now: all of them but the busy servers' (at least 1)."""
    full = _full_threads()
    return max(1, min(full, len(os.sched_getaffinity(0)) - reserved_threads()))


def apply_in_process_threads() -> int:
    """Set torch's thread count for the calling thread's next computation; returns it."""
    import torch

    threads = in_process_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
