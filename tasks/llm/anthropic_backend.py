"""Anthropic's Messages API (`POST /v1/messages`).

`AnthropicClient` is a `RemoteClient` (tasks.llm.remote: keys, limits, retries, failures, breaker)
over one `anthropic.AsyncAnthropic`. Messages and Decoding map to the request as:

    system messages -> `system` (joined by blank lines); user/assistant turns -> `messages`
    max_tokens -> max_tokens        stop -> stop_sequences
    temperature, top_p -> not sent: the SDK (2.x) speaks API version 2026-10-21, which has no
                          sampling parameters (the SDK dropped them, and the API answers 400 to
                          any, even temperature=1.0); the model samples its own way
    seed       -> not sent: the API has no seed, so samples are not reproducible
    logprobs   -> not sent: the API returns none, so Completion.logprobs stays None
    n          -> always 1 (chat_many sends n requests)

What is ignored is logged once per client. stop_reason maps to the OpenAI vocabulary:
end_turn/stop_sequence -> "stop", max_tokens -> "length"; others (refusal, pause_turn...) pass
through. The text is the text blocks, joined. The SDK sends the key as `Authorization: Bearer`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import anthropic

from configs.schema import AnthropicBackend, Decoding
from tasks.llm.base import Message, Usage
from tasks.llm.batch import BatchRequest, BatchResults, BatchState
from tasks.llm.remote import BadResponseError, RemoteClient, Reply

logger = logging.getLogger(__name__)

_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


class AnthropicClient(RemoteClient):
    """An `LLMClient` for Anthropic's Messages API. Safe to call concurrently."""

    kind = "anthropic"
    sdk_errors = (anthropic.APIStatusError, anthropic.APITimeoutError, anthropic.APIConnectionError)

    def __init__(self, backend_name: str, config: AnthropicBackend, model: str) -> None:
        self._warned_ignored = False
        super().__init__(backend_name, config, model)

    def _make_sdk(self) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            api_key=self._secret,
            base_url=self.config.base_url,  # None: the SDK's default (api.anthropic.com)
            max_retries=0,  # RemoteClient.chat retries, each attempt through the rate limiter
            timeout=self.config.timeout_s,
        )

    async def _send(self, messages: Sequence[Message], params: Decoding) -> bytes:
        raw = await self._sdk_now().messages.with_raw_response.create(**self._arguments(messages, params))
        return await raw.read()

    def _arguments(self, messages: Sequence[Message], params: Decoding) -> dict[str, Any]:
        system = [m["content"] for m in messages if m["role"] == "system"]
        arguments: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": m["role"], "content": m["content"]} for m in messages if m["role"] != "system"
            ],
            "max_tokens": params.max_tokens,
        }
        if system:
            arguments["system"] = "\n\n".join(system)
        if params.stop:
            arguments["stop_sequences"] = list(params.stop)
        if not self._warned_ignored:
            self._warned_ignored = True
            ignored = f"temperature={params.temperature:g}, top_p={params.top_p:g}, seed={params.seed}"
            if params.logprobs is not None:
                logger.warning(
                    "%r: the Messages API returns no logprobs; logprobs=%d ignored", self, params.logprobs
                )
            logger.info("%r: the Messages API takes no sampling parameters; ignored: %s", self, ignored)
        return arguments

    def _parse(self, data: Any) -> Reply:
        content = data.get("content") if isinstance(data, dict) else None
        if not isinstance(content, list):
            raise BadResponseError("the response has no content")
        texts = [b.get("text") for b in content if isinstance(b, dict) and b.get("type") == "text"]
        if not all(isinstance(t, str) for t in texts):
            raise BadResponseError("a text block has no text")
        stop_reason = data.get("stop_reason")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        try:
            tokens = Usage(
                input_tokens=int(usage.get("input_tokens") or 0),
                output_tokens=int(usage.get("output_tokens") or 0),
            )
        except (TypeError, ValueError) as exc:
            raise BadResponseError(f"malformed usage ({exc})") from None
        return Reply(text="".join(texts), finish_reason=_FINISH.get(stop_reason, stop_reason), usage=tokens)

    def batch_api(self) -> AnthropicBatchAPI:
        return AnthropicBatchAPI(self)


class AnthropicBatchAPI:
    """Anthropic's Message Batches: `POST /v1/messages/batches` with {custom_id, params} items, the
    results JSONL. Each params is the live call's (`_arguments`); each succeeded message goes
    through the live `_parse`. Limits: 100,000 requests and 256 MB per batch (Anthropic's guide)."""

    provider = "anthropic"
    max_requests = 100_000
    max_bytes = 256_000_000

    def __init__(self, client: AnthropicClient) -> None:
        self.client = client

    def item(self, request: BatchRequest) -> dict[str, Any]:
        return {
            "custom_id": request.custom_id,
            "params": self.client._arguments(request.messages, request.params),
        }

    async def submit(self, items: Sequence[dict[str, Any]]) -> tuple[str, str]:
        sdk = self.client._sdk_now()
        batch = await self.client.control(
            "batch creation", lambda: sdk.messages.batches.create(requests=list(items))
        )
        return batch.id, batch.processing_status

    async def state(self, batch_id: str) -> BatchState:
        sdk = self.client._sdk_now()
        batch = await self.client.control("batch status", lambda: sdk.messages.batches.retrieve(batch_id))
        return BatchState(ended=batch.processing_status == "ended", status=batch.processing_status)

    async def results(self, batch_id: str) -> BatchResults:
        sdk = self.client._sdk_now()

        async def read() -> list[Any]:
            return [entry async for entry in await sdk.messages.batches.results(batch_id)]

        replies: dict[str, Reply | str] = {}
        for entry in await self.client.control("batch results download", read):
            result = entry.result
            if result.type == "succeeded":
                try:
                    replies[entry.custom_id] = self.client._parse(result.message.model_dump(mode="json"))
                except BadResponseError as exc:
                    replies[entry.custom_id] = f"bad response: {exc}"
            elif result.type == "errored":
                error = getattr(result.error, "error", None)
                replies[entry.custom_id] = (
                    f"errored: {getattr(error, 'type', '?')}: {getattr(error, 'message', '')}"
                )
            else:  # canceled, expired
                replies[entry.custom_id] = result.type
        return BatchResults(replies)
