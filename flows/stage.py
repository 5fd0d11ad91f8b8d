"""The `stage` flow: one stage of the DAG (its upstream stages are served from the cache, computed
only if missing). A deployment per stage (`stage/<recipe>-score`, ...) is what a user re-runs after
changing, say, the judge: `--param overrides='{"judge": {...}}'`."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from flows.evaluate import evaluate_candidates
from flows.pipeline import run_pipeline

SingleStage = Literal[
    "ingest", "sft_writer", "generate", "score", "select", "order", "sft_reference", "train", "evaluate"
]


@flow(name="stage")
def run_one_stage(
    stage: SingleStage,
    recipe_path: str = "configs/demo.yaml",
    overrides: dict[str, Any] | None = None,
    refresh: bool = False,
) -> dict[str, Any]:
    """Run `stage` (and, from the cache, what it needs). `refresh` recomputes it even when its
    inputs and config are unchanged."""
    if stage == "evaluate":
        return evaluate_candidates(recipe_path=recipe_path, overrides=overrides, refresh=refresh)
    flow_name = "train" if stage == "train" else "build-dataset"
    return run_pipeline(
        flow_name, recipe_path, overrides, [stage] if refresh else None, stage, default_last=stage
    )
