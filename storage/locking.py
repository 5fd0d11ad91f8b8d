"""The cross-process lock that serialises every access to one storage root.

DuckDB lets exactly one process open a database file read-write, and while it does no other
process can open it at all. So every catalog access and every dataset commit takes this lock for
a short critical section (never for a whole stage): concurrent pipelines interleave their writes,
and one that cannot get the lock in time fails with a message naming who holds it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from filelock import FileLock, Timeout


class StorageBusyError(RuntimeError):
    """Another process held the storage lock for longer than the configured timeout."""


class StorageLock:
    def __init__(self, root: Path, timeout_s: float):
        self.path = root / "storage.lock"
        self.owner_path = root / "storage.lock.owner"
        self.timeout_s = timeout_s
        # The file lock excludes other processes; its re-entrancy count is shared by all threads of
        # this process, so an RLock makes threads (cache writes from worker threads) take turns.
        self._lock = FileLock(str(self.path), thread_local=False)
        self._threads = threading.RLock()

    @contextmanager
    def hold(self, purpose: str) -> Iterator[None]:
        if not self._threads.acquire(timeout=self.timeout_s):
            raise StorageBusyError(
                f"storage at {self.path.parent} is busy: another thread of this process held its lock for "
                f"longer than storage.lock_timeout_s={self.timeout_s:g}s (wanted for {purpose})"
            )
        try:
            with self._hold_file(purpose):
                yield
        finally:
            self._threads.release()

    @contextmanager
    def _hold_file(self, purpose: str) -> Iterator[None]:
        outermost = not self._lock.is_locked
        try:
            self._lock.acquire(timeout=self.timeout_s)
        except Timeout:
            raise StorageBusyError(
                f"storage at {self.path.parent} is busy: {self._describe_owner()} has held its lock for "
                f"longer than storage.lock_timeout_s={self.timeout_s:g}s (this process wanted it for "
                f"{purpose}). Wait for that process to finish, or raise storage.lock_timeout_s."
            ) from None
        try:
            if outermost:
                self._write_owner(purpose)
            yield
        finally:
            self._lock.release()

    def _write_owner(self, purpose: str) -> None:
        # Advisory only (for the error message above); the lock itself is the flock.
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.time(),
            "purpose": purpose,
            "argv": " ".join(sys.argv[:3]),
        }
        with suppress(OSError):
            self.owner_path.write_text(json.dumps(info))

    def _describe_owner(self) -> str:
        try:
            info = json.loads(self.owner_path.read_text())
        except (OSError, ValueError):
            return "another process"
        held = time.time() - float(info.get("since", time.time()))
        return (
            f"process {info.get('pid')} on {info.get('host')} ({info.get('argv')!s}, "
            f"{info.get('purpose')}, for {held:.0f}s)"
        )


class StageClaim:
    """One process at a time computes a given stage cache key.

    A second pipeline reaching the same (stage, config, inputs) waits here, then finds the first
    one's result in the cache instead of paying for the same generations or judgments again. The
    OS releases the lock when its holder dies, so a killed process never blocks anyone.
    """

    def __init__(self, root: Path):
        self.folder = root / "claims"

    @contextmanager
    def hold(self, cache_key: str, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.folder / f"{cache_key[:32]}.lock"), thread_local=False)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if on_wait is not None:
                on_wait()
            lock.acquire()  # no timeout: the holder is computing, and finishes or dies
        try:
            yield
        finally:
            lock.release()
