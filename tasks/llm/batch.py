"""Batch mode: a stage's calls go through the provider's batch API at about half the price.

`BatchingClient` is an `LLMClient` over a `RemoteClient` whose backend says `batch: true`. The
stages that can wait for answers (generate, score, evaluate: `StageSpec.batches`) get it from
`StageContext.llm`, behind the response cache as a live client is; training never does.

- **Collect.** `chat` does not call: it queues the request under its response-cache key and
  waits. Once no new request has come for `batch_collect_s`, the queue is submitted, split within
  the provider's limits (requests and bytes). A stage issues its calls together (its concurrency
  is lifted for a batching backend: `StageContext.concurrency`), so one wave of work is one batch;
  calls that depend on answers (AgentWrite's sections, a judge's re-ask) are the next wave.
- **Record, then wait.** The batch id and every item's custom_id (its cache key) go into the
  catalog (`storage.batches.BatchLedger`) as soon as the provider accepts the batch, before
  anything waits on it. A stage killed while a batch is in flight finds it on its next run:
  requests whose key is an open item of a recorded batch wait for that batch; nothing is
  submitted twice and no result is lost (the provider keeps results for days).
- **Poll, then answer.** Each batch is polled every `batch_poll_interval_s`. When it ends, every
  item's reply is parsed by the backend's own `_parse`, so it becomes the same `Completion` a
  live call gives; the response cache stores it under the same key. Switching batch mode on or
  off recomputes nothing.
- **Failures are failures.** An item the provider failed (an error, an expiry, a cancelled batch,
  a line missing from the results) is a failed Completion, never a score, and is marked failed in
  the ledger, so the next run asks again. A batch still running after `batch_max_wait_s` fails its
  items for this run only: it stays open, and the next run waits for it again. A status check or
  download that fails after its retries also leaves the batch open.

One window is not covered: a process killed between the provider accepting a batch and the ledger
row being written (one catalog write) leaves a batch the next run does not know of, and pays for
those items again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from configs.schema import Decoding
from storage import BatchLedger
from tasks.llm.base import Completion, Message
from tasks.llm.cache import response_cache_key
from tasks.llm.remote import RemoteCallError, Reply

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchRequest:
    custom_id: str  # the response-cache key: 64 hex characters, valid for both providers
    messages: tuple[Message, ...]
    params: Decoding


@dataclass(frozen=True)
class BatchState:
    ended: bool
    status: str  # the provider's word: completed, expired, failed, cancelled, ended...


@dataclass(frozen=True)
class BatchResults:
    """An ended batch's items: a Reply or an error text each. Items with neither are missing."""

    replies: dict[str, Reply | str]
    error: str | None = None  # what happened to the batch as a whole (failed, expired...), if anything


class BatchAPI(Protocol):
    """One provider's batch API over a backend client (openai_backend, anthropic_backend)."""

    provider: str
    max_requests: int
    max_bytes: int

    def item(self, request: BatchRequest) -> dict[str, Any]:
        """The request as the provider's batch item (what its size is counted on)."""
        ...

    async def submit(self, items: Sequence[dict[str, Any]]) -> tuple[str, str]:
        """(batch id, status) of a new batch; raises RemoteCallError when it cannot be created."""
        ...

    async def state(self, batch_id: str) -> BatchState: ...

    async def results(self, batch_id: str) -> BatchResults: ...


@dataclass
class _Queued:
    request: BatchRequest
    futures: list[asyncio.Future[Completion]] = field(default_factory=list)


class BatchingClient:
    """An LLMClient that sends its calls as provider batches (module docstring)."""

    def __init__(
        self, inner: Any, ledger: BatchLedger, *, stage_run_id: str | None, api: BatchAPI | None = None
    ) -> None:
        self.inner = inner
        self.ledger = ledger
        self.stage_run_id = stage_run_id
        self.api: BatchAPI = api or inner.batch_api()
        self.backend_name = inner.backend_name
        self.model = inner.model
        self.endpoint = inner.base_url
        config = inner.config
        self.collect_s = config.batch_collect_s
        self.poll_interval_s = config.batch_poll_interval_s
        self.max_wait_s = config.batch_max_wait_s
        self._queue: dict[str, _Queued] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._waiting: dict[str, dict[str, _Queued]] = {}  # batch id -> custom_id -> queued
        self._pollers: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()  # batch mode changes no completion: the same cache keys

    def __repr__(self) -> str:
        return f"BatchingClient({self.inner!r})"

    async def chat(
        self, messages: Sequence[Message], params: Decoding, *, sample_index: int = 0
    ) -> Completion:
        key = response_cache_key(self.inner.identity(), messages, params, sample_index)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Completion] = loop.create_future()
        queued = self._queue.get(key)
        if queued is None:
            queued = self._queue[key] = _Queued(BatchRequest(key, tuple(messages), params))
        queued.futures.append(future)
        # Submit once the stage has stopped adding calls for collect_s (or at once when a batch is full).
        if self._timer is not None:
            self._timer.cancel()
        if len(self._queue) >= self.api.max_requests:
            self._flush()
        else:
            self._timer = loop.call_later(self.collect_s, self._flush)
        return await future

    def _flush(self) -> None:
        self._timer = None
        queue, self._queue = self._queue, {}
        if queue:
            self._spawn(self._submit(queue))

    def _spawn(self, coroutine: Any) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _submit(self, queue: dict[str, _Queued]) -> None:
        try:
            recorded = await asyncio.to_thread(self.ledger.open_items, self.endpoint, list(queue))
            resumed: dict[str, dict[str, _Queued]] = {}
            for key, batch_id in recorded.items():
                resumed.setdefault(batch_id, {})[key] = queue.pop(key)
            for batch_id, items in resumed.items():
                logger.info(
                    "%r: waiting for batch %s from an earlier run (%d calls)", self, batch_id, len(items)
                )
                self._wait_for(batch_id, items)
            for chunk in self._chunks(list(queue.values())):
                await self._submit_chunk(chunk)
        except Exception as exc:  # the ledger failed: nothing was submitted for what is left
            self._fail(queue.values(), f"batch submission failed: {type(exc).__name__}: {exc}")

    def _chunks(self, queued: list[_Queued]) -> list[list[tuple[_Queued, dict[str, Any]]]]:
        chunks: list[list[tuple[_Queued, dict[str, Any]]]] = [[]]
        size = 0
        for q in queued:
            item = self.api.item(q.request)
            item_size = len(_json_bytes(item)) + 1
            chunk = chunks[-1]
            if chunk and (len(chunk) >= self.api.max_requests or size + item_size > self.api.max_bytes):
                chunks.append([])
                size = 0
            chunks[-1].append((q, item))
            size += item_size
        return [c for c in chunks if c]

    async def _submit_chunk(self, chunk: list[tuple[_Queued, dict[str, Any]]]) -> None:
        try:
            batch_id, status = await self.api.submit([item for _, item in chunk])
        except RemoteCallError as exc:
            self._fail([q for q, _ in chunk], str(exc))
            return
        items = {q.request.custom_id: q for q, _ in chunk}
        await asyncio.to_thread(
            self.ledger.record, batch_id=batch_id, provider=self.api.provider, endpoint=self.endpoint,
            backend=self.backend_name, model=self.model, stage_run_id=self.stage_run_id,
            custom_ids=list(items), status=status,
        )  # fmt: skip
        logger.info("%r: submitted batch %s (%d calls)", self, batch_id, len(items))
        self._wait_for(batch_id, items)

    def _wait_for(self, batch_id: str, items: dict[str, _Queued]) -> None:
        self._waiting.setdefault(batch_id, {}).update(items)
        if batch_id not in self._pollers:
            self._pollers[batch_id] = self._spawn(self._poll(batch_id))

    async def _poll(self, batch_id: str) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            while not (state := await self.api.state(batch_id)).ended:
                if loop.time() - started + self.poll_interval_s > self.max_wait_s:
                    self._give_up(
                        batch_id, f"batch {batch_id} had not ended after {self.max_wait_s:g} s (status "
                        f"{state.status}); it stays recorded and the next run waits for it again",
                    )  # fmt: skip
                    return
                await asyncio.sleep(self.poll_interval_s)
            results = await self.api.results(batch_id)
        except RemoteCallError as exc:  # the batch may still be fine: leave it open for the next run
            self._give_up(batch_id, f"batch {batch_id}: {exc}; it stays recorded for the next run")
            return
        recorded = [row["custom_id"] for row in await asyncio.to_thread(self.ledger.items, batch_id)]
        missing = results.error or "the batch's results have no line for this item"
        errors = {cid: f"batch {batch_id}: {results.replies.get(cid, missing)}" for cid in recorded
                  if not isinstance(results.replies.get(cid), Reply)}  # fmt: skip
        await asyncio.to_thread(self.ledger.mark_failed, batch_id, errors)
        await asyncio.to_thread(
            self.ledger.ended, batch_id, state.status, len(recorded) - len(errors), len(errors)
        )
        if errors:
            logger.warning("%r: batch %s ended %s; %d of %d items failed (first: %s)", self, batch_id,
                           state.status, len(errors), len(recorded), next(iter(errors.values())))  # fmt: skip
        latency = loop.time() - started
        self._pollers.pop(batch_id, None)
        for cid, queued in self._waiting.pop(batch_id, {}).items():
            reply = results.replies.get(cid)
            if isinstance(reply, Reply):
                completion = Completion(
                    text=reply.text, finish_reason=reply.finish_reason, usage=reply.usage, latency_s=latency,
                    logprobs=reply.logprobs, batched=True,
                )  # fmt: skip
            else:
                completion = Completion.failure(
                    errors.get(cid, f"batch {batch_id}: {missing}"), latency_s=latency
                )
            _resolve(queued, completion)

    def _give_up(self, batch_id: str, error: str) -> None:
        logger.warning("%r: %s", self, error)
        self._pollers.pop(batch_id, None)
        self._fail(self._waiting.pop(batch_id, {}).values(), error)

    def _fail(self, queued: Any, error: str) -> None:
        for q in queued:
            _resolve(q, Completion.failure(error))

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await self.inner.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _resolve(queued: _Queued, completion: Completion) -> None:
    """The first caller gets the answer paid for; callers that asked the same (same cache key)
    while it was queued share it, as a cache hit: it was paid once."""
    for i, future in enumerate(queued.futures):
        if not future.done():
            future.set_result(completion if i == 0 or not completion.ok else replace(completion, cached=True))


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
