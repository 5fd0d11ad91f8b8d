"""The cost of re-running after a judge change, as a fraction of the full run, on the demo recipe.

Runs the flow twice on a fresh store, as a user would (`python -m flows run FLOW`): once cold, then
once more with the judge changed. The default change is a new judge: the same weights in bfloat16
on their own backend (a judge whose numbers differ, so every judge call is a response-cache miss;
the demo has no second model to switch to). `--change judge.decoding.seed=1` shows the other case:
a judge change that alters no call re-runs scoring entirely from the response cache. Reads back, per stage, what each run did from the
catalog: computed or cache hit, seconds, and LLM calls by kind (generation, judge). Generation
calls in the re-run must be zero: the exit code is 1 otherwise.

    .venv/bin/python benchmarks/judge_change_rerun.py                       # curation (build-dataset)
    .venv/bin/python benchmarks/judge_change_rerun.py --flow train          # curation + RL training
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import duckdb
import typer

from configs.loading import load_recipe

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def run_flow(flow: str, config: Path, sets: list[str], cwd: Path) -> float:
    env = {**os.environ, "PREFECT_HOME": str(cwd / "prefect"), "COLUMNS": "200"}
    env.pop("PREFECT_API_URL", None)  # each run on its own ephemeral API, as `wrl run` does by default
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "flows", "run", flow, "--config", str(config),
         *(arg for s in sets for arg in ("--set", s))],
        cwd=cwd, env=env, capture_output=True, text=True,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{flow} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return elapsed


def stage_costs(catalog: Path) -> list[dict]:
    """Per run, in order, per stage: status, seconds and calls (requests actually sent)."""
    with duckdb.connect(str(catalog), read_only=True) as con:
        rows = con.execute(
            """
            SELECT r.run_id, s.stage, s.status,
                   epoch(s.ended_at) - epoch(s.started_at) AS seconds,
                   coalesce(sum(u.requests), 0) AS calls, coalesce(sum(u.cache_hits), 0) AS cache_hits,
                   s.summary_json
            FROM runs r JOIN stage_runs s USING (run_id)
            LEFT JOIN llm_usage u USING (stage_run_id)
            GROUP BY r.run_id, r.started_at, s.stage, s.status, s.started_at, s.ended_at, s.summary_json
            ORDER BY r.started_at, s.started_at
            """
        ).fetchall()
    names = ("run_id", "stage", "status", "seconds", "calls", "cache_hits", "summary_json")
    return [dict(zip(names, row, strict=True)) for row in rows]


def main(
    flow: Annotated[
        str, typer.Option(help="build-dataset (curation) or train (curation + RL).")
    ] = "build-dataset",
    config: Annotated[Path, typer.Option(help="Recipe.")] = PROJECT_ROOT / "configs" / "demo.yaml",
    change: Annotated[
        list[str] | None, typer.Option(help="The judge change, as --set KEY=VALUE (repeatable).")
    ] = None,
    workdir: Annotated[Path | None, typer.Option(help="Keep the store here (default: a temp dir).")] = None,
) -> None:
    changes = change or [
        "backends.judge_bf16={kind: transformers, device: cpu, dtype: bfloat16, max_batch_size: 8}",
        "judge.backend=judge_bf16",
    ]
    recipe = load_recipe(config)
    model_cache = (PROJECT_ROOT / recipe.storage.model_cache).resolve()  # reuse the converted model
    with tempfile.TemporaryDirectory() as tmp:
        cwd = (workdir or Path(tmp)).resolve()
        cwd.mkdir(parents=True, exist_ok=True)
        sets = [f"storage.root={cwd / 'store'}", f"storage.model_cache={model_cache}"]
        full_s = run_flow(flow, config, sets, cwd)
        rerun_s = run_flow(flow, config, [*sets, *changes], cwd)
        costs = stage_costs(cwd / "store" / "catalog.duckdb")
    runs = list(dict.fromkeys(c["run_id"] for c in costs))
    assert len(runs) == 2, runs
    by_run = [{c["stage"]: c for c in costs if c["run_id"] == run} for run in runs]
    print(f"flow {flow}, recipe {config.name}, change `{' '.join(changes)}`; cpu cores {os.cpu_count()}")
    print("| stage | full: status | s | calls | after the judge change: status | s | calls |")
    print("|---|---|---|---|---|---|---|")
    totals = [0, 0]
    for stage, full in by_run[0].items():
        again = by_run[1].get(stage, {"status": "-", "seconds": 0.0, "calls": 0})
        totals = [totals[0] + full["calls"], totals[1] + again["calls"]]
        print(f"| {stage} | {full['status']} | {full['seconds']:.1f} | {full['calls']} | {again['status']} | "
              f"{again['seconds']:.1f} | {again['calls']} |")  # fmt: skip
    print(f"| **total** (wall, process start included) | | {full_s:.1f} | {totals[0]} | | {rerun_s:.1f} | "
          f"{totals[1]} |")  # fmt: skip
    generation_calls = by_run[1].get("generate", {}).get("calls", 0)
    print(f"\nre-run / full: wall {rerun_s / full_s:.0%}, LLM calls {totals[1] / max(totals[0], 1):.0%}; "
          f"generation calls in the re-run: {generation_calls}")  # fmt: skip
    print(json.dumps({"full_s": round(full_s, 1), "rerun_s": round(rerun_s, 1), "full_calls": totals[0],
                      "rerun_calls": totals[1], "rerun_generation_calls": generation_calls}))  # fmt: skip
    if generation_calls:
        raise SystemExit(1)


if __name__ == "__main__":
    typer.run(main)
