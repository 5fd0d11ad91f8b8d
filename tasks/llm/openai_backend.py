"""OpenAI-compatible chat completions: api.openai.com, DashScope, vLLM, llama.cpp, `transformers serve`.

`OpenAICompatibleClient` is a `RemoteClient` (tasks.llm.remote: keys, limits, retries, failures,
breaker) over one `openai.AsyncOpenAI`. Decoding maps to the request as:

    temperature -> temperature      top_p -> top_p (sent only below 1.0, every API's default)
    max_tokens  -> max_tokens       (not max_completion_tokens: vLLM, llama.cpp and
                                     `transformers serve` all read max_tokens)
    stop        -> stop             seed -> seed
    logprobs=k  -> logprobs=True, top_logprobs=k (k=0: the chosen tokens' logprobs only)
    n           -> always 1         (chat_many sends n requests, each with its own seed)

The response is read raw (`.with_raw_response`) and parsed here with
checks of only the fields used, so a lenient local server's missing extras are no error and a
missing choice or content is one (retried as a bad response).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import openai

from configs.schema import Decoding, OpenAICompatibleBackend
from tasks.llm.base import Message, TokenLogprob, Usage
from tasks.llm.batch import BatchRequest, BatchResults, BatchState
from tasks.llm.remote import PLACEHOLDER_API_KEY, BadResponseError, RemoteClient, Reply
from tasks.llm.serving import release_shared_server


class OpenAICompatibleClient(RemoteClient):
    """An `LLMClient` for any OpenAI-compatible /chat/completions endpoint. Safe to call concurrently."""

    kind = "openai-compatible"
    sdk_errors = (openai.APIStatusError, openai.APITimeoutError, openai.APIConnectionError)

    def __init__(self, backend_name: str, config: OpenAICompatibleBackend, model: str) -> None:
        super().__init__(backend_name, config, model)
        self.request_model = model  # the `model` field sent; a locally served model is pinned to its path

    def _make_sdk(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.config.base_url,  # None: the SDK's default (api.openai.com or $OPENAI_BASE_URL)
            api_key=self._secret or PLACEHOLDER_API_KEY,
            max_retries=0,  # RemoteClient.chat retries, each attempt through the rate limiter
            timeout=self.config.timeout_s,
        )

    async def _send(self, messages: Sequence[Message], params: Decoding) -> bytes:
        raw = await self._sdk_now().chat.completions.with_raw_response.create(
            **self._arguments(messages, params)
        )
        return raw.http_response.content

    def _arguments(self, messages: Sequence[Message], params: Decoding) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "model": self.request_model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "temperature": params.temperature,
            "max_tokens": params.max_tokens,
            "n": 1,
        }
        if params.top_p < 1.0:
            arguments["top_p"] = params.top_p
        if params.stop:
            arguments["stop"] = list(params.stop)
        if params.seed is not None:
            arguments["seed"] = params.seed
        if params.logprobs is not None:
            arguments["logprobs"] = True
            if params.logprobs > 0:
                arguments["top_logprobs"] = params.logprobs
        return arguments

    def _parse(self, data: Any) -> Reply:
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise BadResponseError("the response has no choices")
        choice = choices[0]
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise BadResponseError(
                f"the first choice has no text content (finish_reason={choice.get('finish_reason')!r})"
            )
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        try:
            return Reply(
                text=content,
                finish_reason=choice.get("finish_reason"),
                usage=Usage(
                    input_tokens=int(usage.get("prompt_tokens") or 0),
                    output_tokens=int(usage.get("completion_tokens") or 0),
                ),
                logprobs=_logprobs(choice.get("logprobs")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadResponseError(f"malformed usage or logprobs ({type(exc).__name__}: {exc})") from None

    def batch_api(self) -> OpenAIBatchAPI:
        return OpenAIBatchAPI(self)


class OpenAIBatchAPI:
    """OpenAI's Batch API: a JSONL file of /v1/chat/completions bodies, `POST /v1/batches`, the
    output and error files. Each body is the live call's (`_arguments`); each result's body goes
    through the live `_parse`. Limits: 50,000 requests and 200 MB per batch (the SDK's docs)."""

    provider = "openai"
    max_requests = 50_000
    max_bytes = 200_000_000
    TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
    URL = "/v1/chat/completions"

    def __init__(self, client: OpenAICompatibleClient) -> None:
        self.client = client

    def item(self, request: BatchRequest) -> dict[str, Any]:
        body = self.client._arguments(request.messages, request.params)
        return {"custom_id": request.custom_id, "method": "POST", "url": self.URL, "body": body}

    async def submit(self, items: Sequence[dict[str, Any]]) -> tuple[str, str]:
        sdk = self.client._sdk_now()
        data = "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items).encode("utf-8")
        uploaded = await self.client.control(
            "batch input upload", lambda: sdk.files.create(file=("requests.jsonl", data), purpose="batch")
        )
        batch = await self.client.control(
            "batch creation",
            lambda: sdk.batches.create(input_file_id=uploaded.id, endpoint=self.URL, completion_window="24h"),
        )
        return batch.id, batch.status

    async def state(self, batch_id: str) -> BatchState:
        batch = await self.client.control(
            "batch status", lambda: self.client._sdk_now().batches.retrieve(batch_id)
        )
        return BatchState(ended=batch.status in self.TERMINAL, status=batch.status)

    async def results(self, batch_id: str) -> BatchResults:
        sdk = self.client._sdk_now()
        batch = await self.client.control("batch status", lambda: sdk.batches.retrieve(batch_id))
        replies: dict[str, Reply | str] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                content = await self.client.control(
                    "batch results download", lambda f=file_id: sdk.files.content(f)
                )
                for line in content.content.decode("utf-8").splitlines():
                    if line.strip():
                        custom_id, reply = self._line(json.loads(line))
                        replies[custom_id] = reply
        error = None
        if batch.status != "completed":
            errors = getattr(batch, "errors", None)
            details = "; ".join(e.message or "" for e in (errors.data or [])) if errors else ""
            error = f"the batch {batch.status}" + (f": {details[:300]}" if details else "")
        return BatchResults(replies, error)

    def _line(self, line: dict[str, Any]) -> tuple[str, Reply | str]:
        custom_id = str(line.get("custom_id"))
        response = line.get("response") or {}
        status = response.get("status_code")
        if status == 200:
            try:
                return custom_id, self.client._parse(response.get("body"))
            except BadResponseError as exc:
                return custom_id, f"bad response: {exc}"
        error = line.get("error") or {}
        body_error = (
            (response.get("body") or {}).get("error") if isinstance(response.get("body"), dict) else None
        )
        message = (error.get("message") if isinstance(error, dict) else None) or (
            body_error.get("message") if isinstance(body_error, dict) else None
        )
        code = error.get("code") if isinstance(error, dict) else None
        what = f"HTTP {status}" if status else (code or "error")
        return custom_id, f"{what}: {message or 'no message'}"


def _logprobs(value: Any) -> tuple[TokenLogprob, ...] | None:
    content = value.get("content") if isinstance(value, dict) else None
    if not isinstance(content, list):
        return None
    return tuple(
        TokenLogprob(
            token=str(item.get("token", "")),
            logprob=float(item.get("logprob", 0.0)),
            top={str(t["token"]): float(t["logprob"]) for t in item.get("top_logprobs") or []},
        )
        for item in content
    )


class LocallyServedClient(OpenAICompatibleClient):
    """The client of an openai-compatible backend with `serve_locally`: requests go over HTTP to
    the `transformers serve` process this process started (tasks.llm.serving.shared_server).

    Its cache identity names the recipe's model and the server settings, never the port, which
    changes with every launch: a resumed run finds the responses the killed one paid for.
    """

    def __init__(self, backend_name: str, config: OpenAICompatibleBackend, model: str, server: Any) -> None:
        super().__init__(backend_name, config.model_copy(update={"base_url": server.base_url}), model)
        self.request_model = server.model_name
        self.server = server
        self._released = False

    def identity(self) -> dict[str, Any]:
        return {
            "backend": self.kind,
            "model": self.model,
            "served_locally": self.config.identity()["serve_locally"],
        }

    async def aclose(self) -> None:
        await super().aclose()
        if not self._released:  # the last client of the server stops it (tasks.llm.serving)
            self._released = True
            release_shared_server(self.server)
