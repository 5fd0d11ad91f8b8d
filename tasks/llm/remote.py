"""What the HTTP API clients (OpenAI-compatible, Anthropic) share: keys, limits, retries, failures.

`RemoteClient.chat` is the whole call path; a subclass only sends one SDK request and parses its
JSON body. Along the path:

- The key comes from the environment variable the recipe names, once, at construction; a missing
  or empty variable fails there with the variable's name. The key is handed to the SDK and kept
  only to scrub it from error texts (a server may echo it); it is in no repr, identity or log.
- `limits.EndpointLimits.slot` (concurrency, rpm, tpm) wraps the whole call.
- The SDK retries what it knows is transient: 408/409/429/5xx, timeouts, connection errors, with
  exponential backoff (0.5 s doubling to 8 s, minus up to 25% jitter), waiting out a Retry-After
  instead when the server sends one (openai: up to 120 s, and a longer one is not retried at all;
  anthropic: however long it says).
- A 200 whose body is unusable (cut off, not JSON, no choices/content) is asked again with
  tenacity, also with exponential backoff and jitter. Both layers draw on one budget: at most
  `1 + max_retries` HTTP requests per call, so `max_retries` means what the recipe says.
- `Completion.attempts` counts those HTTP requests: the SDK reports its retries (`retries_taken`
  on a response, the `x-stainless-retry-count` header of the last request on an error).
- A call that finally fails returns `Completion.failure` with a message naming the status or
  error, the URL and the attempts, and feeds the endpoint's breaker, which raises
  `EndpointFailingError` after `max_consecutive_failures` failures in a row.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

from configs.schema import Decoding
from tasks.llm.base import Completion, Message, TokenLogprob, Usage
from tasks.llm.limits import estimate_tokens, limits_for

logger = logging.getLogger(__name__)

PLACEHOLDER_API_KEY = "EMPTY"  # local servers (vLLM, llama.cpp) accept any key; the SDKs insist on one
_REDACTED = "[REDACTED]"
_SNIPPET = 300  # characters of a server's error text kept in a Completion's error

# Re-asks after a bad body back off like the SDKs' own retries (0.5 s doubling, at most 8 s),
# with full jitter.
REASK_WAIT = wait_random_exponential(multiplier=0.5, max=8)


REQUEST_SPECIFIC_STATUS = frozenset({400, 413, 422})


class MissingAPIKeyError(RuntimeError):
    """The environment variable that should hold a backend's API key is unset or empty."""


class BadResponseError(Exception):
    """A 200 whose body is unusable: not JSON (cut off, an HTML page) or missing choices/content."""

    def __init__(self, message: str, retries_taken: int = 0) -> None:
        super().__init__(message)
        self.retries_taken = retries_taken


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


def _retries_taken(exc: BaseException) -> int:
    if isinstance(exc, BadResponseError):
        return exc.retries_taken
    # Both SDKs stamp every attempt with this header; an error carries its last request.
    request = getattr(exc, "request", None)
    try:
        return int(request.headers.get("x-stainless-retry-count", 0)) if request is not None else 0
    except (TypeError, ValueError):
        return 0


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
        """A new SDK client for this backend, with `self._secret`, max_retries and timeout_s."""
        raise NotImplementedError

    async def _send(
        self, messages: Sequence[Message], params: Decoding, max_retries: int
    ) -> tuple[bytes, int]:
        """One SDK call (which retries by itself up to `max_retries`): (the 200's body, retries taken)."""
        raise NotImplementedError

    def _parse(self, data: Any) -> Reply:
        """A Reply from the decoded JSON body; BadResponseError when a needed field is missing."""
        raise NotImplementedError

    # -- for subclasses -------------------------------------------------------------------------

    def _sdk_for(self, max_retries: int) -> Any:
        """The SDK client to send with, allowing `max_retries` retries."""
        # Pooled connections belong to the event loop that opened them; a client that outlives a
        # loop (asyncio.run per stage, per test) starts a fresh SDK client in the next one.
        loop = asyncio.get_running_loop()
        if self._sdk_loop is not None and self._sdk_loop is not loop:
            self._sdk = self._make_sdk()
        self._sdk_loop = loop
        if max_retries == self.config.max_retries:
            return self._sdk
        return self._sdk.with_options(max_retries=max_retries)  # a re-ask spends what is left

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
        budget = self.config.max_retries + 1  # HTTP requests in all, SDK retries and re-asks alike
        used = 0

        def out_of_budget(state: RetryCallState) -> bool:
            return used >= budget

        try:
            async with self._limits.slot(estimate_tokens(messages, params.max_tokens)):
                async for attempt in AsyncRetrying(
                    retry=retry_if_exception_type(BadResponseError),
                    stop=out_of_budget,
                    wait=REASK_WAIT,
                    before_sleep=self._log_reask,
                    reraise=True,
                ):
                    with attempt:
                        try:
                            reply, retries = await self._attempt(
                                messages, params, max_retries=budget - used - 1
                            )
                        except Exception as exc:
                            used += 1 + _retries_taken(exc)
                            raise
                        used += 1 + retries
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

    # -- internals ------------------------------------------------------------------------------

    async def _attempt(
        self, messages: Sequence[Message], params: Decoding, *, max_retries: int
    ) -> tuple[Reply, int]:
        body, retries = await self._send(messages, params, max_retries)
        try:
            data = json.loads(body)
        except ValueError as exc:
            start = body[:60].decode("utf-8", "replace")
            raise BadResponseError(
                f"the body is not valid JSON ({exc}); it starts {start!r}", retries
            ) from None
        try:
            return self._parse(data), retries
        except BadResponseError as exc:
            exc.retries_taken = retries
            raise

    def _log_reask(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        logger.info("%r: bad response (%s); asking again in %.2f s", self, self._scrub(str(exc)), wait)

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
