"""Prefect's local API for one `wrl` command, started on the command's first line.

Without an API URL, Prefect starts a temporary API server on a flow's first call
(`SubprocessASGIServer`), and the call waits: first while this process imports Prefect's server
code only to build that object (~3 s of CPU, measured), then while the server process imports it
again and starts (~4 s on 2 cores). Here the same server (Prefect's own uvicorn command and
environment) starts before anything else, so its start overlaps the command's imports, recipe
loading and model checks, and this process never imports the server.

Two things differ from Prefect's temporary server, both so that nothing outlives the command: the
server leads its own session, so a Ctrl-C reaches the flow (which then records its crash through
the API) and not the server first; and the kernel stops it if the command dies (PR_SET_PDEATHSIG),
where Prefect's relies on `atexit`, which a SIGKILL skips.

Measured with `benchmarks/demo_wall_memory.py` (docs/benchmarks.md): see the warm demo there.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tasks.processes import die_with_parent

log = logging.getLogger(__name__)

# Prefect's SubprocessASGIServer: no UI, and the app treats itself as the ephemeral server.
SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
# Defaults a user's environment overrides. Automations need a lasting server; on this short-lived
# one their trigger service only adds writers to its SQLite file (Prefect issue 15170: "database
# is locked" from periodic trigger evaluation; a locked write stalled one cold demo for 62 s).
SERVER_DEFAULTS = {"PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false"}
# uvicorn's exit code when it could not start: the port was taken between our check and its bind
# (try another, as Prefect does), or the app failed (the same again: give up after a few).
STARTUP_FAILURE_EXIT_CODE = 3
MAX_LAUNCHES = 3


class LocalAPIError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _site_packages_of(package: str) -> str:
    """The folder holding `package`, found without importing it (Prefect's import takes ~1 s)."""
    return str(Path(importlib.util.find_spec(package).origin).parents[1])


class LocalPrefectAPI:
    """One Prefect API server process on a free port, for this process's flows."""

    def __init__(self, home: Path, startup_timeout_s: float) -> None:
        self.log_path = home / "local-api.log"
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.launches = 0
        self._healthy = False
        self._launch()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _launch(self) -> None:
        self.port = _free_port()
        self.launches += 1
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "uvicorn", "--app-dir", _site_packages_of("prefect"),
                   "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
                   "--port", str(self.port), "--log-level", "error", "--lifespan", "on"]  # fmt: skip
        with open(self.log_path, "ab") as sink:
            sink.write(
                f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: port {self.port}\n".encode()
            )
            sink.flush()
            self.process = subprocess.Popen(
                command, env={**SERVER_DEFAULTS, **os.environ, **SERVER_ENV}, stdin=subprocess.DEVNULL, stdout=sink,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent,
            )  # fmt: skip

    def wait_until_healthy(self) -> None:
        """Returns once the API answers; raises LocalAPIError with the server's log if it cannot."""
        import httpx

        if self._healthy:
            return
        if self.process is None:
            raise LocalAPIError(f"Prefect's local API was stopped or failed:\n{self._log_tail()}")
        deadline = time.monotonic() + self.startup_timeout_s
        with httpx.Client(timeout=5) as client:
            while not self._healthy:
                code = self.process.poll()
                if code == STARTUP_FAILURE_EXIT_CODE and self.launches < MAX_LAUNCHES:
                    self._launch()
                elif code is not None:
                    self.process = None
                    tail = self._log_tail()
                    hint = (
                        f"\nIts database in {self.log_path.parent} was written by a newer Prefect (the "
                        "project moved from 3.8 to 3.7.7, docs/operations.md): it holds only this local "
                        "run history; move it aside, or set PREFECT_HOME to another folder."
                        if "Can't locate revision" in tail else ""
                    )  # fmt: skip
                    raise LocalAPIError(
                        f"Prefect's local API exited with code {code} (started {self.launches} times):\n"
                        f"{tail}{hint}"
                    )
                elif time.monotonic() > deadline:
                    self.stop()
                    raise LocalAPIError(
                        f"Prefect's local API did not answer within {self.startup_timeout_s:.0f} s "
                        f"(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS):\n{self._log_tail()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    self._healthy = client.get(f"{self.url}/health").status_code == 200
                if not self._healthy:
                    time.sleep(0.05)
        log.info("Prefect's local API answers at %s (stopped when this command ends)", self.url)

    def stop(self) -> None:
        """SIGTERM and wait, as Prefect stops its temporary server: the server's shutdown writes
        the events and logs it still holds. Idempotent."""
        process, self.process, self._healthy = self.process, None, False
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _log_tail(self, chars: int = 3000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"{self.log_path}: {text[-chars:] or '(empty)'}"


_current: LocalPrefectAPI | None = None


def start_local_api() -> contextlib.AbstractContextManager:
    """Starts this process's local Prefect API unless PREFECT_API_URL is in the environment.
    Call it first thing; returns a context manager to run flows in, which waits for the server,
    points Prefect at it, and turns flow-run heartbeats off (only a lasting server's crash
    detection reads them; each flow spent ~0.7 s joining the heartbeat thread)."""
    global _current
    if os.environ.get("PREFECT_API_URL"):
        return contextlib.nullcontext()
    if _current is None:
        home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")).expanduser()
        timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "20"))
        _current = LocalPrefectAPI(home, timeout)
        atexit.register(_current.stop)
    return _use(_current)


@contextlib.contextmanager
def _use(api: LocalPrefectAPI) -> Iterator[None]:
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_SERVER_ALLOW_EPHEMERAL_MODE,
        PREFECT_UI_URL,
        temporary_settings,
    )

    if PREFECT_API_URL.value() or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value():
        # A Prefect profile names a server, or forbids a local one: Prefect's settings decide.
        api.stop()
        yield
        return
    api.wait_until_healthy()
    # No UI URL: this server serves no UI and stops with the command, so Prefect's "View at" link
    # would lead nowhere (its own temporary server prints none either).
    overrides = {PREFECT_API_URL: api.url, PREFECT_UI_URL: "", PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    with temporary_settings(overrides):
        yield


def stop_local_api() -> None:
    """Stops this process's local API now (also done at exit)."""
    if _current is not None:
        _current.stop()
