"""Stage 1, generate: every configured generator answers every instruction once.

One generator is the policy (its response becomes rung 0 of the reference ladder); the others are
competitors. With `sft.writer`, the policy writes with the SFT writer's model (tasks/stages/sft.py):
the stage then reads that `sft_models` version, which is in its cache key and its lineage. Each
generator has a strategy (direct, agentwrite, think-then-write; see tasks/generation). Each
(instruction, generator) pair is one row of the `generations` dataset; a call that failed after its
retries is a row with `error` set and `text` null, never an empty answer. Every LLM call goes
through the response cache, so a killed run resumes mid-strategy.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from configs.schema import GeneratorConfig, Recipe
from storage import DatasetRef
from tasks.generation import STRATEGIES, StrategyResult, configured_strategy, generate_many
from tasks.instructions import Instruction, instructions_from_arrow
from tasks.llm.base import gather_or_stop
from tasks.stages.runner import StageContext, StageOutput, StageResult, StageSpec, run_stage
from tasks.stages.sft import sft_writer_model, writer_inputs

GENERATIONS_SCHEMA = pa.schema(
    [
        ("instruction_id", pa.string()),
        ("generator", pa.string()),
        ("role", pa.string()),
        ("backend", pa.string()),
        ("model", pa.string()),
        ("strategy", pa.string()),
        ("sample_index", pa.int32()),
        ("text", pa.string()),
        ("finish_reason", pa.string()),
        ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("latency_s", pa.float64()),
        ("attempts", pa.int32()),
        ("llm_calls", pa.int32()),
        ("cached", pa.bool_()),
        ("error", pa.string()),
        ("metadata_json", pa.string()),  # the strategy's record: plan, plan_source, format_ok, think ...
    ]
)


def _config_slice(recipe: Recipe) -> dict:
    # Only what changes a generated text: the generator and its backend's identity (kind, model,
    # endpoint), never operational limits such as concurrency.
    return {
        "generators": [
            {
                **g.model_dump(mode="json"),
                "backend": recipe.backend_identity(g.backend),
                "strategy_version": STRATEGIES[g.strategy].version,
            }
            for g in recipe.generators
        ]
    }


SPEC = StageSpec(
    name="generate",
    version=2,
    inputs=("instructions",),
    outputs=("generations",),
    description="Each generator writes one response per instruction",
    config_slice=_config_slice,
    extra_inputs=writer_inputs,  # the SFT writer's model, when the recipe has `sft.writer`
    batches=True,
)


async def _generate_all(ctx: StageContext) -> list[dict]:
    """Every generator at once: each has its own backend limits, so an API competitor's latency
    overlaps the others' work instead of adding to it. Rows come back in recipe order."""
    instructions = instructions_from_arrow(ctx.read("instructions"))
    strategies = {  # options checked before any call
        g.name: configured_strategy(g, where=f"generators[{i}]") for i, g in enumerate(ctx.recipe.generators)
    }
    generators = list(ctx.recipe.generators)
    if (sft := sft_writer_model(ctx)) is not None:  # the policy writes with its SFT model
        generators = [
            g.model_copy(update={"model": sft["path"]}) if g.role == "policy" else g for g in generators
        ]
        ctx.logger.info(
            "generate: the policy writes with the SFT model %s (%s)", sft["model_id"], sft["path"]
        )

    async def one_generator(generator: GeneratorConfig) -> list[dict]:
        # Off the event loop: a `serve_locally` backend starts its server here (tens of seconds),
        # and the other generators should be generating meanwhile.
        client = await asyncio.to_thread(ctx.llm, generator.backend, generator.model)
        try:
            results = await generate_many(
                strategies[generator.name], client, instructions, generator,
                max_concurrency=ctx.concurrency(generator.backend), description=f"generate[{generator.name}]",
            )  # fmt: skip
        finally:
            await client.aclose()
        return [_row(generator, ins, res) for ins, res in zip(instructions, results, strict=True)]

    # One endpoint down stops the stage; the other generators' finished calls are already cached.
    per_generator = await gather_or_stop(one_generator(g) for g in generators)
    return [row for rows in per_generator for row in rows]


def _row(generator: GeneratorConfig, instruction: Instruction, result: StrategyResult) -> dict:
    completion = result.completion
    return {
        "instruction_id": instruction.id,
        "generator": generator.name,
        "role": generator.role,
        "backend": generator.backend,
        "model": generator.model,
        "strategy": generator.strategy,
        "sample_index": 0,
        "text": completion.text,
        "finish_reason": completion.finish_reason,
        "input_tokens": completion.usage.input_tokens,
        "output_tokens": completion.usage.output_tokens,
        "latency_s": completion.latency_s,
        "attempts": completion.attempts,
        "llm_calls": len(result.steps),
        "cached": completion.cached,
        "error": completion.error,
        "metadata_json": json.dumps(result.metadata, ensure_ascii=False, sort_keys=True, default=str),
    }


def compute(ctx: StageContext) -> StageOutput:
    rows = asyncio.run(_generate_all(ctx))
    failed = [r for r in rows if r["error"] is not None]
    for r in failed[:5]:
        ctx.logger.warning("generation failed: %s x %s: %s", r["instruction_id"], r["generator"], r["error"])
    ok = [r for r in rows if r["error"] is None]
    return StageOutput(
        tables={"generations": pa.Table.from_pylist(rows, schema=GENERATIONS_SCHEMA)},
        summary={
            "generations": len(rows),
            "per_generator": dict(Counter(r["generator"] for r in ok)),
            "output_tokens": sum(r["output_tokens"] for r in ok),
            "finish_length": sum(1 for r in ok if r["finish_reason"] == "length"),
        },
        failures=len(failed),
    )


@task(name="generate", cache_policy=NO_CACHE, persist_result=False)
def generate(
    recipe: Recipe, inputs: dict[str, DatasetRef], run_id: str | None = None, refresh: bool = False
) -> StageResult:
    return run_stage(SPEC, compute, recipe, inputs, run_id=run_id, refresh=refresh)
