"""No call paid twice: the response cache in storage, and per-stage usage accounting."""

from __future__ import annotations

import asyncio

import pyarrow as pa
import pytest

from configs.schema import Decoding, Price, Recipe, StorageConfig
from storage import open_storage
from tasks.llm.base import ChatRequest, Completion, EndpointFailingError, Usage, chat_many
from tasks.llm.cache import CachingClient, UsageMeter
from tasks.stages.runner import StageOutput, StageSpec, run_stage


class FakeBackend:
    """Answers with a text derived from the request; can fail or stop on chosen calls."""

    def __init__(self, model="fake-model", fail_on=(), endpoint_down_at=None, attempts=1):
        self.backend_name, self.model = "fake", model
        self.calls: list[tuple[str, int | None, int]] = []
        self.fail_on, self.endpoint_down_at, self.attempts = set(fail_on), endpoint_down_at, attempts

    def identity(self):
        return {"backend": "fake", "model": self.model}

    async def chat(self, messages, params, *, sample_index=0):
        n = len(self.calls)
        if self.endpoint_down_at is not None and n >= self.endpoint_down_at:
            raise EndpointFailingError("endpoint 'fake' failed 3 requests in a row")
        self.calls.append((messages[-1]["content"], params.seed, sample_index))
        await asyncio.sleep(0.001 * (n % 3))  # finish out of order
        if messages[-1]["content"] in self.fail_on:
            return Completion.failure("HTTP 500 from fake", attempts=self.attempts)
        text = f"answer to {messages[-1]['content']} #{sample_index} seed={params.seed}"
        return Completion(text=text, finish_reason="stop", usage=Usage(10, 20), attempts=self.attempts)

    async def aclose(self):
        pass


def _requests(prompts, samples=1, seed=0):
    params = Decoding(seed=seed, max_tokens=16)
    return [
        ChatRequest(({"role": "user", "content": p},), params, sample_index=i)
        for p in prompts
        for i in range(samples)
    ]


@pytest.fixture
def storage(tmp_path):
    return open_storage(StorageConfig(root=tmp_path / "store"))


def test_a_completed_call_is_never_made_again(storage):
    backend = FakeBackend()
    first = asyncio.run(
        chat_many(CachingClient(backend, storage.responses, stage_run_id="s1"), _requests("abc"))
    )
    again = asyncio.run(
        chat_many(CachingClient(backend, storage.responses, stage_run_id="s2"), _requests("abc"))
    )
    assert len(backend.calls) == 3
    assert [c.text for c in again] == [c.text for c in first]
    assert all(c.cached for c in again) and not any(c.cached for c in first)
    assert [c.usage for c in again] == [Usage(10, 20)] * 3


def test_n_samples_of_one_prompt_are_distinct_entries_even_without_a_seed(storage):
    backend = FakeBackend()
    client = CachingClient(backend, storage.responses, stage_run_id="s1")
    out = asyncio.run(chat_many(client, _requests(["p"], samples=3, seed=None)))
    assert len({c.text for c in out}) == 3 and storage.responses.count() == 3
    asyncio.run(chat_many(client, _requests(["p"], samples=3, seed=None)))
    assert len(backend.calls) == 3


def test_failures_are_not_cached_and_are_retried_next_run(storage):
    backend = FakeBackend(fail_on={"b"})
    out = asyncio.run(
        chat_many(CachingClient(backend, storage.responses, stage_run_id="s1"), _requests("abc"))
    )
    assert [c.ok for c in out] == [True, False, True]
    assert storage.responses.count() == 2
    healed = FakeBackend()
    again = asyncio.run(
        chat_many(CachingClient(healed, storage.responses, stage_run_id="s2"), _requests("abc"))
    )
    assert [c[0] for c in healed.calls] == ["b"] and all(c.ok for c in again)


def test_results_are_persisted_as_they_arrive_so_a_stopped_batch_resumes(storage):
    backend = FakeBackend(endpoint_down_at=4)
    client = CachingClient(backend, storage.responses, stage_run_id="s1")
    with pytest.raises(EndpointFailingError):
        asyncio.run(chat_many(client, _requests("abcdefgh"), max_concurrency=1))
    assert storage.responses.count() == 4  # written before the batch stopped, not at its end
    resumed = FakeBackend()
    out = asyncio.run(
        chat_many(CachingClient(resumed, storage.responses, stage_run_id="s2"), _requests("abcdefgh"))
    )
    assert sorted(c[0] for c in resumed.calls) == list("efgh")  # only what was never completed
    assert all(c.ok for c in out)


def test_the_key_covers_model_messages_params_and_sample_index(storage):
    client = CachingClient(FakeBackend(), storage.responses, stage_run_id=None)
    other_model = CachingClient(FakeBackend(model="other"), storage.responses, stage_run_id=None)
    msgs = ({"role": "user", "content": "x"},)
    base = client.key(msgs, Decoding(seed=0))
    assert len({
        base,
        other_model.key(msgs, Decoding(seed=0)),
        client.key(({"role": "user", "content": "y"},), Decoding(seed=0)),
        client.key(msgs, Decoding(seed=1)),
        client.key(msgs, Decoding(seed=0, temperature=0.1)),
        client.key(msgs, Decoding(seed=0), sample_index=1),
    }) == 6  # fmt: skip
    assert client.key(msgs, Decoding(seed=0)) == base


def test_usage_meter_counts_requests_hits_failures_retries_tokens_and_cost(storage):
    meter = UsageMeter({"fake-model": Price(input_per_mtok=1.0, output_per_mtok=2.0)})
    backend = FakeBackend(fail_on={"b"}, attempts=3)
    asyncio.run(
        chat_many(CachingClient(backend, storage.responses, stage_run_id="s", meter=meter), _requests("abc"))
    )
    asyncio.run(
        chat_many(CachingClient(backend, storage.responses, stage_run_id="s", meter=meter), _requests("a"))
    )
    (row,) = meter.rows("s")
    assert (row["requests"], row["cache_hits"], row["failures"], row["retries"]) == (3, 1, 1, 6)
    assert (row["input_tokens"], row["output_tokens"]) == (20, 40)  # failed calls report no tokens
    assert row["cost_usd"] == pytest.approx((20 * 1.0 + 40 * 2.0) / 1e6)
    assert UsageMeter().rows("s") == []


def test_the_stage_runner_records_usage_per_stage_run(tmp_path, monkeypatch):
    import tasks.stages.runner as runner

    backend = FakeBackend()
    monkeypatch.setattr(runner, "create_client", lambda recipe, name, model: backend)
    recipe = Recipe.model_validate({
        "name": "t", "storage": {"root": str(tmp_path / "store")},
        "backends": {"local": {"kind": "transformers"}},
        "generators": [{"name": "policy", "role": "policy", "backend": "local", "model": "fake-model"}],
        "prices": {"fake-model": {"input_per_mtok": 1.0, "output_per_mtok": 1.0}},
    })  # fmt: skip

    def compute(ctx):
        out = asyncio.run(chat_many(ctx.llm("local", "fake-model"), _requests("ab")))
        return StageOutput({"out": pa.table({"text": [c.text for c in out]})})

    spec = StageSpec("toy", 1, inputs=(), outputs=("out",), description="", config_slice=lambda r: {})
    result = run_stage(spec, compute, recipe)
    assert result.summary["llm"]["requests"] == 2 and result.summary["llm"]["cost_usd"] == pytest.approx(
        60 / 1e6
    )
    storage = open_storage(recipe.storage)
    with storage.catalog.connect() as con:
        rows = con.execute(
            "SELECT stage_run_id, backend, model, requests, input_tokens FROM llm_usage"
        ).fetchall()
    assert rows == [(result.stage_run_id, "fake", "fake-model", 2, 20)]


class FakeProbeBackend(FakeBackend):
    """Also has the logprob judge's probe; fails on chosen prompts (it raises, as real probes do)."""

    def __init__(self, fail_on=()):
        super().__init__(fail_on=fail_on)
        self.probes: list[str] = []

    async def next_token_logprobs(self, messages, candidates):
        self.probes.append(messages[-1]["content"])
        if messages[-1]["content"] in self.fail_on:
            raise RuntimeError("CUDA out of memory")
        return {c: -float(i) - 0.25 for i, c in enumerate(candidates)}


def test_logprob_probes_are_cached_and_failures_are_not(storage):
    async def probe_all(client, prompts, candidates=("1", "2")):
        results = []
        for prompt in prompts:
            try:
                results.append(
                    await client.next_token_logprobs([{"role": "user", "content": prompt}], candidates)
                )
            except RuntimeError as exc:
                results.append(str(exc))
        return results

    first_backend = FakeProbeBackend(fail_on={"b"})
    meter = UsageMeter()
    first = asyncio.run(
        probe_all(CachingClient(first_backend, storage.responses, stage_run_id="s1", meter=meter), "abc")
    )
    assert first == [{"1": -0.25, "2": -1.25}, "CUDA out of memory", {"1": -0.25, "2": -1.25}]
    assert meter.summary()["requests"] == 2 and meter.summary()["cache_hits"] == 0

    again_backend = FakeProbeBackend()
    again_meter = UsageMeter()
    client = CachingClient(again_backend, storage.responses, stage_run_id="s2", meter=again_meter)
    again = asyncio.run(probe_all(client, "abc"))
    assert again == [{"1": -0.25, "2": -1.25}] * 3
    assert again_backend.probes == ["b"]  # only the failed probe is asked again
    assert again_meter.summary()["cache_hits"] == 2
    # Other candidates are another question: not served from the cache.
    asyncio.run(probe_all(client, "a", candidates=("1", "2", "3")))
    assert again_backend.probes == ["b", "a"]


def test_a_backend_without_a_probe_has_none_behind_the_cache(storage):
    client = CachingClient(FakeBackend(), storage.responses, stage_run_id="s1")
    assert getattr(client, "next_token_logprobs", None) is None


def test_concurrent_identical_calls_are_sent_once_and_shared_as_cache_hits(storage):
    """The same call asked by several callers at once (equal judge prompts, a duplicated
    instruction) reaches the backend once; the others get its answer, metered as cache hits."""
    backend = FakeBackend()
    meter = UsageMeter()
    client = CachingClient(backend, storage.responses, stage_run_id="sr", meter=meter)
    same = ChatRequest(({"role": "user", "content": "twice"},), Decoding(seed=1))
    other = ChatRequest(({"role": "user", "content": "once"},), Decoding(seed=1))
    results = asyncio.run(chat_many(client, [same, same, other, same], max_concurrency=8))
    assert [c.text for c in results] == [results[0].text] * 2 + [results[2].text, results[0].text]
    assert sorted(text for text, _, _ in backend.calls) == ["once", "twice"]
    (row,) = meter.rows("sr")
    assert (row["requests"], row["cache_hits"]) == (2, 2)
    assert storage.responses.count() == 2
