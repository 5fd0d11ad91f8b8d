"""LocalModelServer and `wrl serve`: a real `transformers serve` subprocess on the tiny model,
called over HTTP with the openai SDK. Each start-up takes 10-12 s on a 2-core CPU machine, so the
tests that start one are slow (run by `make test` after the fast suite); the error paths stay fast.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from tasks.llm.serving import LocalModelServer, ServerStartError
from tests.support.chat import ask
from tests.support.recipes import policy_recipe
from tests.support.services import free_port


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow  # starts `transformers serve` (~10 s)
def test_server_answers_the_openai_sdk_with_usage(tiny_model_dir, tmp_path):
    log = tmp_path / "logs" / "server.log"
    with LocalModelServer(tiny_model_dir, device="cpu", log_path=log) as server:
        assert server.running and server.base_url == f"http://127.0.0.1:{server.port}/v1"
        assert server.model_name == str(Path(tiny_model_dir).resolve())
        reply = asyncio.run(ask(server.base_url, server.model_name))
        ours = asyncio.run(through_our_backend(server.base_url, server.model_name))
        pid, port = server.pid, server.port
    assert [c.ok for c in ours] == [True, True], [c.error for c in ours]
    assert all(c.attempts == 1 and c.usage.output_tokens > 0 and c.text for c in ours)
    choice = reply.choices[0]
    assert choice.message.content.strip() and choice.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 0 and 0 < reply.usage.completion_tokens <= 12
    assert not server.running and process_gone(pid) and port_is_free(port)
    assert "Uvicorn running" in log.read_text()


async def through_our_backend(base_url: str, model: str) -> list:
    """The project's own OpenAI-compatible backend, via the registry, over real HTTP."""
    from configs.schema import Decoding
    from tasks.llm.base import ChatRequest, chat_many
    from tasks.llm.registry import create_client

    recipe = policy_recipe(
        {"served": {"kind": "openai-compatible", "base_url": base_url, "timeout_s": 120}}, model
    )
    client = create_client(recipe, "served", model)
    params = Decoding(temperature=0.0, max_tokens=8)
    requests = [ChatRequest(({"role": "user", "content": p},), params) for p in ("Hello!", "Write a haiku.")]
    try:
        return await chat_many(client, requests, max_concurrency=2)
    finally:
        await client.aclose()


def scripted(monkeypatch, script: str) -> None:
    """Run `python -c script` in place of transformers serve: the failure paths, in milliseconds."""
    monkeypatch.setattr(LocalModelServer, "command", lambda self: [sys.executable, "-c", script])


def test_clear_errors_for_a_bad_folder_and_a_taken_port(tmp_path):
    with pytest.raises(ValueError, match=r"no config\.json"):
        LocalModelServer(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ServerStartError, match="already in use"):
            LocalModelServer(tmp_path, port=taken.getsockname()[1]).start()


def test_a_dying_server_fails_with_the_tail_of_its_log(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    scripted(monkeypatch, "import sys; print('ValueError: no such architecture'); sys.exit(3)")
    server = LocalModelServer(tmp_path, log_path=tmp_path / "dead.log")
    with pytest.raises(ServerStartError, match="exited with code 3 before answering") as caught:
        server.start()
    assert "dead.log" in str(caught.value) and "ValueError: no such architecture" in str(caught.value)
    assert not server.running


def test_a_silent_server_times_out_and_is_killed(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    scripted(
        monkeypatch, "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    )
    server = LocalModelServer(tmp_path, startup_timeout_s=0.5, stop_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(ServerStartError, match=r"did not answer .* within"):
        server.start()
    assert time.monotonic() - started < 10 and not server.running and process_gone(server.pid)


def test_a_port_taken_meanwhile_is_retried_on_another(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    scripted(monkeypatch, "import sys; print('[Errno 98] address already in use'); sys.exit(1)")
    server = LocalModelServer(tmp_path, log_path=tmp_path / "race.log")
    with pytest.raises(ServerStartError, match="address already in use"):
        server.start()
    attempts = [line for line in (tmp_path / "race.log").read_text().splitlines() if line.startswith("$ ")]
    assert len(attempts) == 3  # three ports tried, one launch each


@pytest.mark.slow  # starts `transformers serve` (~10 s)
def test_wrl_serve_answers_and_stops_cleanly_on_sigterm(tiny_model_dir, tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "flows", "serve", str(tiny_model_dir), "--port", str(port), "--device", "cpu"],
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 120
        while not (tmp_path / ".wrl" / "logs" / f"serve-{port}.log").exists() or port_is_free(port):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "wrl serve did not start listening"
            time.sleep(0.2)
        reply = None
        while reply is None:  # listening may precede readiness by a moment
            try:
                reply = asyncio.run(ask(base_url, str(Path(tiny_model_dir).resolve())))
            except openai.APIConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert base_url in stdout and str(Path(tiny_model_dir).resolve()) in stdout
    assert "curl " in stdout and "from openai import OpenAI" in stdout and "stopped" in stdout
    server_pid = int(stdout.split("(pid ", 1)[1].split(",", 1)[0])
    assert process_gone(server_pid) and port_is_free(port)


def _served_recipe(tmp_path, model_dir, **serve_locally):
    return policy_recipe(
        {"served": {"kind": "openai-compatible", "serve_locally": {"device": "cpu", **serve_locally}}},
        model_dir, name="served",
        storage={"root": str(tmp_path / "store"), "model_cache": str(tmp_path / "models")},
    )  # fmt: skip


@pytest.mark.slow  # starts `transformers serve` (~10 s)
def test_a_serve_locally_backend_starts_one_server_and_calls_it_over_http(tiny_model_dir, tmp_path):
    from configs.schema import Decoding
    from tasks.llm import cpu_share
    from tasks.llm.registry import create_client

    recipe = _served_recipe(tmp_path, tiny_model_dir, threads=1, cache_tokens=1024)
    first = create_client(recipe, "served", str(tiny_model_dir))
    second = create_client(recipe, "served", str(tiny_model_dir))
    try:
        assert first.server is second.server and first.server.running  # one server per model
        assert first.base_url == first.server.base_url.rstrip("/")
        # Continuous batching with a bounded KV cache (unbounded, it takes most of the free memory).
        command = first.server.log_path.read_text().splitlines()[0]
        assert "--continuous-batching --cb-block-size 32 --cb-num-blocks 32 " in command
        assert cpu_share.reserved_threads() == 1  # in-process models leave it its core while it runs

        async def chat_then_close_both():
            completion = await first.chat([{"role": "user", "content": "Hello"}], Decoding(max_tokens=6))
            await second.aclose()
            running_with_one_client = first.server.running
            await first.aclose()  # the last client to close stops the server and gives its core back
            return completion, running_with_one_client

        completion, running_with_one_client = asyncio.run(chat_then_close_both())
        assert completion.ok and completion.usage.output_tokens > 0
        assert running_with_one_client and not first.server.running and cpu_share.reserved_threads() == 0
        # The cache identity names the model and server settings, never the port of this launch.
        identity = first.identity()
        assert identity == {"backend": "openai-compatible", "model": str(tiny_model_dir),
                            "served_locally": {"device": "cpu", "dtype": "auto"}}  # fmt: skip
        assert str(first.server.port) not in str(identity)
        assert (tmp_path / "store" / "logs").is_dir()
    finally:
        first.server.stop()
    assert process_gone(first.server.pid)


def test_serve_locally_and_base_url_are_exclusive(tmp_path):
    from pydantic import ValidationError

    from configs.schema import OpenAICompatibleBackend

    with pytest.raises(ValidationError, match="either base_url"):
        OpenAICompatibleBackend(kind="openai-compatible", base_url="http://x/v1", serve_locally={})
    # Operational settings stay out of cache keys; device and dtype can change outputs.
    a = OpenAICompatibleBackend(
        kind="openai-compatible", serve_locally={"threads": 1, "startup_timeout_s": 5}
    )
    b = OpenAICompatibleBackend(kind="openai-compatible", serve_locally={"threads": 2})
    c = OpenAICompatibleBackend(kind="openai-compatible", serve_locally={"dtype": "bfloat16"})
    assert a.identity() == b.identity() != c.identity()
