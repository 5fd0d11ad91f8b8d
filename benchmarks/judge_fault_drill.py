"""Judge fault drill: 30% of judge requests fail, and no failure becomes a reward or a score.

A local OpenAI-compatible server (tests/support/fault_server.py) answers as a judge: the pairwise
verdict ([[A]] / [[B]] / [[C]]) or the pointwise score (1-10) is a function of the judging prompt
(its first user message), so every retry and re-ask of one judgment gets the same answer. The
drill judges N pairs with the real pairwise reward (`judge_pair`, position disadvantage) and scores
N responses with the real pointwise judge (`score_response`, json mode), through the real OpenAI
client and backend registry, twice: once with no faults (the expected results), once with a fault
on each request with probability P, drawn from 429 (Retry-After), 500, 503, a hang past the
client's timeout, a reset connection, truncated / malformed / HTML bodies, and well-formed replies
with no verdict or no score. Each judgment must then be its fault-free value or a recorded
failure (None): a mismatch is a fault that became a reward or a score, and exits 1.

    .venv/bin/python benchmarks/judge_fault_drill.py                  # 200 pairs + 200 scores, 30%
    .venv/bin/python benchmarks/judge_fault_drill.py --n 500 --p 0.5
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import random
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs.schema import JudgeConfig, Recipe, RewardConfig
from tasks.instructions.schema import Instruction
from tasks.judging.pointwise import HOLISTIC, score_response
from tasks.llm.limits import reset_limits
from tasks.llm.registry import create_client
from tasks.rewards.pairwise import judge_pair
from tests.support.fault_server import Fault, FaultServer

FAULTS = [
    Fault("429", retry_after=0.05),
    Fault("500"),
    Fault("503"),
    Fault("hang", hang_s=3.0),  # the client times out after 1 s
    Fault("reset"),
    Fault("truncated"),
    Fault("malformed"),
    Fault("garbage"),
    Fault("text", message="Both are strong; on balance I prefer the first one."),  # no verdict
    Fault("text", message='{"verdict": "A", "score": "high"}'),  # neither a verdict nor a score
]


def _digest(body: dict[str, Any]) -> int:
    first_user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    return int(hashlib.sha256(json.dumps(first_user).encode()).hexdigest()[:8], 16)


def pairwise_reply(body: dict[str, Any]) -> str:
    return f"Response quality compared on the criteria.\n[[{'ABC'[_digest(body) % 3]}]]"


def pointwise_reply(body: dict[str, Any]) -> str:
    return json.dumps({"score": _digest(body) % 10 + 1, "reason": "Judged on the criterion."})


def _client(base_url: str):
    recipe = Recipe.model_validate({
        "name": "drill",
        "backends": {"judge": {"kind": "openai-compatible", "base_url": base_url, "max_concurrency": 16,
                               "max_retries": 3, "timeout_s": 1.0, "max_consecutive_failures": 50}},
        "generators": [{"name": "policy", "role": "policy", "backend": "judge", "model": "judge"}],
    })  # fmt: skip
    return create_client(recipe, "judge", "judge")


async def _judge_all(kind: str, base_url: str, n: int) -> list[float | None]:
    reset_limits()  # a fresh breaker and limiter per run
    client = _client(base_url)
    judge = JudgeConfig(backend="judge", model="judge", mode="json", max_parse_retries=2)
    try:
        if kind == "pairwise":
            reward = RewardConfig(position="position-disadvantage")
            results = await asyncio.gather(*(
                judge_pair(client, judge, reward, instruction=f"Write essay {i}.",
                           policy_response=f"Policy essay {i}.", reference=f"Reference essay {i}.")
                for i in range(n)
            ))  # fmt: skip
            return [r.reward for r in results]
        results = await asyncio.gather(*(
            score_response(client, judge, Instruction(id=f"i{i}", prompt=f"Write essay {i}.", source="drill"),
                           f"Essay {i}.", (HOLISTIC,))
            for i in range(n)
        ))  # fmt: skip
        return [r.score for r in results]
    finally:
        await client.aclose()


def _run(kind: str, n: int, faults: list[Fault]) -> tuple[list[float | None], dict[str, int], int, float]:
    reply = pairwise_reply if kind == "pairwise" else pointwise_reply
    with FaultServer(faults, reply_text=reply) as server:
        started = time.perf_counter()
        values = asyncio.run(_judge_all(kind, server.openai_base_url, n))
        elapsed = time.perf_counter() - started
        injected = collections.Counter(r.fault for r in server.requests if r.fault not in (None, "ok"))
        return values, dict(injected), len(server.requests), elapsed


def run_drill(kind: str, n: int, p: float, rng: random.Random) -> dict[str, Any]:
    """One kind of judge, fault-free then with faults; what came back, compared."""
    expected, _, _, _ = _run(kind, n, [])
    assert all(v is not None for v in expected), "the fault-free run must judge everything"
    script = [rng.choice(FAULTS) if rng.random() < p else Fault("ok") for _ in range(n * 20)]
    got, injected, requests, elapsed = _run(kind, n, script)
    failed = sum(v is None for v in got)
    mismatches = sum(v is not None and v != e for v, e in zip(got, expected, strict=True))
    return {"kind": kind, "n": n, "requests": requests, "injected": injected, "failed": failed,
            "mismatches": mismatches, "as_expected": n - failed - mismatches, "elapsed_s": elapsed}  # fmt: skip


def main(
    n: Annotated[int, typer.Option(help="Judgments of each kind.")] = 200,
    p: Annotated[float, typer.Option(help="Probability of a fault on each request.")] = 0.3,
    seed: int = 0,
) -> None:
    rng = random.Random(seed)
    print("| judge | judgments | requests | faults injected | as expected | recorded failures | "
          "fault became a value | wall s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    results = [run_drill(kind, n, p, rng) for kind in ("pairwise", "pointwise")]
    for r in results:
        faults = sum(r["injected"].values())
        print(f"| {r['kind']} | {n} | {r['requests']} | {faults} ({faults / r['requests']:.0%}) | {r['as_expected']} | "
              f"{r['failed']} | {r['mismatches']} | {r['elapsed_s']:.1f} |")  # fmt: skip
        print(f"  faults by kind: {json.dumps(dict(sorted(r['injected'].items())))}")
    raise SystemExit(1 if any(r["mismatches"] for r in results) else 0)


if __name__ == "__main__":
    typer.run(main)
