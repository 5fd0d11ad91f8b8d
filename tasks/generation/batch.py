"""Run one strategy over many instructions: bounded concurrency, a progress bar, input order.

A failed item is a failed StrategyResult; `EndpointFailingError` stops the batch (the endpoint is
down), after every finished item was already stored by the response cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from tqdm.auto import tqdm

from configs.schema import GeneratorConfig
from tasks.generation.strategies import Strategy, StrategyResult
from tasks.instructions.schema import Instruction
from tasks.llm.base import Completion, EndpointFailingError, LLMClient, gather_or_stop


async def generate_many(
    strategy: Strategy,
    client: LLMClient,
    instructions: Sequence[Instruction],
    generator: GeneratorConfig,
    *,
    max_concurrency: int,
    description: str,
    sample_index: int = 0,
) -> list[StrategyResult]:
    semaphore = asyncio.Semaphore(max_concurrency)
    results: list[StrategyResult | None] = [None] * len(instructions)
    bar = tqdm(total=len(instructions), desc=description, unit="item", leave=False)

    async def one(index: int, instruction: Instruction) -> None:
        async with semaphore:
            try:
                result = await strategy.generate(client, instruction, generator, sample_index=sample_index)
            except EndpointFailingError:
                raise
            except Exception as exc:  # a strategy bug: record it on the item, keep the batch going
                result = StrategyResult(Completion.failure(f"{type(exc).__name__}: {exc}"), steps=())
        results[index] = result
        bar.update(1)

    try:
        await gather_or_stop(one(i, instruction) for i, instruction in enumerate(instructions))
    finally:
        bar.close()
    return [r for r in results if r is not None]
