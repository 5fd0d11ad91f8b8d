"""AnthropicClient against a real local server (tests/support/fault_server.py): the Messages API
mapping (system, stop sequences, no sampling parameters), usage, a recovered fault, a final failure."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from configs.schema import Decoding
from tasks.llm.base import Completion, LLMClient
from tasks.llm.limits import reset_limits
from tasks.llm.registry import create_client
from tests.support.fault_server import Fault, FaultServer
from tests.support.recipes import policy_recipe

MODEL = "claude-test"
KEY_ENV = "WRL_TEST_ANTHROPIC_KEY"
KEY = "test-anthropic-key"


def client_for(server: FaultServer, **backend: Any) -> LLMClient:
    claude = {
        "kind": "anthropic",
        "base_url": server.base_url,
        "api_key_env": KEY_ENV,
        "timeout_s": 5.0,
        **backend,
    }
    return create_client(policy_recipe({"claude": claude}, MODEL), "claude", MODEL)


def chat(client: LLMClient, messages, params: Decoding) -> Completion:
    async def main() -> Completion:
        try:
            return await client.chat(messages, params)
        finally:
            await client.aclose()

    return asyncio.run(main())


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    reset_limits()
    yield
    reset_limits()


CONVERSATION = (
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "one two"},
    {"role": "assistant", "content": "ok"},
    {"role": "user", "content": "three four five"},
)


def test_success_maps_system_stop_sequences_and_usage(caplog):
    params = Decoding(temperature=0.0, top_p=0.5, max_tokens=40, stop=("words",), seed=3, logprobs=2)
    with FaultServer() as server, caplog.at_level(logging.INFO, logger="tasks.llm.anthropic_backend"):
        client = client_for(server)
        result = chat(client, CONVERSATION, params)
        sent = server.requests[0]

    assert result.ok and result.text == "You wrote 3 " and result.finish_reason == "stop"
    # Usage counts words: 3 (system) + 2 + 1 + 3 in, 3 out.
    assert (result.usage.input_tokens, result.usage.output_tokens) == (9, 3)
    assert result.attempts == 1 and result.logprobs is None
    assert sent.path == "/v1/messages"
    assert sent.body == {
        "model": MODEL,
        "system": "You are terse.",
        "messages": [m for m in CONVERSATION if m["role"] != "system"],
        "max_tokens": 40,
        "stop_sequences": ["words"],
    }  # no temperature/top_p/seed: API version 2026-10-21 refuses sampling parameters
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["anthropic-version"]
    assert client.identity() == {"backend": "anthropic", "base_url": server.base_url, "model": MODEL}
    assert "no logprobs" in caplog.text and "no sampling parameters" in caplog.text


def test_max_tokens_maps_to_length():
    with FaultServer() as server:
        result = chat(client_for(server), CONVERSATION, Decoding(max_tokens=2))
    assert (result.text, result.finish_reason) == ("You wrote", "length")


@pytest.mark.parametrize("fault", ["529", "truncated"])  # 529: Anthropic's "overloaded"
def test_a_fault_is_retried(fault):
    with FaultServer([fault]) as server:
        result = chat(client_for(server, max_retries=2), CONVERSATION, Decoding())
        faults = [r.fault for r in server.requests]
    assert result.ok and result.text == "You wrote 3 words." and result.attempts == 2
    assert faults == [fault, None]


def test_failure_after_retries():
    with FaultServer([Fault("503", retry_after=0.05)] * 3) as server:
        result = chat(client_for(server, max_retries=2), CONVERSATION, Decoding())
    assert not result.ok and result.text is None and result.attempts == 3
    assert result.error == f"HTTP 503 from {server.base_url} after 3 attempts: service unavailable (injected)"
