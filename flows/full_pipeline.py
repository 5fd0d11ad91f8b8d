"""The `pipeline` flow: the whole DAG of a recipe as subflows (the UI's run graph shows each):
build-dataset and training (`train`, when the recipe has `training:`), then the evaluation (when
it has `evaluation:`). Every stage is a cache hit when its inputs and config are unchanged."""

from __future__ import annotations

from typing import Any

from prefect import flow

from configs.loading import load_recipe
from flows.build_dataset import build_dataset
from flows.evaluate import evaluate_candidates
from flows.pipeline import StageName
from flows.train import train_policy


@flow(name="pipeline")
def full_pipeline(
    recipe_path: str = "configs/demo.yaml",
    overrides: dict[str, Any] | None = None,
    refresh: list[StageName] | None = None,
) -> dict[str, Any]:
    """Curation, training and evaluation, as far as the recipe goes. `refresh` forces the named
    curation/training stages to recompute."""
    recipe = load_recipe(recipe_path, overrides)
    if recipe.training is not None:
        result = {"train": train_policy(recipe_path=recipe_path, overrides=overrides, refresh=refresh)}
    else:
        result = {
            "build-dataset": build_dataset(recipe_path=recipe_path, overrides=overrides, refresh=refresh)
        }
    if recipe.evaluation is not None:
        result["evaluate"] = evaluate_candidates(recipe_path=recipe_path, overrides=overrides)
    return result
