"""The deployments `wrl up` serves, one set per recipe, named after the recipe:

| deployment | what it runs |
|---|---|
| `pipeline/<recipe>` | the whole DAG: build-dataset, train, evaluate (subflows) |
| `build-dataset/<recipe>` | ingest .. order |
| `train/<recipe>` | curation (cached) + training, when the recipe has `training:` |
| `stage/<recipe>-<stage>` | one stage (generate, score, select, order, train, evaluate; sft_writer and sft_reference when the recipe has `sft:`) |
| `evaluate/<recipe>` | every candidate on every benchmark, when the recipe has `evaluation:` |
| `evaluate/<recipe>-nightly` | the same on `evaluation.nightly.cron`, for `evaluation.nightly.candidates` |
| `judge-calibrate/<recipe>` | the reward judge measured on the ladders' pairs (or `calibration.pairs_file`), when the recipe has a pairwise judge |

Parameters are the flows' typed arguments (recipe path, overrides, refresh), validated by Prefect
against their schema; each deployment's defaults name its recipe. `python -m flows.deployments
CONFIG...` serves them (no work pool: the serve process runs each flow run in a subprocess).
"""

from __future__ import annotations

import sys
from typing import Any

from configs.loading import load_recipe
from configs.schema import Recipe
from flows.build_dataset import build_dataset
from flows.calibrate import calibrate_judge
from flows.evaluate import evaluate_candidates
from flows.full_pipeline import full_pipeline
from flows.stage import run_one_stage
from flows.train import train_policy
from tasks.stages.sft import reference_enabled, writer_enabled

SINGLE_STAGES = ("sft_writer", "generate", "score", "select", "order", "sft_reference", "train", "evaluate")


def deployment_specs(recipe_path: str, recipe: Recipe) -> list[dict[str, Any]]:
    """What to register for one recipe: flow, deployment name, parameters, tags, schedule."""
    base = {"recipe_path": recipe_path}
    judge = recipe.judge_for("score")
    tags = [f"recipe:{recipe.name}"] + ([f"judge:{judge.model}"] if judge else [])
    specs = [
        {"flow": full_pipeline, "name": recipe.name, "parameters": base},
        {"flow": build_dataset, "name": recipe.name, "parameters": base},
    ]
    if recipe.training is not None:
        specs.append({"flow": train_policy, "name": recipe.name, "parameters": base})
    for stage in SINGLE_STAGES:
        if (
            (stage == "train" and recipe.training is None)
            or (stage == "evaluate" and recipe.evaluation is None)
            or (stage == "sft_writer" and not writer_enabled(recipe))
            or (stage == "sft_reference" and not reference_enabled(recipe))
        ):
            continue
        specs.append(
            {"flow": run_one_stage, "name": f"{recipe.name}-{stage}", "parameters": {**base, "stage": stage}}
        )
    if recipe.judge_for("reward") is not None and recipe.reward.kind == "pairwise":
        specs.append({"flow": calibrate_judge, "name": recipe.name, "parameters": base})
    if recipe.evaluation is not None:
        specs.append({"flow": evaluate_candidates, "name": recipe.name, "parameters": base})
        nightly = recipe.evaluation.nightly
        if nightly is not None:
            parameters = {**base, "candidates": list(nightly.candidates) if nightly.candidates else None}
            specs.append({"flow": evaluate_candidates, "name": f"{recipe.name}-nightly", "parameters": parameters,
                          "cron": nightly.cron, "timezone": nightly.timezone, "extra_tags": ["nightly"]})  # fmt: skip
    for spec in specs:
        spec["tags"] = tags + spec.pop("extra_tags", [])
    return specs


def build_deployments(recipe_paths: list[str]) -> list[Any]:
    from prefect.schedules import Cron

    deployments = []
    for path in recipe_paths:
        recipe = load_recipe(path)
        for spec in deployment_specs(path, recipe):
            schedules = [Cron(spec["cron"], timezone=spec["timezone"])] if "cron" in spec else None
            deployments.append(
                spec["flow"].to_deployment(
                    name=spec["name"],
                    parameters=spec["parameters"],
                    tags=spec["tags"],
                    schedules=schedules,
                    description=f"{spec['flow'].description or spec['flow'].name} (recipe {path})",
                )
            )
    return deployments


def serve(recipe_paths: list[str]) -> None:
    """Register the recipes' deployments with the Prefect API (PREFECT_API_URL) and run their flow
    runs until SIGTERM."""
    import prefect

    prefect.serve(*build_deployments(recipe_paths), print_starting_message=True)


if __name__ == "__main__":
    serve(sys.argv[1:] or ["configs/demo.yaml"])
