"""The `judge-calibrate` flow (`wrl judge calibrate`): measure the reward judge before training.

With pairs from the recipe's ladders, the curation stages run first (cache hits when their
outputs exist); with `calibration.pairs_file`, only the calibrate stage runs. The result is
published as a markdown artifact (the table and the recommended `reward.position`) and an image
artifact (the plot), and the stage run carries the lineage like any other.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext
from prefect.runtime import flow_run

from configs.loading import load_recipe, stable_hash
from flows.pipeline import (
    check_runnable,
    run_stages,
    run_tags,
    stages_until,
    tag_flow_run,
    tag_flow_run_with_datasets,
)
from flows.reporting import artifact_key, figures_drawn_before, image_artifact
from storage import code_version, open_storage
from tasks.rewards.calibration import calibration_markdown, plot_calibration
from tasks.stages import calibrate as calibrate_stage
from tasks.stages.publish import artifact_link
from tasks.stages.runner import StageResult, run_status


@flow(name="judge-calibrate")
def calibrate_judge(
    recipe_path: str = "configs/demo.yaml", overrides: dict[str, Any] | None = None, refresh: bool = False
) -> dict[str, Any]:
    """Judge pairs from the recipe's ladders (or its labelled `calibration.pairs_file`) in both
    orders; report the position flip rate, ties, self-consistency, length bias, cost and agreement,
    and recommend a `reward.position`. `refresh` recomputes the calibration (not the curation)."""
    recipe = load_recipe(recipe_path, overrides)
    calibrate_stage.check_calibration(recipe)
    curation = stages_until(recipe, "order") if recipe.calibration.pairs_file is None else []
    check_runnable(recipe, recipe_path, curation)  # the ladders' pairs need the curation's judge
    storage = open_storage(recipe.storage)
    storage.catalog.mark_abandoned()
    run_id = storage.catalog.start_run(
        flow="judge-calibrate", recipe=recipe.name, recipe_path=str(recipe_path), config_hash=stable_hash(recipe),
        code_version=code_version(), prefect_flow_run_id=str(flow_run.id) if flow_run.id else None,
    )  # fmt: skip
    results: dict[str, StageResult] = {}
    try:
        tag_flow_run(run_tags(recipe, [recipe.judge_for("reward")]))
        run_stages(recipe, curation, run_id, set(), results)
        ladders = {"ladders": results["order"].outputs["ladders"]} if "order" in results else {}
        result = calibrate_stage.calibrate(recipe, ladders, run_id=run_id, refresh=refresh)
    except BaseException as exc:
        storage.catalog.finish_run(run_id, status=run_status(exc), error=f"{type(exc).__name__}: {exc}")
        raise
    tag_flow_run_with_datasets([result.outputs.values()])
    rows = storage.datasets.read(result.outputs["judge_calibration"]).to_pylist()
    metrics = calibrate_stage.calibration_summary(recipe, rows)
    storage.catalog.finish_run(
        run_id, status="completed" if not metrics["failed"] else "completed_with_failures"
    )
    plot = plot_calibration(metrics, rows, storage.root / "reports" / run_id / "judge-calibration.png",
                            figures_drawn_before(storage))  # fmt: skip
    markdown = calibration_markdown(metrics, metrics["judge"])
    return {
        "run_id": run_id, "flow": "judge-calibrate", "recipe": recipe.name, "storage": str(storage.root),
        "stage_run_id": result.stage_run_id, "cached": result.cached,
        "output": str(result.outputs["judge_calibration"]), "metrics": metrics, "markdown": markdown,
        "plot": str(plot), "artifacts": _publish(recipe.name, markdown, str(plot)),
    }  # fmt: skip


def _publish(recipe: str, markdown: str, plot: str) -> list[str]:
    if FlowRunContext.get() is None:
        return []
    keys = [image_artifact(plot, artifact_key(recipe, "plot", section="judge-calibration"),
                           "judge calibration: measured rates and the verdicts of each order")]  # fmt: skip
    keys.append(artifact_key(recipe, "summary", section="judge-calibration"))
    create_markdown_artifact(
        markdown=f"{markdown}\n\n**Plot**: {artifact_link(keys[0])}", key=keys[-1],
        description="Judge calibration: the measured bias and the recommended reward.position",
    )  # fmt: skip
    return keys
