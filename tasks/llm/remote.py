"""What the HTTP API clients (OpenAI-compatible, Anthropic) share: keys, limits, retries, failures.

`RemoteClient.chat` is the whole call path; a subclass only sends one SDK request and parses its
JSON body. Along the path:

- The key comes from the environment variable the recipe names, once, at construction; a missing
  or empty variable fails there with the variable's name. The key is handed to the SDK and kept
  only to scrub it from error texts (a server may echo it); it is in no repr, identity or log.
- Every HTTP attempt, retries included, takes its own `limits.EndpointLimits.slot` (concurrency,
  rpm, tpm). So retries are paced by the rate limiter like first tries (with the SDKs' built-in
  retries they bypassed it and a burst of 429s fed more 429s), and a request waiting out a
  Retry-After holds no concurrency place.
- tenacity retries what is transient: 408/409/429/5xx, timeouts, connection errors, and a 200
  whose body is unusable (cut off, not JSON, no choices/content). It waits out a Retry-After
  (`retry-after-ms` or `retry-after`, seconds or an HTTP date; at most MAX_RETRY_AFTER_S) when the
  server sends one, else backs off exponentially with full jitter (0.5 s doubling, at most 8 s).
  At most `1 + max_retries` HTTP requests per call; the SDKs' own retries are off.
- `Completion.attempts` counts those HTTP requests.
- A call that finally fails returns `Completion.failure` with a message naming the status or
  error, the URL and the attempts, and feeds the endpoint's breaker, which raises
  `EndpointFailingError` after `max_consecutive_failures` failures in a row.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from configs.schema import Decoding
from tasks.llm.base import Completion, Message, TokenLogprob, Usage
from tasks.llm.limits import estimate_tokens, limits_for

logger = logging.getLogger(__name__)
T = TypeVar("T")

PLACEHOLDER_API_KEY = "EMPTY"  # local servers (vLLM, llama.cpp) accept any key; the SDKs insist on one
_REDACTED = "[REDACTED]"
_SNIPPET = 300  # characters of a server's error text kept in a Completion's error

# Without a Retry-After, back off like the SDKs would (0.5 s doubling, at most 8 s), full jitter.
BACKOFF = wait_random_exponential(multiplier=0.5, max=8)
MAX_RETRY_AFTER_S = 600.0  # a longer Retry-After is cut to this (the request still counts its attempts)
RETRYABLE_STATUS = frozenset({408, 409, 429})  # and every 5xx


REQUEST_SPECIFIC_STATUS = frozenset({400, 413, 422})


class MissingAPIKeyError(RuntimeError):
    """The environment variable that should hold a backend's API key is unset or empty."""


class RemoteCallError(RuntimeError):
    """A call other than a chat failed after its retries; the message names status, URL, attempts."""


class BadResponseError(Exception):
    """A 200 whose body is unusable: not JSON (cut off, an HTML page) or missing choices/content."""


@dataclass(frozen=True)
class Reply:
    """What a subclass extracts from a good response body."""

    text: str
    finish_reason: str | None
    usage: Usage
    logprobs: tuple[TokenLogprob, ...] | None = None


def read_api_key(backend_name: str, api_key_env: str | None) -> str | None:
    """The key in `$api_key_env`, or None when the backend names no variable (a local server)."""
    if api_key_env is None:
        return None
    value = os.environ.get(api_key_env, "")
    if not value.strip():
        raise MissingAPIKeyError(
            f"backend '{backend_name}': environment variable {api_key_env} is not set or empty; it "
            f"must hold the API key (export {api_key_env}=...). Recipes never hold keys."
        )
    return value.strip()


def _wait(state: RetryCallState) -> float:
    """Retry-After when the server sent one, else exponential backoff with full jitter."""
    exc = state.outcome.exception() if state.outcome is not None else None
    asked = _retry_after(exc)
    if asked is not None:
        return min(asked, MAX_RETRY_AFTER_S)
    return BACKOFF(state)


def _plural(n: int) -> str:
    return f"{n} attempt" if n == 1 else f"{n} attempts"


def _server_message(exc: Any) -> str:
    """The human part of an SDK status error: the body's error.message, else the raw text."""
    body = getattr(exc, "body", None)
    message = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            message = str(error["message"])
        elif isinstance(error, str):
            message = error
        elif body.get("message"):
            message = str(body["message"])
    if message is None:
        response = getattr(exc, "response", None)
        message = getattr(response, "text", None) or str(exc)
    return message.strip()[:_SNIPPET]


def _retry_after(exc: BaseException | None) -> float | None:
    """Seconds the server asked us to wait (Retry-After / retry-after-ms), if it said."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        if headers.get("retry-after-ms"):
            return float(headers["retry-after-ms"]) / 1000
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return float(value)
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _root_cause(exc: BaseException) -> str:
    """'ReadError (ConnectionResetError: [Errno 104] Connection reset by peer)' from an SDK's
    connection error, whose own message is a bare "Connection error."."""
    chain: list[BaseException] = []
    current = exc.__cause__ or exc.__context__
    while current is not None and current not in chain and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    if not chain:
        return str(exc)
    detail = next((f"{type(e).__name__}: {e}" for e in reversed(chain) if str(e)), None)
    name = type(chain[0]).__name__
    return f"{name} ({detail})" if detail and not detail.startswith(f"{name}:") else detail or name


class RemoteClient:
    """Base of the HTTP API clients: an `LLMClient`, safe to call concurrently. Subclasses set
    `kind` and `sdk_errors` and implement `_make_sdk`, `_send` and `_parse`."""

    kind: ClassVar[str]
    # The SDK's (APIStatusError, APITimeoutError, APIConnectionError), to describe failures.
    sdk_errors: ClassVar[tuple[type[BaseException], type[BaseException], type[BaseException]]]

    def __init__(self, backend_name: str, config: Any, model: str) -> None:
        self.backend_name = backend_name
        self.model = model
        self.config = config
        self._limits = limits_for(backend_name, config)
        self._secret = read_api_key(backend_name, config.api_key_env)
        self._sdk = self._make_sdk()
        self._sdk_loop: asyncio.AbstractEventLoop | None = None
        self.base_url = str(self._sdk.base_url).rstrip("/")  # as the SDK resolved it (defaults, env)

    # -- what a subclass provides ---------------------------------------------------------------

    def _make_sdk(self) -> Any:
        """A new SDK client for this backend, with `self._secret`, timeout_s and max_retries=0
        (retries happen in `chat`, each through the rate limiter)."""
        raise NotImplementedError

    async def _send(self, messages: Sequence[Message], params: Decoding) -> bytes:
        """One HTTP request through the SDK: the 200's body (an SDK error otherwise)."""
        raise NotImplementedError

    def _parse(self, data: Any) -> Reply:
        """A Reply from the decoded JSON body; BadResponseError when a needed field is missing."""
        raise NotImplementedError

    # -- for subclasses -------------------------------------------------------------------------

    def _sdk_now(self) -> Any:
        """The SDK client for the running event loop."""
        # Pooled connections belong to the event loop that opened them; a client that outlives a
        # loop (asyncio.run per stage, per test) starts a fresh SDK client in the next one.
        loop = asyncio.get_running_loop()
        if self._sdk_loop is not None and self._sdk_loop is not loop:
            self._sdk = self._make_sdk()
        self._sdk_loop = loop
        return self._sdk

    async def aclose(self) -> None:
        await self._sdk.close()

    # -- the LLMClient interface ----------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        return {"backend": self.kind, "base_url": self.base_url, "model": self.model}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.backend_name!r}, {self.model!r}, {self.base_url})"

    async def chat(
        self, messages: Sequence[Message], params: Decoding, *, sample_index: int = 0
    ) -> Completion:
        """One completion (n is the caller's business: chat_many sends n requests).

        Returns a failed Completion rather than raising, except EndpointFailingError.
        """
        started = time.perf_counter()
        used = 0
        try:
            async for attempt in self._retrying():
                with attempt:
                    used += 1
                    # Each attempt waits for its own place and rate tokens: retries are paced too.
                    async with self._limits.slot(estimate_tokens(messages, params.max_tokens)):
                        reply = await self._attempt(messages, params)
        except Exception as exc:
            kind, error = self._describe(exc, max(used, 1))
            error = self._scrub(error)
            logger.warning("%r: %s", self, error)
            failed = Completion.failure(error, latency_s=time.perf_counter() - started, attempts=max(used, 1))
            # A 400/413/422 says this request is bad (too long, malformed), not that the endpoint is
            # down: it fails alone and neither trips nor resets the breaker.
            if getattr(exc, "status_code", None) not in REQUEST_SPECIFIC_STATUS:
                self._limits.record_failure(kind, error, model=self.model, base_url=self.base_url)
            return failed
        self._limits.record_success()
        return Completion(
            text=reply.text,
            finish_reason=reply.finish_reason,
            usage=reply.usage,
            latency_s=time.perf_counter() - started,
            logprobs=reply.logprobs,
            attempts=used,
        )

    async def control(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """One call that is not a chat (a batch submission, a status check, a results download),
        retried like a chat attempt. A final failure raises `RemoteCallError` with the message a
        failed chat would carry."""
        used = 0
        try:
            async for attempt in self._retrying():
                with attempt:
                    used += 1
                    return await call()
        except Exception as exc:
            _, error = self._describe(exc, max(used, 1))
            raise RemoteCallError(self._scrub(f"{what}: {error}")) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def batch_api(self) -> Any:
        """The provider's batch API over this client's SDK (tasks.llm.batch.BatchAPI)."""
        raise NotImplementedError(f"{type(self).__name__} has no batch API")

    # -- internals ------------------------------------------------------------------------------

    def _retrying(self) -> AsyncRetrying:
        """What is transient is retried, at most 1 + max_retries attempts, waiting out Retry-After."""
        return AsyncRetrying(
            retry=retry_if_exception(self._retryable),
            stop=stop_after_attempt(self.config.max_retries + 1),
            wait=_wait,
            before_sleep=self._log_retry,
            reraise=True,
        )

    async def _attempt(self, messages: Sequence[Message], params: Decoding) -> Reply:
        body = await self._send(messages, params)
        try:
            data = json.loads(body)
        except ValueError as exc:
            start = body[:60].decode("utf-8", "replace")
            raise BadResponseError(f"the body is not valid JSON ({exc}); it starts {start!r}") from None
        return self._parse(data)

    def _retryable(self, exc: BaseException) -> bool:
        status_error, timeout_error, connection_error = self.sdk_errors
        if isinstance(exc, BadResponseError | timeout_error | connection_error):
            return True
        status = getattr(exc, "status_code", None) if isinstance(exc, status_error) else None
        return status is not None and (status in RETRYABLE_STATUS or status >= 500)

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        kind, _ = self._describe(exc, state.attempt_number) if exc is not None else ("?", "")
        logger.info("%r: %s on attempt %d; retrying in %.2f s", self, kind, state.attempt_number, wait)

    def _describe(self, exc: BaseException, attempts: int) -> tuple[str, str]:
        """(kind for the breaker's summary, message for the Completion) of a final failure."""
        status_error, timeout_error, connection_error = self.sdk_errors
        where = f"from {self.base_url} after {_plural(attempts)}"
        if isinstance(exc, status_error):
            status = getattr(exc, "status_code", "?")
            return f"HTTP {status}", f"HTTP {status} {where}: {_server_message(exc)}"
        if isinstance(exc, timeout_error):
            return "timeout", f"timeout ({self.config.timeout_s:g} s) {where}"
        if isinstance(exc, connection_error):
            return "connection error", f"connection error {where}: {_root_cause(exc)}"
        if isinstance(exc, BadResponseError):
            return "bad response", f"bad response {where}: {exc}"
        return type(exc).__name__, f"{type(exc).__name__} {where}: {exc}"

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, _REDACTED) if self._secret else text
