"""Position modes against a judge with a known truth: reward accuracy and judge calls per comparison.

A simulated judge (tests/support/simulated_judge.py) answers over HTTP from the fault server: each
policy response and reference has a hidden quality, and the judge's verdict is the quality
difference plus a position bias (towards the first response), a length bias (towards the longer)
and noise. The truth of a comparison is whether the policy's hidden quality is higher. Each mode
judges the same pairs through the real pairwise reward (`judge_pair`), the real OpenAI client and
the backend registry, with no response cache, so every call is counted.

- accuracy: mean of 1 - |reward - truth| (truth 1 or 0; a tie is half right);
- signed error: mean of reward - truth (> 0: the mode flatters the policy; < 0: it is too harsh);
- rank correlation: Spearman's between the reward and the true quality margin (q_policy -
  q_reference): how well the reward orders a group's rollouts, which is what GRPO's advantages use;
- calls: judge requests per comparison (the server's count), and as a share of swap's.

    .venv/bin/python benchmarks/judge_debiasing.py                 # 400 pairs per setting
    .venv/bin/python benchmarks/judge_debiasing.py --pairs 1000 --seed 1
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs.schema import JudgeConfig, Recipe, RewardConfig
from tasks.llm.limits import reset_limits
from tasks.llm.registry import create_client
from tasks.rewards.pairwise import judge_pair
from tests.support.fault_server import FaultServer
from tests.support.simulated_judge import SimulatedJudge

MODES = ("position-disadvantage", "position-advantage", "swap", "recheck")
SETTINGS = [(0.0, 0.0), (0.25, 0.0), (0.5, 0.0), (1.0, 0.0), (0.0, 0.3), (0.5, 0.3)]  # (position, length)
POLICY_EDGES = (-1.0, 0.0, 1.0)  # the policy's mean quality over the references' (recheck's calls)


@dataclass(frozen=True)
class Pair:
    instruction: str
    policy: str
    reference: str
    truth: float  # 1.0 if the policy's hidden quality is higher, else 0.0
    margin: float  # q_policy - q_reference


def make_pairs(judge: SimulatedJudge, n: int, edge: float, rng: random.Random) -> list[Pair]:
    """`n` comparisons; qualities ~ N(0, 1) for references and N(edge, 1) for the policy; lengths
    (80-400 words) independent of quality, so any length preference is pure bias."""
    pairs = []
    for i in range(n):
        q_policy, q_reference = rng.gauss(edge, 1.0), rng.gauss(0.0, 1.0)
        policy = judge.add(f"[policy {i}] " + "word " * rng.randint(80, 400), q_policy)
        reference = judge.add(f"[reference {i}] " + "word " * rng.randint(80, 400), q_reference)
        pairs.append(
            Pair(
                f"Write essay {i}.", policy, reference, float(q_policy > q_reference), q_policy - q_reference
            )
        )
    return pairs


def spearman(x: list, y: list) -> float:
    """Spearman's rho: Pearson's on average ranks (ties share a rank)."""
    return float(pd.Series(x).rank().corr(pd.Series(y).rank()))


async def judge_all(base_url: str, pairs: list[Pair], mode: str) -> list[float | None]:
    reset_limits()
    recipe = Recipe.model_validate({
        "name": "debias",
        "backends": {"judge": {"kind": "openai-compatible", "base_url": base_url, "max_concurrency": 32}},
        "generators": [{"name": "policy", "role": "policy", "backend": "judge", "model": "judge"}],
    })  # fmt: skip
    client = create_client(recipe, "judge", "judge")
    judge = JudgeConfig(backend="judge", model="judge", mode="json")
    reward = RewardConfig(position=mode)
    try:
        results = await asyncio.gather(*(
            judge_pair(client, judge, reward, instruction=p.instruction, policy_response=p.policy,
                       reference=p.reference)
            for p in pairs
        ))  # fmt: skip
    finally:
        await client.aclose()
    return [r.reward for r in results]


def measure(
    position_bias: float, length_bias: float, edge: float, n: int, seed: int
) -> tuple[dict[str, dict[str, float]], float]:
    """Each mode's accuracy, signed error and calls on the same `n` pairs; and the true win rate."""
    judge = SimulatedJudge(position_bias=position_bias, length_bias=length_bias)
    pairs = make_pairs(judge, n, edge, random.Random(seed))
    rows = {}
    with FaultServer([], reply_text=judge.reply_text) as server:
        for mode in MODES:
            before = len(server.requests)
            rewards = asyncio.run(judge_all(server.openai_base_url, pairs, mode))
            if any(r is None for r in rewards):
                raise SystemExit(f"{mode}: {sum(r is None for r in rewards)} judgments failed")
            errors = [r - p.truth for r, p in zip(rewards, pairs, strict=True)]  # type: ignore[operator]
            rows[mode] = {
                "accuracy": 1 - sum(abs(e) for e in errors) / n,
                "signed": sum(errors) / n,
                "rank": spearman(rewards, [p.margin for p in pairs]),
                "calls": (len(server.requests) - before) / n,
            }
    for row in rows.values():
        row["of_swap"] = row["calls"] / rows["swap"]["calls"]
    return rows, sum(p.truth for p in pairs) / n


def main(
    pairs: Annotated[int, typer.Option(help="Comparisons per setting.")] = 400,
    seed: int = 0,
) -> None:
    started = time.perf_counter()
    print(
        "| position bias | length bias | mode | accuracy | signed error | rank correlation | calls / comparison | of swap's calls |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for position_bias, length_bias in SETTINGS:
        rows, _ = measure(position_bias, length_bias, 0.0, pairs, seed)
        for mode, r in rows.items():
            print(f"| {position_bias} | {length_bias} | {mode} | {r['accuracy']:.3f} | {r['signed']:+.3f} | "
                  f"{r['rank']:.3f} | {r['calls']:.2f} | {r['of_swap']:.0%} |")  # fmt: skip
    print()
    print(
        "| policy's edge (sd) | true win rate | swap accuracy | recheck accuracy | recheck calls | of swap's calls |"
    )
    print("|---|---|---|---|---|---|")
    for edge in POLICY_EDGES:
        rows, truth = measure(0.5, 0.0, edge, pairs, seed)
        print(f"| {edge:+.1f} | {truth:.2f} | {rows['swap']['accuracy']:.3f} | {rows['recheck']['accuracy']:.3f} | "
              f"{rows['recheck']['calls']:.2f} | {rows['recheck']['of_swap']:.0%} |")  # fmt: skip
    print(
        f"\n{pairs} pairs per setting, seed {seed}, judge noise sd 0.25, tie band 0.05; "
        f"{time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    typer.run(main)
