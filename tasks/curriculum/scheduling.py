"""The rules of the reference-scheduling curriculum: which rung a rollout is judged against, and
whether one step's rewards promote an instruction to the next rung.

Pure functions (no storage, no trainer): the trainer calls them and hands the resulting
`StepOutcome`s to `storage.curriculum.CurriculumStore.apply_step`, which enforces the state
invariants (one rung per step, top rung, stale outcomes).

Rewards are the pairwise comparison rewards of one instruction's rollouts in one step, in [0, 1]
with 0.5 a tie: 1 win / 0.5 tie / 0 loss, or under the swap position mode the mean of both orders
(0.75, 0.25, ...). So a **win is a reward > 0.5**, a tie a reward of 0.5, a loss a reward < 0.5.
Pass the comparison reward alone, not a sum with the length/format auxiliary rewards. None (or
NaN) is a judge failure: it is excluded from every rule, never counted as a win or a loss, and an
instruction whose rollouts all failed is not promoted.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Literal, NamedTuple

from configs.schema import CurriculumConfig
from storage.curriculum import StepOutcome

PromotionRule = Literal["any-win", "majority", "mean-threshold"]
TIE = 0.5
_TIE_TOLERANCE = 1e-9  # (1 + 0) / 2 is exactly 0.5, but rewards may arrive through float32
_EXAMPLES = 5


class OutcomeCounts(NamedTuple):
    wins: int
    ties: int
    losses: int
    failures: int


def is_failure(reward: float | None) -> bool:
    return reward is None or math.isnan(reward)


def count_outcomes(rewards: Sequence[float | None]) -> OutcomeCounts:
    wins = ties = losses = failures = 0
    for reward in rewards:
        if is_failure(reward):
            failures += 1
        elif abs(reward - TIE) <= _TIE_TOLERANCE:
            ties += 1
        elif reward > TIE:
            wins += 1
        else:
            losses += 1
    return OutcomeCounts(wins, ties, losses, failures)


def mean_reward(rewards: Sequence[float | None]) -> float | None:
    """Mean over the rollouts the judge scored; None if it scored none."""
    valid = [float(r) for r in rewards if not is_failure(r)]
    return math.fsum(valid) / len(valid) if valid else None


def should_promote(rule: PromotionRule, rewards: Sequence[float | None], threshold: float = 0.5) -> bool:
    """Did this step's rollouts beat the reference? Failures are excluded before every rule.

    any-win: at least one win. majority: wins are more than half of the scored rollouts (a tie is
    not a win). mean-threshold: mean scored reward >= `threshold`.
    """
    counts = count_outcomes(rewards)
    scored = counts.wins + counts.ties + counts.losses
    if scored == 0:
        return False
    if rule == "any-win":
        return counts.wins > 0
    if rule == "majority":
        return 2 * counts.wins > scored
    if rule == "mean-threshold":
        mean = mean_reward(rewards)
        return mean is not None and mean >= threshold
    raise ValueError(f"unknown promotion rule '{rule}'; expected any-win, majority or mean-threshold")


def build_outcome(
    instruction_id: str, rung_judged: int | None, rewards: Sequence[float | None], cfg: CurriculumConfig
) -> StepOutcome:
    """One instruction's step outcome. Only the dynamic schedule asks for promotions; static, staged
    and random record their outcomes and leave the stored rungs alone (the rung each rollout was
    judged against is in the rewards log). Under the random schedule pass
    `rung_judged=None` when the rollouts were judged against different rungs."""
    counts = count_outcomes(rewards)
    promote = cfg.schedule == "dynamic" and should_promote(cfg.promotion, rewards, cfg.threshold)
    return StepOutcome(
        instruction_id=instruction_id,
        rung_judged=rung_judged,
        wins=counts.wins,
        ties=counts.ties,
        losses=counts.losses,
        failures=counts.failures,
        mean_reward=mean_reward(rewards),
        promote=promote,
    )


def sample_key(seed: int, step: int, instruction_id: str, sample_index: int) -> str:
    """The key for `reference_rung` under the random schedule: same inputs, same rung, in any
    process (unlike `hash()`, which is salted per process)."""
    return json.dumps([seed, step, instruction_id, sample_index])


class LadderShape(NamedTuple):
    """What the schedules need to know of one instruction's ladder (tasks/curation/ordering.py)."""

    n_rungs: int
    policy_rung: int = 0  # the rung holding the policy's own response
    generators: tuple[str, ...] = ()  # each rung's generator, bottom first (static_generator)


def reference_rung(
    cfg: CurriculumConfig,
    current_rung: int,
    ladder: LadderShape | int,
    *,
    step: int | None = None,
    key: str | bytes | int | None = None,
    instruction_id: str | None = None,
) -> int:
    """The rung a rollout is judged against. `ladder` is the instruction's `LadderShape` (or its
    number of rungs, for a ladder whose policy response is rung 0 and generators do not matter).

    dynamic: the instruction's current rung. static: the policy's own response ("self", wherever it
    sits), the top rung ("best"), a fixed rung i, or the rung of `static_generator` (validate them
    at setup with `validate_static_rung`; here a missing one raises). staged: rung k at training
    `step` once k of `stage_steps` are <= step, capped at the top rung. random: a rung drawn
    uniformly from the ladder's references (every rung but the policy's; the policy's own if it is
    the only one), determined by `key` (a string, bytes or int, e.g. `sample_key(...)`) so a resumed
    run judges the same rollout against the same rung.
    """
    shape = ladder if isinstance(ladder, LadderShape) else LadderShape(ladder)
    n_rungs = shape.n_rungs
    where = f" of instruction '{instruction_id}'" if instruction_id is not None else ""
    if n_rungs < 1:
        raise ValueError(f"the ladder{where} has {n_rungs} rungs; it needs at least the policy's own")
    if cfg.schedule == "dynamic":
        if not 0 <= current_rung < n_rungs:
            raise ValueError(f"current rung {current_rung}{where} is outside its ladder 0..{n_rungs - 1}")
        return current_rung
    if cfg.schedule == "static":
        rung = _static_rung(cfg, shape)
        if rung is None:
            raise ValueError(f"{_static_setting(cfg)} is not in the ladder{where} (rungs 0..{n_rungs - 1})")
        return rung
    if cfg.schedule == "staged":
        if step is None:
            raise ValueError("the staged schedule needs the training step")
        return min(sum(1 for boundary in cfg.stage_steps if boundary <= step), n_rungs - 1)
    if cfg.schedule == "random":
        if key is None:
            raise ValueError("the random schedule needs a key (see sample_key) to draw a rung reproducibly")
        if n_rungs == 1:
            return 0
        draw = _draw(key) % (n_rungs - 1)  # over the references: skip the policy's own rung
        return draw + 1 if draw >= shape.policy_rung else draw
    raise ValueError(f"unknown curriculum schedule '{cfg.schedule}'")


def substitute_retired(
    instruction_ids: Sequence[str],
    retired: Collection[str],
    all_ids: Collection[str],
    *,
    seed: int,
    step: int,
) -> list[str]:
    """curriculum.top 'retire': the instructions a generation batch trains on, each retired one
    replaced by an instruction still in play. The draw is keyed by (seed, step, retired id), so
    every copy of a group, on every rank, gets the same replacement, and a resumed run the same
    one. With nothing left in play the batch is unchanged (its instructions are judged as under
    'stay')."""
    active = sorted(set(all_ids) - set(retired))
    if not active:
        return list(instruction_ids)
    return [
        active[_draw(json.dumps(["retire", seed, step, iid])) % len(active)] if iid in retired else iid
        for iid in instruction_ids
    ]


def validate_static_rung(cfg: CurriculumConfig, ladders: Mapping[str, LadderShape | int]) -> None:
    """Before training: a fixed static rung, or `static_generator`'s reference, must exist in every
    instruction's ladder."""
    if cfg.schedule != "static":
        return
    shapes = {iid: s if isinstance(s, LadderShape) else LadderShape(s) for iid, s in ladders.items()}
    bad = sorted(iid for iid, shape in shapes.items() if _static_rung(cfg, shape) is None)
    if bad:
        examples = ", ".join(f"'{iid}' ({shapes[iid].n_rungs} rungs)" for iid in bad[:_EXAMPLES])
        more = f" and {len(bad) - _EXAMPLES} more" if len(bad) > _EXAMPLES else ""
        hint = (
            "Its response was left out of those ladders (failed, unscored, or dropped below the policy); "
            "see the ladder_exclusions table."
            if cfg.static_generator is not None
            else "Rungs count from 0 (the lowest); use static_rung: best for each ladder's top rung."
        )
        raise ValueError(
            f"{_static_setting(cfg)} is not in the ladders of {len(bad)} of {len(shapes)} instructions: "
            f"{examples}{more}. {hint}"
        )


def _draw(key: str | bytes | int) -> int:
    """64 uniform bits from the key (sha256; modulo bias over a few rungs is ~1e-18)."""
    if isinstance(key, int):
        key = str(key)
    if isinstance(key, str):
        key = key.encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big")


def _static_setting(cfg: CurriculumConfig) -> str:
    if cfg.static_generator is not None:
        return f"curriculum.static_generator='{cfg.static_generator}'"
    return f"curriculum.static_rung={cfg.static_rung}"


def _static_rung(cfg: CurriculumConfig, shape: LadderShape) -> int | None:
    """The static rung in this ladder; None if the fixed rung or the generator is not in it."""
    if cfg.static_generator is not None:
        found = [i for i, name in enumerate(shape.generators) if name == cfg.static_generator]
        return found[0] if found else None
    setting = cfg.static_rung
    if setting == "self":
        return shape.policy_rung
    if setting == "best":
        return shape.n_rungs - 1
    return setting if 0 <= setting < shape.n_rungs else None
