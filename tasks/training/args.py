"""The trainer's arguments from a recipe's `training` block: TRL's GRPOConfig / RLOOConfig, the
policy's dtype and the launch checks. Light on purpose (configs and TRL only, imported lazily):
`wrl config validate` and benchmarks/gpu_check.py use it without the storage stack.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from configs.schema import LoraConfig, TrainingConfig


def world_size() -> int:
    """Processes in this run (accelerate / torchrun set WORLD_SIZE; 1 when launched plainly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def policy_dtype(training: TrainingConfig, *, on_cpu: bool) -> str:
    """What the policy, and the reference model when beta > 0, load in: TRL loads a model path in
    float32 unless `model_init_kwargs` says otherwise (a 7B policy, its gradients, Adam state and a
    reference: ~152 GB). The recipe's bf16 on a GPU; float32 on the CPU, where bf16 is ~6x slower."""
    return "bfloat16" if training.bf16 and not on_cpu else "float32"


def optimizer_steps(training: TrainingConfig, rl_steps: int) -> int:
    """TRL's optimizer steps (its `global_step`) at the end of RL step `rl_steps`."""
    return rl_steps * training.updates_per_step


def rl_step(training: TrainingConfig, global_step: int) -> int:
    """The RL step TRL's `global_step` has completed (steps are counted from 1; 0 before the first).
    A checkpoint, a curriculum update and a log line all fall where this is exact."""
    return global_step // training.updates_per_step


def trainer_args(
    training: TrainingConfig, output_dir: Path, *, world_size: int = 1, hardware_checks: bool = True
):
    """GRPOConfig / RLOOConfig from the recipe. The recipe counts RL steps: `batch_size` prompts x
    `num_generations` rollouts generated and judged once (one generation batch), cut into
    world_size x gradient_accumulation_steps micro-batches and trained in `updates_per_step`
    optimizer updates. In TRL's terms: per_device_train_batch_size = completions / (world_size x
    gradient_accumulation_steps), its gradient_accumulation_steps = ours / updates_per_step, and so
    steps_per_generation = ours (TRL derives it from generation_batch_size); max_steps, save_steps
    and logging_steps are RL steps x updates_per_step, so every checkpoint and every log falls at
    the end of an RL step (a resume then starts a new generation batch, as the killed run did).

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
    updates = training.updates_per_step
    cpu = training.device == "cpu" or not hardware_checks
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        learning_rate=training.learning_rate,
        lr_scheduler_type=training.lr_scheduler,
        # transformers 5: a float below 1 is the share of the optimizer steps (ceil'd).
        warmup_steps=training.warmup_ratio,
        weight_decay=training.weight_decay,
        beta=training.kl_coef,
        per_device_train_batch_size=completions // per_step,
        # One generation batch per RL step, across all processes: the step's prompts x their groups
        # (explicit, so a single-process validation checks the multi-GPU layout).
        generation_batch_size=completions,
        gradient_accumulation_steps=training.gradient_accumulation_steps // updates,
        num_generations=training.num_generations,
        max_completion_length=training.max_response_tokens,
        temperature=training.temperature,
        max_steps=optimizer_steps(training, training.max_steps),
        save_steps=optimizer_steps(training, training.save_steps),
        save_total_limit=training.save_total_limit,
        logging_steps=updates,  # once per RL step, TRL's metrics averaged over its updates
        seed=training.seed,
        report_to="none",
        # CPU: bf16 and gradient checkpointing make a step ~6x slower (ENVIRONMENT.md).
        use_cpu=cpu,
        bf16=training.bf16 and not cpu,
        gradient_checkpointing=training.gradient_checkpointing and not cpu,
        use_vllm=training.use_vllm,
        model_init_kwargs={"dtype": policy_dtype(training, on_cpu=cpu)},
    )
    if training.algorithm == "grpo":  # RLOOConfig has neither (the schema refuses them for rloo)
        kwargs["entropy_coef"] = training.entropy_coef
        kwargs["delta"] = training.clip_ratio_c
    if training.eval_steps is not None:
        # Periodic validation on the held-out ladders (the worker passes them as the eval dataset):
        # one rollout per instruction, as the official run's validation (verl's n=1).
        kwargs["eval_strategy"] = "steps"
        kwargs["eval_steps"] = training.eval_steps * updates
        kwargs["num_generations_eval"] = 1
        kwargs["per_device_eval_batch_size"] = training.eval_batch_size
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


def peft_lora_config(lora: LoraConfig | None):
    """peft's LoraConfig for a recipe's `lora` block (RL and SFT alike); None trains every weight."""
    if lora is None:
        return None
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules), task_type="CAUSAL_LM",
    )  # fmt: skip
