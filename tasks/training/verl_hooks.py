"""The Writing-RL parts of verl's v1 trainer: mixins that keep the reward actor's curriculum in step
with training, resume it with the checkpoint, and keep a judge failure out of the update.

verl 0.9.1's v1 trainer (`verl/trainer/ppo/v1/trainer_base.py`) loads its checkpoint in `init()`
(`_load_checkpoint`), then runs each step in `fit` as `on_step_begin()`, `step()` (rollouts and
rewards, old log-probs and values, `_compute_advantage`, the critic's and the actor's updates),
`_save_checkpoint()` when one is due, `on_step_end()`, then `_compute_metrics`. Its reward workers
never see the step, so the trainer tells the actor:

- `_load_checkpoint`: after verl restored its step, the actor's `start(step)`: the curriculum back
  to that checkpoint's snapshot, later steps out of the training log (the TRL engine's resume);
- `on_step_begin`: `begin_step(global_steps)`: every reward from here on is this step's;
- `_compute_advantage` (all of the step's rewards are in, no weight has changed yet): a judge that
  stopped answering, or a budget that ran out, ends the run here: the last finished step is
  checkpointed with its snapshot unless it is on disk already (the TRL engine's
  `checkpoint_last_finished_step`), and `JudgeStopError` is raised;
- before a checkpoint is written: the step's promotions (`finish_step`), then the curriculum's
  snapshot for that step, so a checkpoint and its curriculum always agree (the TRL engine's order);
- `on_step_end`: `finish_step` when the save did not already (at most once per step);
- `_compute_metrics`: verl's step metrics go to the training log as the trainer's.

`JudgeFailureMasking` keeps a failed judgment out of the update (docs/training.md, "The verl
engine"): verl cannot drop a rollout from its batch, so the rollout's response mask is zeroed
before the advantage. That is verl's own way of excluding a sample (its rollout correction's
rejection sampling writes response_mask back the same way): the actor's and the critic's losses,
the entropy bonus and GAE's advantage whitening then skip its tokens. The loss mask, which
verl's FSDP engine counts for the token-mean denominator (`batch_num_tokens`), is left whole: the
judged rollouts' gradient is then what it would be were the failed one there with zero advantage,
and a mini-batch whose every judgment failed gives a zero update instead of 0/0. Under GRPO its
score is also set to the mean of its group's judged scores, so the group's baseline is theirs
alone (the group's std shrinks by that one sample at the mean).

This module imports neither verl nor Ray at import time: the entry point in verl's environment
(tasks/training/verl_entry.py) builds the trainer class from these mixins and verl's own, and the
pure parts are tested in this project's environment.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

JUDGE_FAILED = "judge_failed"  # the per-sample extra info tasks/training/verl_reward.py returns
CHECKPOINT_TRACKER = "latest_checkpointed_iteration.txt"  # verl's record of its newest checkpoint


def newest_checkpoint(checkpoints: Path) -> tuple[int, Path] | None:
    """verl's newest checkpoint under `checkpoints` (trainer.default_local_dir), as its tracker
    names it: (step, its global_step_N folder); None before the first."""
    tracker = Path(checkpoints) / CHECKPOINT_TRACKER
    if not tracker.is_file():
        return None
    step = int(tracker.read_text().strip())
    return step, Path(checkpoints) / f"global_step_{step}"


class JudgeStopError(RuntimeError):
    """The judge stopped answering, or its budget ran out, during a step: no update for it."""


def _get(ref: Any) -> Any:
    """A Ray object ref's value (a plain value passes through: tests drive the hooks without Ray)."""
    if type(ref).__name__ == "ObjectRef":
        import ray

        return ray.get(ref)
    return ref


def reward_actor_of(config: Any) -> Any:
    """The run's reward actor, by the name verl passes to every compute_score call (the
    configuration's reward_kwargs: tasks/training/verl_config.py)."""
    import ray

    from tasks.training.reward_service import ACTOR_NAMESPACE

    kwargs = config.reward.custom_reward_function.reward_kwargs
    return ray.get_actor(kwargs["actor"], namespace=kwargs.get("namespace", ACTOR_NAMESPACE))


class CurriculumHooks:
    """Mixed in before verl's trainer class: `class T(CurriculumHooks, JudgeFailureMasking, Sync)`.
    Finds the reward actor from verl's configuration unless `reward_actor` is set first."""

    config: Any
    global_steps: int
    _reward_actor: Any = None
    _finished_step: int | None = None
    _step_started: float | None = None
    curriculum_metrics: dict[str, float] | None = None  # the last finished step's, for the step's log

    @property
    def reward_actor(self) -> Any:
        if self._reward_actor is None:
            self._reward_actor = reward_actor_of(self.config)
        return self._reward_actor

    @reward_actor.setter
    def reward_actor(self, actor: Any) -> None:
        self._reward_actor = actor

    def _load_checkpoint(self) -> Any:
        result = super()._load_checkpoint()  # type: ignore[misc]
        resumed = self.global_steps or None  # verl's own choice: the newest checkpoint, or none
        _get(self.reward_actor.start.remote(resumed))
        self._finished_step = self.global_steps  # a resumed step is finished; a fresh run starts at 0
        return result

    def on_step_begin(self) -> None:
        super().on_step_begin()  # type: ignore[misc]
        self._step_started = time.monotonic()
        _get(self.reward_actor.begin_step.remote(self.global_steps))

    def _compute_advantage(self, batch: Any, metrics: dict) -> Any:
        stop = _get(self.reward_actor.stopped.remote())
        if stop is not None:
            self._checkpoint_last_finished_step()
            raise JudgeStopError(f"{stop['kind']} at step {stop['step']}: {stop['error']}")
        return super()._compute_advantage(batch, metrics)  # type: ignore[misc]

    def _checkpoint_last_finished_step(self) -> None:
        """Step s's rewards failed before any of its updates: the weights are step s - 1's, so a
        checkpoint of s - 1 (and its snapshot) loses no finished step. verl's dataloader has
        already drawn step s's batch: the resumed run trains on the next one."""
        step = self.global_steps - 1
        newest = newest_checkpoint(Path(str(self.config.trainer.default_local_dir)))
        if step <= 0 or (newest is not None and newest[0] == step):
            return
        self.global_steps = step
        try:
            self._save_checkpoint()
        finally:
            self.global_steps = step + 1

    def _finish_step(self) -> None:
        if self._finished_step == self.global_steps:
            return
        timing = {}
        if self._step_started is not None:
            timing["time/step_s"] = time.monotonic() - self._step_started
        self.curriculum_metrics = _get(self.reward_actor.finish_step.remote(self.global_steps, timing))
        self._finished_step = self.global_steps

    def _save_checkpoint(self) -> Any:
        self._finish_step()  # the step's promotions, then its snapshot, then the checkpoint
        _get(self.reward_actor.snapshot.remote(self.global_steps))
        return super()._save_checkpoint()  # type: ignore[misc]

    def on_step_end(self) -> None:
        super().on_step_end()  # type: ignore[misc]
        self._finish_step()

    def _compute_metrics(self, batch: Any, metrics: dict, *args: Any, **kwargs: Any) -> Any:
        result = super()._compute_metrics(batch, metrics, *args, **kwargs)  # type: ignore[misc]
        numbers = {
            k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
        _get(self.reward_actor.record_trainer_metrics.remote(self.global_steps, numbers))
        return result


# -- keeping a failed judgment out of the update -----------------------------------------------


def failed_rows(extra_fields: list[Any]) -> list[bool]:
    """Which samples' judgments failed, from verl's per-sample `extra_fields` (compute_score's
    extra keys are under "reward_extra_info")."""
    out = []
    for fields in extra_fields:
        info = fields.get("reward_extra_info", {}) if isinstance(fields, dict) else {}
        out.append(bool(info.get(JUDGE_FAILED, 0)))
    return out


def mask_rows(response_mask: Any, failed: list[bool]) -> Any:
    """The nested (jagged) response mask with the failed rows' values zeroed: same lengths, so
    every field verl nests by this mask still lines up."""
    import torch

    rows = [row * 0 if bad else row for row, bad in zip(response_mask.unbind(), failed, strict=True)]
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


def group_mean_scores(rm_scores: Any, uids: list[Any], failed: list[bool]) -> Any:
    """GRPO: each failed sample's token scores replaced by its group's mean judged score, on its
    last token (where verl's reward managers put a sequence's score); 0 when the whole group failed
    (then every sample of it is masked anyway)."""
    import torch

    rows = list(rm_scores.unbind())
    totals: dict[Any, list[float]] = {}
    for row, uid, bad in zip(rows, uids, failed, strict=True):
        if not bad:
            totals.setdefault(uid, []).append(float(row.sum()))
    out = []
    for row, uid, bad in zip(rows, uids, failed, strict=True):
        if bad:
            judged = totals.get(uid, [])
            row = torch.zeros_like(row)
            if judged and row.numel():
                row[-1] = sum(judged) / len(judged)
        out.append(row)
    return torch.nested.as_nested_tensor(out, layout=torch.jagged)


def _listed(values: Any) -> list[Any]:
    """A transfer-queue field of non-tensor values (tensordict's NonTensorStack) as a list."""
    return values.tolist() if hasattr(values, "tolist") else list(values)


class JudgeFailureMasking:
    """Mixed in before verl's trainer class: a failed judgment's rollout leaves the update."""

    config: Any

    def _compute_advantage(self, batch: Any, metrics: dict) -> Any:
        import transfer_queue as tq
        from tensordict import TensorDict

        fields = ["uid", "response_mask", "rm_scores", "extra_fields"]
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        failed = failed_rows(_listed(data["extra_fields"]))
        metrics["judge/masked_rollouts"] = float(sum(failed))
        if any(failed):
            update = {"response_mask": mask_rows(data["response_mask"], failed)}
            if self.config.algorithm.adv_estimator == "grpo":
                update["rm_scores"] = group_mean_scores(data["rm_scores"], _listed(data["uid"]), failed)
            tq.kv_batch_put(
                keys=batch.keys,
                partition_id=batch.partition_id,
                fields=TensorDict(update, batch_size=len(batch)),
            )
        return super()._compute_advantage(batch, metrics)  # type: ignore[misc]
