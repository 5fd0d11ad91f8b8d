"""The training step's edges for verl: a mixin for verl's v1 trainer that keeps the reward actor's
curriculum in step with training, as the TRL engine's callback does.

verl 0.9.1's v1 trainer (`verl/trainer/ppo/v1/trainer_base.py::fit`) runs each step as
`on_step_begin()`, `step()` (rollouts, rewards, the update), `_save_checkpoint()` when one is due,
then `on_step_end()`. Its reward workers never see the step, so the trainer tells the actor:

- `on_step_begin`: the actor's `begin_step(global_steps)`: every reward from here on is this step's;
- before a checkpoint is written: the step's promotions (`finish_step`), then the curriculum's
  snapshot for that step, so a checkpoint and its curriculum always agree (the TRL engine's order);
- `on_step_end`: `finish_step` when the save did not already (at most once per step).

This module imports neither verl nor Ray: the entry point that runs in verl's environment builds
the trainer class from it and verl's own, and the hooks reach the actor through its handle.
"""

from __future__ import annotations

from typing import Any


def _get(ref: Any) -> Any:
    """A Ray object ref's value (a plain value passes through: tests drive the hooks without Ray)."""
    if type(ref).__name__ == "ObjectRef":
        import ray

        return ray.get(ref)
    return ref


class CurriculumHooks:
    """Mixed in before verl's trainer class: `class T(CurriculumHooks, VerlTrainer)`. Needs
    `reward_actor` (the run's actor handle) set before `fit`."""

    reward_actor: Any
    global_steps: int
    _finished_step: int | None = None
    curriculum_metrics: dict[str, float] | None = None  # the last finished step's, for the step's log

    def on_step_begin(self) -> None:
        super().on_step_begin()  # type: ignore[misc]
        _get(self.reward_actor.begin_step.remote(self.global_steps))

    def _finish_step(self) -> None:
        if self._finished_step == self.global_steps:
            return
        self.curriculum_metrics = _get(self.reward_actor.finish_step.remote(self.global_steps))
        self._finished_step = self.global_steps

    def _save_checkpoint(self) -> Any:
        self._finish_step()  # the step's promotions, then its snapshot, then the checkpoint
        _get(self.reward_actor.snapshot.remote(self.global_steps))
        return super()._save_checkpoint()  # type: ignore[misc]

    def on_step_end(self) -> None:
        super().on_step_end()  # type: ignore[misc]
        self._finish_step()
