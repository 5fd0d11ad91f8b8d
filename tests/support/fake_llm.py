"""An in-process fake `LLMClient` for logic tests: scripted replies, every call recorded.

Replies come from a function of the call (`FakeLLM(lambda call: ...)`) or from a queue
(`FakeLLM(["first", "second"])`). A reply may be:
- a `str`: an ok Completion (finish_reason "stop", usage counted in whitespace words);
- a `Completion`: returned as is (use `fail("...")` for a failed one);
- an exception instance: raised (e.g. `EndpointFailingError`, to test that it propagates).

With `truncate=True`, a str reply longer than `params.max_tokens` words is cut there and comes
back with finish_reason "length", like a real backend hitting its token limit.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from configs.schema import Decoding
from tasks.llm.base import Completion, Message, Usage


@dataclass(frozen=True)
class FakeCall:
    messages: tuple[Message, ...]
    params: Decoding
    sample_index: int

    @property
    def system(self) -> str | None:
        return next((m["content"] for m in self.messages if m["role"] == "system"), None)

    @property
    def user(self) -> str:
        """The last user message: what this call asks."""
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")


Reply = str | Completion | BaseException
Script = Callable[[FakeCall], Reply]


def fail(error: str = "fake failure") -> Completion:
    """A failed Completion, as a backend returns after its retries."""
    return Completion.failure(error)


class FakeLLM:
    """Satisfies `isinstance(x, LLMClient)`. Not thread-safe; fine for asyncio tests."""

    backend_name = "fake"

    def __init__(
        self,
        replies: Script | Iterable[Reply] = (),
        *,
        model: str = "fake-model",
        truncate: bool = False,
        cached: bool = False,
        latency_s: float = 0.01,
    ) -> None:
        self.model = model
        self.truncate = truncate
        self.cached = cached
        self.latency_s = latency_s
        self.calls: list[FakeCall] = []
        self.closed = False
        if callable(replies):
            self._script: Script | None = replies
            self._queue: deque[Reply] = deque()
        else:
            self._script = None
            self._queue = deque(replies)

    def identity(self) -> dict[str, Any]:
        return {"backend": "fake", "model": self.model}

    async def aclose(self) -> None:
        self.closed = True

    async def chat(
        self, messages: Sequence[Message], params: Decoding, *, sample_index: int = 0
    ) -> Completion:
        call = FakeCall(tuple(dict(m) for m in messages), params, sample_index)  # type: ignore[misc]
        self.calls.append(call)
        if self._script is not None:
            reply = self._script(call)
        elif self._queue:
            reply = self._queue.popleft()
        else:
            reply = fail(f"fake: no scripted reply left for call {len(self.calls)}")
        if isinstance(reply, BaseException):
            raise reply
        if isinstance(reply, Completion):
            return reply
        return self._completion(call, reply)

    def _completion(self, call: FakeCall, text: str) -> Completion:
        words = text.split()
        finish = "stop"
        if self.truncate and len(words) > call.params.max_tokens:
            text, words, finish = (
                " ".join(words[: call.params.max_tokens]),
                words[: call.params.max_tokens],
                "length",
            )
        prompt_words = sum(len(m["content"].split()) for m in call.messages)
        return Completion(
            text=text,
            finish_reason=finish,
            usage=Usage(input_tokens=prompt_words, output_tokens=len(words)),
            latency_s=self.latency_s,
            cached=self.cached,
        )


class FakeProbe:
    """An in-process judge for logprob mode: `probs(messages, candidates)` gives the candidates'
    probabilities (missing ones get -inf), or an exception to raise. Every probe is recorded."""

    backend_name = "fake-local"
    model = "fake-judge"

    def __init__(self, probs):
        self.probs = probs
        self.probes: list[tuple[list[dict], tuple[str, ...]]] = []

    def identity(self):
        return {"backend": self.backend_name, "model": self.model}

    async def aclose(self):
        pass

    async def chat(self, messages, params, *, sample_index=0):
        raise AssertionError("logprob mode must not chat")

    async def next_token_logprobs(self, messages, candidates):
        self.probes.append((list(messages), tuple(candidates)))
        probs = self.probs(messages, candidates)
        if isinstance(probs, BaseException):
            raise probs
        return {c: math.log(probs[c]) if probs.get(c, 0) > 0 else -math.inf for c in candidates}
