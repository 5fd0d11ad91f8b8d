"""The Writing-RL reward for one training step, and the curriculum update that follows it.

Independent of TRL: `WritingRLReward.score(step, rollouts)` judges a step's rollouts (in one call
or many concurrent ones) and `finish_step(step)` applies that step's promotions. In a training job
one object holds it: rank 0 under TRL (tasks/training/rank_reward.py adapts it to TRL's calling
convention across ranks), the reward actor under verl (tasks/training/reward_service.py, which
verl's `compute_score` calls once per rollout).

Keeping the reward in step with the curriculum (TRL builds its dataloader once, so the reference
cannot travel in the dataset):
- the dataset carries only the instruction id; `score` looks up each instruction's current rung
  when it is called, right after the step's rollouts were generated. It reads an in-memory copy
  of the rungs (`current_rungs`): loaded from the curriculum store on first use (or set by
  `restore` when a run resumes) and kept in step with the promotions `finish_step` writes, so a
  step costs one store transaction, not a read as well;
- the state changes only in `finish_step`, called from the trainer callback's `on_step_end`, after
  every reward call of that step has returned; so every rollout of step s is judged against the
  rung that was current when step s's batch was generated;
- each outcome carries the rung it was judged against, and the store promotes only when that is
  still the current rung: a late or repeated outcome can never move an instruction twice.

The top of the ladder (`curriculum.top`). An instruction whose rollouts beat its top rung is
recorded by the store (`topped_step`). Under `stay` (the paper) nothing else changes. Under
`group` each of its later rollouts is judged against the next rollout of the same group in the
same reward call (a pairwise GRPO, as BRPO in Writing-Zero): `rung` None, and its outcome never
asks for a promotion. An instruction with a single rollout in the call falls back to its top
rung. Under `retire` the trainer stops sampling it (`tasks.curriculum.substitute_retired`, at
generation time); should one still come here (every instruction retired), it is judged as under
`stay`.

Validation (`validate`) judges rollouts of the held-out ladders against every rung of their own
ladder. It reads only those ladders and the judge: never the curriculum store, the rungs or the
step's pending judgments, so validation cannot move or count toward any rung.

One reward number per rollout: the judge reward (pairwise 1 / 0.5 / 0, or pointwise s_j / 10),
combined with the weighted auxiliary rewards. A judge failure is None: TRL gives that rollout no
advantage, the failure is counted, and it never becomes a win or a loss; auxiliaries never turn a
failure into a score.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from configs.schema import CurriculumConfig, JudgeConfig, RewardConfig
from storage.curriculum import CurriculumStore, StepOutcome, reaches_top
from tasks.curriculum import build_outcome, reference_rung, sample_key
from tasks.instructions import Instruction
from tasks.judging import HOLISTIC, score_response
from tasks.llm.base import LLMClient, gather_or_stop
from tasks.rewards.auxiliary import auxiliary_rewards, combine
from tasks.rewards.pairwise import judge_pair
from tasks.text import split_think
from tasks.training.data import TrainingItem
from tasks.training.report import RUNG_COUNT_PREFIX, TOPPED_METRIC


@dataclass(frozen=True)
class Rollout:
    instruction_id: str
    sample_index: int  # position in the step's batch
    text: str


@dataclass
class RolloutReward:
    """One rollout's judgment: what was compared, the verdict, and every reward component."""

    step: int
    instruction_id: str
    sample_index: int
    rung: int | None  # None: judged against another rollout of its group (curriculum.top: group)
    reward: float | None  # what the trainer gets; None = judge failure (excluded)
    judge_reward: float | None
    verdict: str | None  # win / tie / loss (pairwise); "score" (pointwise); None on failure
    rationale: str | None
    error: str | None
    components: dict[str, float | None] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    llm_calls: int = 0
    completion_chars: int = 0


class WritingRLReward:
    """Judges rollouts against each instruction's current reference and keeps the curriculum."""

    def __init__(
        self,
        *,
        client: LLMClient,
        judge: JudgeConfig,
        reward: RewardConfig,
        curriculum: CurriculumConfig,
        items: dict[str, TrainingItem],
        store: CurriculumStore,
        curriculum_id: str,
        seed: int = 0,
        think_format: bool = False,
        validation_items: dict[str, TrainingItem] | None = None,
    ) -> None:
        self.client, self.judge, self.reward_cfg, self.curriculum = client, judge, reward, curriculum
        self.items, self.store, self.curriculum_id = items, store, curriculum_id
        self.validation_items = validation_items or {}
        self.seed, self.think_format = seed, think_format
        self._pending: dict[int, list[RolloutReward]] = defaultdict(list)
        self._numbered: dict[int, int] = defaultdict(int)  # rollouts numbered so far, per step
        self._lock = threading.Lock()
        # The curriculum's rungs, read from the store once (after any restore) and then kept in step
        # with the promotions this object applies: one training process owns its curriculum, so a
        # step costs one transaction, not a read and a transaction (docs/benchmarks.md).
        self._rungs: dict[str, int] | None = None
        self._topped: dict[str, int] | None = None  # instruction -> the step it beat its top rung

    # -- judging ------------------------------------------------------------------------------

    async def score(self, step: int, rollouts: Sequence[Rollout]) -> list[RolloutReward]:
        """Judge every rollout of `step` concurrently, against the rung current right now."""
        state = self.current_rungs({r.instruction_id for r in rollouts})
        with self._lock:  # several reward calls in one step (gradient accumulation, or verl's
            base = self._numbered[step]  # concurrent per-rollout calls): each numbers on from the last
            self._numbered[step] += len(rollouts)
        forget = getattr(self.client, "forget_prefixes", None)
        if base == 0 and forget is not None:
            # An in-process judge's probe on a prefix stored by an earlier step sums its floats in
            # another order than one computed afresh (~1e-7): a resumed process, whose store starts
            # empty, would judge the redone steps a hair differently and end with other weights
            # (the 2-rank kill drill found it). Each step's values depend on its own batch alone.
            forget()
        rollouts = [Rollout(r.instruction_id, base + i, r.text) for i, r in enumerate(rollouts)]
        siblings = self._group_siblings(rollouts)
        results = await gather_or_stop(
            self._score_one(step, r, state, siblings.get(r.sample_index)) for r in rollouts
        )
        with self._lock:
            self._pending[step].extend(results)
        return list(results)

    def current_rungs(self, instruction_ids: Iterable[str] | None = None) -> dict[str, int]:
        """Instruction -> current rung: every instruction's, or those of `instruction_ids`."""
        with self._lock:
            if self._rungs is None:
                self._rungs = self.store.state(self.curriculum_id)
            if instruction_ids is None:
                return dict(self._rungs)
            return {iid: self._rungs[iid] for iid in instruction_ids}

    def topped(self) -> dict[str, int]:
        """Instruction -> the step its rollouts first beat its top rung (read once, then kept in
        step with `finish_step`, as the rungs are)."""
        with self._lock:
            if self._topped is None:
                self._topped = self.store.topped(self.curriculum_id)
            return dict(self._topped)

    def restore(self, step: int) -> dict[str, int]:
        """Put the curriculum back to checkpoint `step` (store and in-memory rungs alike)."""
        state = self.store.restore(self.curriculum_id, step)
        topped = self.store.topped(self.curriculum_id)
        with self._lock:
            self._rungs, self._topped = dict(state), topped
        return state

    def resume(self, checkpoint_step: int | None, forget_after: Callable[[int], None] | None = None) -> None:
        """Where a run starts, for either engine: `checkpoint_step`'s snapshot when resuming, the
        initial state when a killed run left steps but no checkpoint. `forget_after` takes the
        later steps out of the training log: they are trained and judged again (the judge's
        answers come back from the response cache)."""
        if checkpoint_step is not None:
            start = checkpoint_step
        elif self.store.last_step(self.curriculum_id) is not None:
            start = 0
        else:
            return
        self.restore(start)
        if forget_after is not None:
            forget_after(start)

    def _group_siblings(self, rollouts: Sequence[Rollout]) -> dict[int, Rollout]:
        """curriculum.top 'group': sample index -> the rollout it is judged against (the next of its
        instruction's rollouts in this call, cyclically), for instructions past their top rung."""
        if self.curriculum.top != "group":
            return {}
        topped = self.topped()
        groups: dict[str, list[Rollout]] = defaultdict(list)
        for r in rollouts:
            if r.instruction_id in topped:
                groups[r.instruction_id].append(r)
        return {
            r.sample_index: group[(k + 1) % len(group)]
            for group in groups.values() if len(group) > 1
            for k, r in enumerate(group)
        }  # fmt: skip

    def _rung_for(self, step: int, rollout: Rollout, state: dict[str, int]) -> int:
        item = self.items[rollout.instruction_id]
        key = sample_key(self.seed, step, rollout.instruction_id, rollout.sample_index)
        return reference_rung(self.curriculum, state[rollout.instruction_id], item.shape, step=step, key=key,
                              instruction_id=rollout.instruction_id)  # fmt: skip

    async def _score_one(
        self, step: int, rollout: Rollout, state: dict[str, int], sibling: Rollout | None = None
    ) -> RolloutReward:
        item = self.items[rollout.instruction_id]
        rung = None if sibling is not None else self._rung_for(step, rollout, state)
        reference = item.rungs[rung].text if rung is not None else self._visible(sibling.text)  # type: ignore[union-attr]
        # think-then-write: the judge compares the visible answer, as readers (and the references'
        # generation) see it; the think block only counts through the format reward.
        answer = self._visible(rollout.text)
        started = time.perf_counter()
        result = RolloutReward(
            step=step, instruction_id=rollout.instruction_id, sample_index=rollout.sample_index, rung=rung,
            reward=None, judge_reward=None, verdict=None, rationale=None, error=None,
            completion_chars=len(rollout.text),
        )  # fmt: skip
        if self.reward_cfg.kind == "pairwise":
            judgment = await judge_pair(
                self.client, self.judge, self.reward_cfg, instruction=item.prompt, criteria=item.criteria,
                policy_response=answer, reference=reference,
            )  # fmt: skip
            result.judge_reward, result.verdict = judgment.reward, judgment.outcome
            result.rationale, result.error = judgment.rationale or _probabilities(judgment), judgment.error
            result.input_tokens, result.output_tokens = judgment.input_tokens, judgment.output_tokens
            result.llm_calls = judgment.llm_calls
        else:  # pointwise ablation: s_j / 10 (the reference is not used)
            instruction = Instruction(id=item.instruction_id, prompt=item.prompt, source="ladders",
                                      criteria=item.criteria, required_length=item.required_length)  # fmt: skip
            scored = await score_response(self.client, self.judge, instruction, answer, item.criteria
                                          or (HOLISTIC,))  # fmt: skip
            result.judge_reward = None if scored.score is None else scored.score / 10.0
            result.verdict = None if scored.score is None else "score"
            result.error = scored.error
            calls = scored.llm_calls  # json mode's completions; logprob probes have none
            result.llm_calls = max(len(calls), len(scored.criteria))
            result.input_tokens = sum(c.usage.input_tokens for c in calls)
            result.output_tokens = sum(c.usage.output_tokens for c in calls)
        result.components = auxiliary_rewards(
            rollout.text, required_length=item.required_length, think_format=self.think_format,
            length_weight=self.reward_cfg.length_weight, format_weight=self.reward_cfg.format_weight,
        )  # fmt: skip
        weights = {"length": self.reward_cfg.length_weight, "format": self.reward_cfg.format_weight}
        result.reward = combine(result.judge_reward, result.components, weights)
        result.latency_s = time.perf_counter() - started
        return result

    def _visible(self, text: str) -> str:
        return split_think(text).visible if self.think_format else text

    # -- validation: the held-out ladders, never the curriculum -----------------------------------

    async def validate(self, rollouts: Sequence[Rollout]) -> tuple[list[float | None], dict[str, float]]:
        """Judge each held-out rollout against every rung of its ladder (pairwise, `reward.position`).
        Returns each rollout's mean reward over the rungs judged (None if every judgment failed) and
        the metrics: `validation/reward` (over every judged pair), `validation/reward_vs_initial`
        (against the policy's own initial response), `validation/reward_vs_top` (against the top
        rung) and `validation/failures` (failed judgments)."""
        pairs = []
        for rollout in rollouts:
            item = self.validation_items.get(rollout.instruction_id)
            if item is None:
                raise ValueError(f"validation: '{rollout.instruction_id}' is not a held-out ladder")
            answer = self._visible(rollout.text)
            pairs += [(rollout, item, rung, answer) for rung in range(item.n_rungs)]
        judgments = await gather_or_stop(
            judge_pair(self.client, self.judge, self.reward_cfg, instruction=item.prompt, criteria=item.criteria,
                       policy_response=answer, reference=item.rungs[rung].text)
            for _, item, rung, answer in pairs
        )  # fmt: skip
        by_rollout: dict[int, list[float]] = defaultdict(list)
        initial, top, failures = [], [], 0
        for (rollout, item, rung, _), judgment in zip(pairs, judgments, strict=True):
            if judgment.reward is None:
                failures += 1
                continue
            by_rollout[rollout.sample_index].append(judgment.reward)
            if rung == item.policy_rung:
                initial.append(judgment.reward)
            if rung == item.n_rungs - 1:
                top.append(judgment.reward)
        rewards = [
            statistics.fmean(by_rollout[r.sample_index]) if by_rollout[r.sample_index] else None
            for r in rollouts
        ]
        judged = [reward for values in by_rollout.values() for reward in values]
        metrics = {"validation/failures": float(failures)}
        for name, values in (("reward", judged), ("reward_vs_initial", initial), ("reward_vs_top", top)):
            if values:
                metrics[f"validation/{name}"] = statistics.fmean(values)
        return rewards, metrics

    # -- the step's curriculum update ------------------------------------------------------------

    def step_outcomes(self, step: int) -> list[StepOutcome]:
        """Per instruction judged in `step`: its outcome counts and whether it is promoted (the
        rung is None when its rollouts were judged against different rungs: random schedule)."""
        with self._lock:
            results = list(self._pending.get(step, ()))
        rewards: dict[str, list[float | None]] = defaultdict(list)
        rungs: dict[str, set[int]] = defaultdict(set)
        for r in results:
            rewards[r.instruction_id].append(r.judge_reward)
            rungs[r.instruction_id].add(r.rung)
        outcomes = [
            build_outcome(iid, next(iter(rungs[iid])) if len(rungs[iid]) == 1 else None, rewards[iid],
                          self.curriculum)
            for iid in sorted(rewards)
        ]  # fmt: skip
        # Judged within its group: no rung was beaten, so nothing to promote (or to top again).
        return [replace(o, promote=False) if None in rungs[o.instruction_id] else o for o in outcomes]

    def finish_step(self, step: int) -> tuple[list[RolloutReward], Any]:
        """Apply `step`'s promotions in one transaction; returns the step's judgments and the
        promotions. Called once per optimisation step, after all of its reward calls."""
        outcomes = self.step_outcomes(step)
        topped = self.topped()
        rungs = self.current_rungs({o.instruction_id for o in outcomes})
        promotions = self.store.apply_step(self.curriculum_id, step, outcomes)
        # The store's own rule, applied to the in-memory copy, so the step stays one transaction.
        topped_now = {
            o.instruction_id: step for o in outcomes
            if reaches_top(o, rungs[o.instruction_id], self.items[o.instruction_id].n_rungs, o.instruction_id in topped)
        }  # fmt: skip
        with self._lock:
            if self._topped is not None:
                self._topped.update(topped_now)
            if self._rungs is not None:
                self._rungs.update({p.instruction_id: p.rung_after for p in promotions})
            judged = self._pending.pop(step, [])
            self._numbered.pop(step, None)
            # Anything older was never finished (a step that produced no optimiser update): drop it.
            for stale in [s for s in {*self._pending, *self._numbered} if s < step]:
                self._pending.pop(stale, None)
                self._numbered.pop(stale, None)
        return judged, promotions


def _probabilities(judgment: Any) -> str | None:
    """A logprob verdict's record: the A/B/C probabilities of each order, policy position named."""
    parts = [
        f"policy as {o.policy_position}: "
        + " ".join(f"P({k})={v:.3f}" for k, v in sorted(o.probabilities.items()))
        for o in judgment.orders
        if o.probabilities
    ]
    return "; ".join(parts) or None


def _mean_or_none(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def step_metrics(results: Sequence[RolloutReward]) -> dict[str, float | None]:
    """The reward-side metrics of one step (rates over judged rollouts; failures over all)."""
    n = len(results)
    if n == 0:
        return {}
    rewards = [r.reward for r in results if r.reward is not None]
    judged = [r for r in results if r.judge_reward is not None]
    metrics: dict[str, float | None] = {
        "reward/mean": statistics.fmean(rewards) if rewards else None,  # None never reaches here
        "reward/std": statistics.pstdev(rewards) if len(rewards) > 1 else (0.0 if rewards else None),
        "judge/failures": float(sum(r.judge_reward is None for r in results)),
        "judge/failure_rate": sum(r.judge_reward is None for r in results) / n,
        # The rung these rollouts were judged against (the step's batch only; the curriculum as a
        # whole is `curriculum/mean_rung`, added by the trainer's callback).
        "curriculum/judged_rung": _mean_or_none([r.rung for r in results if r.rung is not None]),
        "completion/mean_chars": statistics.fmean(r.completion_chars for r in results),
    }
    if judged and any(r.verdict in ("win", "tie", "loss") for r in judged):
        for verdict in ("win", "tie", "loss"):
            metrics[f"judge/{verdict}_rate"] = sum(r.verdict == verdict for r in judged) / len(judged)
    for name in sorted({k for r in results for k in r.components}):
        values = [r.components[name] for r in results if r.components.get(name) is not None]
        metrics[f"reward/{name}"] = statistics.fmean(values) if values else None
    return metrics


def curriculum_metrics(rungs: dict[str, int], topped: dict[str, int] | None = None) -> dict[str, float]:
    """Where the whole curriculum stands: the mean rung over ALL instructions, how many sit on
    each rung (a step judges only its batch's instructions; this is every instruction's rung) and
    how many have beaten their top rung so far."""
    if not rungs:
        return {}
    counts = Counter(rungs.values())
    metrics = {"curriculum/mean_rung": statistics.fmean(rungs.values()),
               TOPPED_METRIC: float(len(topped or {}))}  # fmt: skip
    metrics |= {f"{RUNG_COUNT_PREFIX}{rung}": float(counts.get(rung, 0)) for rung in range(max(counts) + 1)}
    return metrics


def finished_step_metrics(
    judged: Sequence[RolloutReward], promotions: Sequence[Any], rungs: dict[str, int], topped: dict[str, int]
) -> dict[str, float]:
    """What a finished step records, whichever engine ran it: its judgments' metrics, its promotions
    and where the whole curriculum stands after them."""
    metrics = {k: v for k, v in step_metrics(judged).items() if v is not None}
    metrics["curriculum/promotions"] = float(len(promotions))
    return metrics | curriculum_metrics(rungs, topped)
