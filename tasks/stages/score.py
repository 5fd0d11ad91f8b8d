"""Stage 2, score: a judge scores every generation, pointwise, WritingBench style.

Each instruction's criteria come from the data, else from the recipe's LLM `criteria_writer`, else
(no writer configured) one holistic criterion, recorded as `criteria_source: "holistic"`. Each
criterion is judged in its own call; s_j is the mean over all of them, and is null when any
criterion failed (tasks/judging/pointwise.py). Two kinds of failure, both recorded and neither
ever a score:
- retryable: an LLM call failed after its retries (API error, timeout). The stage is then not
  cached, and the next run redoes exactly those calls (the rest come from the response cache);
- final: the judge's reply stayed unparsable after its re-asks. Re-running would replay the same
  cached replies, so these are counted in the summary (`unscored`) and do not block the cache.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from configs.schema import Recipe
from storage import DatasetRef
from tasks.instructions import Instruction, instructions_from_arrow
from tasks.judging import HOLISTIC, CriteriaFailure, ResponseScore, score_response, write_criteria
from tasks.llm.base import gather_or_stop
from tasks.stages.runner import StageContext, StageOutput, StageResult, StageSpec, run_stage

JUDGMENTS_SCHEMA = pa.schema(
    [
        ("instruction_id", pa.string()),
        ("generator", pa.string()),
        ("role", pa.string()),
        ("score", pa.float64()),  # s_j; null when not scored
        ("error", pa.string()),
        ("retryable", pa.bool_()),  # the failure was an LLM call failing: the next run retries it
        ("criteria_source", pa.string()),  # data | writer | holistic
        ("criterion_scores_json", pa.string()),  # [{criterion, score, reason, error}]
        ("judge_model", pa.string()),
        ("prompt_version", pa.string()),
        ("mode", pa.string()),
        ("llm_calls", pa.int32()),
    ]
)


def _config_slice(recipe: Recipe) -> dict[str, Any]:
    return {
        "judge": recipe.call_identity(recipe.judge_for("score")),
        "criteria_writer": recipe.call_identity(recipe.criteria_writer),
    }


SPEC = StageSpec(
    name="score",
    version=1,
    inputs=("instructions", "generations"),
    outputs=("judgments",),
    description="A judge scores every generation against the instruction's criteria",
    config_slice=_config_slice,
    batches=True,
)


async def _criteria_for(ctx: StageContext, instructions: list[Instruction]) -> dict[str, tuple[str, Any]]:
    """instruction id -> (source, criteria tuple or CriteriaFailure)."""
    out: dict[str, tuple[str, Any]] = {}
    missing = [i for i in instructions if not i.criteria]
    for ins in instructions:
        if ins.criteria:
            out[ins.id] = ("data", ins.criteria)
    if not missing:
        return out
    writer = ctx.recipe.criteria_writer
    if writer is None:
        for ins in missing:
            out[ins.id] = ("holistic", (HOLISTIC,))
        return out
    client = ctx.llm(writer.backend, writer.model)
    try:
        written = await gather_or_stop(write_criteria(client, writer, ins) for ins in missing)
    finally:
        await client.aclose()
    for ins, result in zip(missing, written, strict=True):
        out[ins.id] = ("writer", result)
    return out


async def _score_all(ctx: StageContext) -> list[dict[str, Any]]:
    judge = ctx.recipe.judge_for("score")
    assert judge is not None  # checked before any work (flows/pipeline.py::run_pipeline)
    instructions = {i.id: i for i in instructions_from_arrow(ctx.read("instructions"))}
    generations = ctx.read("generations").to_pylist()
    criteria = await _criteria_for(ctx, list(instructions.values()))
    client = ctx.llm(judge.backend, judge.model)
    semaphore = asyncio.Semaphore(ctx.concurrency(judge.backend))
    bar = tqdm(total=len(generations), desc="score", unit="response", leave=False)

    async def one(gen: dict[str, Any]) -> dict[str, Any]:
        source, crit = criteria[gen["instruction_id"]]
        row = {"instruction_id": gen["instruction_id"], "generator": gen["generator"], "role": gen["role"],
               "criteria_source": source, "judge_model": judge.model, "prompt_version": judge.prompt_version,
               "mode": judge.mode, "score": None, "error": None, "retryable": False,
               "criterion_scores_json": "[]", "llm_calls": 0}  # fmt: skip
        if gen["error"] is not None or gen["text"] is None:
            row["error"] = f"generation failed: {gen['error']}"
        elif isinstance(crit, CriteriaFailure):
            row.update(error=f"criteria writer failed: {crit.error}", llm_calls=len(crit.llm_calls),
                       retryable=any(not c.ok for c in crit.llm_calls))  # fmt: skip
        else:
            async with semaphore:
                result: ResponseScore = await score_response(
                    client, judge, instructions[gen["instruction_id"]], gen["text"], crit
                )
            row.update(
                score=result.score, error=result.error, llm_calls=len(result.llm_calls),
                retryable=any(not c.ok for c in result.llm_calls),
                criterion_scores_json=json.dumps(
                    [{"criterion": c.criterion, "score": c.score, "reason": c.reason, "error": c.error}
                     for c in result.criteria], ensure_ascii=False),
            )  # fmt: skip
        bar.update(1)
        return row

    try:
        return await gather_or_stop(one(g) for g in generations)
    finally:
        bar.close()
        await client.aclose()


def compute(ctx: StageContext) -> StageOutput:
    rows = asyncio.run(_score_all(ctx))
    scored = [r for r in rows if r["score"] is not None]
    retryable = [r for r in rows if r["retryable"]]
    for r in [r for r in rows if r["score"] is None][:5]:
        ctx.logger.warning("not scored: %s x %s: %s", r["instruction_id"], r["generator"], r["error"])
    by_generator: dict[str, list[float]] = {}
    for r in scored:
        by_generator.setdefault(r["generator"], []).append(r["score"])
    return StageOutput(
        tables={"judgments": pa.Table.from_pylist(rows, schema=JUDGMENTS_SCHEMA)},
        summary={
            "judgments": len(rows),
            "scored": len(scored),
            "unscored": len(rows) - len(scored),
            "criteria_sources": dict(Counter(r["criteria_source"] for r in rows)),
            "mean_score_by_generator": {
                g: round(sum(v) / len(v), 3) for g, v in sorted(by_generator.items())
            },
        },
        failures=len(retryable),
    )


@task(name="score", cache_policy=NO_CACHE, persist_result=False)
def score(
    recipe: Recipe, inputs: dict[str, DatasetRef], run_id: str | None = None, refresh: bool = False
) -> StageResult:
    return run_stage(SPEC, compute, recipe, inputs, run_id=run_id, refresh=refresh)
