"""VLLMClient: the clear error without vllm; batching and result mapping against a fake `vllm`
module that mirrors the offline API (LLM.chat/generate, SamplingParams, RequestOutput,
CompletionOutput, {token_id: Logprob}); and, on a CUDA machine with vllm, the real thing.

The fake is a stand-in for the documented structures only: what vLLM computes is checked by the
tests marked `vllm` + `gpu`, which skip cleanly anywhere else.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from configs.schema import Decoding, Recipe, VLLMBackend
from tasks.llm import embedded
from tasks.llm import vllm_backend as vb
from tasks.llm.base import BackendUnavailableError, ChatRequest, LLMClient, chat_many
from tasks.llm.registry import create_client
from tests.support.recipes import policy_recipe

VOCAB = 128  # the fake tokenizer: one token per ASCII character; 0 is EOS


def user(text: str) -> tuple[dict[str, str], ...]:
    return ({"role": "user", "content": text},)


def _recipe(tmp_path: Path, **backend: Any) -> Recipe:
    return policy_recipe(
        {"gpu": {"kind": "vllm", **backend}}, storage={"model_cache": str(tmp_path / "cache")}
    )


# ---------------------------------------------------------------------------------------------
# Without vllm
# ---------------------------------------------------------------------------------------------


def test_without_vllm_the_registry_raises_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(vb, "vllm_installed", lambda: False)  # true here; also true on a GPU box
    with pytest.raises(vb.VLLMUnavailableError) as caught:
        create_client(_recipe(tmp_path), "gpu", "some/model")
    assert isinstance(caught.value, BackendUnavailableError) and isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert "'gpu'" in message and "optional GPU extra" in message
    assert "pip install 'writing-rl[vllm]'" in message and "CUDA" in message


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_this_machine_has_no_vllm_and_says_so(tmp_path):
    with pytest.raises(vb.VLLMUnavailableError, match="optional GPU extra"):
        create_client(_recipe(tmp_path), "gpu", "some/model")


# ---------------------------------------------------------------------------------------------
# A fake `vllm` module with the offline API's shapes
# ---------------------------------------------------------------------------------------------


@dataclass
class Logprob:  # vllm.logprobs.Logprob
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:  # vllm.outputs.CompletionOutput
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:  # vllm.outputs.RequestOutput
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: list[dict[int, Logprob] | None] | None
    outputs: list[CompletionOutput]
    finished: bool = True


class SamplingParams:  # vllm.SamplingParams (the fields we use, with its defaults and checks)
    def __init__(self, **kwargs: Any) -> None:
        defaults = {
            "n": 1,
            "temperature": 1.0,
            "top_p": 1.0,
            "top_k": 0,
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "seed": None,
            "stop": None,
            "max_tokens": 16,
            "logprobs": None,
            "prompt_logprobs": None,
        }
        unknown = set(kwargs) - set(defaults)
        if unknown:
            raise TypeError(f"unexpected SamplingParams fields {unknown}")
        self.__dict__.update(defaults | kwargs)
        for name in ("logprobs", "prompt_logprobs"):  # the engine's default max_logprobs
            value = getattr(self, name)
            if value is not None and value > 20:
                raise ValueError(f"Requested {name} of {value}, which is greater than max allowed: 20")
        if not 0 < self.top_p <= 1 or self.temperature < 0:
            raise ValueError("bad sampling parameters")


class Tokenizer:
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids if i)


def distribution(context: list[int]) -> list[float]:
    """The fake model: a log-softmax over VOCAB that depends on the whole context."""
    base = sum(context)
    logits = [((t * 31 + base) % 97) / 8.0 for t in range(VOCAB)]
    logits[0] = -5.0  # EOS is unlikely unless forced
    top = max(logits)
    norm = top + math.log(sum(math.exp(v - top) for v in logits))
    return [v - norm for v in logits]


def top_logprobs(dist: list[float], chosen: int, k: int) -> dict[int, Logprob]:
    ranked = sorted(range(VOCAB), key=lambda t: -dist[t])
    entries = {chosen: Logprob(dist[chosen], rank=ranked.index(chosen) + 1)}
    for rank, t in enumerate(ranked[:k], start=1):
        entries[t] = Logprob(dist[t], rank=rank)
    return entries


def chat_prompt(conversation: list[dict[str, str]]) -> list[int]:
    text = "".join(f"<{m['role']}>{m['content']}" for m in conversation) + "<assistant>"
    return Tokenizer().encode(text)


@dataclass
class FakeLLM:  # vllm.LLM
    model: str
    kwargs: dict[str, Any]
    calls: list[tuple[str, int]] = field(default_factory=list)
    params_seen: list[SamplingParams] = field(default_factory=list)

    def get_tokenizer(self) -> Tokenizer:
        return Tokenizer()

    def get_default_sampling_params(self) -> SamplingParams:
        return SamplingParams(top_k=40, repetition_penalty=1.1)  # "from generation_config.json"

    def chat(self, messages, sampling_params=None, use_tqdm=True):
        assert isinstance(messages, list) and all(isinstance(c, list) for c in messages), "a list of lists"
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(messages)
        assert len(params) == len(messages)
        self.calls.append(("chat", len(messages)))
        self.params_seen += params
        for conversation in messages:
            if "TOO LONG" in conversation[-1]["content"]:  # vLLM validates the whole call up front
                raise ValueError("This model's maximum context length is 64 tokens")
        return [self._run(chat_prompt(c), p) for c, p in zip(messages, params, strict=True)]

    def generate(self, prompts, sampling_params=None, use_tqdm=True):
        self.calls.append(("generate", len(prompts)))
        return [self._run(list(p["prompt_token_ids"]), sampling_params) for p in prompts]

    def _run(self, prompt_ids: list[int], params: SamplingParams) -> RequestOutput:
        rng = random.Random(params.seed)
        generated: list[int] = []
        steps: list[dict[int, Logprob]] = []
        finish = "length"
        while len(generated) < params.max_tokens:
            dist = distribution(prompt_ids + generated)
            if params.temperature == 0:
                token = max(range(VOCAB), key=lambda t: dist[t])
            else:
                token = rng.choices(range(VOCAB), weights=[math.exp(v) for v in dist])[0]
            if len(generated) == 5 and "short" in Tokenizer().decode(prompt_ids):
                token = 0
            generated.append(token)
            if params.logprobs is not None:
                steps.append(top_logprobs(dist, token, params.logprobs))
            text = Tokenizer().decode(generated)
            if token == 0 or any(s in text for s in params.stop or ()):
                finish = "stop"
                break
        text = Tokenizer().decode(generated)
        for s in params.stop or ():
            text = text.split(s)[0]
        prompt_logprobs = None
        if params.prompt_logprobs is not None:
            prompt_logprobs = [None] + [
                top_logprobs(distribution(prompt_ids[:i]), prompt_ids[i], params.prompt_logprobs)
                for i in range(1, len(prompt_ids))
            ]
        return RequestOutput(
            request_id=str(id(params)),
            prompt=None,
            prompt_token_ids=prompt_ids,
            prompt_logprobs=prompt_logprobs,
            outputs=[
                CompletionOutput(
                    index=0,
                    text=text,
                    token_ids=generated,
                    cumulative_logprob=None,
                    logprobs=steps if params.logprobs is not None else None,
                    finish_reason=finish,
                )
            ],
        )


@pytest.fixture
def fake_vllm(monkeypatch):
    """Install the fake: every vllm.LLM(...) made during the test is recorded in `.engines`."""
    engines: list[FakeLLM] = []

    def make_llm(model: str, **kwargs: Any) -> FakeLLM:
        engines.append(FakeLLM(model, kwargs))
        return engines[-1]

    module = SimpleNamespace(LLM=make_llm, SamplingParams=SamplingParams, engines=engines)
    monkeypatch.setattr(vb, "vllm_installed", lambda: True)
    monkeypatch.setattr(vb, "_import_vllm", lambda: module)
    monkeypatch.setattr(vb, "_ENGINES", {})
    monkeypatch.setattr(embedded, "_RESOLVED", {})
    return module


def make_client(tmp_path: Path, model: str | None = None, **config: Any) -> vb.VLLMClient:
    backend = VLLMBackend(kind="vllm", **config)
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    return vb.VLLMClient("gpu", backend, model or str(model_dir), tmp_path / "cache")


def expected(prompt: str, params: SamplingParams) -> RequestOutput:
    """What the fake engine gives for one request alone."""
    return FakeLLM("x", {})._run(chat_prompt([{"role": "user", "content": prompt}]), params)


# ---------------------------------------------------------------------------------------------
# Client behaviour on the fake
# ---------------------------------------------------------------------------------------------


def test_is_an_llm_client_with_a_cache_identity(fake_vllm, tmp_path):
    client = make_client(tmp_path, model="org/model", dtype="bfloat16")
    assert isinstance(client, LLMClient)
    assert client.identity() == {"backend": "vllm", "model": "org/model", "dtype": "bfloat16"}
    assert isinstance(create_client(_recipe(tmp_path), "gpu", "m"), vb.VLLMClient)


def test_concurrent_chats_become_one_llm_chat_call_in_input_order(fake_vllm, tmp_path):
    client = make_client(tmp_path)
    prompts = ["Write a poem.", "hi", "Tell me a long story about cats.", "What is 2 + 2?"]
    requests = [
        ChatRequest(user(p), Decoding(temperature=0.0 if i % 2 else 0.9, max_tokens=8 + i, seed=i))
        for i, p in enumerate(prompts)
    ]

    async def go():
        try:
            return await chat_many(client, requests, max_concurrency=8)
        finally:
            await client.aclose()

    results = asyncio.run(go())
    (engine,) = fake_vllm.engines
    assert engine.calls == [("chat", 4)]  # one batch, vLLM schedules it
    for request, prompt, completion in zip(requests, prompts, results, strict=True):
        params = request.params
        alone = expected(
            prompt,
            SamplingParams(temperature=params.temperature, max_tokens=params.max_tokens, seed=params.seed),
        )
        assert completion.ok and completion.text == alone.outputs[0].text
        assert completion.usage.input_tokens == len(alone.prompt_token_ids)
        assert completion.usage.output_tokens == len(alone.outputs[0].token_ids) == params.max_tokens
        assert completion.finish_reason == "length" and completion.latency_s > 0
    # Each request kept its own parameters (seed included); the checkpoint supplied top_k etc.
    seen = engine.params_seen
    assert [p.seed for p in seen] == [0, 1, 2, 3] and [p.max_tokens for p in seen] == [8, 9, 10, 11]
    assert [p.temperature for p in seen] == [0.9, 0.0, 0.9, 0.0]
    assert all(p.top_k == 40 and p.repetition_penalty == 1.1 and p.n == 1 for p in seen)


def test_stop_strings_eos_logprobs_and_usage(fake_vllm, tmp_path):
    client = make_client(tmp_path)
    plain = Decoding(temperature=0.0, max_tokens=12)
    unstopped = expected("Write a poem.", SamplingParams(temperature=0.0, max_tokens=12)).outputs[0].text
    stop = unstopped[4:6]

    async def go():
        try:
            return await asyncio.gather(
                client.chat(user("Write a poem."), plain.model_copy(update={"stop": (stop,)})),
                client.chat(user("a short one"), plain),
                client.chat(user("Write a poem."), plain.model_copy(update={"logprobs": 3})),
            )
        finally:
            await client.aclose()

    stopped, short, with_logprobs = asyncio.run(go())
    assert stopped.finish_reason == "stop" and stopped.text == unstopped[:4] and stop not in stopped.text
    assert short.finish_reason == "stop" and short.usage.output_tokens == 6  # the EOS counts
    assert stopped.logprobs is None and short.logprobs is None
    assert with_logprobs.text == unstopped and len(with_logprobs.logprobs) == 12
    context = chat_prompt([{"role": "user", "content": "Write a poem."}])
    for item in with_logprobs.logprobs:
        dist = distribution(context)
        token_id = ord(item.token)
        assert item.logprob == pytest.approx(dist[token_id])
        assert len(item.top) == 3 and max(item.top.values()) == pytest.approx(max(dist))
        assert list(item.top.values()) == sorted(item.top.values(), reverse=True)
        context = [*context, token_id]


def test_next_token_logprobs_are_exact_inside_and_outside_the_top_20(fake_vllm, tmp_path):
    client = make_client(tmp_path)
    messages = user("Rate this essay from 1 to 10.")
    dist = distribution(chat_prompt(list(messages)))
    ranked = sorted(range(1, VOCAB), key=lambda t: -dist[t])
    inside, outside = chr(ranked[0]), chr(ranked[60])  # in the probe's top 20 / far outside it
    candidates = [inside, outside, "1", "10"]

    async def go():
        try:
            return await client.next_token_logprobs(messages, candidates)
        finally:
            await client.aclose()

    scores = asyncio.run(go())
    assert set(scores) == set(candidates)
    for candidate in candidates:
        assert scores[candidate] == pytest.approx(dist[ord(candidate[0])])
    assert scores["1"] == scores["10"]  # scored by the first token, like the transformers backend
    (engine,) = fake_vllm.engines
    missing = {t for t in {ord(c[0]) for c in candidates} if t not in ranked[:20]}
    assert ord(outside) in missing and ord(inside) not in missing
    assert engine.calls == [("chat", 1), ("generate", len(missing))]  # one scoring prompt per missing token
    probe = engine.params_seen[0]
    assert (probe.max_tokens, probe.temperature, probe.logprobs) == (1, 0.0, 20)


def test_a_bad_request_fails_alone_and_chat_never_raises(fake_vllm, tmp_path):
    client = make_client(tmp_path)
    params = Decoding(temperature=0.0, max_tokens=4)

    async def go():
        try:
            return await asyncio.gather(
                client.chat(user("hi"), params),
                client.chat(user("TOO LONG " * 10), params),
                client.chat(user("there"), params),
            )
        finally:
            await client.aclose()

    first, bad, last = asyncio.run(go())
    assert first.ok and last.ok
    assert not bad.ok and bad.text is None and "maximum context length" in bad.error
    (engine,) = fake_vllm.engines
    assert engine.calls == [("chat", 3), ("chat", 1), ("chat", 1), ("chat", 1)]  # retried one by one


def test_engines_load_once_per_settings_and_failures_are_completions(fake_vllm, tmp_path, monkeypatch):
    a = make_client(tmp_path, tensor_parallel_size=2, gpu_memory_utilization=0.5, dtype="float16")
    b = make_client(tmp_path, tensor_parallel_size=2, gpu_memory_utilization=0.5, dtype="float16")
    c = make_client(tmp_path, max_model_len=4096)
    params = Decoding(temperature=0.0, max_tokens=2)

    async def go():
        try:
            return await asyncio.gather(*(client.chat(user("hi"), params) for client in (a, b, c)))
        finally:
            for client in (a, b, c):
                await client.aclose()

    assert all(r.ok for r in asyncio.run(go()))
    assert len(fake_vllm.engines) == 2  # a and b share one engine
    shared, other = sorted(fake_vllm.engines, key=lambda e: e.kwargs["tensor_parallel_size"], reverse=True)
    assert shared.model == str((tmp_path / "model").resolve())
    assert shared.kwargs == {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.5, "dtype": "float16"}
    assert other.kwargs["max_model_len"] == 4096 and other.kwargs["dtype"] == "auto"

    def broken(model: str, **kwargs: Any):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(vb, "_ENGINES", {})
    monkeypatch.setattr(fake_vllm, "LLM", broken)
    client = make_client(tmp_path)

    async def failing():
        try:
            completion = await client.chat(user("hi"), params)
            with pytest.raises(RuntimeError, match="out of memory"):
                await client.next_token_logprobs(user("hi"), ["A"])
            return completion
        finally:
            await client.aclose()

    completion = asyncio.run(failing())
    assert not completion.ok and "CUDA out of memory" in completion.error
    closed = asyncio.run(client.chat(user("hi"), params))
    assert not closed.ok and "closed" in closed.error


# ---------------------------------------------------------------------------------------------
# The real vLLM on a GPU (skipped here)
# ---------------------------------------------------------------------------------------------


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def needs_vllm_gpu(test):
    """Marked `vllm` and `gpu`; skipped cleanly without vllm or without CUDA."""
    for mark in (
        pytest.mark.vllm,
        pytest.mark.gpu,
        pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed"),
        pytest.mark.skipif(not _cuda(), reason="no CUDA GPU"),
    ):
        test = mark(test)
    return test


@pytest.fixture(scope="module")
def vllm_model_dir(tmp_path_factory) -> Path:
    """A random 2-layer Llama with the SmolLM2 tokenizer, head size 64 (vLLM's kernels want >= 32)."""
    from tests.support.tiny_model import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("vllm-tiny"), hidden_size=128, num_heads=2)


@pytest.fixture(scope="module")
def gpu_client(vllm_model_dir, tmp_path_factory):
    backend = VLLMBackend(kind="vllm", gpu_memory_utilization=0.3, max_model_len=1024, dtype="bfloat16")
    return vb.VLLMClient("gpu", backend, str(vllm_model_dir), tmp_path_factory.mktemp("cache"))


@needs_vllm_gpu
def test_gpu_greedy_generation_through_chat_many_in_input_order(gpu_client, vllm_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(vllm_model_dir)
    prompts = ["hi", "Write a poem.", "Tell me a long story about cats, with many details please.", "2 + 2?"]
    requests = [ChatRequest(user(p), Decoding(temperature=0.0, max_tokens=16, logprobs=2)) for p in prompts]

    async def go():
        first = await chat_many(gpu_client, requests, max_concurrency=8)
        again = await gpu_client.chat(user("hi"), Decoding(temperature=1.0, max_tokens=16, seed=7))
        repeat = await gpu_client.chat(user("hi"), Decoding(temperature=1.0, max_tokens=16, seed=7))
        return first, again, repeat

    results, again, repeat = asyncio.run(go())
    for prompt, completion in zip(prompts, results, strict=True):
        assert completion.ok, completion.error
        prompt_ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        # Distinct prompt lengths: each result belongs to its own request.
        assert completion.usage.input_tokens == len(tokenizer.encode(prompt_ids, add_special_tokens=False))
        assert 0 < completion.usage.output_tokens <= 16 and completion.finish_reason in ("stop", "length")
        assert len(completion.logprobs) == completion.usage.output_tokens
        assert all(math.isfinite(t.logprob) and len(t.top) <= 2 for t in completion.logprobs)
    assert again.ok and again.text == repeat.text  # per-request seeds


@needs_vllm_gpu
def test_gpu_next_token_logprobs_are_finite(gpu_client):
    async def go():
        return await asyncio.gather(
            gpu_client.next_token_logprobs(user("Which is better, A or B?"), ["A", "B"]),
            gpu_client.next_token_logprobs(user("Score it from 1 to 10."), ["1", "5", "10"]),
        )

    verdict, score = asyncio.run(go())
    assert set(verdict) == {"A", "B"} and set(score) == {"1", "5", "10"}
    assert all(math.isfinite(v) and v <= 0 for v in [*verdict.values(), *score.values()])
    assert score["1"] == score["10"]


def test_curation_engines_are_shut_down_and_forgotten_before_training(fake_vllm, tmp_path):
    """The train stage calls `release_local_engines()` before it launches the trainer, which then
    owns the GPUs: every engine's core is shut down and the process keeps no reference to it."""
    from tasks.llm.registry import release_local_engines

    client = make_client(tmp_path)

    async def go():
        try:
            return await chat_many(client, [ChatRequest(user("hi"), Decoding(max_tokens=4, seed=0))])
        finally:
            await client.aclose()

    asyncio.run(go())
    (engine,) = fake_vllm.engines
    shut_down = []
    engine.llm_engine = SimpleNamespace(engine_core=SimpleNamespace(shutdown=lambda: shut_down.append(True)))
    assert release_local_engines() >= 1
    assert shut_down == [True] and vb._ENGINES == {}
    assert release_local_engines() == 0  # nothing left to release
