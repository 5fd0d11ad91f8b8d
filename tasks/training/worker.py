"""One rank of the trainer: `python -m tasks.training.worker SPEC`, started by `accelerate launch`
(tasks/training/launch.py writes SPEC and the accelerate configuration).

Every rank builds the trainer and trains its share; rank 0 alone opens the storage (the curriculum
store, the step logs, the response cache behind its judge client), judges every rank's rollouts,
and reports each step to the train stage as an event line on stdout. No rank runs Prefect or takes
a stage claim: the stage that launched the job holds its claim and records its run.

Exit codes: 0 trained and saved; 3 the judge failed, 4 the judge's budget ran out (either way a
checkpoint of the last finished step was written first); anything else an error, with its
traceback in the trainer's log.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

from tasks.processes import die_with_parent

JUDGE_FAILED_EXIT = 3
BUDGET_EXIT = 4


def die_with_launcher() -> None:
    """The elastic agent starts ranks in sessions of their own: a rank whose launcher is gone
    (SIGKILLed with the stage) must not train on alone."""
    die_with_parent(signal.SIGKILL)
    if os.getppid() == 1:  # the launcher died before the line above
        sys.exit(1)


def main(spec_path: str) -> int:
    die_with_launcher()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from tasks.training.launch import PLUGINS_ENV

    for plugin in filter(None, os.environ.get(PLUGINS_ENV, "").split(",")):
        importlib.import_module(plugin)

    from tasks.llm.cache import UsageMeter
    from tasks.training.args import trainer_args, world_size
    from tasks.training.checkpoints import TRAINER_LOG
    from tasks.training.data import train_dataset
    from tasks.training.launch import LaunchSpec, emit
    from tasks.training.rank_reward import BudgetStopError, JudgeUnavailableError, RankReward
    from tasks.training.ranks import Ranks
    from tasks.training.reward_service import open_reward_owner
    from tasks.training.trainer import run_training

    spec = LaunchSpec.read(Path(spec_path))
    recipe, training = spec.recipe, spec.recipe.training
    args = trainer_args(training, spec.work_dir, world_size=world_size())
    _ = args.device  # sets up accelerate's state, and with it the process group
    ranks = Ranks.current()

    owner, client, meter, log, budget = None, None, UsageMeter(), None, None
    if ranks.is_main:  # the run's one reward, as the verl engine's reward actor builds it
        reward_owner = open_reward_owner(spec)
        owner, client, meter = reward_owner.reward, reward_owner.client, reward_owner.meter
        log, budget = reward_owner.log, reward_owner.budget
    curriculum_id = spec.curriculum_id

    def record_step(step: int, judged: list, promotions: list, metrics: dict[str, float]) -> None:
        log.record_step(curriculum_id, step, [vars(j) for j in judged], metrics)
        emit("step", step=step, metrics=metrics)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec.base_model)
    dataset = train_dataset(spec.items, recipe.policy, tokenizer, training.max_prompt_tokens)
    eval_dataset = None
    if spec.validation_items:
        eval_dataset = train_dataset(
            spec.validation_items, recipe.policy, tokenizer, training.max_prompt_tokens, validation=True
        )
    code = 0
    try:
        outcome = run_training(
            model_path=spec.base_model, training=training, train_dataset=dataset, eval_dataset=eval_dataset,
            reward=RankReward(ranks, owner, budget), output_dir=spec.work_dir, args=args,
            record_step=record_step,
            record_trainer_logs=lambda step, logs: log.record_metrics(curriculum_id, step, logs, source="trainer"),
            forget_after=lambda step: log.forget_after(curriculum_id, step),
            final_model_dir=spec.model_dir, trainer_log=spec.work_dir / TRAINER_LOG, lineage=spec.lineage,
            curriculum_top=recipe.curriculum.top,
        )  # fmt: skip
        if ranks.is_main:
            emit("done", final_step=outcome.final_step, resumed_from=outcome.resumed_from)
    except BudgetStopError as exc:
        if ranks.is_main:
            emit("budget", step=exc.step, error=str(exc))
        code = BUDGET_EXIT
    except JudgeUnavailableError as exc:
        if ranks.is_main:
            emit("failed", error=str(exc))
        code = JUDGE_FAILED_EXIT
    finally:
        if client is not None:
            asyncio.run(client.aclose())  # the judge's batching worker ran on TRL's reward loop
            spec.usage_file.write_text(json.dumps(meter.rows(spec.stage_run_id)))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
