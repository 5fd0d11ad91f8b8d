"""`wrl up` / `wrl down`: a local Prefect server and the process that serves the deployments.

State lives under one folder (default `.wrl/services/`): `server.json` / `serve.json` (pid, port or
recipes, command), `server.log` / `serve.log`, and `prefect/` (the server's PREFECT_HOME and its
SQLite database, so the UI's history survives restarts). `up` is idempotent: a healthy server is
kept, and the serve process is kept if it serves the same recipe files, unchanged (otherwise it is
restarted, which registers the deployments again: an edited nightly cron takes effect). `down`
stops the serve process first (its flow runs are cancelled by the server it reports to), then the
server; each gets SIGTERM on its whole process group, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_STATE_DIR = Path(".wrl/services")
DEFAULT_PORT = 4200


class ServiceError(RuntimeError):
    pass


@dataclass(frozen=True)
class Services:
    state_dir: Path = DEFAULT_STATE_DIR

    @property
    def prefect_home(self) -> Path:
        return self.state_dir / "prefect"

    def record(self, name: str) -> dict[str, Any] | None:
        path = self.state_dir / f"{name}.json"
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        return record if _alive(record) else None

    def api_url(self) -> str | None:
        server = self.record("server")
        return None if server is None else api_url(server["port"])


def api_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/api"


def _alive(record: dict[str, Any]) -> bool:
    """The recorded process still runs and is the one we started (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{record['pid']}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return [c.decode() for c in cmdline if c] == record["command"]


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url(port)}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _deployment_names(port: int) -> set[str]:
    request = urllib.request.Request(
        f"{api_url(port)}/deployments/filter", data=b"{}", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return {d["name"] for d in json.loads(response.read())}


def _start(
    services: Services, name: str, command: list[str], env: dict[str, str], extra: dict[str, Any]
) -> dict:
    services.state_dir.mkdir(parents=True, exist_ok=True)
    log = open(services.state_dir / f"{name}.log", "ab")  # noqa: SIM115  # the child keeps it
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    log.close()
    record = {"pid": process.pid, "command": command, "started_at": time.time(), **extra}
    deadline = time.monotonic() + 5
    while not _alive(record) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # /proc/<pid>/cmdline is empty until the child has exec'd
    tmp = services.state_dir / f".{name}.json.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(services.state_dir / f"{name}.json")
    return record


def _wait(what: str, ready, record: dict[str, Any], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(record):
            tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
            raise ServiceError(f"{what} exited during start-up; the end of {log}:\n{tail}")
        if ready():
            return
        time.sleep(0.5)
    raise ServiceError(f"{what} not ready after {timeout_s:.0f} s; see {log}")


def _env(services: Services) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(services.prefect_home.resolve()),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}  # fmt: skip
    env.pop("PREFECT_API_URL", None)
    return env


def up(
    recipe_paths: list[str],
    services: Services = Services(),
    port: int = DEFAULT_PORT,
    expected_deployments: set[str] | None = None,
    timeout_s: float = 180.0,
) -> dict[str, Any]:
    """Start (or keep) the server and the serve process; returns what runs, with the API URL."""
    server = services.record("server")
    kept = []
    if server is not None and _healthy(server["port"]):
        kept.append("server")
        port = server["port"]
    else:
        if server is not None:
            stop(services, "server")
        if _healthy(port):
            raise ServiceError(
                f"a server that `wrl up` did not start already answers on 127.0.0.1:{port}; stop it or pass --port"
            )
        command = [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        # `--port` moves the API but not the address the UI's JavaScript calls (it would still call :4200).
        env = {**_env(services), "PREFECT_UI_API_URL": api_url(port)}
        server = _start(services, "server", command, env, {"port": port})
        _wait(
            "the Prefect server", lambda: _healthy(port), server, services.state_dir / "server.log", timeout_s
        )
    recipes = [str(Path(p)) for p in recipe_paths]
    # An edited recipe (a new nightly cron, a new stage) needs its deployments registered again.
    digest = hashlib.sha256(b"".join(Path(p).read_bytes() for p in recipes)).hexdigest()
    serve = services.record("serve")
    if (
        serve is not None
        and serve["recipes"] == recipes
        and serve["port"] == port
        and serve.get("digest") == digest
    ):
        kept.append("serve")
    else:
        if serve is not None:
            stop(services, "serve")
        env = {**_env(services), "PREFECT_API_URL": api_url(port)}
        command = [sys.executable, "-m", "flows.deployments", *recipes]
        serve = _start(
            services, "serve", command, env, {"recipes": recipes, "port": port, "cwd": os.getcwd()}
        )
        if expected_deployments:
            _wait("the serve process", lambda: expected_deployments <= _deployment_names(port), serve,
                  services.state_dir / "serve.log", timeout_s)  # fmt: skip
    (services.state_dir / "env").write_text(f"export PREFECT_API_URL={api_url(port)}\n")
    return {"api_url": api_url(port), "ui_url": f"http://127.0.0.1:{port}", "server_pid": server["pid"],
            "serve_pid": serve["pid"], "kept": kept, "state_dir": str(services.state_dir)}  # fmt: skip


def stop(services: Services, name: str, grace_s: float = 20.0) -> bool:
    """SIGTERM the process group, SIGKILL after `grace_s`; True if something was stopped."""
    record = services.record(name)
    path = services.state_dir / f"{name}.json"
    if record is None:
        path.unlink(missing_ok=True)
        return False
    pid = record["pid"]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _alive(record):
        time.sleep(0.2)
    if _alive(record):
        # Flow-run subprocesses can outlive a SIGTERM (a generation thread keeps them up).
        os.killpg(pid, signal.SIGKILL)
    _reap(pid)
    path.unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def down(services: Services = Services()) -> list[str]:
    """Stop the serve process, then the server (the reverse of `up`)."""
    stopped = [name for name in ("serve", "server") if stop(services, name)]
    (services.state_dir / "env").unlink(missing_ok=True)
    return stopped


def status(services: Services = Services()) -> dict[str, Any]:
    server, serve = services.record("server"), services.record("serve")
    return {
        "server": None if server is None else {**server, "healthy": _healthy(server["port"])},
        "serve": serve,
        "api_url": services.api_url(),
    }
