"""The `train` flow: the curation stages (cache hits when their outputs exist) then stage 5, RL
training against the reference ladders (flows/pipeline.py runs it)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.pipeline import StageName, run_pipeline


@flow(name="train")
def train_policy(
    recipe_path: str = "configs/demo.yaml",
    overrides: dict[str, Any] | None = None,
    refresh: list[StageName] | None = None,
) -> dict[str, Any]:
    """Train the policy with Writing-RL on the recipe's ladders, building them first if needed.
    `refresh` forces the named stages to recompute."""
    return run_pipeline("train", recipe_path, overrides, refresh, None, default_last="train")
