"""API keys stay secret: a planted key reaches the server and nothing else (logs at DEBUG, including
the SDKs' and httpx's; stdout/stderr; Completions; exceptions; identity; repr). A missing key
variable fails clearly, naming the variable."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import pytest

from configs.schema import Decoding, Recipe
from tasks.llm.base import EndpointFailingError, LLMClient
from tasks.llm.limits import reset_limits
from tasks.llm.registry import create_client
from tasks.llm.remote import MissingAPIKeyError
from tests.support.fault_server import Fault, FaultServer
from tests.support.recipes import policy_recipe

KEY_ENV = "WRL_TEST_PLANTED_KEY"
NOISY_LOGGERS = ("openai", "anthropic", "httpx", "httpx2", "httpcore", "httpcore2", "tasks", "uvicorn")
KINDS = ("openai-compatible", "anthropic")


def recipe(kind: str, base_url: str, **backend: Any) -> Recipe:
    return policy_recipe({"remote": {"kind": kind, "base_url": base_url, "api_key_env": KEY_ENV, **backend}})


def base_url(server: FaultServer, kind: str) -> str:
    return server.openai_base_url if kind == "openai-compatible" else server.base_url


@pytest.fixture(autouse=True)
def _fresh_limits():
    reset_limits()
    yield
    reset_limits()


@pytest.mark.parametrize("kind", KINDS)
def test_a_planted_key_reaches_the_server_and_nothing_else(kind, monkeypatch, caplog, capfd):
    key = f"sk-PLANTED-{uuid.uuid4()}"
    monkeypatch.setenv(KEY_ENV, key)
    caplog.set_level(logging.DEBUG)
    for name in NOISY_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)

    # One success, then failures of every kind (max_retries=1: two requests each) until the
    # breaker trips. The 401 echoes the key, as a careless proxy might.
    script = [
        "ok",
        Fault("401", message=f"Incorrect API key provided: {key}"),
        *["500", "500"],
        *["reset", "reset"],
        *["truncated", "garbage"],
    ]
    with FaultServer(script) as server:
        client: LLMClient = create_client(
            recipe(kind, base_url(server, kind), max_retries=1, max_consecutive_failures=4, timeout_s=5.0),
            "remote",
            "m",
        )

        async def work() -> tuple[list[Any], EndpointFailingError | None]:
            results = []
            try:
                for _ in range(5):
                    results.append(
                        await client.chat([{"role": "user", "content": "hello there"}], Decoding())
                    )
            except EndpointFailingError as exc:
                return results, exc
            finally:
                await client.aclose()
            return results, None

        results, tripped = asyncio.run(work())
        recorded = server.requests

    # The key did go where it belongs: every request carried it (so this test can fail).
    assert len(recorded) == len(script)
    assert all(r.headers.get("authorization") == f"Bearer {key}" for r in recorded)

    assert [r.ok for r in results] == [True, False, False, False]
    assert tripped is not None and "failed 4 requests in a row" in str(tripped)
    assert f"${KEY_ENV}" in str(tripped)  # names the variable, never its value
    assert "HTTP 401" in results[1].error and "[REDACTED]" in results[1].error

    places = {
        "completions": "\n".join(repr(r) for r in results),
        "exception": f"{tripped!s} {tripped!r}",
        "identity": repr(client.identity()),
        "repr": repr(client),
        "logs": caplog.text + "\n".join(repr(vars(r)) for r in caplog.records),
        "output": "".join(capfd.readouterr()),
    }
    assert caplog.records, "logging was not captured"
    leaks = [where for where, text in places.items() if key in text]
    assert not leaks, f"the key leaked into: {leaks}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", [None, "", "   "], ids=["unset", "empty", "blank"])
def test_a_missing_key_variable_fails_at_construction_naming_it(kind, value, monkeypatch):
    if value is None:
        monkeypatch.delenv(KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(KEY_ENV, value)
    with pytest.raises(
        MissingAPIKeyError, match=rf"backend 'remote': environment variable {KEY_ENV} is not set"
    ):
        create_client(recipe(kind, "http://127.0.0.1:9/v1"), "remote", "m")
