"""Runs a prefix of the stage DAG as one recorded run: what every flow does.

`run_pipeline` runs the stages up to `last` in topological order, each a cached Prefect task
wired to its upstream outputs by dataset name, records the run in the catalog, and builds the
end-of-run report (flows/reporting.py): returned under `report`, published as Prefect artifacts,
printed by the CLI. The flows (build_dataset.py, train.py) only choose where to stop.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from prefect.runtime import flow_run

from configs.loading import ConfigError, load_recipe, stable_hash
from flows.reporting import build_report, publish_artifacts
from storage import code_version, open_storage
from tasks.stages import NEEDS_JUDGE, STAGE_ORDER, generate, ingest, order, score, select, sft, train
from tasks.stages.runner import StageResult, run_status

# stage name -> (its spec, its Prefect task). A stage's inputs are named after the datasets that
# upstream stages write, so wiring is by name: adding a stage is one line here. A stage the recipe
# does not enable (`spec.enabled`) is skipped; `spec.inputs_for(recipe)` adds the inputs the recipe
# asks for (generate and train read the SFT writer's `sft_models` when `sft.writer` is set).
STAGE_TASKS = {
    "ingest": (ingest.SPEC, ingest.ingest),
    "sft_writer": (sft.WRITER_SPEC, sft.sft_writer),
    "generate": (generate.SPEC, generate.generate),
    "score": (score.SPEC, score.score),
    "select": (select.SPEC, select.select),
    "order": (order.SPEC, order.order),
    "sft_reference": (sft.REFERENCE_SPEC, sft.sft_reference),
    "train": (train.SPEC, train.train),
}


# Typed flow parameters: Prefect validates a deployment run's parameters against these.
StageName = Literal["ingest", "sft_writer", "generate", "score", "select", "order", "sft_reference", "train"]
assert set(StageName.__args__) == set(STAGE_ORDER)  # type: ignore[attr-defined]


def run_tags(recipe, judges: Iterable[Any] = ()) -> list[str]:
    """The flow run's tags (the UI's Runs page filters by them): the recipe and its judges."""
    models = {j.model for j in (recipe.judge_for("score"), *judges) if j is not None}
    return [f"recipe:{recipe.name}"] + [f"judge:{model}" for model in sorted(models)]


def tag_flow_run(tags: Iterable[str]) -> None:
    """Add `tags` to the current flow run. Flow-run tags, not task-run tags: Prefect takes a
    concurrency lease for every tag of every task run, which cost 12 s for a five-stage flow with a
    tag per dataset, and its lease-renewal thread, joined when a task ends, added up to 2 s after
    each computed stage (measured: 2.0-2.5 s between the demo's computed stages, 0.1 s untagged)."""
    if not flow_run.id:
        return
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        current = client.read_flow_run(flow_run.id)
        client.update_flow_run(flow_run.id, tags=sorted(set(current.tags) | set(tags)))


def tag_flow_run_with_datasets(outputs: Iterable[Iterable[Any]]) -> None:
    """Tag the current flow run with the dataset versions it wrote (`ladders@3`), so the UI's run
    list filters by version (see `tag_flow_run`)."""
    tag_flow_run({str(ref) for refs in outputs for ref in refs})


def _output_of(results: dict[str, StageResult], dataset: str):
    for result in results.values():
        if dataset in result.outputs:
            return result.outputs[dataset]
    raise ValueError(f"no upstream stage wrote '{dataset}'")


def check_stage_names(names: Iterable[str], what: str) -> set[str]:
    names = set(names)
    unknown = sorted(names - set(STAGE_ORDER))
    if unknown:
        raise ConfigError(f"{what}: unknown stage(s) {unknown}; stages are {', '.join(STAGE_ORDER)}")
    return names


def stages_until(recipe, last: str) -> list[str]:
    """The stages from ingest to `last` that the recipe runs, in DAG order."""
    return [s for s in STAGE_ORDER[: STAGE_ORDER.index(last) + 1] if STAGE_TASKS[s][0].enabled(recipe)]


def check_runnable(recipe, recipe_path: str, stages: Iterable[str]) -> None:
    """Refuse, before any stage runs, stages the recipe lacks a block for (a judge, training)."""
    stages = set(stages)
    if recipe.judge_for("score") is None and stages & NEEDS_JUDGE:
        raise ConfigError(
            f"{recipe_path}: stage(s) {sorted(stages & NEEDS_JUDGE)} need a `judge:` block in the recipe "
            "(backend, model, mode); without one the flow stops after generate"
        )
    if recipe.training is None and "train" in stages:
        raise ConfigError(f"{recipe_path}: stage 'train' needs a `training:` block in the recipe")


def run_stages(
    recipe, stages: Iterable[str], run_id: str, forced: set[str], results: dict[str, StageResult]
) -> dict[str, StageResult]:
    """Each stage as its Prefect task, wired to the outputs in `results` by dataset name; adds its
    own result to `results` (so a failure leaves the finished ones there) and returns it."""
    for stage in stages:
        spec, stage_task = STAGE_TASKS[stage]
        inputs = {role: _output_of(results, role) for role in spec.inputs_for(recipe)}
        results[stage] = stage_task(recipe, inputs, run_id=run_id, refresh=stage in forced)
    return results


def run_pipeline(
    flow_name: str,
    recipe_path: str,
    overrides: dict[str, Any] | None,
    refresh: list[str] | None,
    until: str | None,
    default_last: str,
) -> dict[str, Any]:
    recipe = load_recipe(recipe_path, overrides)
    forced = check_stage_names(refresh or (), "refresh")
    check_stage_names([until] if until else [], "until")
    last = until or (default_last if recipe.judge_for("score") is not None else "generate")
    if not STAGE_TASKS[last][0].enabled(recipe):
        raise ConfigError(
            f"{recipe_path}: stage '{last}' is not configured (it needs "
            f"{'`sft.writer`' if last == 'sft_writer' else '`sft.reference`'} in the recipe)"
        )
    stages = stages_until(recipe, last)
    wanted = set(stages) | {s for s in forced if STAGE_TASKS[s][0].enabled(recipe)}
    check_runnable(recipe, recipe_path, wanted)
    storage = open_storage(recipe.storage)
    storage.catalog.mark_abandoned()
    run_id = storage.catalog.start_run(
        flow=flow_name,
        recipe=recipe.name,
        recipe_path=str(recipe_path),
        config_hash=stable_hash(recipe),
        code_version=code_version(),
        prefect_flow_run_id=str(flow_run.id) if flow_run.id else None,
    )
    results: dict[str, StageResult] = {}
    try:
        tag_flow_run(run_tags(recipe, [recipe.judge_for("reward")] if "train" in wanted else []))
        run_stages(recipe, stages, run_id, forced, results)
    except BaseException as exc:
        storage.catalog.finish_run(run_id, status=run_status(exc), error=f"{type(exc).__name__}: {exc}")
        raise
    tag_flow_run_with_datasets(r.outputs.values() for r in results.values())
    failures = sum(int(r.summary.get("failures", 0)) for r in results.values())
    storage.catalog.finish_run(run_id, status="completed" if failures == 0 else "completed_with_failures")
    stages = [
        {
            "stage": r.stage,
            "cached": r.cached,
            "outputs": {k: str(v) for k, v in r.outputs.items()},
            "elapsed_s": round(r.elapsed_s, 2),
            "summary": r.summary,
        }
        for r in results.values()
    ]
    report = build_report(storage, run_id, stages)
    report["artifacts"] = publish_artifacts(report, recipe.name, storage, stages)
    return {
        "run_id": run_id,
        "flow": flow_name,
        "recipe": recipe.name,
        "storage": str(storage.root),
        "stages": stages,
        "report": report,
    }
