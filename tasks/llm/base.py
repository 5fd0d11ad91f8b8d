"""The one small interface every LLM call goes through: generators, judges, critics.

`LLMClient.chat(messages, params) -> Completion` is async. A Completion always comes back: a call
that finally fails is a Completion with `error` set and `text` None, never an exception that sinks
a batch and never a silent empty string. Backends live in `tasks.llm.registry`, keyed by name.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypedDict, TypeVar, runtime_checkable

from tqdm.auto import tqdm

from configs.schema import Decoding


class Message(TypedDict):
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)  # alternative token -> logprob


@dataclass(frozen=True)
class Completion:
    text: str | None
    finish_reason: str | None = None  # "stop" | "length" | backend-specific; None on failure
    usage: Usage = Usage()
    latency_s: float = 0.0
    logprobs: tuple[TokenLogprob, ...] | None = None
    error: str | None = None  # set iff the call failed after its retries
    attempts: int = 1  # 1 + retries; 0: never sent (a budget refused it)
    cached: bool = False  # served from the response cache: no call was made
    batched: bool = False  # answered through a provider batch (billed at the batch price)

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None

    @classmethod
    def failure(cls, error: str, *, latency_s: float = 0.0, attempts: int = 1) -> Completion:
        return cls(text=None, error=error, latency_s=latency_s, attempts=attempts)


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[Message, ...]
    params: Decoding
    sample_index: int = 0  # distinguishes n>1 samples of one prompt (and their cache entries)
    tag: Any = None  # caller's bookkeeping (e.g. instruction id); not sent anywhere


@runtime_checkable
class LLMClient(Protocol):
    """One backend + model. Implementations must be safe to call concurrently.

    `sample_index` tells n>1 samples of one prompt apart (the response cache keys on it); backends
    themselves may ignore it. `chat` returns a failed Completion rather than raising, except
    `EndpointFailingError`, which stops the stage: the endpoint is down, not one request bad.
    """

    backend_name: str
    model: str

    async def chat(
        self, messages: Sequence[Message], params: Decoding, *, sample_index: int = 0
    ) -> Completion: ...

    def identity(self) -> dict[str, Any]:
        """What determines a completion besides messages and params (cache keys): backend kind,
        model, base_url... never a key or an operational limit."""
        ...

    async def aclose(self) -> None: ...


class EndpointFailingError(RuntimeError):
    """Too many consecutive failures on one endpoint: stop instead of burning the remaining budget.
    The message says which endpoint (backend, model, base URL) and how it fails (last errors)."""


T = TypeVar("T")


async def gather_or_stop(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Run concurrently; results in input order. The one way a batch of LLM work stops: an
    `EndpointFailingError` (the endpoint is down) cancels the rest and propagates as itself, not
    inside an ExceptionGroup. Results that finished before it were already stored by whoever
    awaited them (the response cache writes each call as it completes)."""

    async def run(awaitable: Awaitable[T]) -> T:
        return await awaitable

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(run(a)) for a in awaitables]
    except* EndpointFailingError as failing:
        raise failing.exceptions[0] from None
    return [t.result() for t in tasks]


class BackendUnavailableError(ValueError):
    """The recipe names a backend kind that this build has no implementation for (raised by
    `tasks.llm.registry.create_client`, and by a backend whose optional extra is not installed)."""


async def chat_many(
    client: LLMClient,
    requests: Sequence[ChatRequest],
    *,
    max_concurrency: int = 8,
    description: str | None = None,
    on_result: Callable[[int, Completion], Awaitable[None] | None] | None = None,
) -> list[Completion]:
    """Run requests with bounded concurrency; results in input order.

    A request that raises becomes a failed Completion: one bad item never sinks the batch. The
    exception is `EndpointFailingError`: it cancels the rest and propagates (results that arrived
    before it were already handed to `on_result`). `on_result(index, completion)` runs as each
    result arrives, so callers can persist results immediately rather than at the end.
    """
    # Each of n samples gets its own seed, so n>1 samples of one prompt differ (and cache apart).
    requests = [replace(r, params=r.params.model_copy(update={"seed": _sample_seed(r)})) for r in requests]
    prefetch = getattr(client, "prefetch", None)
    if prefetch is not None:  # a caching client: one lookup for the whole batch
        await prefetch(requests)
    semaphore = asyncio.Semaphore(max_concurrency)
    results: list[Completion | None] = [None] * len(requests)
    bar = tqdm(
        total=len(requests),
        desc=description or client.model,
        unit="req",
        disable=description is None and len(requests) < 2,
        leave=False,
    )

    async def one(index: int, request: ChatRequest) -> None:
        async with semaphore:
            started = time.perf_counter()
            try:
                completion = await client.chat(
                    request.messages, request.params, sample_index=request.sample_index
                )
            except EndpointFailingError:
                raise
            except Exception as exc:  # a backend bug or unexpected error: record, don't sink the batch
                completion = Completion.failure(
                    f"{type(exc).__name__}: {exc}", latency_s=time.perf_counter() - started
                )
        results[index] = completion
        if on_result is not None:
            maybe = on_result(index, completion)
            if asyncio.iscoroutine(maybe):
                await maybe
        bar.update(1)

    try:
        await gather_or_stop(one(i, r) for i, r in enumerate(requests))
    finally:
        bar.close()
    return [r if r is not None else Completion.failure("not run") for r in results]


def _sample_seed(request: ChatRequest) -> int | None:
    seed = request.params.seed
    return None if seed is None else seed + request.sample_index
