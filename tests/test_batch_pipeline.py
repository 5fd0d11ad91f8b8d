"""Batch mode through the pipeline: curation (generate, score, select, order) and evaluation with
the competitors, the judge and a candidate on the fault server's batch endpoints (OpenAI and
Anthropic, real SDKs) give exactly the rows live mode gives; switching batch mode on recomputes
nothing; no call goes live."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from configs.loading import load_recipe
from storage import DatasetRef, open_storage
from tests.support.fault_server import FaultServer
from tests.support.recipes import BENCH_FILES

# Columns that say when or where a row was made, not what it holds.
VOLATILE = ("latency", "stage_run_id", "_at", "run_id")


def reply_text(body: dict[str, Any]) -> str:
    """The judge (model judge-test) answers a score JSON derived from the prompt; others write."""
    last = body["messages"][-1]["content"]
    digest = int(hashlib.sha256(str(last).encode()).hexdigest(), 16)
    if body.get("model") == "judge-test":
        return f'{{"score": {digest % 10 + 1}, "reason": "r{digest % 7}"}}'
    return f"Draft {digest % 1000}: " + " ".join(["word"] * (digest % 9 + 3))


def recipe(
    tmp_path: Path, name: str, server: FaultServer, model: Path, benchmarks: Path, *, batch: bool
) -> Path:
    fast = "batch_poll_interval_s: 0.02, batch_collect_s: 0.1, timeout_s: 10"
    path = tmp_path / f"{name}.yaml"
    bench = (
        f"    writingbench: {{path: {benchmarks / BENCH_FILES['writingbench']}, limit: 2, max_tokens: 6}}\n"
        f"    longbench_v2: {{path: {benchmarks / BENCH_FILES['longbench_v2']}, limit: 2, max_input_tokens: 256,"
        " max_tokens: 6}\n"
    )
    path.write_text(f"""\
name: batch-{name}
storage: {{root: {tmp_path / name}, model_cache: {tmp_path / "models"}}}
data: {{format: builtin, limit: 3}}
backends:
  local: {{kind: transformers, device: cpu, dtype: float32, max_batch_size: 8}}
  oai: {{kind: openai-compatible, base_url: '{server.openai_base_url}', batch: {str(batch).lower()}, {fast}}}
  claude: {{kind: anthropic, base_url: '{server.base_url}', api_key_env: WRL_TEST_KEY, batch: {str(batch).lower()}, {fast}}}
generators:
  - {{name: policy, role: policy, backend: local, model: {model}, decoding: {{temperature: 0.0, max_tokens: 8}}}}
  - {{name: gpt, backend: oai, model: gpt-test, decoding: {{temperature: 0.0, max_tokens: 24}}}}
  - {{name: claude, backend: claude, model: claude-test, decoding: {{temperature: 1.0, max_tokens: 24}}}}
judge: {{backend: oai, model: judge-test, mode: json}}
selection: {{strategy: full}}
evaluation:
  candidates:
    - {{name: gpt, backend: oai, model: gpt-test, tokenizer: {model}}}
  benchmarks:
{bench}""")
    return path


def rows(storage, name: str, version: int = 0) -> list[dict[str, Any]]:
    out = storage.datasets.read(DatasetRef(name, version)).to_pylist()
    return [{k: v for k, v in r.items() if not any(v_ in k for v_ in VOLATILE)} for r in out]


def all_versions(storage, name: str) -> list[str]:
    """Every row of every version (one per evaluated pair, in whatever order the pairs ran)."""
    latest = storage.datasets.latest(name).version
    return sorted(
        json.dumps(r, sort_keys=True, default=str) for v in range(latest + 1) for r in rows(storage, name, v)
    )


def live_calls(server: FaultServer) -> int:
    return sum(1 for r in server.requests if r.path.endswith(("/chat/completions", "/v1/messages")))


def test_batch_mode_gives_the_rows_of_live_mode_and_switching_it_recomputes_nothing(
    prefect_harness, tiny_model_dir, shared_benchmarks, tmp_path, monkeypatch
):
    from flows.build_dataset import build_dataset
    from flows.evaluate import evaluate_candidates

    monkeypatch.setenv("WRL_TEST_KEY", "k")
    with FaultServer(reply_text=reply_text, batch_latency_s=0.05) as server:
        live = recipe(tmp_path, "live", server, tiny_model_dir, shared_benchmarks, batch=False)
        batch = recipe(tmp_path, "batch", server, tiny_model_dir, shared_benchmarks, batch=True)
        build_dataset(recipe_path=str(live))
        evaluate_candidates(recipe_path=str(live))
        assert server.batches == {} and live_calls(server) > 0
        server.clear()

        build_dataset(recipe_path=str(batch))
        evaluate_candidates(recipe_path=str(batch))
        assert live_calls(server) == 0  # every call went through a batch
        providers = {b.provider for b in server.batches.values()}
        assert providers == {"openai", "anthropic"}

        # The live store, now in batch mode: every stage and pair is a cache hit; nothing is sent.
        server.clear()
        batch_on_live = batch.read_text().replace(str(tmp_path / "batch"), str(tmp_path / "live"))
        switched = tmp_path / "switched.yaml"
        switched.write_text(batch_on_live)
        build_dataset(recipe_path=str(switched))
        evaluate_candidates(recipe_path=str(switched))
        assert server.requests == []

    live_store = open_storage(load_recipe(live).storage)
    batch_store = open_storage(load_recipe(batch).storage)
    for name in ("generations", "judgments", "selections", "ladders"):
        assert rows(batch_store, name) == rows(live_store, name), name
    assert len(rows(batch_store, "judgments")) == 9 and all(
        r["score"] is not None for r in rows(batch_store, "judgments")
    )
    for name in ("eval_items", "eval_scores"):
        assert all_versions(batch_store, name) == all_versions(live_store, name), name
    live_results = {
        (r["benchmark"], r["score"], r["n_items"], r["n_failed"]) for r in live_store.evaluations.results()
    }
    batch_results = {
        (r["benchmark"], r["score"], r["n_items"], r["n_failed"]) for r in batch_store.evaluations.results()
    }
    assert batch_results == live_results and len(batch_results) == 2
    batches = batch_store.batches.batches()
    assert batches and all(b["failed"] == 0 and b["succeeded"] == b["requests"] for b in batches)
    with batch_store.catalog.connect() as con:
        batched, requests = con.execute(
            "SELECT sum(batched_requests), sum(requests) FROM llm_usage u JOIN stage_runs s USING (stage_run_id)"
            " WHERE u.backend IN ('oai', 'claude')"
        ).fetchone()
    assert batched == requests == sum(b["requests"] for b in batches)
