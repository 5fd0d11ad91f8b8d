"""Stage 4, order: each selected instruction's responses in ascending score order, the policy's
own among them (or first: `ordering.policy_rung`), and the held-out validation split
(tasks/curation/ordering.py has the tie and missing-score rules).

Writes the `ladders` Delta table (and `ladder_exclusions`: every instruction or reference left
out, and why), plus exports under `<storage root>/exports/<stage run id>/`: a Hugging Face
`datasets.Dataset` for TRL training, and `train.parquet` (with a validation split also
`test.parquet`) in the official Writing-RL verl format.
"""

from __future__ import annotations

from collections import Counter

from prefect import task
from prefect.cache_policies import NO_CACHE

from configs.schema import Recipe
from storage import DatasetRef
from tasks.curation import VERL_SYSTEM_MESSAGE, build_ladders, selected_ids, to_hf_dataset, write_verl_splits
from tasks.stages.runner import StageContext, StageOutput, StageResult, StageSpec, run_stage

SPEC = StageSpec(
    name="order",
    version=2,  # 2: the policy's response sorted by score, policy_rung, the validation split
    inputs=("selections", "judgments", "generations", "instructions"),
    outputs=("ladders", "ladder_exclusions"),
    description="Ascending reference ladders, the policy's own response among them",
    config_slice=lambda r: {
        "ordering": r.ordering.model_dump(mode="json"),
        "system_prompt": r.policy.system_prompt,
    },
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
        "policy_rungs": dict(sorted(Counter(ladders["policy_rung"].to_pylist()).items())),
        "validation_ladders": ladders["split"].to_pylist().count("validation"),
    }
    if ladders.num_rows:
        to_hf_dataset(ladders).save_to_disk(str(export_dir / "hf_dataset"))
        # The policy's own system prompt, when it has one: RL prompts as rung 0 was written.
        system = ctx.recipe.policy.system_prompt or VERL_SYSTEM_MESSAGE
        write_verl_splits(ladders, export_dir, system_prompt=system)
        summary["exports"] = str(export_dir)
    return StageOutput(tables={"ladders": ladders, "ladder_exclusions": excluded}, summary=summary)


@task(name="order", cache_policy=NO_CACHE, persist_result=False)
def order(
    recipe: Recipe, inputs: dict[str, DatasetRef], run_id: str | None = None, refresh: bool = False
) -> StageResult:
    return run_stage(SPEC, compute, recipe, inputs, run_id=run_id, refresh=refresh)
