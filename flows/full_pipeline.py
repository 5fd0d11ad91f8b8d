"""The `pipeline` flow: the whole DAG of a recipe as subflows (the UI's run graph shows each):
build-dataset and training (`train`, when the recipe has `training:`; the SFT stages when it has
`sft:`), then the evaluation (when it has `evaluation:`). Every stage is a cache hit when its inputs
and config are unchanged."""

from __future__ import annotations

from typing import Any

from prefect import flow

from configs.loading import load_recipe
from flows.build_dataset import build_dataset
from flows.evaluate import evaluate_candidates
from flows.pipeline import StageName
from flows.train import train_policy
from tasks.stages.sft import reference_enabled


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
    else:  # the Reference-SFT baseline, when configured, is the last stage without training
        until = "sft_reference" if reference_enabled(recipe) else None
        result = {
            "build-dataset": build_dataset(
                recipe_path=recipe_path, overrides=overrides, refresh=refresh, until=until
            )
        }
    if recipe.evaluation is not None:
        result["evaluate"] = evaluate_candidates(recipe_path=recipe_path, overrides=overrides)
    return result
