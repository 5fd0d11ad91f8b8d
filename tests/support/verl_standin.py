"""A stand-in for tasks/training/verl_entry.py (`WRL_VERL_ENTRY=tests.support.verl_standin`): verl's
PPO loop needs a GPU rollout engine, so the train stage's verl path is tested with this instead of
verl's trainer. Everything around the trainer is the real one: the stage, the driver
(tasks/training/verl_main.py) with its Ray session and event relay, the named reward actor, verl's
`compute_score` file loaded by path and called with the configuration's reward kwargs from
several reward-worker processes, and the Writing-RL mixin (`CurriculumHooks`) on a trainer that
keeps verl 0.9.1's v1 order (trainer_base.py: `init` loads the newest checkpoint named by
latest_checkpointed_iteration.txt; each step `on_step_begin`, rollouts and rewards,
`_compute_advantage`, `_save_checkpoint` when due, `on_step_end`, `_compute_metrics`), and, like
verl's v1 agent loop, goes on with the step when a compute_score call raises.

What it does not do is learn: its "policy" writes a fixed text per step and rollout, and a
checkpoint's model is the starting model copied. The configuration comes from the generated
overrides themselves (the keys verl would read), so a key the driver stops generating fails here.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import ray
import yaml

from tasks.training.verl_hooks import CHECKPOINT_TRACKER as TRACKER
from tasks.training.verl_hooks import newest_checkpoint

STEP_DELAY_ENV = "WRL_STANDIN_STEP_DELAY_S"  # seconds per step, so a drill can kill mid-run


class Node(dict):
    """A nested configuration read as verl's DictConfig is: `config.trainer.save_freq`, or by key."""

    def __getattr__(self, name: str) -> Any:
        try:
            value = self[name]
        except KeyError:
            raise AttributeError(name) from None
        return value


def parse(override_args: list[str]) -> Node:
    root = Node()
    for arg in override_args:
        key, _, text = arg.partition("=")
        *parents, leaf = key.lstrip("+").split(".")
        node = root
        for part in parents:
            node = node.setdefault(part, Node())
        node[leaf] = yaml.safe_load(text)  # Hydra's simple values read the same in YAML
    return root


def start(override_args: list[str]) -> Node:
    temp = Path(f"/tmp/ray-wrl-standin-{os.getpid()}")  # short: Ray's socket paths have a length limit
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024**2, _temp_dir=str(temp))
    return parse(override_args)


def _reward_function(config: Node):
    """verl's way: `reward.custom_reward_function.path`, loaded as a module from its file."""
    custom = config.reward.custom_reward_function
    spec = importlib.util.spec_from_file_location("custom_module", custom.path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, custom.name)


@ray.remote
def reward_worker(config: Node, rollouts: list[tuple[str, str, dict]]) -> list[dict]:
    """One of verl's reward workers: the custom compute_score on each rollout, concurrently."""
    compute_score = _reward_function(config)
    kwargs = dict(config.reward.custom_reward_function.get("reward_kwargs", {}))

    async def all_of_them():
        return await asyncio.gather(*(
            compute_score(data_source=source, solution_str=text, ground_truth=None, extra_info=info, **kwargs)
            for source, text, info in rollouts
        ))  # fmt: skip

    return asyncio.run(all_of_them())


class StandInTrainer:
    """verl 0.9.1's v1 trainer, reduced to the order of its hooks and its checkpoint files."""

    def __init__(self, config: Node) -> None:
        self.config, self.global_steps, self.log = config, 0, []
        self.rows = pq.read_table(config.data.train_files).to_pylist()

    def init(self) -> None:
        self._load_checkpoint()

    def _load_checkpoint(self) -> None:
        self.global_steps = 0
        newest = newest_checkpoint(Path(self.config.trainer.default_local_dir))
        if self.config.trainer.resume_mode == "auto" and newest is not None:
            self.global_steps = newest[0]

    def fit(self) -> None:
        trainer = self.config.trainer
        self.global_steps += 1
        while self.global_steps <= trainer.total_training_steps:
            is_last = self.global_steps >= trainer.total_training_steps
            metrics: dict[str, float] = {}
            self.on_step_begin()
            self.step(metrics)
            if trainer.save_freq > 0 and (is_last or self.global_steps % trainer.save_freq == 0):
                self._save_checkpoint()
            self.on_step_end()
            self._compute_metrics(None, metrics)
            self.global_steps += 1

    def step(self, metrics: dict) -> None:
        data, n = self.config.data, self.config.actor_rollout_ref.rollout.n
        first = (self.global_steps - 1) * data.train_batch_size
        batch = [self.rows[(first + i) % len(self.rows)] for i in range(data.train_batch_size)]
        rollouts = [(row["data_source"], f"step {self.global_steps} rollout {k}: {row['extra_info']['instruction_id']}",
                     row["extra_info"]) for row in batch for k in range(n)]  # fmt: skip
        workers = min(self.config.reward.num_workers, 2)
        replies = []
        for chunk in [reward_worker.remote(self.config, rollouts[w::workers]) for w in range(workers)]:
            try:
                replies += ray.get(chunk)
            except ray.exceptions.RayTaskError:  # verl's v1 agent loop logs a raising compute_score,
                metrics["stand_in/failed_groups"] = (
                    metrics.get("stand_in/failed_groups", 0) + 1
                )  # pads the group
        if replies:
            metrics["critic/score/mean"] = sum(r["score"] for r in replies) / len(replies)
        time.sleep(float(os.environ.get(STEP_DELAY_ENV, "0")))
        self._compute_advantage(None, metrics)

    def _compute_advantage(self, batch: Any, metrics: dict) -> None:
        metrics["stand_in/advantage_steps"] = 1.0

    def _save_checkpoint(self) -> None:
        root = Path(self.config.trainer.default_local_dir)
        folder = root / f"global_step_{self.global_steps}"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(self.config.actor_rollout_ref.model.path, folder / "actor" / "huggingface")
        partial = root / f".{TRACKER}.partial"
        partial.write_text(str(self.global_steps))
        partial.replace(root / TRACKER)

    def on_step_begin(self) -> None:
        self.log.append(("begin", self.global_steps))

    def on_step_end(self) -> None:
        self.log.append(("end", self.global_steps))

    def _compute_metrics(self, batch: Any, metrics: dict, *args: Any, **kwargs: Any) -> None:
        metrics["training/global_step"] = float(self.global_steps)


@ray.remote
class StandInTaskRunner:
    """verl's TaskRunner: the trainer runs in an actor of its own, as verl's does."""

    def run(self, config: Node) -> None:
        from tasks.training.verl_hooks import CurriculumHooks

        trainer = type("WritingRLStandInTrainer", (CurriculumHooks, StandInTrainer), {})(config)
        trainer.init()
        trainer.fit()


def train(config: Node) -> None:
    ray.get(StandInTaskRunner.remote().run.remote(config))


def export_model(checkpoint: Path, target: Path) -> None:
    shutil.copytree(checkpoint / "actor" / "huggingface", target)
