"""TransformersClient on a tiny random Llama: batching, decoding options, logprobs, failures; the registry."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from configs.schema import Decoding, Recipe, TransformersBackend
from tasks.llm import registry
from tasks.llm import transformers_backend as tb
from tasks.llm.base import BackendUnavailableError, ChatRequest, Completion, LLMClient, chat_many
from tasks.llm.embedded import EmbeddedModelError, resolve_model_path
from tasks.llm.registry import create_client, register_backend
from tasks.llm.transformers_backend import TransformersClient
from tests.support.recipes import policy_recipe

GREEDY = Decoding(temperature=0.0, max_tokens=12)
PROMPTS = [
    "Write a poem.",
    "Tell me a long story about cats, with many details please.",
    "hi",
    "Summarise the plot of Hamlet in two sentences.",
    "List three colours.",
    "What is 2 + 2?",
]


def user(text: str) -> tuple[dict[str, str], ...]:
    return ({"role": "user", "content": text},)


def make_client(model_dir: Path, tmp_path: Path, **config) -> TransformersClient:
    backend = TransformersBackend(kind="transformers", device="cpu", dtype="float32", **config)
    return TransformersClient("local", backend, str(model_dir), tmp_path / "models")


def run(coro):
    return asyncio.run(coro)


async def _chat_and_close(client: TransformersClient, messages, params: Decoding) -> Completion:
    try:
        return await client.chat(messages, params)
    finally:
        await client.aclose()


def test_is_an_llm_client_with_a_cache_identity(tiny_model_dir, tmp_path):
    client = make_client(tiny_model_dir, tmp_path, max_batch_size=3)
    assert isinstance(client, LLMClient)
    assert client.identity() == {"backend": "transformers", "model": str(tiny_model_dir), "dtype": "float32"}


def test_greedy_is_deterministic_and_weights_are_shared(tiny_model_dir, tmp_path):
    first, second = make_client(tiny_model_dir, tmp_path), make_client(tiny_model_dir, tmp_path)

    async def go():
        a = await first.chat(user(PROMPTS[0]), GREEDY)
        b = await first.chat(user(PROMPTS[0]), GREEDY)
        c = await second.chat(user(PROMPTS[0]), GREEDY)
        await first.aclose()
        await second.aclose()
        return a, b, c

    a, b, c = run(go())
    assert a.ok and a.text and a.text == b.text == c.text
    assert first._loaded is second._loaded  # a policy and a competitor on one model load it once


def test_concurrent_requests_are_batched_and_match_one_by_one(tiny_model_dir, tmp_path, monkeypatch):
    client = make_client(tiny_model_dir, tmp_path, max_batch_size=4)
    batch_sizes: list[int] = []
    real = tb._generate_batch

    def spy(loaded, conversations, params):
        batch_sizes.append(len(conversations))
        return real(loaded, conversations, params)

    async def go():
        single = [await client.chat(user(p), GREEDY) for p in PROMPTS]
        batch_sizes.clear()
        batched = await chat_many(client, [ChatRequest(user(p), GREEDY) for p in PROMPTS])
        await client.aclose()
        return single, batched

    monkeypatch.setattr(tb, "_generate_batch", spy)
    single, batched = run(go())
    assert batch_sizes == [4, 2]  # max_batch_size respected, nothing generated alone
    assert [c.text for c in batched] == [c.text for c in single]  # input order, same greedy text
    assert [c.usage for c in batched] == [c.usage for c in single]  # padding is not counted
    assert len({c.text for c in batched}) > 1


def test_two_clients_on_one_model_run_concurrently(tiny_model_dir, tmp_path):
    # A policy, a competitor and a judge on the same weights and tokenizer, all at once.
    policy, competitor = make_client(tiny_model_dir, tmp_path), make_client(tiny_model_dir, tmp_path)
    requests = [ChatRequest(user(p), Decoding(temperature=0.0, max_tokens=8, stop=("e",))) for p in PROMPTS]

    async def go():
        results = await asyncio.gather(
            chat_many(policy, requests),
            chat_many(competitor, requests),
            *(competitor.next_token_logprobs(user(p), ["A", "B"]) for p in PROMPTS),
        )
        await policy.aclose()
        await competitor.aclose()
        return results

    first, second, *verdicts = run(go())
    assert all(c.ok for c in first + second)
    assert [c.text for c in first] == [c.text for c in second]
    assert all(set(v) == {"A", "B"} for v in verdicts)


def test_only_identical_decoding_params_share_a_batch(tiny_model_dir, tmp_path, monkeypatch):
    client = make_client(tiny_model_dir, tmp_path, max_batch_size=8)
    seen: list[tuple[int, int]] = []
    real = tb._generate_batch

    def spy(loaded, conversations, params):
        seen.append((len(conversations), params.max_tokens))
        return real(loaded, conversations, params)

    short = Decoding(temperature=0.0, max_tokens=3)
    requests = [ChatRequest(user(p), GREEDY if i % 2 else short) for i, p in enumerate(PROMPTS)]
    monkeypatch.setattr(tb, "_generate_batch", spy)

    async def go():
        await client.load()
        results = await chat_many(client, requests)
        await client.aclose()
        return results

    results = run(go())
    assert sorted(seen) == [(3, 3), (3, 12)]
    assert [c.usage.output_tokens for c in results] == [3, 12, 3, 12, 3, 12]


def test_max_tokens_gives_length_and_usage_counts(tiny_model_dir, tmp_path):
    client = make_client(tiny_model_dir, tmp_path)
    params = Decoding(temperature=0.0, max_tokens=5)
    completion = run(_chat_and_close(client, user(PROMPTS[1]), params))
    tokenizer = client._loaded.tokenizer
    prompt_ids = tokenizer(
        tokenizer.apply_chat_template(list(user(PROMPTS[1])), add_generation_prompt=True, tokenize=False),
        add_special_tokens=False,
    )["input_ids"]
    assert completion.ok and completion.finish_reason == "length"
    assert completion.usage.output_tokens == 5
    assert completion.usage.input_tokens == len(prompt_ids)
    assert completion.latency_s > 0 and completion.logprobs is None


def test_stop_strings_truncate_and_finish_with_stop(tiny_model_dir, tmp_path):
    client = make_client(tiny_model_dir, tmp_path)

    async def go():
        free = await client.chat(user(PROMPTS[0]), Decoding(temperature=0.0, max_tokens=24, logprobs=0))
        stop = free.text[12:16]
        stopped = await client.chat(
            user(PROMPTS[0]), Decoding(temperature=0.0, max_tokens=24, stop=("never-there", stop), logprobs=0)
        )
        await client.aclose()
        return free, stop, stopped

    free, stop, stopped = run(go())
    assert stop and stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.index(stop)]
    # Generation halted at the token that completed the stop string (counted, then cut from the text).
    assert stopped.usage.output_tokens < free.usage.output_tokens
    assert len(stopped.logprobs) == stopped.usage.output_tokens
    completed = "".join(t.token for t in stopped.logprobs)
    assert stop in completed and stop not in "".join(t.token for t in stopped.logprobs[:-1])


def test_logprobs_when_asked(tiny_model_dir, tmp_path):
    client = make_client(tiny_model_dir, tmp_path)
    completion = run(
        _chat_and_close(client, user(PROMPTS[2]), Decoding(temperature=0.0, max_tokens=6, logprobs=3))
    )
    assert completion.ok and len(completion.logprobs) == completion.usage.output_tokens == 6
    for item in completion.logprobs:
        assert item.logprob <= 0 and math.isfinite(item.logprob)
        assert 1 <= len(item.top) <= 3
        # Greedy picks the argmax: the chosen token is the best alternative.
        assert max(item.top.values()) == pytest.approx(item.logprob, abs=1e-5)
        assert item.top.get(item.token) == pytest.approx(item.logprob, abs=1e-5)


def test_seeded_sampling_repeats_and_seeds_differ(tiny_model_dir, tmp_path):
    client = make_client(tiny_model_dir, tmp_path)

    def sampled(seed: int) -> Decoding:
        return Decoding(temperature=1.0, top_p=0.95, max_tokens=16, seed=seed)

    async def go():
        a = await client.chat(user(PROMPTS[0]), sampled(1))
        b = await client.chat(user(PROMPTS[0]), sampled(1))
        c = await client.chat(user(PROMPTS[0]), sampled(2))
        await client.aclose()
        return a, b, c

    a, b, c = run(go())
    assert a.text == b.text and a.text != c.text


def test_next_token_logprobs_for_verdict_tokens(tiny_model_dir, tmp_path):
    client = make_client(tiny_model_dir, tmp_path, max_batch_size=4)
    messages = [user(p) for p in PROMPTS[:3]]

    async def go():
        alone = [await client.next_token_logprobs(m, ["A", "B"]) for m in messages]
        together = await asyncio.gather(
            *(client.next_token_logprobs(m, ["A", "B", "1", "10"]) for m in messages)
        )
        await client.aclose()
        return alone, together

    alone, together = run(go())
    for single, batched in zip(alone, together, strict=True):
        assert set(single) == {"A", "B"}
        assert all(math.isfinite(v) and v < 0 for v in single.values())
        # Left padding in a batch changes nothing.
        assert batched["A"] == pytest.approx(single["A"], abs=1e-4)
        assert batched["B"] == pytest.approx(single["B"], abs=1e-4)
        assert batched["10"] == batched["1"]  # documented: a multi-token candidate scores its first token


def test_a_failing_batch_gives_failed_completions_and_the_client_recovers(
    tiny_model_dir, tmp_path, monkeypatch
):
    client = make_client(tiny_model_dir, tmp_path, max_batch_size=4)

    def boom(*args, **kwargs):
        raise RuntimeError("simulated out of memory")

    async def go():
        loaded = await client.load()
        with monkeypatch.context() as patch:
            patch.setattr(loaded.model, "generate", boom)
            failed = await chat_many(client, [ChatRequest(user(p), GREEDY) for p in PROMPTS[:3]])
            direct = await client.chat(user(PROMPTS[0]), GREEDY)
        recovered = await client.chat(user(PROMPTS[0]), GREEDY)
        await client.aclose()
        return failed, direct, recovered

    failed, direct, recovered = run(go())
    for completion in [*failed, direct]:
        assert not completion.ok and completion.text is None
        assert "simulated out of memory" in completion.error
    assert recovered.ok and recovered.text


def test_a_missing_model_fails_softly(tmp_path):
    backend = TransformersBackend(kind="transformers", device="cpu")
    client = TransformersClient("local", backend, str(tmp_path / "no-such-model"), tmp_path / "models")
    completion = run(_chat_and_close(client, user("hi"), GREEDY))
    assert not completion.ok and completion.error


def test_aclose_stops_the_worker_and_later_calls_fail(tiny_model_dir, tmp_path):
    client = make_client(tiny_model_dir, tmp_path)

    async def go():
        first = await client.chat(user("hi"), GREEDY)
        worker = client._batcher.worker
        await client.aclose()
        await client.aclose()  # idempotent
        after = await client.chat(user("hi"), GREEDY)
        return first, worker, after

    first, worker, after = run(go())
    assert first.ok and worker.done()
    assert not after.ok and "closed" in after.error


def test_a_client_survives_across_event_loops(tiny_model_dir, tmp_path):
    client = make_client(tiny_model_dir, tmp_path)
    a = run(client.chat(user("hi"), GREEDY))
    b = run(client.chat(user("hi"), GREEDY))  # a new loop: the worker is recreated there
    run(client.aclose())
    assert a.ok and a.text == b.text


# ---------------------------------------------------------------------------------------------
# Model paths and the registry
# ---------------------------------------------------------------------------------------------


def test_resolve_model_path_passes_non_embedded_names_through(tmp_path):
    assert (
        resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path)
        == "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    assert resolve_model_path(str(tmp_path), tmp_path) == str(tmp_path)
    with pytest.raises(EmbeddedModelError, match="unknown embedded model 'nope'"):
        resolve_model_path("embedded:nope", tmp_path)


def _recipe(tmp_path: Path) -> Recipe:
    backends = {
        "local": {"kind": "transformers", "device": "cpu"},
        "api": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:1/v1"},
    }
    return policy_recipe(backends, policy_backend="local", storage={"model_cache": str(tmp_path / "cache")})


def test_registry_creates_transformers_clients(tmp_path):
    client = create_client(_recipe(tmp_path), "local", "some/model")
    assert isinstance(client, TransformersClient)
    assert client.backend_name == "local" and client.model == "some/model"
    assert client.model_cache == tmp_path / "cache"
    assert "transformers" in registry.registered_kinds()
    assert set(registry.registered_kinds()) <= set(registry.SCHEMA_BACKEND_KINDS)


def test_registry_refuses_duplicates_and_unknown_kinds():
    with pytest.raises(ValueError, match="already registered"):
        register_backend("transformers")(lambda *args: None)
    with pytest.raises(ValueError, match="not allowed by the config schema"):
        register_backend("ollama")


def test_registry_names_the_unavailable_backend(tmp_path, monkeypatch):
    # Only transformers is registered in this build; keep the test true once others land.
    for kind in [k for k in registry.BACKENDS if k != "transformers"]:
        monkeypatch.delitem(registry.BACKENDS._entries, kind)
    with pytest.raises(BackendUnavailableError, match=r"'api' has kind 'openai-compatible'.*not available"):
        create_client(_recipe(tmp_path), "api", "gpt-4o")
    with pytest.raises(ValueError, match="backend 'missing' is not defined"):
        create_client(_recipe(tmp_path), "missing", "m")
