"""Curriculum overhead per training step: ours (DuckDB, one transaction per step) against the
official Writing-RL approach (a JSON index of every instruction's rung, rewritten on each win).

A step, as the trainer does it (tasks/training/reward.py): look the step's instructions up in the
rungs it keeps in memory (read from the store once, then updated from each step's promotions),
then record the step's outcomes and apply its promotions (`CurriculumStore.apply_step`, one
transaction). A second row reads the batch's rungs back from the store every step
(`CurriculumStore.state(id, batch)`: a second open of the database). The official step: on each win, load the JSON index, move that instruction up, and dump
the whole file again.

    .venv/bin/python benchmarks/curriculum_overhead.py                      # 5,000 and 50,000
    .venv/bin/python benchmarks/curriculum_overhead.py --size 50000 --steps 20 --batch 512

Target (issue 8): under 50 ms per step at 50,000 instructions.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from configs.schema import StorageConfig
from storage import StepOutcome, open_storage

RUNGS = 5  # the policy's own response + 4 references, as in the paper's ladders


def outcomes_for(rng: random.Random, chosen: list[str], state: dict[str, int]) -> list[StepOutcome]:
    """The step's instructions, each judged against its current rung; about half win."""
    result = []
    for iid in chosen:
        wins = rng.randint(0, 8)
        result.append(StepOutcome(instruction_id=iid, rung_judged=state[iid], wins=wins, ties=0,
                                  losses=8 - wins, failures=0, mean_reward=wins / 8, promote=wins >= 4))  # fmt: skip
    return result


def ours(root: Path, n: int, steps: int, batch: int, seed: int) -> list[float]:
    """As the trainer does it: rungs read once (at the first step or after a restore), then kept
    in step with the promotions it applies; per step, one transaction."""
    store = open_storage(StorageConfig(root=root / f"store-{n}")).curriculum
    ids = [f"inst-{i:06d}" for i in range(n)]
    store.create("bench", {iid: RUNGS for iid in ids})
    started = time.perf_counter()
    rungs = store.state("bench")
    print(f"  ({n:,}: reading every rung once at the start: {(time.perf_counter() - started) * 1000:.1f} ms)")
    rng, times = random.Random(seed), []
    for step in range(1, steps + 1):
        chosen = rng.sample(ids, batch)
        started = time.perf_counter()
        state = {iid: rungs[iid] for iid in chosen}
        promotions = store.apply_step("bench", step, outcomes_for(rng, chosen, state))
        rungs.update({p.instruction_id: p.rung_after for p in promotions})
        times.append(time.perf_counter() - started)
    return times


def ours_reading_the_store(root: Path, n: int, steps: int, batch: int, seed: int) -> list[float]:
    """For comparison: the batch's rungs read back from the store at every step (a second open)."""
    store = open_storage(StorageConfig(root=root / f"store-read-{n}")).curriculum
    ids = [f"inst-{i:06d}" for i in range(n)]
    store.create("bench", {iid: RUNGS for iid in ids})
    rng, times = random.Random(seed), []
    for step in range(1, steps + 1):
        chosen = rng.sample(ids, batch)
        started = time.perf_counter()
        state = store.state("bench", chosen)
        store.apply_step("bench", step, outcomes_for(rng, chosen, state))
        times.append(time.perf_counter() - started)
    return times


def official(root: Path, n: int, steps: int, batch: int, seed: int) -> list[float]:
    index = root / f"curriculum-{n}.json"
    ids = [f"inst-{i:06d}" for i in range(n)]
    index.write_text(json.dumps({iid: 0 for iid in ids}))
    rng, times = random.Random(seed), []
    for _ in range(steps):
        chosen = rng.sample(ids, batch)
        started = time.perf_counter()
        state = json.loads(index.read_text())
        for outcome in outcomes_for(rng, chosen, state):
            if outcome.promote and state[outcome.instruction_id] < RUNGS - 1:
                current = json.loads(index.read_text())  # each win: load, update, rewrite the whole index
                current[outcome.instruction_id] += 1
                with open(index, "w") as f:  # not atomic, as in the official code
                    json.dump(current, f)
                state = current
        times.append(time.perf_counter() - started)
    return times


def describe(times: list[float]) -> dict[str, float]:
    ms = sorted(t * 1000 for t in times)
    return {"median_ms": statistics.median(ms), "p95_ms": ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))],
            "max_ms": ms[-1]}  # fmt: skip


def main(
    sizes: Annotated[list[int] | None, typer.Option("--size", help="Instructions (repeatable).")] = None,
    steps: Annotated[int, typer.Option(help="Steps timed per size and approach.")] = 30,
    batch: Annotated[int, typer.Option(help="Instructions judged per step.")] = 256,
    seed: int = 0,
) -> None:
    print(f"cpu cores: {os.cpu_count()}; {steps} steps of {batch} instructions; ladders of {RUNGS}")
    print("| instructions | approach | median ms/step | p95 ms | max ms |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes or [5000, 50000]:
            approaches = (("ours: rungs in memory, one transaction", ours),
                          ("ours, reading the batch's rungs from the store", ours_reading_the_store),
                          ("official: JSON per win", official))  # fmt: skip
            for name, run in approaches:
                stats = describe(run(Path(tmp), n, steps, batch, seed))
                print(f"| {n:,} | {name} | {stats['median_ms']:.1f} | {stats['p95_ms']:.1f} | {stats['max_ms']:.1f} |",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    typer.run(main)
