"""Call limits shared by every client of one remote endpoint in this process.

A policy, a competitor and a judge can all sit on one backend (one API key, one quota), so the
limits belong to the backend, not to a client: `limits_for(backend_name, config)` returns the one
`EndpointLimits` for that backend, creating it on first use. Clients on the same backend of the
same recipe share it; a different configuration under the same name (another recipe in the same
process, a test) gets its own.

What a call goes through, in this order (`EndpointLimits.slot`):

- a semaphore of `max_concurrency` requests in flight;
- `requests_per_minute`, spread evenly (one request every 60/rpm seconds; providers often enforce
  a per-minute quota at per-second granularity), with a ~50 ms burst allowance so a late timer is
  caught up instead of lost (see `_request_bucket`);
- `tokens_per_minute`, a one-minute bucket (a minute's worth may go at once, as providers allow),
  charged with an *estimate* made before the call: prompt characters / 4 (about four characters a
  token for English with GPT-style and Qwen tokenizers) + `max_tokens` (the most the reply can
  use), capped at the limit so one huge request waits for a full bucket instead of never running.
  Over-estimating the reply keeps the bucket conservative; the real usage is not refunded.

Retries that an SDK makes inside one call stay inside that call's slot: they hold its concurrency
place and are not charged again to the rate limits (a 429's Retry-After already paces them).

And a consecutive-failure breaker: `record_failure` counts a call that finally failed (after its
retries), `record_success` resets the count, and the `max_consecutive_failures`-th failure in a
row raises `EndpointFailingError` naming the endpoint and how it fails, so a stage stops instead of
spending its budget on a dead endpoint. Every further failure raises again until a success.

asyncio primitives belong to one event loop, and a client may outlive one (`asyncio.run` per
stage, per test): the semaphore and rate limiters are made per running loop. The breaker count is
per process.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiolimiter import AsyncLimiter

from tasks.llm.base import EndpointFailingError, Message

logger = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # the prompt-size estimate for tokens_per_minute (see the module docstring)


def estimate_tokens(messages: Sequence[Message], max_tokens: int) -> int:
    """Tokens a request may use, before the call: prompt chars / 4 + max_tokens."""
    chars = sum(len(m.get("content") or "") for m in messages)
    return chars // CHARS_PER_TOKEN + max_tokens


def _request_bucket(rpm: int) -> AsyncLimiter:
    """Evenly spaced requests, with a burst of at most ~50 ms worth (one request below 20/s).

    With a bucket of one, a timer that fires late (a busy event loop) is capacity lost for good:
    89% of a 120 req/s limit was reached that way, 93% with this allowance (docs/benchmarks.md).
    Over any minute the stated limit holds; a provider enforcing per second sees up to ~1.05x in
    a second, and may answer the odd 429, which is retried through this limiter.
    """
    burst = max(1, math.ceil(rpm / 60 / 20))
    return AsyncLimiter(burst, burst * 60 / rpm)


@dataclass
class _LoopPrimitives:
    semaphore: asyncio.Semaphore
    requests: AsyncLimiter | None
    tokens: AsyncLimiter | None


class EndpointLimits:
    """Concurrency, request rate, token rate and a failure breaker for one backend."""

    def __init__(
        self,
        backend_name: str,
        *,
        max_concurrency: int,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        max_consecutive_failures: int = 25,
        api_key_env: str | None = None,
    ) -> None:
        self.backend_name = backend_name
        self.max_concurrency = max_concurrency
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.max_consecutive_failures = max_consecutive_failures
        self.api_key_env = api_key_env  # named in the breaker's advice; the value is never read here
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopPrimitives] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()  # clients on other threads (other loops) share the breaker
        self._failures: collections.Counter[str] = collections.Counter()  # error kind -> count, this streak
        self._last_error: str | None = None

    @classmethod
    def from_config(cls, backend_name: str, config: Any) -> EndpointLimits:
        return cls(
            backend_name,
            max_concurrency=config.max_concurrency,
            requests_per_minute=config.requests_per_minute,
            tokens_per_minute=config.tokens_per_minute,
            max_consecutive_failures=config.max_consecutive_failures,
            api_key_env=getattr(config, "api_key_env", None),
        )

    def __repr__(self) -> str:
        return (
            f"EndpointLimits({self.backend_name!r}, max_concurrency={self.max_concurrency}, "
            f"rpm={self.requests_per_minute}, tpm={self.tokens_per_minute}, "
            f"failures={self.consecutive_failures}/{self.max_consecutive_failures})"
        )

    # -- limits -------------------------------------------------------------------------------

    def _primitives(self) -> _LoopPrimitives:
        loop = asyncio.get_running_loop()
        with self._lock:
            primitives = self._per_loop.get(loop)
            if primitives is None:
                rpm, tpm = self.requests_per_minute, self.tokens_per_minute
                primitives = _LoopPrimitives(
                    semaphore=asyncio.Semaphore(self.max_concurrency),
                    requests=_request_bucket(rpm) if rpm else None,
                    tokens=AsyncLimiter(tpm, 60) if tpm else None,
                )
                self._per_loop[loop] = primitives
            return primitives

    @asynccontextmanager
    async def slot(self, estimated_tokens: int = 0) -> AsyncIterator[None]:
        """Hold one place in flight, after waiting for the rate limits; release it on exit."""
        primitives = self._primitives()
        async with primitives.semaphore:
            # Rate tokens are taken while holding the place, so a request is sent as soon as it
            # gets them: the spacing the limiter makes is the spacing the server sees.
            if primitives.requests is not None:
                await primitives.requests.acquire()
            if primitives.tokens is not None:
                await primitives.tokens.acquire(min(max(estimated_tokens, 0), primitives.tokens.max_rate))
            yield

    # -- breaker ------------------------------------------------------------------------------

    @property
    def consecutive_failures(self) -> int:
        with self._lock:
            return sum(self._failures.values())

    def record_success(self) -> None:
        with self._lock:
            self._failures.clear()
            self._last_error = None

    def record_failure(self, kind: str, error: str, *, model: str, base_url: str) -> None:
        """Count a call that finally failed. `kind` groups errors in the summary ("HTTP 429",
        "timeout"); `error` is the (secret-free) message of this one. Raises EndpointFailingError
        once `max_consecutive_failures` calls in a row have failed."""
        with self._lock:
            self._failures[kind] += 1
            self._last_error = error
            count = sum(self._failures.values())
            if count < self.max_consecutive_failures:
                return
            summary = ", ".join(f"{k} x{n}" for k, n in self._failures.most_common())
            last = self._last_error
        advice = "Check the service"
        if self.api_key_env:
            advice += f", the key in ${self.api_key_env}"
        advice += ", or lower the rate limits."
        raise EndpointFailingError(
            f"endpoint '{self.backend_name}' ({model} at {base_url}) failed {count} requests in a row; "
            f"last errors: {summary}. {advice} Last error: {last}"
        )


_REGISTRY: dict[tuple[str, str], EndpointLimits] = {}
_REGISTRY_LOCK = threading.Lock()


def limits_for(backend_name: str, config: Any) -> EndpointLimits:
    """The process-wide EndpointLimits of this backend (`config` is its recipe entry)."""
    key = (backend_name, config.model_dump_json())
    with _REGISTRY_LOCK:
        limits = _REGISTRY.get(key)
        if limits is None:
            limits = _REGISTRY[key] = EndpointLimits.from_config(backend_name, config)
        return limits


def reset_limits() -> None:
    """Forget every backend's limits and breaker state (tests; a long-lived process between runs)."""
    with _REGISTRY_LOCK:
        _REGISTRY.clear()
