"""Batch mode (tasks/llm/batch.py) through the real openai and anthropic SDKs against the fault
server's batch endpoints: the same rows as live calls under the same cache keys, the batch price,
per-item failures that are never answers and are asked again, the maximum wait, and a rerun that
waits for a recorded batch instead of submitting again."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from configs.schema import Decoding, Price, StorageConfig
from storage import open_storage
from tasks.llm.base import ChatRequest, chat_many
from tasks.llm.batch import BatchingClient
from tasks.llm.cache import CachingClient, UsageMeter
from tasks.llm.limits import reset_limits
from tasks.llm.registry import create_client
from tests.support.fault_server import BatchFault, FaultServer
from tests.support.recipes import policy_recipe

GREEDY = Decoding(temperature=0.0, max_tokens=64)
# Fast polling for a local server; what a recipe sets is in configs/schema.py (_APIBackendBase).
FAST = {"batch_poll_interval_s": 0.02, "batch_collect_s": 0.05, "timeout_s": 5.0, "max_retries": 1}
PROVIDERS = ("openai", "anthropic")


@pytest.fixture(autouse=True)
def _fresh_limits():
    reset_limits()
    yield
    reset_limits()


def backend_for(server: FaultServer, provider: str, **options: Any) -> dict[str, Any]:
    if provider == "openai":
        return {"kind": "openai-compatible", "base_url": server.openai_base_url, **FAST, **options}
    return {
        "kind": "anthropic",
        "base_url": server.base_url,
        "api_key_env": "WRL_TEST_KEY",
        **FAST,
        **options,
    }


def requests(n: int, params: Decoding = GREEDY) -> list[ChatRequest]:
    """n prompts of 1..n words, some cut by max_tokens (finish "length"), one with a stop."""
    out = []
    for i in range(n):
        words = " ".join(f"w{j}" for j in range(i + 1))
        p = params.model_copy(update={"max_tokens": 2}) if i % 3 == 2 else params
        out.append(
            ChatRequest(({"role": "system", "content": "be brief"}, {"role": "user", "content": words}), p)
        )
    return out


def run_batch(server, provider, store, work, *, batch=True, prices=None, **options):
    """Requests through CachingClient(BatchingClient(client)) (or the live client when not batch)
    on the store at `store`: (completions, meter, storage)."""
    storage = open_storage(StorageConfig(root=store))
    recipe = policy_recipe({"api": backend_for(server, provider, batch=batch, **options)}, "m")
    meter = UsageMeter(prices)

    async def main():
        inner = create_client(recipe, "api", "m")
        if batch:
            inner = BatchingClient(inner, storage.batches, stage_run_id="sr")
        client = CachingClient(inner, storage.responses, stage_run_id="sr", meter=meter)
        try:
            return await chat_many(client, work, max_concurrency=len(work) or 1)
        finally:
            await client.aclose()

    return asyncio.run(main()), meter, storage


def cached_rows(storage) -> dict[str, tuple]:
    with storage.catalog.connect() as con:
        rows = con.execute(
            "SELECT cache_key, text, finish_reason, input_tokens, output_tokens, logprobs_json FROM llm_responses"
        ).fetchall()
    return {r[0]: r[1:] for r in rows}


def calls(server: FaultServer, suffix: str) -> int:
    return sum(1 for r in server.requests if r.path.endswith(suffix))


LIVE = {"openai": "/chat/completions", "anthropic": "/v1/messages"}
CREATE = {"openai": "/v1/batches", "anthropic": "/v1/messages/batches"}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_batch_gives_the_live_rows_under_the_same_keys_at_the_batch_price(
    provider, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("WRL_TEST_KEY", "k")
    work = requests(7)
    price = {"m": Price(input_per_mtok=2.0, output_per_mtok=8.0)}
    with FaultServer(batch_latency_s=0.1) as server:
        live, live_meter, live_store = run_batch(
            server, provider, tmp_path / "live", work, batch=False, prices=price
        )
        assert calls(server, CREATE[provider]) == 0
        server.clear()
        batched, meter, store = run_batch(server, provider, tmp_path / "batch", work, prices=price)
        # One batch for the whole wave, and not one live call.
        assert calls(server, CREATE[provider]) == 1 and calls(server, LIVE[provider]) == 0
        server.clear()
        # Run again: every answer is a cache hit, nothing reaches the server.
        again, _, _ = run_batch(server, provider, tmp_path / "batch", work)
        assert server.requests == [] and all(c.cached for c in again)
    assert [c.ok for c in batched] == [True] * 7 and all(c.batched for c in batched)
    assert [(c.text, c.finish_reason, c.usage) for c in batched] == [
        (c.text, c.finish_reason, c.usage) for c in live
    ]
    assert {c.finish_reason for c in batched} == {"stop", "length"}
    assert cached_rows(store) == cached_rows(live_store)  # same keys, same rows
    (row,) = meter.rows("sr")
    (live_row,) = live_meter.rows("sr")
    assert row["batched_requests"] == row["requests"] == 7 and live_row["batched_requests"] == 0
    assert (
        row["input_tokens"] == live_row["input_tokens"] and row["batched_input_tokens"] == row["input_tokens"]
    )
    assert row["cost_usd"] == pytest.approx(live_row["cost_usd"] * 0.5)
    (recorded,) = store.batches.batches()
    assert recorded["requests"] == 7 and recorded["succeeded"] == 7 and recorded["failed"] == 0
    assert recorded["provider"] == provider and recorded["stage_run_id"] == "sr"


@pytest.mark.parametrize(
    ("provider", "fault"),
    [
        ("openai", BatchFault("partial", every=2)),
        ("anthropic", BatchFault("partial", every=2)),
        ("openai", BatchFault("expire", every=3)),
        ("anthropic", BatchFault("expire", every=3)),
        ("openai", BatchFault("missing_lines", every=2)),
        ("anthropic", BatchFault("missing_lines", every=2)),
        ("openai", BatchFault("fail")),
        ("anthropic", BatchFault("fail")),
    ],
    ids=lambda v: v if isinstance(v, str) else v.kind,
)
def test_items_a_batch_fails_are_failures_and_the_next_run_asks_only_for_them(
    provider, fault, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("WRL_TEST_KEY", "k")
    work = requests(6)
    with FaultServer(batch_faults=[fault], batch_latency_s=0.05) as server:
        first, meter, store = run_batch(server, provider, tmp_path / "s", work)
        failed = [i for i, c in enumerate(first) if not c.ok]
        expected = {
            "partial": [1, 3, 5],
            "expire": [2, 5],
            "missing_lines": [1, 3, 5],
            "fail": list(range(6)),
        }
        assert failed == expected[fault.kind]
        assert all(c.text is None and c.error and "batch" in c.error for c in first if not c.ok)
        assert len(cached_rows(store)) == 6 - len(failed)  # a failure is never stored as an answer
        (batch,) = store.batches.batches()
        assert batch["failed"] == len(failed)
        assert sum(i["failed"] for i in store.batches.items(batch["batch_id"])) == len(failed)
        assert meter.rows("sr")[0]["failures"] == len(failed)

        second, _, _ = run_batch(server, provider, tmp_path / "s", work)
        assert all(c.ok for c in second)
        retry = store.batches.batches()[-1]
        assert len(store.batches.batches()) == 2 and retry["requests"] == len(failed)
        assert [c.cached for c in second] == [i not in failed for i in range(6)]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_batch_past_the_maximum_wait_stays_recorded_and_the_next_run_waits_for_it(
    provider, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("WRL_TEST_KEY", "k")
    work = requests(4)
    with FaultServer(batch_latency_s=1.5) as server:
        first, _, store = run_batch(server, provider, tmp_path / "s", work, batch_max_wait_s=0.2)
        assert not any(c.ok for c in first)
        assert all("had not ended after 0.2 s" in c.error for c in first)
        (batch,) = store.batches.batches()
        assert batch["ended_at"] is None and not any(
            i["failed"] for i in store.batches.items(batch["batch_id"])
        )

        second, _, _ = run_batch(server, provider, tmp_path / "s", work)
        assert all(c.ok and c.batched for c in second)
        assert calls(server, CREATE[provider]) == 1  # waited for the recorded batch; submitted nothing
        assert len(cached_rows(store)) == 4


@pytest.mark.parametrize("provider", PROVIDERS)
def test_batches_are_split_within_the_providers_request_limit(provider, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WRL_TEST_KEY", "k")
    monkeypatch.setattr(
        "tasks.llm.openai_backend.OpenAIBatchAPI.max_requests" if provider == "openai"
        else "tasks.llm.anthropic_backend.AnthropicBatchAPI.max_requests", 3,
    )  # fmt: skip
    with FaultServer(batch_latency_s=0.05, batch_max_requests=3) as server:
        done, _, store = run_batch(server, provider, tmp_path / "s", requests(7))
    assert all(c.ok for c in done)
    assert sorted(b["requests"] for b in store.batches.batches()) == [1, 3, 3]


def test_a_failed_submission_fails_its_items_and_records_no_batch(tmp_path) -> None:
    with FaultServer(["500", "500"]) as server:
        done, _, store = run_batch(server, "openai", tmp_path / "s", requests(3))
    assert not any(c.ok for c in done) and all("HTTP 500" in c.error for c in done)
    assert store.batches.batches() == []


def test_batch_settings_are_operational_and_a_local_server_cannot_batch() -> None:
    from pydantic import ValidationError

    from configs.schema import AnthropicBackend, OpenAICompatibleBackend

    live = OpenAICompatibleBackend(kind="openai-compatible", base_url="http://x/v1")
    batch = OpenAICompatibleBackend(
        kind="openai-compatible", base_url="http://x/v1", batch=True, batch_poll_interval_s=5,
        batch_max_wait_s=60, batch_collect_s=3,
    )  # fmt: skip
    assert live.identity() == batch.identity()  # switching batch mode keys no stage afresh
    assert (
        AnthropicBackend(kind="anthropic", batch=True).identity()
        == AnthropicBackend(kind="anthropic").identity()
    )
    with pytest.raises(ValidationError, match=r"serve_locally.*no batch API"):
        OpenAICompatibleBackend(kind="openai-compatible", serve_locally={}, batch=True)
    with pytest.raises(ValidationError):  # an in-process backend has no batch API, nor the field
        policy_recipe({"local": {"kind": "transformers", "batch": True}})
