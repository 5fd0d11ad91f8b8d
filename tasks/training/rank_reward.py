"""The Writing-RL reward and curriculum as one rank of the trainer sees them.

Rank 0 holds the `WritingRLReward` (the judge client, the curriculum store) and judges the whole
step: each reward call gathers every rank's rollouts, rank 0 judges them all (one client, so the
judge's rate and token limits are the job's, and sample indices are numbered across ranks), and
sends each rank its rewards. So the promotion rule at the step's end sees every rollout of an
instruction, whichever rank generated it, and after every step (and every restore) rank 0
broadcasts the rungs: all ranks hold the same curriculum.

A judge that stops answering (the endpoint's breaker, `EndpointFailingError`) or a reward that
raises on rank 0 raises `JudgeUnavailableError` on every rank, so no rank waits forever in a
collective; the trainer then checkpoints the last finished step (tasks/training/trainer.py).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from tasks.llm.base import EndpointFailingError
from tasks.llm.budget import BudgetMeter
from tasks.training.ranks import Ranks
from tasks.training.reward import Rollout, RolloutReward, WritingRLReward, step_metrics


class JudgeUnavailableError(RuntimeError):
    """The judge failed the step on rank 0 (raised on every rank with rank 0's message)."""


class BudgetStopError(JudgeUnavailableError):
    """The judge's budget ran out during `step` (every rank): no update for it; the trainer
    checkpoints step - 1, as for a judge failure, and the stage ends stopped at its budget."""

    def __init__(self, step: int, message: str) -> None:
        super().__init__(message)
        self.step = step


class RankReward:
    def __init__(
        self, ranks: Ranks, owner: WritingRLReward | None, budget: BudgetMeter | None = None
    ) -> None:
        if (owner is not None) != ranks.is_main:
            raise ValueError("rank 0, and only rank 0, holds the WritingRLReward")
        self.ranks, self.owner = ranks, owner
        self.budget = budget  # rank 0's judge's (tasks/llm/budget.py), when the recipe has a budget
        self._rungs: dict[str, int] = {}
        self._topped: dict[str, int] = {}

    # -- the curriculum, identical on every rank ------------------------------------------------

    def _sync_rungs(self) -> None:
        mine = (self.owner.current_rungs(), self.owner.topped()) if self.owner else None
        self._rungs, self._topped = self.ranks.broadcast(mine)

    def current_rungs(self) -> dict[str, int]:
        return dict(self._rungs)

    def topped(self) -> dict[str, int]:
        """Instruction -> the step it beat its top rung (every rank: `curriculum.top` retire
        replaces them in the batches each rank generates)."""
        return dict(self._topped)

    def start(self, checkpoint_step: int | None, forget_after: Callable[[int], None]) -> None:
        """Put the curriculum where the run starts: at `checkpoint_step`'s snapshot when resuming;
        at the initial state (snapshot 0) when a killed run left steps but no checkpoint."""
        if self.owner is not None:
            self.owner.resume(checkpoint_step, forget_after)
        self._sync_rungs()

    def finish_step(self, step: int) -> tuple[list[RolloutReward], list[Any]]:
        """Apply `step`'s promotions (rank 0) and hand every rank the new rungs; returns the step's
        judgments and promotions on rank 0, nothing elsewhere."""
        judged, promotions = self.owner.finish_step(step) if self.owner else ([], [])
        self._sync_rungs()
        return judged, promotions

    def snapshot(self, step: int) -> None:
        if self.owner is not None:
            self.owner.store.snapshot(self.owner.curriculum_id, step)

    # -- TRL ------------------------------------------------------------------------------------

    def as_trl_reward(self, updates_per_step: int = 1):
        """An async reward function with TRL's calling convention (one call per generation batch,
        on every rank at once). It numbers RL steps: TRL generates when an RL step starts, after
        `updates_per_step` optimizer steps per earlier RL step."""
        ranks, owner, budget = self.ranks, self.owner, self.budget

        async def writing_rl(
            prompts, completions, instruction_id, trainer_state=None, log_metric=None, validation=None, **_
        ):
            done = trainer_state.global_step if trainer_state is not None else 0
            step = done // updates_per_step + 1  # the RL step being trained
            # The eval dataset's rows carry validation=True (tasks/training/data.py): held-out ladders,
            # judged by `validate`, which never touches the curriculum. A batch is all of one kind.
            validating = bool(validation) and all(validation)
            mine = list(zip(instruction_id, (_completion_text(c) for c in completions), strict=True))
            everyone = ranks.gather(mine)
            payload: tuple[str, Any, Any] | None = None
            if owner is not None:
                rollouts = [
                    Rollout(iid, i, text)
                    for i, (iid, text) in enumerate(r for rank in everyone for r in rank)
                ]
                try:
                    if validating:
                        flat, metrics = await owner.validate(rollouts)
                    else:
                        results = await owner.score(step, rollouts)
                        flat, metrics = [r.reward for r in results], step_metrics(results)
                except EndpointFailingError as exc:
                    payload = ("failed", f"the judge stopped answering: {exc}", None)
                except Exception:  # every rank must hear of it, or they wait in the broadcast forever
                    payload = ("failed", f"rank 0's reward raised:\n{traceback.format_exc()}", None)
                else:
                    if budget is not None and budget.exhausted is not None:  # some rollouts went unjudged
                        payload = ("budget", budget.exhausted, step)
                if payload is None:
                    rewards, start = [], 0
                    for rank in everyone:
                        rewards.append(flat[start : start + len(rank)])
                        start += len(rank)
                    payload = ("ok", rewards, metrics)
            status, rewards, metrics = ranks.broadcast(payload)
            if status == "budget":
                raise BudgetStopError(metrics, rewards)
            if status != "ok":
                raise JudgeUnavailableError(rewards)
            if log_metric is not None:  # the whole step's, the same on every rank
                for name, value in metrics.items():
                    if value is not None:
                        log_metric(name, value)
            return rewards[ranks.rank]

        return writing_rl


def _completion_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content", "") for m in completion if m.get("role") == "assistant")
