"""verl itself, for the verl engine's driver (tasks/training/verl_main.py): compose the configuration
and start Ray as `verl.trainer.main_ppo` does, train with verl's v1 PPO trainer carrying the
Writing-RL mixins, and export the final checkpoint's actor as a plain model folder. Runs in
verl's environment only (it imports verl).

verl 0.9.1 chooses the trainer class by name inside its TaskRunner actor
(`main_ppo.py::TaskRunnerV1.run`: `get_trainer_cls(config.trainer.v1.trainer_mode)`), and its base
class branches on the name "sync". So the TaskRunner here puts the Writing-RL trainer under that
name in its own process before verl looks it up. A Ray actor class cannot be subclassed directly
(ActorClassInheritanceException): the subclass extends the actor's underlying class.

The full loop needs a GPU rollout engine (vLLM or SGLang): it is not run on the CPU machine this
project is tested on (README's status table). Each part it calls is: the composition by
`tests/test_verl_config.py`, the mixins and the reward actor by `tests/test_reward_actor.py`, and
the driver by `tests/test_verl_stage.py` with a stand-in for this module.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import ray

from tasks.training.verl_hooks import CurriculumHooks, JudgeFailureMasking


def compose(override_args: list[str]) -> Any:
    """verl's PPO trainer configuration with the recipe's overrides, as `main_ppo.main` gets it
    from Hydra (not validated yet: `validate`)."""
    import verl.trainer.config as config_package
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from verl.utils.device import auto_set_device

    with initialize_config_dir(config_dir=os.path.dirname(config_package.__file__), version_base=None):
        config = hydra_compose(config_name="ppo_trainer", overrides=override_args)
    auto_set_device(config)
    return config


def validate(config: Any) -> tuple[bool, bool]:
    """`main_ppo.main`'s check (`validate_config`); whether verl builds a critic and a reference."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    critic, reference = bool(need_critic(config)), bool(need_reference_policy(config))
    validate_config(config, use_reference_policy=reference, use_critic=critic)
    return critic, reference


def start(override_args: list[str]) -> Any:
    """The composed configuration, with Ray started as `run_ppo` starts it (verl's runtime
    environment, the configuration's ray_init kwargs): the driver starts the reward actor in this
    session before training, and `run_ppo` then finds Ray up."""
    from omegaconf import OmegaConf
    from verl.trainer.constants_ppo import get_ppo_ray_runtime_env

    config = compose(override_args)
    validate(config)
    runtime_env = get_ppo_ray_runtime_env(config)
    init_kwargs = config.ray_kwargs.get("ray_init", {})
    if config.transfer_queue.enable:
        runtime_env.setdefault("env_vars", {})["TRANSFER_QUEUE_ENABLE"] = "1"
    merged = OmegaConf.merge(runtime_env, init_kwargs.get("runtime_env", {}))
    ray.init(**OmegaConf.to_container(OmegaConf.create({**init_kwargs, "runtime_env": merged})))
    return config


def writing_rl_trainer(base: type) -> type:
    """verl's trainer class with the curriculum hooks and the failure masking before it."""
    return type(f"WritingRL{base.__name__}", (CurriculumHooks, JudgeFailureMasking, base), {})


def _task_runner() -> Any:
    from verl.trainer.main_ppo import TaskRunnerV1

    class WritingRLTaskRunner(TaskRunnerV1.__ray_actor_class__):  # type: ignore[name-defined]
        def run(self, config: Any) -> Any:
            from verl.trainer.ppo.v1 import trainer_base

            sync = trainer_base.TRAINER_REGISTRY["sync"]
            if not issubclass(sync, CurriculumHooks):
                trainer_base.TRAINER_REGISTRY["sync"] = writing_rl_trainer(sync)
            return super().run(config)

    return ray.remote(WritingRLTaskRunner)


def train(config: Any) -> None:
    from verl.trainer.main_ppo import run_ppo

    if config.trainer.v1.trainer_mode != "sync" or not config.trainer.use_v1:
        raise ValueError(
            "the Writing-RL hooks are built for verl's v1 sync trainer (trainer.use_v1, mode sync)"
        )
    run_ppo(config, task_runner_class=_task_runner())


def export_model(checkpoint: Path, target: Path) -> None:
    """The checkpoint's actor as a Hugging Face model folder (verl's model merger, FSDP backend)."""
    subprocess.run(
        [sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp",
         "--local_dir", str(checkpoint / "actor"), "--target_dir", str(target)],
        check=True,
    )  # fmt: skip
