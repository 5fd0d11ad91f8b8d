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

from collections.abc import Sequence
from typing import Any

import openai

from configs.schema import Decoding, OpenAICompatibleBackend
from tasks.llm.base import Message, TokenLogprob, Usage
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
