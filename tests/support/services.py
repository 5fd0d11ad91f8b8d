"""`wrl up` / `wrl down` around a test: a real local Prefect server and the serve process."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def local_prefect(root: Path, recipe: Path) -> Iterator[dict]:
    """Yields {env, state, port, url}: `env` points the Prefect client (and `wrl`) at the server."""
    port = free_port()
    env = {**os.environ, "COLUMNS": "200", "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_HOME": str(root / "client-home")}  # fmt: skip
    state = root / "services"
    up = run([sys.executable, "-m", "flows", "up", "--config", str(recipe), "--port", str(port),
              "--state-dir", str(state)], root, env, timeout=300)  # fmt: skip
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield {"env": env, "state": state, "port": port, "url": f"http://127.0.0.1:{port}"}
    finally:
        down = run([sys.executable, "-m", "flows", "down", "--state-dir", str(state)], root, env)
        assert down.returncode == 0 and "serve, server" in down.stdout, down.stdout + down.stderr
        for name in ("server", "serve"):  # the records go with the processes
            path = state / f"{name}.json"
            assert not path.exists(), json.loads(path.read_text())
