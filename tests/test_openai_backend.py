"""OpenAICompatibleClient against a real local server (tests/support/fault_server.py): the request
and response mapping, SDK retries and re-asks, failures, chat_many, the breaker, and the limits."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from configs.schema import Decoding, Recipe
from tasks.llm.base import ChatRequest, Completion, EndpointFailingError, LLMClient, chat_many
from tasks.llm.limits import estimate_tokens, reset_limits
from tasks.llm.registry import create_client
from tests.support.fault_server import Fault, FaultServer
from tests.support.recipes import policy_recipe

MODEL = "test-model"
GREEDY = Decoding(temperature=0.0, max_tokens=64)


def user(text: str, system: str | None = None) -> tuple[dict[str, str], ...]:
    head = ({"role": "system", "content": system},) if system else ()
    return (*head, {"role": "user", "content": text})


def recipe_for(server: FaultServer, **backend: Any) -> Recipe:
    return policy_recipe(
        {"fault": {"kind": "openai-compatible", "base_url": server.openai_base_url, **backend}}, MODEL
    )


def client_for(server: FaultServer, **backend: Any) -> LLMClient:
    backend.setdefault("timeout_s", 5.0)
    return create_client(recipe_for(server, **backend), "fault", MODEL)


def run(client: LLMClient, work: Callable[[], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        try:
            return await work()
        finally:
            await client.aclose()

    return asyncio.run(main())


def chat(client: LLMClient, messages=None, params: Decoding = GREEDY) -> Completion:
    return run(client, lambda: client.chat(messages or user("one two three"), params))


@pytest.fixture(autouse=True)
def _fresh_limits():
    reset_limits()
    yield
    reset_limits()


# ---------------------------------------------------------------------------------------------
# Success: what is sent, what comes back
# ---------------------------------------------------------------------------------------------


def test_success_maps_the_request_and_the_response():
    params = Decoding(temperature=0.3, top_p=0.9, max_tokens=50, stop=("zzz",), seed=7, logprobs=2)
    with FaultServer() as server:
        client = client_for(server)
        assert isinstance(client, LLMClient)
        result = chat(client, user("one two three", system="Be brief."), params)
        sent = server.requests[0]

    assert result.ok and result.text == "You wrote 3 words."
    assert result.finish_reason == "stop"
    assert (result.usage.input_tokens, result.usage.output_tokens) == (5, 4)  # words: 2 + 3 in, 4 out
    assert result.attempts == 1 and result.latency_s > 0 and not result.cached
    assert result.logprobs is not None and "".join(t.token for t in result.logprobs) == result.text
    first = result.logprobs[0]
    assert (first.token, first.logprob) == ("You", pytest.approx(-0.1))
    assert first.top == {"You": pytest.approx(-0.1), "alt1": pytest.approx(-1.1)}

    assert sent.path == "/v1/chat/completions"
    assert sent.body == {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "one two three"},
        ],
        "temperature": 0.3,
        "top_p": 0.9,
        "max_tokens": 50,
        "stop": ["zzz"],
        "seed": 7,
        "logprobs": True,
        "top_logprobs": 2,
        "n": 1,
    }
    assert sent.headers["authorization"] == "Bearer EMPTY"  # no api_key_env: a local server's placeholder
    assert client.identity() == {
        "backend": "openai-compatible",
        "base_url": server.openai_base_url,
        "model": MODEL,
    }


def test_defaults_stay_out_of_the_request_and_length_and_stop_map():
    with FaultServer() as server:
        client = client_for(server)

        async def work():
            cut = await client.chat(user("one two three"), Decoding(max_tokens=2, seed=None))
            stopped = await client.chat(user("one two three"), Decoding(stop=("words",)))
            return cut, stopped

        cut, stopped = run(client, work)
        first = server.requests[0].body

    assert (cut.text, cut.finish_reason) == ("You wrote", "length")
    assert (stopped.text, stopped.finish_reason) == ("You wrote 3 ", "stop")
    assert not {"top_p", "seed", "stop", "logprobs", "top_logprobs"} & set(first)  # defaults are implicit


def test_a_client_outlives_its_event_loop():
    with FaultServer() as server:
        client = client_for(server)
        first = asyncio.run(client.chat(user("a b"), GREEDY))
        second = chat(client, user("a b c"))
    assert first.text == "You wrote 2 words." and second.text == "You wrote 3 words."


# ---------------------------------------------------------------------------------------------
# Retries
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["429", "500", "503", "hang", "truncated", "malformed", "garbage", "reset"])
def test_each_fault_is_retried_and_counted(kind):
    timeout = 0.5 if kind == "hang" else 5.0
    with FaultServer([kind], hang_s=5) as server:
        result = chat(client_for(server, max_retries=3, timeout_s=timeout))
        faults = [r.fault for r in server.requests]
    assert result.ok, result.error
    assert result.text == "You wrote 3 words."
    assert result.attempts == 2
    assert faults == [kind, None]


def test_retry_after_is_honoured():
    with FaultServer([Fault("429", retry_after=1)]) as server:
        started = time.perf_counter()
        result = chat(client_for(server, max_retries=2))
        elapsed = time.perf_counter() - started
        first, second = server.requests
    assert result.ok and result.attempts == 2
    assert elapsed >= 1.0 and second.time - first.time >= 0.95


def test_sdk_retries_and_re_asks_share_one_budget():
    with FaultServer(["500", "truncated"]) as server:
        recovered = chat(client_for(server, max_retries=3))
    assert recovered.ok and recovered.attempts == 3

    with FaultServer(["500", "truncated", "500", "ok"]) as server:
        exhausted = chat(client_for(server, max_retries=2))
        sent = len(server.requests)
    assert not exhausted.ok and exhausted.attempts == 3 and sent == 3  # max_retries=2: 3 requests in all
    assert exhausted.error.startswith(f"HTTP 500 from {server.openai_base_url} after 3 attempts")


# ---------------------------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------------------------


def test_exhausted_retries_give_a_failed_completion_with_a_clear_error():
    fault = Fault("500", retry_after=0.05, message="the GPU caught fire")
    with FaultServer([fault] * 3) as server:
        result = chat(client_for(server, max_retries=2))
    assert not result.ok and result.text is None and result.finish_reason is None
    assert result.attempts == 3
    assert result.error == f"HTTP 500 from {server.openai_base_url} after 3 attempts: the GPU caught fire"


@pytest.mark.parametrize(
    "faults,max_retries,timeout,expected",
    [
        (
            [Fault("400", message="context too long")],
            3,
            5.0,
            "HTTP 400 from {url} after 1 attempt: context too long",
        ),
        (
            ["malformed", "malformed"],
            1,
            5.0,
            "bad response from {url} after 2 attempts: the response has no choices",
        ),
        (["garbage"], 0, 5.0, "bad response from {url} after 1 attempt: the body is not valid JSON"),
        (["hang"], 0, 0.3, "timeout (0.3 s) from {url} after 1 attempt"),
        (["reset"], 0, 5.0, "connection error from {url} after 1 attempt: ReadError"),
    ],
    ids=["not-retried-400", "malformed", "garbage", "hang", "reset"],
)
def test_failure_messages_say_what_where_and_how_often(faults, max_retries, timeout, expected):
    with FaultServer(faults, hang_s=3) as server:
        result = chat(client_for(server, max_retries=max_retries, timeout_s=timeout))
    assert not result.ok
    assert result.error.startswith(expected.format(url=server.openai_base_url)), result.error
    assert result.attempts == len(faults)


def test_chat_many_returns_every_item_in_order_when_some_fail():
    prompts = ["a", "b c FAIL", "d e f", "g h i j", "FAIL k l m n", "o p q r s t"]
    requests = [ChatRequest(messages=user(p), params=GREEDY, tag=i) for i, p in enumerate(prompts)]
    with FaultServer(triggers={"FAIL": Fault("503", retry_after=0.05)}) as server:
        client = client_for(server, max_retries=1)
        results = run(client, lambda: chat_many(client, requests, max_concurrency=4))
    assert len(results) == len(prompts)
    for prompt, result in zip(prompts, results, strict=True):
        if "FAIL" in prompt:
            assert not result.ok and result.error.startswith("HTTP 503") and result.attempts == 2
        else:
            assert result.text == f"You wrote {len(prompt.split())} words."


def test_the_breaker_stops_chat_many_and_names_the_endpoint():
    seen: list[int] = []
    requests = [ChatRequest(messages=user(f"prompt {i}"), params=GREEDY) for i in range(8)]
    with FaultServer(["500"] * 10) as server:
        client = client_for(server, max_retries=0, max_consecutive_failures=3)
        with pytest.raises(EndpointFailingError) as caught:
            run(
                client,
                lambda: chat_many(client, requests, max_concurrency=1, on_result=lambda i, c: seen.append(i)),
            )
        sent = len(server.requests)
    message = str(caught.value)
    assert "'fault'" in message and MODEL in message and server.openai_base_url in message
    assert "3 requests in a row" in message and "HTTP 500 x3" in message
    assert sent == 3 and seen == [0, 1]  # the third failure raised instead of being handed over


def test_a_success_resets_the_breaker():
    with FaultServer(["500", "500", "ok", "500", "500", "ok"]) as server:
        client = client_for(server, max_retries=0, max_consecutive_failures=3)

        async def work():
            return [await client.chat(user("x"), GREEDY) for _ in range(6)]

        results = run(client, work)
    assert [r.ok for r in results] == [False, False, True, False, False, True]


def test_request_specific_4xx_neither_trip_nor_reset_the_breaker():
    # Five "prompt too long" 400s in a row are five bad requests, not a dead endpoint.
    faults = ["400", "422", "400", "413", "400", "500", "500", "500"]
    with FaultServer(faults) as server:
        client = client_for(server, max_retries=0, max_consecutive_failures=3)

        async def work():
            return [await client.chat(user("x"), GREEDY) for _ in range(5)]

        results = run(client, work)
        assert not any(r.ok for r in results)
        with pytest.raises(EndpointFailingError, match="HTTP 500 x3"):
            run(client, lambda: chat_many(client, [ChatRequest(user("y"), GREEDY)] * 3, max_concurrency=1))


# ---------------------------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------------------------


def test_max_concurrency_is_respected_and_shared_by_clients_of_one_backend():
    with FaultServer(latency_s=0.2) as server:
        recipe = recipe_for(server, max_concurrency=2)
        policy, judge = create_client(recipe, "fault", MODEL), create_client(recipe, "fault", "judge-model")
        batch = [ChatRequest(messages=user(f"prompt {i}"), params=GREEDY) for i in range(4)]

        async def work():
            both = await asyncio.gather(
                chat_many(policy, batch, max_concurrency=8), chat_many(judge, batch, max_concurrency=8)
            )
            await judge.aclose()
            return both

        results = run(policy, work)
        peak, models = server.max_in_flight, {r.body["model"] for r in server.requests}
    assert all(r.ok for batch_results in results for r in batch_results)
    assert peak == 2 and models == {MODEL, "judge-model"}


def test_retries_go_through_the_rate_limiter_too():
    # A 429 asking for only 10 ms must not let the retry jump the queue: every attempt, first or
    # retried, is spaced by the limiter, so retries never push the endpoint past its limit.
    with FaultServer([Fault("429", retry_after=0.01)] * 3) as server:
        client = client_for(server, requests_per_minute=240, max_retries=5)  # one every 0.25 s
        batch = [ChatRequest(messages=user(f"prompt {i}"), params=GREEDY) for i in range(3)]
        results = run(client, lambda: chat_many(client, batch, max_concurrency=3))
        arrivals = [r.time for r in server.requests]
    assert all(r.ok for r in results) and sum(r.attempts for r in results) == 6 == len(arrivals)
    assert min(b - a for a, b in itertools.pairwise(arrivals)) >= 0.2


def test_requests_per_minute_is_respected():
    with FaultServer() as server:
        client = client_for(server, requests_per_minute=240)  # one every 0.25 s
        batch = [ChatRequest(messages=user(f"prompt {i}"), params=GREEDY) for i in range(6)]
        started = time.perf_counter()
        results = run(client, lambda: chat_many(client, batch, max_concurrency=6))
        elapsed = time.perf_counter() - started
        arrivals = [r.time for r in server.requests]
    assert all(r.ok for r in results)
    assert elapsed >= 1.2  # 5 gaps of 0.25 s: no initial burst
    assert min(b - a for a, b in itertools.pairwise(arrivals)) >= 0.2


def test_tokens_per_minute_is_respected():
    # Each request is estimated at 3 + 6097 = 6100 tokens; the bucket holds 18000 and refills at
    # 300/s, so two go at once and the third waits for 3 * 6100 - 18000 = 300 tokens: one second.
    params = Decoding(temperature=0.0, max_tokens=6097)
    assert estimate_tokens(user("one two three"), params.max_tokens) == 6100
    with FaultServer() as server:
        client = client_for(server, tokens_per_minute=18_000)
        batch = [ChatRequest(messages=user("one two three"), params=params) for _ in range(3)]
        results = run(client, lambda: chat_many(client, batch, max_concurrency=3))
        arrivals = sorted(r.time for r in server.requests)
    assert all(r.ok for r in results)
    assert arrivals[1] - arrivals[0] < 0.5 and arrivals[2] - arrivals[0] >= 0.9


def test_a_request_larger_than_the_token_limit_still_runs():
    with FaultServer() as server:
        result = chat(client_for(server, tokens_per_minute=100), params=Decoding(max_tokens=5000))
    assert result.ok  # charged the whole bucket, not refused or stuck forever
