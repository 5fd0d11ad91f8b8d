"""The Writing-RL reward as one service per training run, for engines that call the reward once per
rollout from many workers (verl's reward workers, `training.engine: verl`).

One object owns the run's `WritingRLReward`: the judge client with its global rate and token
limits, the response cache, the budget, and the curriculum store as its single writer. The TRL
engine's rank 0 builds the same owner (`open_reward_owner`, tasks/training/worker.py); both
engines share one reward and one curriculum implementation.

Steps. Promotions apply once per training step, as in the TRL engine: the trainer tells the
service when a step begins (`begin_step`) and when its rewards are all in (`finish_step`); every
`score` call in between judges against the rung current when it is called and joins that step's
pending judgments; `finish_step` applies them in one store transaction (at most one rung per
instruction, and only where the outcome's rung is still current, so a stale or repeated outcome
never promotes). A call for the held-out split (`split` "validation" / "test") is judged against
every rung of its own ladder and never reads or writes the curriculum.

A judge failure is never a win or a loss: `score` returns it as `judge_failed` 1 with a neutral
score, and the step's metrics count it; what the trainer does with it is the engine's part
(docs/training.md, "The verl engine"). A judge that stops answering (the endpoint's breaker) or a
budget that runs out stops the run: the service records why (`stopped`), the trainer checkpoints
the last finished step and ends, as the TRL engine does.

Resume (`start`): the curriculum goes back to the checkpoint's snapshot and the training log
forgets every later step, or back to its initial state when a killed run left steps but no
checkpoint. The service queues an event for each finished step (`events`), which the verl
driver relays to the train stage.

Under Ray (`start_reward_actor`) the service is one named async actor; `compute_score`
(tasks/training/verl_reward.py) finds it by name from any reward worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.llm.base import EndpointFailingError
from tasks.training.reward import Rollout, RolloutReward, WritingRLReward, finished_step_metrics

ACTOR_NAMESPACE = "writing-rl"
HELD_OUT = ("validation", "test")  # the ladder export's names for the held-out split


def actor_name(stage_run_id: str) -> str:
    """The reward actor's Ray name for one train stage run: two runs never share one."""
    return f"wrl-reward-{stage_run_id}"


@dataclass
class RewardOwner:
    """The run's reward and what it writes through: the judge client behind the response cache,
    its usage meter and budget, and the training log."""

    reward: WritingRLReward
    client: Any  # tasks.llm.cache.CachingClient
    meter: Any  # tasks.llm.cache.UsageMeter
    log: Any  # storage's training log
    budget: Any  # tasks.llm.budget.BudgetMeter | None

    def record_step(self, step: int, judged: list[RolloutReward], metrics: dict[str, float]) -> None:
        self.log.record_step(self.reward.curriculum_id, step, [vars(j) for j in judged], metrics)


def open_reward_owner(spec: Any) -> RewardOwner:
    """The reward of the run a `LaunchSpec` describes (rank 0 of the TRL engine; the verl actor)."""
    from storage import open_storage
    from tasks.llm.budget import BudgetedClient, BudgetMeter
    from tasks.llm.cache import CachingClient, UsageMeter
    from tasks.llm.registry import create_client

    recipe, judge = spec.recipe, spec.judge
    storage = open_storage(recipe.storage)
    meter, budget = UsageMeter(), None
    inner = create_client(recipe, judge.backend, judge.model)
    if spec.budget is not None and recipe.is_paid(judge.backend):  # inside the cache: a hit is free
        budget = BudgetMeter(spec.budget, recipe.prices)
        inner = BudgetedClient(inner, budget)
    client = CachingClient(inner, storage.responses, stage_run_id=spec.stage_run_id, meter=meter)
    reward = WritingRLReward(
        client=client, judge=judge, reward=recipe.reward, curriculum=recipe.curriculum, items=spec.items,
        store=storage.curriculum, curriculum_id=spec.curriculum_id, seed=recipe.training.seed,
        think_format=recipe.policy.strategy == "think-then-write", validation_items=spec.validation_items,
    )  # fmt: skip
    return RewardOwner(reward, client, meter, storage.training, budget)


@dataclass(frozen=True)
class Stop:
    """Why the run must end at `step` before its update: "failed" (the judge stopped answering)
    or "budget" (the judge's budget ran out)."""

    kind: str
    error: str
    step: int


@dataclass(frozen=True)
class FinishedStep:
    judged: list[RolloutReward]
    promotions: list[Any]
    metrics: dict[str, float]


class RewardService:
    """Per-rollout reward calls from many workers, one curriculum update per step."""

    def __init__(
        self,
        reward: WritingRLReward,
        record_step: Callable[[int, list[RolloutReward], dict[str, float]], None] | None = None,
        *,
        budget: Any = None,  # tasks.llm.budget.BudgetMeter, when the run has a budget
        forget_after: Callable[[int], None] | None = None,  # the training log's, for a resume
    ) -> None:
        self.reward = reward
        self.record_step = record_step
        self.budget = budget
        self.forget_after = forget_after
        self.step: int | None = None
        self.stopped: Stop | None = None
        self.resumed_from: int | None = None
        self.events: list[dict[str, Any]] = []

    def start(self, checkpoint_step: int | None) -> dict[str, int]:
        """Where the run starts (`WritingRLReward.resume`, as the TRL engine's rank 0 does)."""
        self.reward.resume(checkpoint_step or None, self.forget_after)
        self.resumed_from = checkpoint_step or None
        return self.reward.current_rungs()

    def begin_step(self, step: int) -> None:
        """Rollouts scored from now on belong to `step` (the trainer's hook, before generation)."""
        self.step = step

    async def score(self, instruction_id: str, text: str, split: str = "train") -> dict[str, float]:
        """One rollout's reward: {"score", "judge_failed" (1.0 or 0.0), "rung" (-1: none)}."""
        if split in HELD_OUT:
            (value,), _ = await self.reward.validate([Rollout(instruction_id, 0, text)])
            return _reply(value, rung=None)
        if self.step is None:
            raise RuntimeError("reward service: score called before begin_step")
        step = self.step
        try:
            (result,) = await self.reward.score(step, [Rollout(instruction_id, 0, text)])
        except EndpointFailingError as exc:  # the endpoint is down: the run stops (not a failure per rollout)
            self.stopped = self.stopped or Stop("failed", f"the judge stopped answering: {exc}", step)
            raise
        if self.budget is not None and self.budget.exhausted is not None:
            self.stopped = self.stopped or Stop("budget", self.budget.exhausted, step)
        return _reply(result.reward, result.rung)

    def finish_step(self, step: int, timing: dict[str, float] | None = None) -> FinishedStep:
        """Apply `step`'s promotions (once all its rewards are in) and record the step, with the
        trainer's `timing` (time/step_s) among its metrics."""
        judged, promotions = self.reward.finish_step(step)
        metrics = finished_step_metrics(judged, promotions, self.reward.current_rungs(), self.reward.topped())
        metrics |= timing or {}
        if self.record_step is not None:
            self.record_step(step, judged, metrics)
        self.events.append({"event": "step", "step": step, "metrics": metrics})
        return FinishedStep(judged, list(promotions), metrics)

    def current_rungs(self) -> dict[str, int]:
        return self.reward.current_rungs()

    def snapshot(self, step: int) -> None:
        """The curriculum as it is after `step`, kept with that step's checkpoint."""
        self.reward.store.snapshot(self.reward.curriculum_id, step)

    def restore(self, step: int) -> dict[str, int]:
        """Back to `step`'s snapshot (a resumed run); the rungs."""
        return self.reward.restore(step)


def _reply(value: float | None, rung: int | None) -> dict[str, float]:
    # A failure's score is neutral and marked; the engine keeps it out of the update (never a loss).
    return {"score": 0.0 if value is None else float(value), "judge_failed": 1.0 if value is None else 0.0,
            "rung": -1.0 if rung is None else float(rung)}  # fmt: skip


class RewardActor:
    """The service as a Ray actor, built from the train stage's launch spec in the actor's process.
    Every method is async, so Ray runs the actor's calls concurrently on one event loop."""

    def __init__(self, spec_path: str) -> None:
        from tasks.training.launch import LaunchSpec

        spec = LaunchSpec.read(Path(spec_path))
        self.stage_run_id = spec.stage_run_id
        self.owner = open_reward_owner(spec)
        curriculum_id = self.owner.reward.curriculum_id
        self.service = RewardService(
            self.owner.reward, self.owner.record_step, budget=self.owner.budget,
            forget_after=lambda step: self.owner.log.forget_after(curriculum_id, step),
        )  # fmt: skip

    async def start(self, checkpoint_step: int | None) -> dict[str, int]:
        return self.service.start(checkpoint_step)

    async def begin_step(self, step: int) -> None:
        self.service.begin_step(step)

    async def score(self, instruction_id: str, text: str, split: str = "train") -> dict[str, float]:
        return await self.service.score(instruction_id, text, split)

    async def finish_step(self, step: int, timing: dict[str, float] | None = None) -> dict[str, float]:
        return self.service.finish_step(step, timing).metrics

    async def record_trainer_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """The trainer's own metrics of `step` (losses, KL, lengths, timings), as the TRL engine keeps
        its trainer's logs."""
        self.owner.log.record_metrics(self.owner.reward.curriculum_id, step, metrics, source="trainer")

    async def stopped(self) -> dict[str, Any] | None:
        stop = self.service.stopped
        return None if stop is None else vars(stop)

    async def events(self, after: int = 0) -> list[dict[str, Any]]:
        """Events queued since the first `after` (each finished step), for the driver to relay."""
        return self.service.events[after:]

    async def resumed_from(self) -> int | None:
        return self.service.resumed_from

    async def current_rungs(self) -> dict[str, int]:
        return self.service.current_rungs()

    async def snapshot(self, step: int) -> None:
        self.service.snapshot(step)

    async def restore(self, step: int) -> dict[str, int]:
        return self.service.restore(step)

    async def usage(self) -> list[dict[str, Any]]:
        return self.owner.meter.rows(self.stage_run_id)

    async def close(self) -> None:
        await self.owner.client.aclose()


def start_reward_actor(spec_path: Path, stage_run_id: str, max_concurrency: int = 1000) -> Any:
    """The run's reward actor (created, or found when it exists), in Ray's current session."""
    import ray

    actor = ray.remote(RewardActor).options(  # type: ignore[attr-defined]
        name=actor_name(stage_run_id), namespace=ACTOR_NAMESPACE, get_if_exists=True,
        max_concurrency=max_concurrency,
    )  # fmt: skip
    return actor.remote(str(spec_path))
