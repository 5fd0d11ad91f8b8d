"""Stage 5, train: RL of the policy against its reference ladders (GRPO or RLOO on TRL).

Reads the `ladders` (and `instructions`, for required lengths) versions; writes `train_metrics`,
`train_judgments` and `curriculum_history` as Delta versions with lineage, checkpoints under
`<root>/training/<cache key>/`, and the final policy as a plain model folder under
`<root>/models/<model id>/`, registered in the catalog's `models` table (`wrl serve` takes it).

Resumable: the work folder and the curriculum are keyed on the stage's cache key (same config,
same ladders -> same key). A killed run's next attempt finds the newest checkpoint, restores the
curriculum to that checkpoint's snapshot and continues; the judge's calls come back from the
response cache.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from configs.loading import ConfigError
from configs.schema import JudgeConfig, Recipe
from storage import DatasetRef
from tasks.curriculum import validate_static_rung
from tasks.llm.embedded import resolve_model_path_once
from tasks.stages.runner import StageContext, StageOutput, StageResult, StageSpec, run_stage
from tasks.training.checkpoints import TRAINER_LOG, training_run_paths
from tasks.training.data import train_dataset, training_items
from tasks.training.report import RUNG_COUNT_PREFIX
from tasks.training.reward import WritingRLReward
from tasks.training.trainer import run_training, world_size


def _reward_judge(recipe: Recipe) -> JudgeConfig | None:
    return recipe.reward.judge or recipe.judge  # the reward's own judge, else the curation judge


def _config_slice(recipe: Recipe) -> dict[str, Any]:
    judge = _reward_judge(recipe)
    policy = recipe.policy
    return {
        "training": None if recipe.training is None else recipe.training.model_dump(mode="json"),
        "reward": recipe.reward.model_dump(mode="json"),
        "judge": None if judge is None else {**judge.model_dump(mode="json"),
                                             "backend": recipe.backend_identity(judge.backend)},
        "curriculum": recipe.curriculum.model_dump(mode="json"),
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
)


def compute(ctx: StageContext) -> StageOutput:
    recipe = ctx.recipe
    processes = world_size()
    if processes > 1:
        # Every rank runs the whole flow, and the train stage's claim lets one rank in at a time:
        # the first waits in the process group for ranks that wait on its claim (measured with
        # torchrun on 2 CPU processes). Fail before anything is written.
        raise ConfigError(
            f"train: launched as {processes} processes (WORLD_SIZE={processes}); multi-process "
            "training is not supported yet (the ranks would deadlock on the stage's claim). Run it as "
            "one process: one GPU, with TRL's vLLM server mode (`training.vllm_mode: server`) for "
            "generation on others"
        )
    if recipe.training is None:
        raise ConfigError(f"recipe '{recipe.name}' has no `training:` block")
    judge = _reward_judge(recipe)
    if judge is None:
        raise ConfigError(f"recipe '{recipe.name}': training needs `reward.judge` or a top-level `judge`")
    items = training_items(ctx.read("ladders"), ctx.read("instructions"))
    if not items:
        raise ValueError(f"{ctx.inputs['ladders']}: no ladders to train on")
    validate_static_rung(recipe.curriculum, {iid: item.n_rungs for iid, item in items.items()})

    paths = training_run_paths(ctx.storage.root, recipe.name, ctx.cache_key)
    curriculum_id = paths.curriculum_id
    store, log = ctx.storage.curriculum, ctx.storage.training
    store.create(
        curriculum_id,
        {iid: item.n_rungs for iid, item in items.items()},
        config_json=json.dumps(recipe.curriculum.model_dump(mode="json"), sort_keys=True),
        ladders_ref=str(ctx.inputs["ladders"]),
    )
    client = ctx.llm(judge.backend, judge.model)
    reward = WritingRLReward(
        client=client, judge=judge, reward=recipe.reward,
        curriculum=recipe.curriculum, items=items, store=store, curriculum_id=curriculum_id,
        seed=recipe.training.seed, think_format=recipe.policy.strategy == "think-then-write",
    )  # fmt: skip

    max_steps = recipe.training.max_steps

    def record_step(step: int, judged: list, promotions: list, metrics: dict[str, float]) -> None:
        log.record_step(curriculum_id, step, [vars(j) for j in judged], metrics)
        ctx.logger.info("train: %s", step_line(step, max_steps, metrics))

    model_id, model_dir = paths.model_id, paths.model_dir
    base_model = resolve_model_path_once(recipe.policy.model, Path(recipe.storage.model_cache))
    from transformers import AutoTokenizer

    try:
        outcome = run_training(
            model_path=base_model,
            training=recipe.training,
            train_dataset=train_dataset(
                items,
                recipe.policy,
                AutoTokenizer.from_pretrained(base_model),
                recipe.training.max_prompt_tokens,
            ),
            reward=reward,
            output_dir=paths.work_dir,
            record_step=record_step,
            record_trainer_logs=lambda step, logs: log.record_metrics(
                curriculum_id, step, logs, source="trainer"
            ),
            forget_after=lambda step: log.forget_after(curriculum_id, step),
            final_model_dir=model_dir,
            trainer_log=paths.work_dir / TRAINER_LOG,
            lineage={
                "ladders": str(ctx.inputs["ladders"]),
                "instructions": str(ctx.inputs["instructions"]),
                "cache_key": ctx.cache_key,
                "stage_run_id": ctx.stage_run_id,
                "base_model": recipe.policy.model,
            },
        )
    finally:
        asyncio.run(client.aclose())  # the judge's batching worker ran on TRL's reward loop
    log.register_model(
        {"model_id": model_id, "path": str(model_dir), "base_model": recipe.policy.model,
         "train_run_id": curriculum_id, "stage_run_id": ctx.stage_run_id,
         "ladders_ref": str(ctx.inputs["ladders"]), "config_hash": ctx.cache_key, "step": outcome.final_step}
    )  # fmt: skip

    metrics = log.metrics(curriculum_id)
    judgments = log.judgments(curriculum_id)
    history = store.history(curriculum_id)
    state = store.state(curriculum_id)
    rewards = [r for r in judgments["reward"].to_pylist() if r is not None]
    failures = sum(1 for r in judgments["judge_reward"].to_pylist() if r is None)
    summary = {
        "steps": outcome.final_step,
        "resumed_from": outcome.resumed_from,
        "model_id": model_id,
        "model_path": str(model_dir),
        "judgments": judgments.num_rows,
        "judge_failures": failures,
        "mean_reward": round(sum(rewards) / len(rewards), 4) if rewards else None,
        "promotions": int(sum(1 for p in history.column("promoted").to_pylist() if p)),
        "final_rungs": dict(sorted(Counter(state.values()).items())),
    }
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
