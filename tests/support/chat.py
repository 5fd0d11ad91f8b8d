"""One chat request to an OpenAI-compatible server (a served model), over real HTTP."""

from __future__ import annotations

import openai


async def ask(base_url: str, model: str) -> openai.types.chat.ChatCompletion:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
    try:
        return await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Write a haiku about the sea."}],
            max_tokens=12,
            temperature=0,
        )
    finally:
        await client.close()
