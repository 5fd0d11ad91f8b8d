"""No call is ever paid for twice: a client wrapper backed by the response cache in storage.

The key hashes the backend identity (kind, model, endpoint; never a key or a rate limit), the
messages, the decoding params (seed included) and the sample index, so n>1 samples of one
prompt are distinct entries. Concurrent identical calls (the same key: two equal responses
judged on one criterion, a duplicated instruction) are sent once; the others share its answer
as a cache hit. A successful completion is written to the catalog the moment it
arrives (from a worker thread, inside the storage lock), so a process killed mid-batch loses
nothing it has paid for. Failed completions are not stored: the next run retries them.

In-process backends' `next_token_logprobs` (the logprob judge's probe) goes through the same
cache: its key adds the candidate tokens, and the row keeps the logprobs as JSON.

`UsageMeter` counts requests, cache hits, failures, retries, tokens and cost per backend and
model for one stage run; the stage runner writes it to `llm_usage` when the stage ends.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from configs.loading import stable_hash
from configs.schema import Decoding, Price
from storage import ResponseCache
from tasks.llm.base import ChatRequest, Completion, LLMClient, Message, TokenLogprob, Usage


@dataclass
class UsageCounts:
    requests: int = 0  # calls that reached the backend
    cache_hits: int = 0
    failures: int = 0
    retries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    # Of the above, what went through a provider batch (Price.batch_discount applies).
    batched_requests: int = 0
    batched_input_tokens: int = 0
    batched_output_tokens: int = 0


class UsageMeter:
    """Thread-safe usage counters for one stage run, keyed by (backend name, model)."""

    def __init__(self, prices: Mapping[str, Price] | None = None):
        self.prices = dict(prices or {})
        self._counts: dict[tuple[str, str], UsageCounts] = defaultdict(UsageCounts)
        self._lock = threading.Lock()

    def record(self, backend: str, model: str, completion: Completion) -> None:
        with self._lock:
            counts = self._counts[(backend, model)]
            if completion.cached:
                counts.cache_hits += 1
                return
            if completion.attempts == 0:  # never sent (refused by a budget): not a request
                return
            counts.requests += 1
            counts.retries += max(0, completion.attempts - 1)
            if completion.error is not None:
                counts.failures += 1
            counts.input_tokens += completion.usage.input_tokens
            counts.output_tokens += completion.usage.output_tokens
            if completion.batched:
                counts.batched_requests += 1
                counts.batched_input_tokens += completion.usage.input_tokens
                counts.batched_output_tokens += completion.usage.output_tokens

    def absorb(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Add another meter's `rows` (the trainer's rank 0 meters its judge in its own process)."""
        with self._lock:
            for row in rows:
                counts = self._counts[(row["backend"], row["model"])]
                for name in asdict(counts):
                    setattr(counts, name, getattr(counts, name) + int(row.get(name, 0)))

    def cost_usd(self, model: str, counts: UsageCounts) -> float | None:
        price = self.prices.get(model)
        if price is None:
            return None
        live_input = counts.input_tokens - counts.batched_input_tokens
        live_output = counts.output_tokens - counts.batched_output_tokens
        return price.cost(live_input, live_output) + price.cost(
            counts.batched_input_tokens, counts.batched_output_tokens, batched=True
        )

    def rows(self, stage_run_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"stage_run_id": stage_run_id, "backend": backend, "model": model, **asdict(counts),
                 "cost_usd": self.cost_usd(model, counts)}
                for (backend, model), counts in sorted(self._counts.items())
            ]  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """Totals for stage summaries and artifacts."""
        rows = self.rows("")
        totals = {k: sum(r[k] for r in rows) for k in asdict(UsageCounts())}
        costs = [r["cost_usd"] for r in rows if r["cost_usd"] is not None]
        return {**totals, "cost_usd": round(sum(costs), 6) if costs else None}


def response_cache_key(identity: Mapping[str, Any], messages: Sequence[Message], params: Decoding,
                       sample_index: int) -> str:  # fmt: skip
    return stable_hash(
        {"identity": dict(identity), "messages": [dict(m) for m in messages],
         "params": params.model_dump(mode="json"), "sample_index": sample_index}
    )  # fmt: skip


class CachingClient:
    """An LLMClient that answers from the response cache when it can and stores what it pays for."""

    def __init__(self, inner: LLMClient, cache: ResponseCache, *, stage_run_id: str | None,
                 meter: UsageMeter | None = None):  # fmt: skip
        self.inner = inner
        self.cache = cache
        self.stage_run_id = stage_run_id
        self.meter = meter
        self.backend_name = inner.backend_name
        self.model = inner.model
        self._known: dict[str, dict[str, Any]] = {}  # prefetched rows
        self._in_flight: dict[str, asyncio.Future[Completion]] = {}  # key -> the answer on its way
        self._waiting: dict[str, list[asyncio.Future[dict[str, Any] | None]]] = {}

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    def key(self, messages: Sequence[Message], params: Decoding, sample_index: int = 0) -> str:
        return response_cache_key(self.inner.identity(), messages, params, sample_index)

    async def prefetch(self, requests: Sequence[ChatRequest]) -> int:
        """Load the cached rows for a batch with one query instead of one per call."""
        keys = [self.key(r.messages, r.params, r.sample_index) for r in requests]
        found = await asyncio.to_thread(self.cache.get_many, keys)
        self._known.update(found)
        return len(found)

    async def chat(
        self, messages: Sequence[Message], params: Decoding, *, sample_index: int = 0
    ) -> Completion:
        key = self.key(messages, params, sample_index)
        row = self._known.get(key)
        if row is None:
            row = await self._lookup(key)
        if row is not None:
            completion = _from_row(row)
        elif (asked := self._in_flight.get(key)) is not None:
            # The same call is on its way for another caller: share its answer, paid once.
            completion = await asyncio.shield(asked)
            if completion.ok:
                completion = replace(completion, cached=True)
        else:
            completion = await self._call(key, messages, params, sample_index)
        if self.meter is not None:
            self.meter.record(self.backend_name, self.model, completion)
        return completion

    async def _call(
        self, key: str, messages: Sequence[Message], params: Decoding, sample_index: int
    ) -> Completion:
        answer: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = answer
        try:
            completion = await self.inner.chat(messages, params, sample_index=sample_index)
            if completion.ok:
                await asyncio.to_thread(self.cache.put, self._row(key, sample_index, completion))
            answer.set_result(completion)
            return completion
        except asyncio.CancelledError:  # the others fail this time, and ask again next run
            answer.set_result(Completion.failure("cancelled: the same call, made for another caller"))
            raise
        except BaseException as exc:  # EndpointFailingError, a bug: the others raise it too
            answer.set_exception(exc)
            answer.exception()  # retrieved, so a call that nobody shared logs no "never retrieved"
            raise
        finally:
            del self._in_flight[key]

    async def _lookup(self, key: str) -> dict[str, Any] | None:
        """Look `key` up together with every other key asked for in the same event-loop tick:
        one query for a burst of concurrent calls, so they also reach the backend together (an
        in-process backend batches what arrives together)."""
        future: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        first = not self._waiting
        self._waiting.setdefault(key, []).append(future)
        if first:
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self._flush_lookups()))
        return await future

    async def _flush_lookups(self) -> None:
        waiting, self._waiting = self._waiting, {}
        try:
            found = await asyncio.to_thread(self.cache.get_many, list(waiting))
        except Exception as exc:
            for futures in waiting.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        for key, futures in waiting.items():
            for future in futures:
                if not future.done():
                    future.set_result(found.get(key))

    def _row(self, key: str, sample_index: int, completion: Completion) -> dict[str, Any]:
        logprobs = None
        if completion.logprobs is not None:
            logprobs = json.dumps([asdict(t) for t in completion.logprobs], ensure_ascii=False)
        return {
            "cache_key": key, "backend": self.backend_name, "model": self.model, "sample_index": sample_index,
            "text": completion.text, "finish_reason": completion.finish_reason,
            "input_tokens": completion.usage.input_tokens, "output_tokens": completion.usage.output_tokens,
            "latency_s": completion.latency_s, "attempts": completion.attempts, "logprobs_json": logprobs,
            "stage_run_id": self.stage_run_id,
        }  # fmt: skip

    async def _cached_next_token_logprobs(
        self, messages: Sequence[Message], candidates: Sequence[str]
    ) -> dict[str, float]:
        key = stable_hash(
            {"identity": self.inner.identity(), "messages": [dict(m) for m in messages],
             "probe": "next_token_logprobs", "candidates": list(candidates)}
        )  # fmt: skip
        row = self._known.get(key) or await self._lookup(key)
        if row is not None:
            if self.meter is not None:
                self.meter.record(self.backend_name, self.model, Completion(text="", cached=True))
            return {token: float(value) for token, value in json.loads(row["logprobs_json"]).items()}
        started = time.perf_counter()
        # Raises on failure, as the inner probe does: nothing is stored, the next run asks again.
        logprobs = await self.inner.next_token_logprobs(messages, candidates)  # type: ignore[attr-defined]
        latency = time.perf_counter() - started
        row = {
            "cache_key": key, "backend": self.backend_name, "model": self.model, "sample_index": 0,
            "text": "", "finish_reason": "next_token_logprobs", "input_tokens": 0, "output_tokens": 0,
            "latency_s": latency, "attempts": 1, "logprobs_json": json.dumps(logprobs, ensure_ascii=False),
            "stage_run_id": self.stage_run_id,
        }  # fmt: skip
        await asyncio.to_thread(self.cache.put, row)
        if self.meter is not None:
            self.meter.record(self.backend_name, self.model, Completion(text="", latency_s=latency))
        return logprobs

    def forget_prefixes(self) -> None:
        """The inner client's, when it keeps prompt prefixes across calls (transformers)."""
        forget = getattr(self.inner, "forget_prefixes", None)
        if forget is not None:
            forget()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __getattr__(self, name: str) -> Any:
        # The logprob probe exists exactly when the inner backend has one (judges check with getattr).
        if name == "next_token_logprobs" and callable(getattr(self.inner, name, None)):
            return self._cached_next_token_logprobs
        return getattr(self.inner, name)


def _from_row(row: Mapping[str, Any]) -> Completion:
    logprobs = None
    if row.get("logprobs_json"):
        logprobs = tuple(TokenLogprob(**t) for t in json.loads(row["logprobs_json"]))
    return Completion(
        text=row["text"], finish_reason=row["finish_reason"],
        usage=Usage(row["input_tokens"], row["output_tokens"]), latency_s=row["latency_s"],
        logprobs=logprobs, attempts=row["attempts"], cached=True,
    )  # fmt: skip
