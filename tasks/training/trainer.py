"""TRL's GRPO (or RLOO) trainer wired to the Writing-RL reward and the curriculum store.

`run_training` builds the trainer from the recipe's `training` block and runs it, resuming from
the newest checkpoint in `output_dir` when there is one. Resume restores the curriculum (and the
step log) to exactly what it was when that checkpoint was taken: steps after it were lost with
the killed process, and their promotions and judgments are dropped with them.

`CurriculumCallback` is the one place the curriculum changes: at `on_step_end` (after all of the
step's reward calls) it applies the step's promotions in one transaction and records the step;
when the step is also a save step it snapshots the curriculum BEFORE the checkpoint is written, so
every checkpoint on disk has its curriculum snapshot.

Steps are RL steps. With `training.updates_per_step` u > 1 one RL step is u of TRL's optimizer
steps (one generation batch, judged once, trained in u updates): the reward numbers its step
global_step // u + 1, the callback acts at the end of the RL step's last update only, and
checkpoints, which TRL names by optimizer step, are converted back (tasks/training/checkpoints.py).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configs.schema import TrainingConfig
from tasks.training.args import peft_lora_config, policy_dtype, rl_step, trainer_args, world_size
from tasks.training.checkpoints import latest_checkpoint, merge_adapter, write_updates_per_step
from tasks.training.rank_reward import JudgeUnavailableError, RankReward
from tasks.training.ranks import Ranks
from tasks.training.reward import finished_step_metrics

logger = logging.getLogger(__name__)


class CurriculumCallback:
    """Factory for the TrainerCallback (transformers is imported lazily). Every rank runs it (the
    step's curriculum update is a collective); only rank 0 records and writes."""

    def __new__(cls, reward: RankReward, record_step: Callable[[int, list, list, dict], None],
                record_trainer_logs: Callable[[int, dict[str, float]], None],
                lineage: dict[str, Any] | None = None, trainer_log: Path | None = None,
                updates_per_step: int = 1):  # fmt: skip
        from transformers import TrainerCallback

        main, updates = reward.ranks.is_main, updates_per_step

        class _Callback(TrainerCallback):
            step_started = time.perf_counter()
            rng_at_step_start: dict[str, Any] | None = None

            def on_step_begin(self, args, state, control, **kwargs):
                if state.global_step % updates == 0:  # an RL step's first update; it generates next
                    self.step_started = time.perf_counter()
                    self.rng_at_step_start = capture_rng()
                return control

            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step % updates:  # not the RL step's last update (TRL saves only there)
                    return control
                step = state.global_step // updates
                judged, promotions = reward.finish_step(step)
                if control.should_save:  # set by DefaultFlowCallback, which runs first
                    reward.snapshot(step)  # before the checkpoint is written
                if main:
                    metrics = finished_step_metrics(
                        judged, promotions, reward.current_rungs(), reward.topped()
                    )
                    metrics["time/step_s"] = time.perf_counter() - self.step_started
                    record_step(step, judged, promotions, metrics)
                return control

            def on_save(self, args, state, control, **kwargs):
                if main:
                    write_checkpoint_lineage(
                        Path(args.output_dir), state.global_step // updates, lineage, reward, updates
                    )
                return control

            def on_log(self, args, state, control, logs=None, **kwargs):
                if not main:
                    return control
                numeric = {
                    k: float(v)
                    for k, v in (logs or {}).items()
                    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
                }
                step = -(-state.global_step // updates)  # the RL step (logs come at its end)
                if numeric and state.global_step > 0:
                    record_trainer_logs(step, numeric)
                if trainer_log is not None and logs:  # TRL's own record, off the terminal
                    trainer_log.parent.mkdir(parents=True, exist_ok=True)
                    at = {"step": step} | ({"optimizer_step": state.global_step} if updates > 1 else {})
                    with trainer_log.open("a") as handle:
                        handle.write(json.dumps({**at, **logs}, default=str) + "\n")
                return control

        return _Callback()


def capture_rng() -> dict[str, Any]:
    """Every generator the Trainer saves in a checkpoint's rng_state (python, numpy, torch, CUDA)."""
    import random

    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def write_checkpoint_lineage(
    output_dir: Path, step: int, lineage: dict[str, Any] | None, reward: RankReward, updates_per_step: int = 1
) -> None:
    """Each checkpoint says what it was trained on (ladders version, config, RL step)."""
    folder = output_dir / f"checkpoint-{step * updates_per_step}"  # TRL's name: the optimizer step
    if lineage is not None and folder.is_dir() and reward.owner is not None:
        record = {**lineage, "step": step, "curriculum_id": reward.owner.curriculum_id}
        (folder / "wrl_lineage.json").write_text(json.dumps(record, indent=2, sort_keys=True))


def quiet(trainer: Any) -> Any:
    """Take transformers' progress bar and printed metric dicts off the terminal: the stage prints
    its own line per step, and the trainer's logs go to the trainer log file (CurriculumCallback)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    return trainer


def epoch_seeded(sampler: Any) -> Any:
    """Makes a sampler's order a function of (seed, epoch), so a resumed run trains on the same
    prompts as the run it continues.

    TRL's RepeatSampler draws every epoch's permutation from one generator seeded once. A run
    resumed in epoch e starts that generator afresh and draws epoch 0's order for epoch e: it then
    trains on other prompts than the killed run would have (found by the training kill drill,
    docs/reliability.md). The Trainer calls `set_epoch(epoch)` before each epoch (through
    accelerate's DataLoaderShard), and reseeding there makes the order depend on the epoch alone,
    as torch's DistributedSampler does. Epoch 0's order is unchanged."""
    generator, seed = getattr(sampler, "generator", None), getattr(sampler, "seed", None)
    if generator is None or seed is None or hasattr(sampler, "set_epoch"):
        return sampler

    def set_epoch(epoch: int) -> None:
        generator.manual_seed(seed + epoch)

    sampler.set_epoch = set_epoch
    return sampler


def resumable(trainer_class: type, retire: Callable[[list[dict], int], list[dict]] | None = None) -> type:
    """`trainer_class` with an epoch-seeded prompt order (see `epoch_seeded`) and, with `retire`,
    the rows of retired instructions replaced before each training generation (`retire(rows,
    optimizer step)`; curriculum.top 'retire'). The replacement happens when the RL step's batch
    is generated, after the previous step's curriculum update on every rank: so a step sees the
    retirements of every step before it, and a resumed run those of its checkpoint."""

    class Resumable(trainer_class):
        def _get_train_sampler(self, dataset=None):
            return epoch_seeded(super()._get_train_sampler(dataset))

        def _generate_and_score_completions(self, inputs):
            if retire is not None and self.model.training:
                inputs = retire(inputs, self.state.global_step)
            return super()._generate_and_score_completions(inputs)

    Resumable.__name__ = Resumable.__qualname__ = trainer_class.__name__
    return Resumable


def retired_rows(
    reward: RankReward, dataset: Any, *, seed: int, updates_per_step: int
) -> Callable[[list[dict], int], list[dict]]:
    """The `retire` hook of `resumable`: each row of a retired instruction replaced by the dataset's
    row of the instruction `substitute_retired` draws for it."""
    from tasks.curriculum import substitute_retired

    index = {iid: i for i, iid in enumerate(dataset["instruction_id"])}

    def retire(rows: list[dict], optimizer_step: int) -> list[dict]:
        retired = reward.topped()
        if not retired:
            return rows
        step = optimizer_step // updates_per_step + 1  # the RL step being generated
        ids = substitute_retired([r["instruction_id"] for r in rows], retired, index, seed=seed, step=step)
        return [
            row if row["instruction_id"] == iid else dataset[index[iid]]
            for row, iid in zip(rows, ids, strict=True)
        ]

    return retire


@dataclass(frozen=True)
class TrainingOutcome:
    output_dir: Path
    final_step: int
    resumed_from: int | None
    adapter: bool  # LoRA: the saved model is the merged one


def run_training(
    *,
    model_path: str,
    training: TrainingConfig,
    train_dataset: Any,
    reward: RankReward,
    output_dir: Path,
    record_step: Callable[[int, list, list, dict], None],
    record_trainer_logs: Callable[[int, dict[str, float]], None],
    forget_after: Callable[[int], None],
    final_model_dir: Path,
    lineage: dict[str, Any] | None = None,
    trainer_log: Path | None = None,
    args: Any = None,
    eval_dataset: Any = None,
    curriculum_top: str = "stay",
) -> TrainingOutcome:
    """Train (or resume) on this rank and save the final policy as a plain model folder (LoRA
    merged). Every rank of the job calls it; `args` is the trainer's config when the caller built
    it already (building it sets up the process group)."""
    from trl import GRPOTrainer, RLOOTrainer

    updates = training.updates_per_step
    if reward.ranks.is_main:  # before any checkpoint: how to read their names back as RL steps
        write_updates_per_step(output_dir, updates)
    checkpoint = latest_checkpoint(output_dir)
    resumed_from = None if checkpoint is None else checkpoint[1]
    reward.start(resumed_from, forget_after)
    if checkpoint is not None and reward.ranks.is_main:
        logger.info("train: resuming from %s (curriculum restored to step %d)", *checkpoint)
    peft_config = peft_lora_config(training.lora)
    retire = retired_rows(reward, train_dataset, seed=training.seed, updates_per_step=updates) if (
        curriculum_top == "retire") else None  # fmt: skip
    trainer_class = resumable(GRPOTrainer if training.algorithm == "grpo" else RLOOTrainer, retire)
    callback = CurriculumCallback(reward, record_step, record_trainer_logs, lineage, trainer_log, updates)
    trainer = trainer_class(
        model=model_path,
        reward_funcs=[reward.as_trl_reward(updates_per_step=updates)],
        args=args if args is not None else trainer_args(training, output_dir, world_size=world_size()),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,  # the held-out ladders (training.eval_steps); None: no validation
        peft_config=peft_config,
        callbacks=[callback],
    )
    try:
        quiet(trainer).train(resume_from_checkpoint=str(checkpoint[0]) if checkpoint else None)
    except JudgeUnavailableError:
        checkpoint_last_finished_step(
            trainer, output_dir, reward, lineage, updates, callback.rng_at_step_start
        )
        raise
    save_final_model(trainer, training, model_path, final_model_dir, reward.ranks)
    final_step = rl_step(training, trainer.state.global_step)
    return TrainingOutcome(output_dir, final_step, resumed_from, peft_config is not None)


def checkpoint_last_finished_step(
    trainer: Any, output_dir: Path, reward: RankReward, lineage: dict | None, updates_per_step: int = 1,
    rng_at_step_start: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    """The judge failed step s (or its budget ran out): checkpoint step s - 1 (with its curriculum
    snapshot) unless it is on disk already, so the resumed run loses no finished step. The failure
    came from step s's reward, before any of step s's updates, so the model, optimizer and
    scheduler are step s - 1's; the RNG is put back to where step s started (`rng_at_step_start`)
    before the checkpoint saves it, so the resumed step s generates the same rollouts and the
    judge calls paid for in the failed attempt come back from the response cache. The reward runs
    only when an RL step starts, so TRL's optimizer step is then s - 1's last."""
    optimizer_step = trainer.state.global_step
    step = optimizer_step // updates_per_step
    found = latest_checkpoint(output_dir)
    if step == 0 or optimizer_step % updates_per_step or (found is not None and found[1] == step):
        return
    if rng_at_step_start is not None:
        restore_rng(rng_at_step_start)
    reward.snapshot(step)
    trainer._save_checkpoint(trainer.model, trial=None)  # what the Trainer calls at a save step
    if reward.ranks.is_main:
        write_checkpoint_lineage(output_dir, step, lineage, reward, updates_per_step)
        logger.warning("train: the judge failed step %d; checkpointed step %d to resume from", step + 1, step)


def save_final_model(
    trainer: Any, training: TrainingConfig, base_model: str, final_model_dir: Path, ranks: Ranks
) -> None:
    """The final policy as a plain model folder, written aside and renamed into place. The
    Trainer's `save_model` gathers sharded weights (ZeRO-3, FSDP) and writes on the main process;
    a LoRA adapter is then merged there into the base model, loaded in the policy's dtype (bf16
    when it trained in bf16)."""
    import shutil

    final_model_dir = Path(final_model_dir)
    partial = final_model_dir.with_name(f".{final_model_dir.name}.partial")
    saved = partial.with_name(partial.name + "-adapter") if training.lora is not None else partial
    if ranks.is_main:  # a killed run's leftovers
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(saved, ignore_errors=True)
    ranks.barrier()
    trainer.save_model(str(saved))  # the weights (gathered) and the tokenizer, on the main process
    if ranks.is_main:
        if training.lora is not None:
            merge_adapter(
                saved, base_model, partial, dtype=policy_dtype(training, on_cpu=trainer.args.use_cpu)
            )
            shutil.rmtree(saved)
        shutil.rmtree(final_model_dir, ignore_errors=True)
        partial.rename(final_model_dir)
    ranks.barrier()
