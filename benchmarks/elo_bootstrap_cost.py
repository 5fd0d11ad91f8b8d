"""What Creative Writing v3's Elo (`creative_writing_v3_elo`) costs the evaluate stage's CPU.

The Elo's headline is a sequential TrueSkill solve, and the bootstrap interval re-solves it on
every resample: 1,000 solves per candidate by default, twice that for a paired difference. This
times one aggregate (two solves: the rating and the interval's sigma) and one bootstrap interval
on synthetic matches of the leaderboard's size: 25 prompts x 3 iterations, the candidate against
3 opponents (the two anchors and one more) and the opponents' own matches, plus counts drawn at
random (seed 0). Random matches make a meaningless Elo; only the time is the point.

    .venv/bin/python benchmarks/elo_bootstrap_cost.py
    .venv/bin/python benchmarks/elo_bootstrap_cost.py --resamples 100
"""

from __future__ import annotations

import random
import sys
import time

from configs.schema import BootstrapConfig
from tasks.evaluation import creative_writing_elo as elo
from tasks.evaluation.base import BenchItem, ItemScore
from tasks.evaluation.bootstrap import score_interval
from tasks.evaluation.registry import SUITES


def synthetic(
    prompts: int = 25, iterations: int = 3, seed: int = 0
) -> tuple[list[BenchItem], list[ItemScore]]:
    rng = random.Random(seed)
    opponents = [*elo.ANCHORS, "other/model"]

    def plus() -> tuple[int, int]:
        return rng.randint(-5, 30), rng.randint(-5, 30)

    items, scores = [], []
    for p in range(prompts):
        for it in range(iterations):
            items.append(BenchItem(f"cw3-{p}-i{it}", "x", {}, {"prompt_id": str(p), "anchors": elo.ANCHORS}))
            matches = [elo.Match(elo.CANDIDATE, o, plus(), plus()) for o in opponents]
            matches += [
                elo.Match(a, b, plus(), plus()) for i, a in enumerate(opponents) for b in opponents[i + 1 :]
            ]
            scores.append(ItemScore(50.0, details={"matches": [m.as_json() for m in matches]}))
    return items, scores


def main(argv: list[str]) -> None:
    resamples = int(argv[argv.index("--resamples") + 1]) if "--resamples" in argv else 1000
    suite = SUITES["creative_writing_v3_elo"]
    items, scores = synthetic()
    started = time.perf_counter()
    suite.aggregate(items, scores)
    aggregate_s = time.perf_counter() - started
    started = time.perf_counter()
    score_interval(suite, items, scores, BootstrapConfig(resamples=resamples))
    bootstrap_s = time.perf_counter() - started
    print(f"{len(items)} items, 3 opponents: one aggregate {aggregate_s:.2f} s; "
          f"bootstrap of {resamples} resamples {bootstrap_s:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
