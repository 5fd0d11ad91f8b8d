"""The `stage` flow: one stage of the DAG (its upstream stages are served from the cache, computed
only if missing). A deployment per stage (`stage/<recipe>-score`, ...) is what a user re-runs after
changing, say, the judge: `--param overrides='{"judge": {...}}'`.

`flow_for_stage` is the one place that says which flow runs a stage alone (this flow and `wrl stage`
both ask it); `stage_config_hashes` is each stage's config hash under a recipe (`wrl config show`).
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from configs.schema import Recipe
from flows.evaluate import evaluate_candidates
from flows.pipeline import STAGE_TASKS, run_pipeline
from tasks.stages import STAGE_ORDER
from tasks.stages import evaluate as evaluate_stage
from tasks.stages.runner import stage_keys

SingleStage = Literal[
    "ingest", "sft_writer", "generate", "score", "select", "order", "sft_reference", "train", "evaluate"
]
STAGES: tuple[str, ...] = (*STAGE_ORDER, "evaluate")  # every stage that runs alone, in DAG order
assert set(SingleStage.__args__) == set(STAGES)  # type: ignore[attr-defined]

FlowName = Literal["build-dataset", "train", "evaluate"]


def flow_for_stage(stage: str) -> FlowName:
    """The flow that runs `stage` alone: `evaluate` its own flow, `train` the train flow, every other
    stage the build-dataset flow stopped after it. ValueError naming the stages for an unknown one."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage '{stage}'; stages are {', '.join(STAGES)}")
    if stage == "evaluate":
        return "evaluate"
    return "train" if stage == "train" else "build-dataset"


@flow(name="stage")
def run_one_stage(
    stage: SingleStage,
    recipe_path: str = "configs/demo.yaml",
    overrides: dict[str, Any] | None = None,
    refresh: bool = False,
) -> dict[str, Any]:
    """Run `stage` (and, from the cache, what it needs). `refresh` recomputes it even when its
    inputs and config are unchanged."""
    flow_name = flow_for_stage(stage)
    if flow_name == "evaluate":
        return evaluate_candidates(recipe_path=recipe_path, overrides=overrides, refresh=refresh)
    return run_pipeline(
        flow_name, recipe_path, overrides, [stage] if refresh else None, stage, default_last=stage
    )


def stage_config_hashes(recipe: Recipe) -> list[dict[str, Any]]:
    """Each stage's config hash under `recipe` (the hash of exactly the config slice in its cache
    key, as `tasks.stages.runner.stage_keys` computes it), in DAG order, as {stage, version,
    benchmark, config_hash, note}. Where there is no hash to compute, `config_hash` is None and
    `note` says why: a stage the recipe does not configure, and `evaluate`, whose slice includes the
    candidate (resolved from storage when it runs), so one row per benchmark, keyed per candidate."""
    rows: list[dict[str, Any]] = []
    for name in STAGE_ORDER:
        spec = STAGE_TASKS[name][0]
        configured = spec.enabled(recipe)
        rows.append({
            "stage": name, "version": spec.version, "benchmark": None,
            # The config hash does not depend on the input versions (the cache key does).
            "config_hash": stage_keys(spec, recipe, {})[0] if configured else None,
            "note": None if configured else "not configured (an optional stage this recipe does not run)",
        })  # fmt: skip
    evaluate = {"stage": "evaluate", "version": evaluate_stage.VERSION, "config_hash": None}
    if recipe.evaluation is None:
        rows.append({**evaluate, "benchmark": None, "note": "not configured (no `evaluation:` block)"})
        return rows
    candidates = ", ".join(c.name for c in recipe.evaluation.candidates)
    for benchmark in recipe.evaluation.benchmarks:
        note = f"one per candidate ({candidates}), known once they resolve at run time (see `wrl runs`)"
        rows.append({**evaluate, "benchmark": benchmark, "note": note})
    return rows
