"""The `build-dataset` flow: ingest -> (sft_writer, when the recipe has `sft.writer`) -> generate ->
score -> select -> order (flows/pipeline.py runs it)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.pipeline import StageName, check_stage_names, run_pipeline

__all__ = ["build_dataset", "check_stage_names"]


@flow(name="build-dataset")
def build_dataset(
    recipe_path: str = "configs/demo.yaml",
    overrides: dict[str, Any] | None = None,
    refresh: list[StageName] | None = None,
    until: StageName | None = None,
) -> dict[str, Any]:
    """Build the training set from a recipe. `refresh` forces the named stages to recompute;
    `until` stops after the named stage (upstream stages are served from cache when valid).
    A recipe without a judge stops after generate."""
    return run_pipeline("build-dataset", recipe_path, overrides, refresh, until, default_last="order")
