"""Stage 4, order: each selected instruction's references in ascending score order, the policy's
own response always rung 0 (tasks/curation/ordering.py has the tie and missing-score rules).

Writes the `ladders` Delta table (and `ladder_exclusions`: every instruction or reference left
out, and why), plus two exports under `<storage root>/exports/<stage run id>/`: a Hugging Face
`datasets.Dataset` for TRL training and `train.parquet` in the official Writing-RL verl format.
"""

from __future__ import annotations

from collections import Counter

from prefect import task
from prefect.cache_policies import NO_CACHE

from configs.schema import Recipe
from storage import DatasetRef
from tasks.curation import build_ladders, selected_ids, to_hf_dataset, write_verl_parquet
from tasks.stages.runner import StageContext, StageOutput, StageResult, StageSpec, run_stage

SPEC = StageSpec(
    name="order",
    version=1,
    inputs=("selections", "judgments", "generations", "instructions"),
    outputs=("ladders", "ladder_exclusions"),
    description="Ascending reference ladders, rung 0 the policy's own response",
    config_slice=lambda r: {"ordering": r.ordering.model_dump(mode="json")},
)


def compute(ctx: StageContext) -> StageOutput:
    ids = selected_ids(ctx.read("selections"))
    scores = ctx.read("judgments").select(["instruction_id", "generator", "role", "score"])
    ladders, excluded = build_ladders(
        ids, ctx.read("generations"), scores, ctx.recipe.ordering, instructions=ctx.read("instructions")
    )
    export_dir = ctx.storage.root / "exports" / ctx.stage_run_id
    summary = {
        "ladders": ladders.num_rows,
        "excluded_instructions": sum(1 for k in excluded["kind"].to_pylist() if k == "instruction"),
        "excluded_references": sum(1 for k in excluded["kind"].to_pylist() if k == "reference"),
        "rungs": dict(sorted(Counter(ladders["n_rungs"].to_pylist()).items())),
    }
    if ladders.num_rows:
        to_hf_dataset(ladders).save_to_disk(str(export_dir / "hf_dataset"))
        write_verl_parquet(ladders, export_dir / "train.parquet", split="train")
        summary["exports"] = str(export_dir)
    return StageOutput(tables={"ladders": ladders, "ladder_exclusions": excluded}, summary=summary)


@task(name="order", cache_policy=NO_CACHE, persist_result=False)
def order(
    recipe: Recipe, inputs: dict[str, DatasetRef], run_id: str | None = None, refresh: bool = False
) -> StageResult:
    return run_stage(SPEC, compute, recipe, inputs, run_id=run_id, refresh=refresh)
