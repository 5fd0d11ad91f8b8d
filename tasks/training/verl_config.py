"""verl's configuration, generated from the recipe: the Hydra overrides of `verl.trainer.main_ppo`.

Never hand-written: every value comes from `training` (the settings both engines share, mapped to
verl's names) and `training.verl` (verl's own, defaulting to the official launch script's,
Tongyi-Zhiwen/Writing-RL `scripts/train_writing_rl.sh`). Pure: this module imports neither verl nor
Hydra, so the recipe check and `wrl config plan` can run it in this project's environment; verl's
own config composition checks the result in verl's environment (`tests/test_verl_config.py`).

Key paths are verl 0.9.1's (its `trainer/config/_generated_ppo_trainer.yaml`). Mapping, and the
official script's value where it sets one:

| recipe | verl | official |
|---|---|---|
| algorithm ppo / grpo | algorithm.adv_estimator gae / grpo; the critic only with gae | gae |
| batch_size | data.train_batch_size | 32 |
| distributed (fsdp2, the only one verl takes here) | actor and critic strategy fsdp2 | FSDP (verl's first version, the fork's only one) |
| batch_size / updates_per_step | actor.ppo_mini_batch_size (prompts per update) | 16 |
| num_generations | rollout.n | 1 |
| max_prompt_tokens, max_response_tokens | data.max_prompt_length, data.max_response_length (prompts cut on the left) | 4096, 10000 |
| learning_rate, warmup_ratio, lr_scheduler | actor.optim.lr, .lr_warmup_steps_ratio, .lr_scheduler_type | 1e-6, 0.4, constant |
| weight_decay | actor.optim.weight_decay | verl's 0.01 |
| entropy_coef, clip_ratio_c | actor.entropy_coeff, actor.clip_ratio_c | 0.001, 3.0 (their verl's defaults) |
| kl_coef | actor.use_kl_loss (kl_coef > 0), actor.kl_loss_coef; algorithm.use_kl_in_reward false | KL off |
| cpu_offload | actor, ref and critic param_offload and optimizer_offload | true |
| gradient_checkpointing | actor and critic enable_gradient_checkpointing | true |
| temperature | rollout.temperature | 1 |
| max_steps, save_steps, eval_steps, save_total_limit | trainer.total_training_steps, .save_freq, .test_freq, .max_*_ckpt_to_keep | 405, 50, 50 |
| gpus, verl.nodes | trainer.n_gpus_per_node, trainer.nnodes | 8, 1 |
| verl.max_token_len_per_gpu | actor.use_dynamic_bsz and ppo_max_token_len_per_gpu, log-prob passes alike | 16500 |
| verl.rollout_* | rollout.name, .tensor_model_parallel_size, .gpu_memory_utilization, .max_num_batched_tokens | vllm, 2, 0.7, 16384 |
| verl.critic_learning_rate, critic_warmup_ratio | critic.optim.lr, .lr_warmup_steps_ratio | 1e-5, 0.05 |
| verl.reward_workers | reward.num_workers | - |

The official script's `critic.ppo_micro_batch_size_per_gpu=2` is kept; with dynamic batch sizes
the critic's token bound decides (verl's default 32,768 tokens per GPU). `eval_batch_size` is not
passed: verl 0.9.1 deprecates data.val_batch_size (its rollout engine takes the validation set whole).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configs.loading import ConfigError
from configs.schema import Recipe, TrainingConfig

ENTRY_POINT = "verl.trainer.main_ppo"  # verl's own; the train stage's entry point wraps it
REWARD_FUNCTION = "compute_score"
ADVANTAGE_ESTIMATOR = {"ppo": "gae", "grpo": "grpo"}
SCHEDULER = {"constant": "constant", "constant_with_warmup": "constant", "cosine": "cosine"}


@dataclass(frozen=True)
class VerlRun:
    """What the configuration points at: the stage's files, not settings."""

    model: str  # the policy's starting weights (a local folder)
    train_files: Path  # the ladder export's train.parquet
    val_files: Path | None  # its test.parquet (the held-out ladders), when there is one
    train_rows: int | None  # None: not known yet (a preview); trainer.total_epochs is then left out
    checkpoints: Path  # trainer.default_local_dir
    reward_function: Path  # the file holding compute_score
    experiment: str  # trainer.experiment_name
    reward_kwargs: Mapping[str, Any] = ()  # type: ignore[assignment]  # passed to every compute_score call


def preview_run(recipe: Recipe) -> VerlRun:
    """The run as the train stage will describe it, with the paths it cannot know yet named by
    what they will be: for `wrl config verl` and `wrl config validate`."""
    exports = Path(recipe.storage.root) / "exports" / "<order stage run>"
    return VerlRun(
        model=recipe.policy.model, train_files=exports / "train.parquet",
        val_files=exports / "test.parquet" if recipe.ordering.validation_size else None, train_rows=None,
        checkpoints=Path(recipe.storage.root) / "training" / recipe.name / "<run>" / "checkpoints",
        reward_function=Path(__file__).with_name("verl_reward.py"), experiment=recipe.name,
    )  # fmt: skip


def compose_with_verl(settings: Mapping[str, Any], python: Path, timeout_s: float = 300) -> dict[str, Any]:
    """verl's own composition and validation of `settings` (tasks/training/verl_compose.py, run by
    `python`, verl's environment): its JSON report."""
    import json
    import os
    import subprocess

    script = Path(__file__).with_name("verl_compose.py")
    root = str(Path(__file__).resolve().parents[2])  # the script imports tasks.training.verl_entry
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([str(python), str(script), *override_args(settings)], capture_output=True, text=True,
                          timeout=timeout_s, env=env)  # fmt: skip
    lines = done.stdout.strip().splitlines()
    if not lines:
        return {
            "error": f"{python} {script.name} printed nothing (exit {done.returncode}): {done.stderr[-2000:]}"
        }
    return json.loads(lines[-1])


def epochs_for(training: TrainingConfig, train_rows: int) -> int:
    """verl stops at total_training_steps, but its dataloader must hold that many batches: the
    epochs that cover `max_steps` (a batch never straddles an epoch: the last partial one is dropped)."""
    per_epoch = train_rows // training.batch_size
    if per_epoch == 0:
        raise ConfigError(
            f"training.batch_size ({training.batch_size}) exceeds the {train_rows} training ladders: verl "
            "drops the last partial batch, so no step would run; lower batch_size or select more ladders"
        )
    return math.ceil(training.max_steps / per_epoch)


def overrides(training: TrainingConfig, run: VerlRun) -> dict[str, Any]:
    """key -> value of verl's configuration; keys verl does not declare start with `+`."""
    if training.engine != "verl":
        raise ValueError(f"training.engine is {training.engine!r}, not verl")
    verl = training.verl_settings
    offload = training.cpu_offload
    ppo = training.algorithm == "ppo"
    actor = "actor_rollout_ref.actor"
    rollout = "actor_rollout_ref.rollout"
    out: dict[str, Any] = {
        "data.train_files": run.train_files,
        "data.val_files": run.val_files or run.train_files,  # required; unused without validation
        "data.train_batch_size": training.batch_size,
        "data.max_prompt_length": training.max_prompt_tokens,
        "data.max_response_length": training.max_response_tokens,
        "data.truncation": "left",  # as the official loader and the TRL engine cut prompts
        "data.seed": training.seed,
        "algorithm.adv_estimator": ADVANTAGE_ESTIMATOR[training.algorithm],
        "algorithm.use_kl_in_reward": False,
        "actor_rollout_ref.model.path": run.model,
        "actor_rollout_ref.model.enable_gradient_checkpointing": training.gradient_checkpointing,
        "actor_rollout_ref.model.use_remove_padding": True,
        f"{actor}.strategy": training.distributed,  # fsdp2: verl's FSDP2 engine, the actor and its
        f"{actor}.fsdp_config.strategy": training.distributed,  # engine config alike
        f"{actor}.optim.lr": training.learning_rate,
        f"{actor}.optim.lr_warmup_steps_ratio": training.warmup_ratio,
        f"{actor}.optim.lr_scheduler_type": SCHEDULER[training.lr_scheduler],
        f"{actor}.optim.weight_decay": training.weight_decay,
        f"{actor}.ppo_mini_batch_size": training.batch_size // training.updates_per_step,
        f"{actor}.use_dynamic_bsz": True,
        f"{actor}.ppo_max_token_len_per_gpu": verl.max_token_len_per_gpu,
        f"{actor}.entropy_coeff": training.entropy_coef,
        f"{actor}.clip_ratio_c": training.clip_ratio_c,
        f"{actor}.use_kl_loss": training.kl_coef > 0,
        f"{actor}.kl_loss_coef": training.kl_coef,
        f"{actor}.fsdp_config.param_offload": offload,
        f"{actor}.fsdp_config.optimizer_offload": offload,
        "actor_rollout_ref.ref.fsdp_config.param_offload": offload,
        f"{rollout}.name": verl.rollout,
        f"{rollout}.n": training.num_generations,
        f"{rollout}.temperature": training.temperature,
        f"{rollout}.tensor_model_parallel_size": verl.rollout_tensor_parallel,
        f"{rollout}.gpu_memory_utilization": verl.rollout_gpu_memory_utilization,
        f"{rollout}.max_num_batched_tokens": verl.rollout_max_num_batched_tokens,
        f"{rollout}.log_prob_use_dynamic_bsz": True,
        f"{rollout}.log_prob_max_token_len_per_gpu": verl.max_token_len_per_gpu,
        "actor_rollout_ref.ref.log_prob_use_dynamic_bsz": True,
        "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu": verl.max_token_len_per_gpu,
        "reward.num_workers": verl.reward_workers,
        "reward.custom_reward_function.path": run.reward_function,
        "reward.custom_reward_function.name": REWARD_FUNCTION,
        "trainer.total_training_steps": training.max_steps,
        "trainer.save_freq": training.save_steps,
        "trainer.test_freq": training.eval_steps if training.eval_steps and run.val_files else -1,
        "trainer.val_before_train": False,
        "trainer.critic_warmup": 0,
        "trainer.n_gpus_per_node": training.gpus,
        "trainer.nnodes": verl.nodes,
        "trainer.default_local_dir": run.checkpoints,
        "trainer.resume_mode": "auto",
        "trainer.max_actor_ckpt_to_keep": training.save_total_limit,
        "trainer.max_critic_ckpt_to_keep": training.save_total_limit,
        "trainer.logger": ["console"],
        "trainer.project_name": "writing-rl",
        "trainer.experiment_name": run.experiment,
    }
    if ppo:
        out |= {
            "critic.strategy": training.distributed,
            "critic.fsdp.strategy": training.distributed,
            "critic.model.path": run.model,
            "critic.model.enable_gradient_checkpointing": training.gradient_checkpointing,
            "critic.model.use_remove_padding": True,
            "critic.optim.lr": verl.critic_learning_rate,
            "critic.optim.lr_warmup_steps_ratio": verl.critic_warmup_ratio,
            "critic.ppo_micro_batch_size_per_gpu": 2,
            "critic.fsdp.param_offload": offload,
            "critic.fsdp.optimizer_offload": offload,
        }
    if run.train_rows is not None:
        out["trainer.total_epochs"] = epochs_for(training, run.train_rows)
    for key, value in dict(run.reward_kwargs).items():
        out[f"+reward.custom_reward_function.reward_kwargs.{key}"] = value
    return out


_PLAIN = re.compile(r"^[A-Za-z0-9_./:+~-]+$")


def hydra_value(value: Any) -> str:
    """A value in Hydra's override grammar: booleans lower-case, None null, lists in brackets,
    anything with other characters single-quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    text = str(value)
    if _PLAIN.match(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def override_args(settings: Mapping[str, Any]) -> list[str]:
    """`key=value` arguments, in the order given."""
    return [f"{key}={hydra_value(value)}" for key, value in settings.items()]
