"""The calibrate stage (`wrl judge calibrate`): the reward judge measured on pairs before training.

Pairs come from the recipe's own ladders (two rungs of one instruction, a seeded draw spread
over the instructions) or from a labelled pairs file (`calibration.pairs_file`, sha256
fingerprinted). Each pair is judged in both orders, `calibration.repeats` samples each in json
mode (tasks/rewards/calibration.py says what is measured and how the recommendation is made).

Writes `judge_calibration` (one row per judgment: the verdict in both the judge's and the pair's
terms, tokens, failures); the summary holds the metrics and the recommended `reward.position`.
Cached like any stage: keyed on the reward judge's identity (backend, model, prompt version,
mode, decoding), the tie margin, the calibration block and the pairs (ladders version or the
file's sha256). A failed judgment keeps the run out of the cache, so the next run redoes only
what failed (every finished call is a response-cache hit).
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from configs.loading import ConfigError
from configs.schema import Recipe
from storage import DatasetRef
from tasks.rewards.calibration import (
    CALIBRATION_SCHEMA,
    calibration_metrics,
    judge_pairs,
    load_labelled_pairs,
    pairs_from_ladders,
    recommend,
)
from tasks.stages.runner import StageContext, StageOutput, StageResult, StageSpec, run_stage


def pairs_file_sha256(recipe: Recipe) -> str | None:
    path = recipe.calibration.pairs_file
    if path is None:
        return None
    if not Path(path).is_file():
        raise ConfigError(f"calibration.pairs_file: {path} does not exist (cwd {Path.cwd()})")
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _config_slice(recipe: Recipe) -> dict[str, Any]:
    return {
        "judge": recipe.call_identity(recipe.judge_for("reward")),
        "tie_margin": recipe.reward.tie_margin,
        "calibration": recipe.calibration.model_dump(mode="json", exclude={"pairs_file"}),
        "pairs_file_sha256": pairs_file_sha256(recipe),
    }


SPEC = StageSpec(
    name="calibrate",
    version=1,
    inputs=(),
    outputs=("judge_calibration",),
    description="The reward judge's position flips, ties, self-consistency, length bias, cost and agreement",
    config_slice=_config_slice,
    # Pairs from the ladders, unless the recipe names a labelled file.
    extra_inputs=lambda recipe: () if recipe.calibration.pairs_file else ("ladders",),
)


def check_calibration(recipe: Recipe) -> None:
    """Refuse, before any call, a recipe that cannot be calibrated."""
    if recipe.judge_for("reward") is None:
        raise ConfigError("judge calibration needs a judge: set `judge:` (or `reward.judge`)")
    if recipe.reward.kind != "pairwise":
        raise ConfigError(
            "judge calibration measures a pairwise judge; this recipe's reward.kind is pointwise"
        )
    pairs_file_sha256(recipe)


def calibration_summary(recipe: Recipe, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The metrics, the cost per judgment at the recipe's prices and the recommendation, from the
    stage's rows (so a cache hit reports exactly what the run that computed it did)."""
    judge = recipe.judge_for("reward")
    assert judge is not None
    metrics = calibration_metrics(rows, judge.mode)
    price = recipe.prices.get(judge.model)
    metrics["cost_usd_per_judgment"] = (
        0.0 if not recipe.is_paid(judge.backend)
        else None if price is None
        else price.cost(metrics["input_tokens_per_judgment"] or 0, metrics["output_tokens_per_judgment"] or 0)
    )  # fmt: skip
    metrics["recommended_position"], metrics["recommendation"] = recommend(metrics)
    metrics["judge"] = f"{judge.backend}/{judge.model} ({judge.mode}, prompt {judge.prompt_version})"
    metrics["source"] = str(recipe.calibration.pairs_file) if recipe.calibration.pairs_file else "ladders"
    return metrics


def compute(ctx: StageContext) -> StageOutput:
    recipe, calibration = ctx.recipe, ctx.recipe.calibration
    judge = recipe.judge_for("reward")
    assert judge is not None
    if calibration.pairs_file is not None:
        pairs = load_labelled_pairs(Path(calibration.pairs_file), calibration.pairs)
    else:
        pairs = pairs_from_ladders(ctx.read("ladders").to_pylist(), calibration.pairs, calibration.seed)
        if not pairs:
            raise ConfigError("judge calibration: the ladders have no instruction with two responses")
    client = ctx.llm(judge.backend, judge.model)
    rows = asyncio.run(judge_pairs(client, judge, recipe.reward, pairs, calibration.repeats,
                                   ctx.concurrency(judge.backend)))  # fmt: skip
    metrics = calibration_summary(recipe, rows)
    table = pa.Table.from_pylist(rows, schema=CALIBRATION_SCHEMA)
    return StageOutput(tables={"judge_calibration": table}, summary=metrics, failures=metrics["failed"])


@task(name="calibrate", cache_policy=NO_CACHE, persist_result=False)
def calibrate(
    recipe: Recipe, inputs: dict[str, DatasetRef], run_id: str | None = None, refresh: bool = False
) -> StageResult:
    return run_stage(SPEC, compute, recipe, inputs, run_id=run_id, refresh=refresh)
