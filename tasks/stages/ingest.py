"""Stage 0, ingest: load and validate writing instructions into the `instructions` dataset.

The cache key includes a fingerprint of the source bytes, so editing the file re-ingests even
when the recipe is unchanged. Bad rows fail the stage before anything is written.
"""

from __future__ import annotations

from collections import Counter

from prefect import task
from prefect.cache_policies import NO_CACHE

from configs.schema import Recipe
from storage import DatasetRef
from tasks.instructions import instructions_to_arrow, load_instructions, source_fingerprint
from tasks.stages.runner import StageContext, StageOutput, StageResult, StageSpec, run_stage

SPEC = StageSpec(
    name="ingest",
    version=1,
    inputs=(),
    outputs=("instructions",),
    description="Load and validate writing instructions",
    config_slice=lambda r: {"data": r.data.model_dump(mode="json"), "source": source_fingerprint(r.data)},
)


def compute(ctx: StageContext) -> StageOutput:
    rows = load_instructions(ctx.recipe.data)
    languages = Counter(r.language or "unknown" for r in rows)
    return StageOutput(
        tables={"instructions": instructions_to_arrow(rows)},
        summary={
            "instructions": len(rows),
            "languages": dict(languages),
            "with_criteria": sum(1 for r in rows if r.criteria),
        },
    )


@task(name="ingest", cache_policy=NO_CACHE, persist_result=False)
def ingest(
    recipe: Recipe,
    inputs: dict[str, DatasetRef] | None = None,
    run_id: str | None = None,
    refresh: bool = False,
) -> StageResult:
    return run_stage(SPEC, compute, recipe, inputs, run_id=run_id, refresh=refresh)
