"""Live vs batch cost, and forecast vs actual, for one recipe whose every model is an API.

The recipe (built here): the built-in sample's instructions, a policy and two competitors (OpenAI
and Anthropic formats), a json-mode judge, and the evaluation of one candidate on a WritingBench
slice, every model priced. The API is the test suite's fault server (tests/support/fault_server.py,
both providers' live and batch endpoints, through the real SDKs), so this needs no network and no
key. Its usage counts words as tokens, so "tokens" below are the server's words; the forecast
counts characters / 4 (docs/operations.md compares the forecast with a real tokenizer on the demo).

It prints the forecast (`wrl config cost`'s numbers, before any call), then runs curation and the
evaluation twice on fresh stores, live and with `batch: true`, and reads each run's `llm_usage`:

    .venv/bin/python benchmarks/batch_cost.py [--instructions 20] [--items 10]
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from configs.loading import load_recipe  # noqa: E402
from tests.support.fault_server import FaultServer  # noqa: E402
from tests.support.paths import SHARED_BENCHMARKS  # noqa: E402

PRICES = {  # USD per million tokens: list prices of the kind of models the paper uses
    "policy-api": (0.4, 1.6),
    "gpt-api": (2.5, 10.0),
    "claude-api": (3.0, 15.0),
    "judge-api": (2.5, 10.0),
}


def reply_text(body: dict[str, Any]) -> str:
    """The judge answers a score JSON; writers write long (cut to max_tokens by the server)."""
    seed = f"{body.get('model')}|{body['messages'][-1]['content']}"  # each writer its own text
    digest = int(hashlib.sha256(seed.encode()).hexdigest(), 16)
    if body.get("model") == "judge-api":
        return f'{{"score": {digest % 10 + 1}, "reason": "A sentence of justification, {digest % 97}."}}'
    return " ".join(f"word{(digest + i) % 50}" for i in range(digest % 1500 + 100))


def recipe_yaml(store: Path, server: FaultServer, *, batch: bool, instructions: int, items: int) -> str:
    common = (
        f"batch: {str(batch).lower()}, batch_poll_interval_s: 0.05, batch_collect_s: 0.2, max_concurrency: 16"
    )
    prices = "".join(
        f"  {m}: {{input_per_mtok: {i}, output_per_mtok: {o}}}\n" for m, (i, o) in PRICES.items()
    )
    bench = SHARED_BENCHMARKS / "writingbench" / "length_subset.jsonl"
    return f"""\
name: batch-cost
storage: {{root: {store}}}
data: {{format: builtin, limit: {instructions}}}
backends:
  openai: {{kind: openai-compatible, base_url: '{server.openai_base_url}', {common}}}
  anthropic: {{kind: anthropic, base_url: '{server.base_url}', api_key_env: WRL_BENCH_KEY, {common}}}
generators:
  - {{name: policy, role: policy, backend: openai, model: policy-api, decoding: {{temperature: 0.0, max_tokens: 512}}}}
  - {{name: gpt, backend: openai, model: gpt-api, decoding: {{temperature: 0.0, max_tokens: 1024}}}}
  - {{name: claude, backend: anthropic, model: claude-api, decoding: {{max_tokens: 1024}}}}
judge: {{backend: openai, model: judge-api, mode: json, decoding: {{temperature: 0.0, max_tokens: 128}}}}
selection: {{strategy: full}}
evaluation:
  candidates:
    - {{name: gpt, backend: openai, model: gpt-api}}
  benchmarks:
    writingbench: {{path: {bench}, limit: {items}, max_tokens: 1024}}
prices:
{prices}"""


def usage(store: Path) -> dict[str, dict[str, float]]:
    import duckdb

    with duckdb.connect(str(store / "catalog.duckdb"), read_only=True) as con:
        rows = con.execute(
            "SELECT s.stage, sum(u.requests), sum(u.input_tokens), sum(u.output_tokens), sum(u.cost_usd),"
            " sum(u.batched_requests) FROM llm_usage u JOIN stage_runs s USING (stage_run_id) GROUP BY s.stage"
        ).fetchall()
    return {
        stage: {
            "calls": int(c),
            "input": int(i),
            "output": int(o),
            "cost": float(cost or 0),
            "batched": int(b),
        }
        for stage, c, i, o, cost, b in rows
    }


def main(
    instructions: Annotated[int, typer.Option(help="Built-in instructions to curate.")] = 20,
    items: Annotated[int, typer.Option(help="WritingBench items to evaluate.")] = 10,
) -> None:
    from flows.build_dataset import build_dataset
    from flows.evaluate import evaluate_candidates
    from tasks.stages.forecast import forecast

    os.environ["WRL_BENCH_KEY"] = "local"
    with (
        tempfile.TemporaryDirectory() as tmp,
        FaultServer(reply_text=reply_text, batch_latency_s=0.5) as server,
    ):
        results: dict[str, dict[str, dict[str, float]]] = {}
        planned = None
        for mode in ("live", "batch"):
            store = Path(tmp) / mode
            path = Path(tmp) / f"{mode}.yaml"
            path.write_text(
                recipe_yaml(store, server, batch=mode == "batch", instructions=instructions, items=items)
            )
            recipe = load_recipe(path)
            if mode == "live":
                planned = forecast(recipe).by_stage()
            build_dataset(recipe_path=str(path))
            evaluate_candidates(recipe_path=str(path))
            results[mode] = usage(store)
        batch_plan = forecast(load_recipe(Path(tmp) / "batch.yaml")).by_stage()

    print(f"\n{instructions} instructions x 3 writers, judged once each; {items} WritingBench items\n")
    print(
        "| stage | forecast calls | live calls | batch calls (batched) | forecast input | actual input "
        "| forecast output | actual output | forecast live USD | live USD | forecast batch USD | batch USD |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    total = {k: 0.0 for k in ("fl", "l", "fb", "b")}
    for stage in ("generate", "score", "evaluate"):
        f, live, batch, fb = (
            planned[stage],
            results["live"][stage],
            results["batch"][stage],
            batch_plan[stage],
        )
        total["fl"] += f["cost_usd"]
        total["l"] += live["cost"]
        total["fb"] += fb["cost_usd"]
        total["b"] += batch["cost"]
        print(f"| {stage} | {f['calls']:,} | {live['calls']:,} | {batch['calls']:,} ({batch['batched']:,}) "
              f"| {f['input_tokens']:,} | {live['input']:,} | {f['output_tokens']:,} | {live['output']:,} "
              f"| {f['cost_usd']:.4f} | {live['cost']:.4f} | {fb['cost_usd']:.4f} | {batch['cost']:.4f} |")  # fmt: skip
    print(
        f"| **total** | | | | | | | | {total['fl']:.4f} | {total['l']:.4f} | {total['fb']:.4f} | {total['b']:.4f} |"
    )
    print(
        f"\nbatch / live cost: {total['b'] / total['l']:.3f}; actual / forecast (live): {total['l'] / total['fl']:.3f}"
    )


if __name__ == "__main__":
    typer.run(main)
