"""TRL's GRPO (or RLOO) trainer wired to the Writing-RL reward and the curriculum store.

`run_training` builds the trainer from the recipe's `training` block and runs it, resuming from
the newest checkpoint in `output_dir` when there is one. Resume restores the curriculum (and the
step log) to exactly what it was when that checkpoint was taken: steps after it were lost with
the killed process, and their promotions and judgments are dropped with them.

`CurriculumCallback` is the one place the curriculum changes: at `on_step_end` (after all of the
step's reward calls) it applies the step's promotions in one transaction and records the step;
when the step is also a save step it snapshots the curriculum BEFORE the checkpoint is written, so
every checkpoint on disk has its curriculum snapshot.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configs.schema import TrainingConfig
from tasks.training.checkpoints import latest_checkpoint
from tasks.training.report import RUNG_COUNT_PREFIX
from tasks.training.reward import WritingRLReward, step_metrics

logger = logging.getLogger(__name__)


def world_size() -> int:
    """Processes in this run (accelerate / torchrun set WORLD_SIZE; 1 when launched plainly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def policy_dtype(training: TrainingConfig, *, on_cpu: bool) -> str:
    """What the policy, and the reference model when beta > 0, load in: TRL loads a model path in
    float32 unless `model_init_kwargs` says otherwise (a 7B policy, its gradients, Adam state and a
    reference: ~152 GB). The recipe's bf16 on a GPU; float32 on the CPU, where bf16 is ~6x slower."""
    return "bfloat16" if training.bf16 and not on_cpu else "float32"


def trainer_args(
    training: TrainingConfig, output_dir: Path, *, world_size: int = 1, hardware_checks: bool = True
):
    """GRPOConfig / RLOOConfig from the recipe. `batch_size` counts prompts per optimisation
    step; TRL counts completions per device, so the per-device batch is
    batch_size * num_generations / (world_size * gradient_accumulation_steps).

    `hardware_checks=False` builds the same config with bf16 off and the CPU allowed: what
    `validate_training` uses to check a GPU recipe on a machine without a GPU (transformers
    refuses bf16 without one), every other check TRL makes still applies."""
    from trl import GRPOConfig, RLOOConfig

    completions = training.batch_size * training.num_generations
    per_step = world_size * training.gradient_accumulation_steps
    if completions % per_step:
        raise ValueError(
            f"training: batch_size x num_generations = {completions} completions per step must divide "
            f"evenly over {world_size} device(s) x {training.gradient_accumulation_steps} accumulation steps"
        )
    cpu = training.device == "cpu" or not hardware_checks
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        learning_rate=training.learning_rate,
        beta=training.kl_coef,
        per_device_train_batch_size=completions // per_step,
        # One generation batch per optimisation step, across all processes: the step's prompts
        # x their groups (explicit, so a single-process validation checks the multi-GPU layout).
        generation_batch_size=completions,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        num_generations=training.num_generations,
        max_completion_length=training.max_response_tokens,
        temperature=training.temperature,
        max_steps=training.max_steps,
        save_steps=training.save_steps,
        save_total_limit=training.save_total_limit,
        logging_steps=1,
        seed=training.seed,
        report_to="none",
        # CPU: bf16 and gradient checkpointing make a step ~6x slower (ENVIRONMENT.md).
        use_cpu=cpu,
        bf16=training.bf16 and not cpu,
        gradient_checkpointing=training.gradient_checkpointing and not cpu,
        use_vllm=training.use_vllm,
        model_init_kwargs={"dtype": policy_dtype(training, on_cpu=cpu)},
    )
    if training.use_vllm:
        # Without it vLLM sizes its KV cache for the model's whole context (131,072 tokens for Llama
        # 3.1); prompts are cut to max_prompt_tokens (tasks/training/data.py).
        kwargs["vllm_max_model_length"] = training.max_prompt_tokens + training.max_response_tokens
        kwargs["vllm_mode"] = training.vllm_mode
        if training.vllm_mode == "server" and training.vllm_server_base_url:
            kwargs["vllm_server_base_url"] = training.vllm_server_base_url
        if training.vllm_mode == "colocate":
            kwargs["vllm_gpu_memory_utilization"] = training.vllm_gpu_memory_utilization
    config_class = GRPOConfig if training.algorithm == "grpo" else RLOOConfig
    return config_class(**kwargs)


def curriculum_metrics(rungs: dict[str, int]) -> dict[str, float]:
    """Where the whole curriculum stands: the mean rung over ALL instructions and how many sit on
    each rung (a step judges only its batch's instructions; this is every instruction's rung)."""
    if not rungs:
        return {}
    counts = Counter(rungs.values())
    metrics = {"curriculum/mean_rung": statistics.fmean(rungs.values())}
    metrics |= {f"{RUNG_COUNT_PREFIX}{rung}": float(counts.get(rung, 0)) for rung in range(max(counts) + 1)}
    return metrics


class CurriculumCallback:
    """Factory for the TrainerCallback (transformers is imported lazily)."""

    def __new__(cls, reward: WritingRLReward, record_step: Callable[[int, list, list, dict], None],
                record_trainer_logs: Callable[[int, dict[str, float]], None],
                lineage: dict[str, Any] | None = None, trainer_log: Path | None = None):  # fmt: skip
        from transformers import TrainerCallback

        class _Callback(TrainerCallback):
            step_started = time.perf_counter()

            def on_step_begin(self, args, state, control, **kwargs):
                self.step_started = time.perf_counter()
                return control

            def on_step_end(self, args, state, control, **kwargs):
                step = state.global_step
                judged, promotions = reward.finish_step(step)
                metrics = {k: v for k, v in step_metrics(judged).items() if v is not None}
                metrics["curriculum/promotions"] = float(len(promotions))
                metrics |= curriculum_metrics(reward.current_rungs())
                metrics["time/step_s"] = time.perf_counter() - self.step_started
                record_step(step, judged, promotions, metrics)
                if control.should_save:  # set by DefaultFlowCallback, which runs first
                    reward.store.snapshot(reward.curriculum_id, step)
                return control

            def on_save(self, args, state, control, **kwargs):
                # Each checkpoint says what it was trained on (ladders version, config, step).
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if lineage is not None and folder.is_dir():
                    record = {**lineage, "step": state.global_step, "curriculum_id": reward.curriculum_id}
                    (folder / "wrl_lineage.json").write_text(json.dumps(record, indent=2, sort_keys=True))
                return control

            def on_log(self, args, state, control, logs=None, **kwargs):
                numeric = {
                    k: float(v)
                    for k, v in (logs or {}).items()
                    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
                }
                if numeric and state.global_step > 0:
                    record_trainer_logs(state.global_step, numeric)
                if trainer_log is not None and logs:  # TRL's own record, off the terminal
                    trainer_log.parent.mkdir(parents=True, exist_ok=True)
                    with trainer_log.open("a") as handle:
                        handle.write(json.dumps({"step": state.global_step, **logs}, default=str) + "\n")
                return control

        return _Callback()


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


def resumable(trainer_class: type) -> type:
    """`trainer_class` with an epoch-seeded prompt order (see `epoch_seeded`)."""

    class Resumable(trainer_class):
        def _get_train_sampler(self, dataset=None):
            return epoch_seeded(super()._get_train_sampler(dataset))

    Resumable.__name__ = Resumable.__qualname__ = trainer_class.__name__
    return Resumable


def validate_training(training: TrainingConfig, world_sizes: tuple[int, ...] = (1,)) -> list[str]:
    """Problems that would stop this training block at launch, for each world size (empty: none).
    Builds TRL's own config, so TRL's checks (group size vs batch, vLLM settings) run here too."""
    problems = []
    for size in world_sizes:
        try:
            trainer_args(training, Path("unused"), world_size=size, hardware_checks=False)
        except ValueError as exc:
            problems.append(f"training on {size} device(s): {exc}")
    return problems


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
    reward: WritingRLReward,
    output_dir: Path,
    record_step: Callable[[int, list, list, dict], None],
    record_trainer_logs: Callable[[int, dict[str, float]], None],
    forget_after: Callable[[int], None],
    final_model_dir: Path,
    lineage: dict[str, Any] | None = None,
    trainer_log: Path | None = None,
) -> TrainingOutcome:
    """Train (or resume) and save the final policy as a plain model folder (LoRA merged)."""
    from trl import GRPOTrainer, RLOOTrainer

    checkpoint = latest_checkpoint(output_dir)
    resumed_from = None
    if checkpoint is not None:
        path, step = checkpoint
        reward.restore(step)
        forget_after(step)
        resumed_from = step
        logger.info("train: resuming from %s (curriculum restored to step %d)", path, step)
    elif reward.store.last_step(reward.curriculum_id) is not None:
        # Killed before its first checkpoint: start over from the initial curriculum (snapshot 0).
        reward.restore(0)
        forget_after(0)
    peft_config = None
    if training.lora is not None:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=training.lora.r, lora_alpha=training.lora.alpha, lora_dropout=training.lora.dropout,
            target_modules=list(training.lora.target_modules), task_type="CAUSAL_LM",
        )  # fmt: skip
    trainer_class = resumable(GRPOTrainer if training.algorithm == "grpo" else RLOOTrainer)
    trainer = trainer_class(
        model=model_path,
        reward_funcs=[reward.as_trl_reward()],
        args=trainer_args(training, output_dir, world_size=world_size()),
        train_dataset=train_dataset,
        peft_config=peft_config,
        callbacks=[CurriculumCallback(reward, record_step, record_trainer_logs, lineage, trainer_log)],
    )
    quiet(trainer).train(resume_from_checkpoint=str(checkpoint[0]) if checkpoint else None)
    model = trainer.model
    if peft_config is not None:
        model = model.merge_and_unload()
    final_model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(final_model_dir))
    trainer.processing_class.save_pretrained(str(final_model_dir))
    return TrainingOutcome(output_dir, trainer.state.global_step, resumed_from, peft_config is not None)
