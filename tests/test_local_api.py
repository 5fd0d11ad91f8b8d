"""The CLI's local Prefect API (flows/local_api.py): started first thing, used by the command's
flows, gone when the command ends, however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from flows import local_api
from tests.support.paths import PROJECT_ROOT


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """No API URL and a Prefect home of the test's own; no server left behind."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    monkeypatch.setattr(local_api, "_current", None)
    yield tmp_path
    local_api.stop_local_api()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie has exited: its parent has not reaped it yet
        return stat.read().split(") ")[1][0] != "Z"


def test_a_configured_server_is_used_and_none_is_started(monkeypatch, fresh):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    with local_api.start_local_api():
        pass
    assert local_api._current is None


@pytest.mark.slow
def test_flows_run_on_the_local_api_and_it_stops_with_the_command(fresh):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    @flow
    def hello() -> str:
        return "hi"

    api = None
    with local_api.start_local_api():
        api = local_api._current
        assert PREFECT_API_URL.value() == api.url
        state = hello(return_state=True)
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(state.state_details.flow_run_id)
    assert run.state.is_completed() and run.flow_id
    with local_api.start_local_api():  # a second flow of the same command: the same server
        assert local_api._current is api and hello() == "hi"
    pid = api.process.pid
    with open(f"/proc/{pid}/environ", "rb") as environ:  # no trigger service on a short-lived server
        assert b"PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED=false" in environ.read().split(b"\0")
    local_api.stop_local_api()
    assert not _alive(pid)
    assert (fresh / "prefect" / "local-api.log").is_file()


@pytest.mark.slow
def test_the_server_dies_with_a_killed_command(fresh):
    """SIGKILL skips atexit; the kernel's parent-death signal still stops the server."""
    script = (
        "from flows import local_api\n"
        "ctx = local_api.start_local_api()\n"
        "local_api._current.wait_until_healthy()\n"
        "print(local_api._current.process.pid, flush=True)\n"
        "import time; time.sleep(600)\n"
    )
    command = subprocess.Popen(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        server_pid = int(command.stdout.readline())
        assert _alive(server_pid)
    finally:
        command.send_signal(signal.SIGKILL)
        command.wait()
    deadline = time.monotonic() + 30
    while _alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(server_pid)


@pytest.mark.slow
def test_a_server_that_cannot_start_is_a_clear_error(monkeypatch, fresh):
    # A database in a folder that cannot exist: the app's start-up fails, uvicorn exits.
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", "sqlite+aiosqlite:////proc/no/such/prefect.db")
    expected = "exited with code 3 \\(started 3 times\\)"
    with pytest.raises(local_api.LocalAPIError, match=expected) as error, local_api.start_local_api():
        pytest.fail("no flow may run without its API")
    assert "local-api.log" in str(error.value)
