"""Stage 3, select: margin-aware data selection (or an ablation baseline) over the judge's scores.

p = max over scored competitors of (s_j - s_policy); instructions whose every competitor scores
below `selection.competitor_floor` are dropped first (too hard or flawed), then the top-k by p
are kept (within each data source with `selection.per_source`). Every instruction gets a row: its
p, its source, whether it was selected, and why not (tasks/curation/selection.py has the rules for
ties, broken by a seeded shuffle recorded per instruction, and missing scores).
"""

from __future__ import annotations

from collections import Counter

import pyarrow.compute as pc
from prefect import task
from prefect.cache_policies import NO_CACHE

from configs.schema import Recipe
from storage import DatasetRef
from tasks.curation import select as select_instructions
from tasks.stages.runner import StageContext, StageOutput, StageResult, StageSpec, run_stage

SPEC = StageSpec(
    name="select",
    version=2,  # 2: ties at the cut by a seeded shuffle; sources and per-source cuts
    inputs=("judgments", "instructions"),
    outputs=("selections",),
    description="Margin-aware selection of the instructions with the most to learn",
    config_slice=lambda r: {"selection": r.selection.model_dump(mode="json")},
)


def compute(ctx: StageContext) -> StageOutput:
    judgments = ctx.read("judgments").select(["instruction_id", "generator", "role", "score"])
    instructions = ctx.read("instructions").select(["id", "source"]).to_pylist()
    sources = {row["id"]: row["source"] for row in instructions}
    selections = select_instructions(judgments, ctx.recipe.selection, sources)
    rows = selections.to_pylist()
    chosen = [r for r in rows if r["selected"]]
    margins = sorted(r["p"] for r in rows if r["p"] is not None)
    summary = {
        "strategy": ctx.recipe.selection.strategy,
        "instructions": len(rows),
        "selected": len(chosen),
        "dropped": len(rows) - len(chosen),
        "drop_reasons": dict(Counter(r["reason"].split(" (")[0] for r in rows if not r["selected"])),
    }
    if ctx.recipe.selection.per_source:
        summary["selected_per_source"] = dict(sorted(Counter(r["source"] for r in chosen).items()))
    if margins:
        summary["p_min_median_max"] = [
            round(margins[0], 3),
            round(margins[len(margins) // 2], 3),
            round(margins[-1], 3),
        ]
    if len(chosen):
        summary["mean_p_selected"] = round(
            pc.mean(pc.drop_null(selections.filter(selections["selected"])["p"])).as_py() or 0.0, 3
        )
    return StageOutput(tables={"selections": selections}, summary=summary)


@task(name="select", cache_policy=NO_CACHE, persist_result=False)
def select(
    recipe: Recipe, inputs: dict[str, DatasetRef], run_id: str | None = None, refresh: bool = False
) -> StageResult:
    return run_stage(SPEC, compute, recipe, inputs, run_id=run_id, refresh=refresh)
