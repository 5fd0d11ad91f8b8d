"""Stage 5, train: RL of the policy against its reference ladders (GRPO or RLOO on TRL; PPO or GRPO
on verl, `training.engine: verl`).

Reads the `ladders` (and `instructions`, for required lengths) versions; writes `train_metrics`,
`train_judgments` and `curriculum_history` as Delta versions with lineage, checkpoints under
`<root>/training/<cache key>/`, and the final policy as a plain model folder under
`<root>/models/<model id>/`, registered in the catalog's `models` table (`wrl serve` takes it).

The trainer runs as its own process tree (tasks/training/launch.py: `accelerate launch`, one rank
per GPU or CPU process; tasks/training/verl_launch.py: verl's driver with its Ray session and the
reward actor, in verl's environment); this stage keeps the claim, the stage run, its lineage and
outputs, waits for the trainer and logs each step the trainer reports. Resumable: the work
folder and the curriculum are keyed on the stage's cache key (same config, same ladders -> same
key; the rank count is not part of it). A killed run's next attempt finds the newest checkpoint,
restores the curriculum to that checkpoint's snapshot and continues; the judge's calls come back
from the response cache.

With `sft.writer`, RL starts from the SFT writer's model (tasks/stages/sft.py): the stage then reads
its `sft_models` version (in the cache key and the lineage), and the registered policy's base is it.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from configs.loading import ConfigError
from configs.schema import LAYOUT_FIELDS, Recipe
from storage import DatasetRef
from tasks.curriculum import validate_static_rung
from tasks.llm.budget import BudgetExhaustedError
from tasks.llm.embedded import resolve_model_path_once
from tasks.llm.registry import release_local_engines
from tasks.rewards.pairwise import PAIRWISE_PROMPTS
from tasks.stages.runner import StageContext, StageOutput, StageResult, StageSpec, run_stage
from tasks.stages.sft import REGISTERED_PREFIX, sft_writer_model, writer_inputs
from tasks.training.args import world_size
from tasks.training.checkpoints import training_run_paths
from tasks.training.data import training_items
from tasks.training.launch import LaunchSpec, TrainerFailedError, run_trainer
from tasks.training.report import RUNG_COUNT_PREFIX
from tasks.training.verl_launch import run_verl_trainer, verl_python, verl_spec

# How many ranks train is not part of a run's identity: a run killed on 8 GPUs resumes on 4 (or a
# CPU run on 1 rank on 2), its curriculum exactly as checkpointed. The engine (`distributed`,
# `cpu_offload`) is: its checkpoints are not each other's (configs/schema.py: LAYOUT_FIELDS).


def _config_slice(recipe: Recipe) -> dict[str, Any]:
    policy = recipe.policy
    training = (
        None if recipe.training is None else recipe.training.model_dump(mode="json", exclude=LAYOUT_FIELDS)
    )
    return {
        "training": training,
        "reward": recipe.reward.model_dump(mode="json"),
        "judge": recipe.call_identity(recipe.judge_for("reward")),
        # `top` came later: its default stays out, so the keys of runs paid for before it still match.
        "curriculum": recipe.curriculum.model_dump(
            mode="json", exclude={"top"} if recipe.curriculum.top == "stay" else None
        ),
        "policy": {"model": policy.model, "strategy": policy.strategy},
    }  # fmt: skip


SPEC = StageSpec(
    name="train",
    # 2: prompts are the policy strategy's messages; think-then-write judged on its answer.
    # 3: the pairwise fence tag derives from the instruction only (judge prompts share a prefix).
    version=3,
    inputs=("ladders", "instructions"),
    outputs=("train_metrics", "train_judgments", "curriculum_history"),
    description="RL on the ladders: pairwise judge reward, dynamic reference scheduling",
    config_slice=_config_slice,
    extra_inputs=writer_inputs,  # the SFT writer's model RL starts from, when the recipe has `sft.writer`
)


def compute(ctx: StageContext) -> StageOutput:
    recipe = ctx.recipe
    if world_size() > 1:
        # The stage launches its own ranks; a flow launched per rank would have every rank run the
        # stage, each waiting on the others' stage claim. Fail before anything is written.
        raise ConfigError(
            f"train: this process is one of {world_size()} (WORLD_SIZE={world_size()}); run `wrl` as one "
            "process: the train stage launches the trainer's ranks itself (training.gpus / training.processes)"
        )
    if recipe.training is None:
        raise ConfigError(f"recipe '{recipe.name}' has no `training:` block")
    judge = recipe.judge_for("reward")
    if judge is None:
        raise ConfigError(f"recipe '{recipe.name}': training needs `reward.judge` or a top-level `judge`")
    if recipe.reward.kind == "pairwise" and judge.prompt_version not in PAIRWISE_PROMPTS:
        raise ConfigError(
            f"recipe '{recipe.name}': reward judge prompt_version '{judge.prompt_version}' is not a pairwise "
            f"judge prompt (registered: {', '.join(sorted(PAIRWISE_PROMPTS))})"
        )
    if recipe.training.engine == "verl":  # its environment, before anything is written
        verl_python(recipe.training.verl_settings.environment)
    ladders, instructions = ctx.read("ladders"), ctx.read("instructions")  # read once, both splits
    items = training_items(ladders, instructions)
    if not items:
        raise ValueError(f"{ctx.inputs['ladders']}: no ladders to train on")
    validate_static_rung(recipe.curriculum, {iid: item.shape for iid, item in items.items()})
    # The held-out ladders: validation only (training.eval_steps); the curriculum never holds them.
    validation_items = training_items(ladders, instructions, split="validation")
    if recipe.training.eval_steps is not None and not validation_items:
        raise ConfigError(
            f"{ctx.inputs['ladders']}: training.eval_steps needs held-out ladders, and this table has none "
            "(ordering.validation_size)"
        )

    paths = training_run_paths(ctx.storage.root, recipe.name, ctx.cache_key)
    curriculum_id = paths.curriculum_id
    store, log = ctx.storage.curriculum, ctx.storage.training
    store.create(
        curriculum_id,
        {iid: item.n_rungs for iid, item in items.items()},
        config_json=json.dumps(recipe.curriculum.model_dump(mode="json"), sort_keys=True),
        ladders_ref=str(ctx.inputs["ladders"]),
    )
    model_id, model_dir = paths.model_id, paths.model_dir
    base_model, base_label = recipe.policy.model, recipe.policy.model
    if (sft := sft_writer_model(ctx)) is not None:  # RL starts from the SFT writer
        base_model, base_label = sft["path"], REGISTERED_PREFIX + sft["model_id"]
    spec = LaunchSpec(
        recipe=recipe, judge=judge, items=items,
        validation_items=validation_items if recipe.training.eval_steps is not None else {},
        base_model=resolve_model_path_once(base_model, Path(recipe.storage.model_cache)),
        work_dir=paths.work_dir, model_dir=model_dir, curriculum_id=curriculum_id, stage_run_id=ctx.stage_run_id,
        lineage={"ladders": str(ctx.inputs["ladders"]), "instructions": str(ctx.inputs["instructions"]),
                 "cache_key": ctx.cache_key, "stage_run_id": ctx.stage_run_id, "base_model": base_model}
                | ({"sft_models": str(ctx.inputs["sft_models"])} if sft is not None else {}),
        budget=ctx.budget.allowance if ctx.budget.allowance else None,
    )  # fmt: skip
    # The trainer's process tree owns the devices: curation's engines go first.
    release_local_engines()
    max_steps, events = recipe.training.max_steps, {}

    def on_event(event: dict[str, Any]) -> None:
        events[event["event"]] = event
        if event["event"] == "step":
            ctx.logger.info("train: %s", step_line(event["step"], max_steps, event["metrics"]))

    try:
        if recipe.training.engine == "verl":  # verl's driver in its own environment, the same events
            run_verl_trainer(verl_spec(spec, ladders), on_event=on_event)
        else:
            run_trainer(spec, on_event=on_event)
    except TrainerFailedError as exc:
        if (
            stopped := events.get("budget")
        ) is not None:  # a checkpoint of the last finished step was written
            raise BudgetExhaustedError(
                f"train stopped at its budget before step {stopped['step']}: {stopped['error']}. A checkpoint "
                f"of step {stopped['step'] - 1} and its curriculum snapshot were written; every judge call paid "
                "for is recorded. Raise the budget and run again: training resumes there and pays for "
                "nothing twice."
            ) from None
        failed = events.get("failed")
        raise TrainerFailedError(f"train: {failed['error']}\n{exc}" if failed else f"train: {exc}") from None
    finally:
        if spec.usage_file.is_file():  # the judge's calls, metered on rank 0
            ctx.usage.absorb(json.loads(spec.usage_file.read_text()))
            spec.usage_file.unlink()
    done = events["done"]
    log.register_model(
        {"model_id": model_id, "path": str(model_dir), "base_model": base_label,
         "train_run_id": curriculum_id, "stage_run_id": ctx.stage_run_id,
         "ladders_ref": str(ctx.inputs["ladders"]), "config_hash": ctx.cache_key, "step": done["final_step"]}
    )  # fmt: skip

    metrics = log.metrics(curriculum_id)
    judgments = log.judgments(curriculum_id)
    history = store.history(curriculum_id)
    state = store.state(curriculum_id)
    rewards = [r for r in judgments["reward"].to_pylist() if r is not None]
    failures = sum(1 for r in judgments["judge_reward"].to_pylist() if r is None)
    summary = {
        "steps": done["final_step"],
        "resumed_from": done["resumed_from"],
        "model_id": model_id,
        "model_path": str(model_dir),
        "judgments": judgments.num_rows,
        "judge_failures": failures,
        "mean_reward": round(sum(rewards) / len(rewards), 4) if rewards else None,
        "promotions": int(sum(1 for p in history.column("promoted").to_pylist() if p)),
        "final_rungs": dict(sorted(Counter(state.values()).items())),
    }
    if spec.validation_items:  # the last periodic validation on the held-out ladders
        validated = [m for m in metrics.to_pylist() if m["name"] == "eval_validation/reward"]
        summary["validation_ladders"] = len(spec.validation_items)
        if validated:
            last = max(validated, key=lambda m: m["step"])
            summary["validation"] = {"step": last["step"], "reward": round(last["value"], 4)}
    return StageOutput(
        tables={"train_metrics": metrics, "train_judgments": judgments, "curriculum_history": history},
        summary=summary,
    )


def step_line(step: int, max_steps: int, metrics: dict[str, float]) -> str:
    """The terminal's line for one step: the judge's verdicts, then where the whole curriculum stands."""
    nan = float("nan")
    rungs = sorted(
        (int(name.removeprefix(RUNG_COUNT_PREFIX)), int(count))
        for name, count in metrics.items()
        if name.startswith(RUNG_COUNT_PREFIX)
    )
    return (
        f"step {step}/{max_steps} ({metrics.get('time/step_s', nan):.0f} s): reward "
        f"{metrics.get('reward/mean', nan):.3f}, win rate {metrics.get('judge/win_rate', nan):.2f}, "
        f"judge failures {int(metrics.get('judge/failures', 0))}; curriculum: mean rung "
        f"{metrics.get('curriculum/mean_rung', nan):.2f}, instructions per rung "
        f"{' '.join(f'{rung}:{count}' for rung, count in rungs) or '-'}, promotions "
        f"{int(metrics.get('curriculum/promotions', 0))}"
    )


@task(name="train", cache_policy=NO_CACHE, persist_result=False)
def train(
    recipe: Recipe, inputs: dict[str, DatasetRef], run_id: str | None = None, refresh: bool = False
) -> StageResult:
    return run_stage(SPEC, compute, recipe, inputs, run_id=run_id, refresh=refresh)
