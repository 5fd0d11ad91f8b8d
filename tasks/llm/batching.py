"""What the in-process backends (transformers, vLLM) share: micro-batching of concurrent calls
into one batch, and answering each call from the batch's results.

Requests that arrive while a batch runs queue up; the worker then takes up to `max_batch` of the
oldest group (a group is what may share one forward call: equal decoding params for
transformers, the kind of work for vLLM) and hands them to the backend's `execute`, which
resolves every job it was given. Oldest first, so no group waits forever. A client can outlive
an event loop (asyncio.run per stage, per test), so there is one worker per loop. On `aclose`
the batch in flight finishes and queued jobs fail: nobody waits forever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from configs.schema import Decoding
from tasks.llm.base import Completion, Message, TokenLogprob, Usage


@dataclass(eq=False)
class Job:
    kind: Literal["generate", "next_token"]
    messages: tuple[Message, ...]
    future: asyncio.Future[Any]
    params: Decoding | None = None
    candidates: tuple[str, ...] = ()
    started: float = field(default_factory=time.perf_counter)


class Generated(Protocol):
    """What a backend computes for one generate job."""

    text: str
    finish_reason: str | None
    input_tokens: int
    output_tokens: int
    logprobs: tuple[TokenLogprob, ...] | None


_STOP = object()  # queue sentinel: aclose() was called
_JOIN_TURNS = 8  # loop turns a new batch waits for requests submitted in the same moment


class MicroBatcher:
    def __init__(
        self,
        owner: str,
        *,
        max_batch: int,
        group_of: Callable[[Job], Hashable],
        execute: Callable[[list[Job]], Awaitable[None]],
    ) -> None:
        self.owner = owner  # for messages: the client's repr
        self.max_batch = max_batch
        self.group_of = group_of
        self.execute = execute
        self.closed = False
        self.worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Any] | None = None

    def submit(
        self,
        kind: Literal["generate", "next_token"],
        messages: Sequence[Message],
        *,
        params: Decoding | None = None,
        candidates: tuple[str, ...] = (),
    ) -> asyncio.Future[Any]:
        if self.closed:
            raise RuntimeError(f"{self.owner} is closed")
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self.worker is None or self.worker.done():
            self._loop = loop
            self._queue = asyncio.Queue()
            self.worker = loop.create_task(self._run(self._queue), name=f"{self.owner} batcher")
        assert self._queue is not None
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put_nowait(Job(kind, tuple(messages), future, params=params, candidates=candidates))
        return future

    async def aclose(self) -> None:
        self.closed = True
        worker, queue = self.worker, self._queue
        self._queue = None
        if worker is None or queue is None or worker.done():
            return
        if self._loop is not asyncio.get_running_loop():
            # The worker belongs to another loop (still running in another thread): cancel it there.
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(worker.cancel)
            return
        queue.put_nowait(_STOP)
        await worker

    async def _run(self, queue: asyncio.Queue[Any]) -> None:
        pending: list[Job] = []
        batch: list[Job] = []
        try:
            while True:
                if not pending:
                    item = await queue.get()
                    if item is _STOP:
                        return
                    pending.append(item)
                    # Let requests submitted around the same moment (a gather, a semaphore just
                    # released) join this batch: a few loop turns, until the queue stops growing.
                    for _ in range(_JOIN_TURNS):
                        size = queue.qsize()
                        await asyncio.sleep(0)
                        if queue.qsize() == size:
                            break
                for item in _drain(queue):
                    if item is _STOP:
                        return
                    pending.append(item)
                pending = [job for job in pending if not job.future.done()]  # callers that gave up
                if not pending:
                    continue
                group = self.group_of(pending[0])  # oldest first, so no group waits forever
                batch = [job for job in pending if self.group_of(job) == group][: self.max_batch]
                pending = [job for job in pending if job not in batch]
                await self.execute(batch)
                batch = []
        finally:
            # Reached on aclose() or when the loop shuts down (cancellation): nobody waits forever.
            for job in batch + pending + [item for item in _drain(queue) if item is not _STOP]:
                resolve(job, error=RuntimeError(f"{self.owner} was closed before this request ran"))


def _drain(queue: asyncio.Queue[Any]) -> list[Any]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


def first_token_id(tokenizer: Any, candidate: str) -> int:
    """The id a candidate answer starts with: in-process judges score a candidate ("A", "7") by its
    first token's log-probability."""
    ids = tokenizer.encode(candidate, add_special_tokens=False)
    if not ids:
        raise ValueError(f"candidate {candidate!r} tokenizes to nothing")
    return int(ids[0])


def resolve(job: Job, *, result: Generated | Any = None, error: BaseException | None = None) -> None:
    """Answer a job's caller: a Completion for generate jobs (a failed one on error); the result
    or the exception itself for next-token jobs (a judge decides what a failure means)."""
    if job.future.done():  # the caller was cancelled
        return
    latency = time.perf_counter() - job.started
    if job.kind == "next_token":
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)
    elif error is not None:
        job.future.set_result(Completion.failure(f"{type(error).__name__}: {error}", latency_s=latency))
    else:
        job.future.set_result(
            Completion(
                text=result.text,
                finish_reason=result.finish_reason,
                usage=Usage(input_tokens=result.input_tokens, output_tokens=result.output_tokens),
                latency_s=latency,
                logprobs=result.logprobs,
            )
        )
