"""Context budgets: a benchmark whose harness budgets cannot fit the engine serving a local
candidate is refused at validation with the numbers; a benchmark's own long-context engine fits
it; and the engine itself never takes a request past its limit (the tiny model on the CPU, whose
transformers backend enforces `max_model_len` as vLLM does)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from configs.loading import ConfigError, load_recipe
from storage import DatasetRef, open_storage
from tests.support.paths import PROJECT_ROOT
from tests.support.recipes import BENCH_FILES


def budget_recipe(
    tmp_path: Path, model: Path, benchmarks: Path, *, limit: int, long: int | None = None
) -> Path:
    """LongBench v2 (2 items truncated to 256 tokens, 6 new tokens) for one local candidate on a
    backend with `max_model_len: limit`; with `long`, the benchmark runs on its own backend of that
    limit."""
    long_backend = (
        f"  local-long: {{kind: transformers, device: cpu, dtype: float32, max_model_len: {long}}}\n"
    )
    path = tmp_path / "budgets.yaml"
    path.write_text(f"""\
name: budgets
storage: {{root: {tmp_path / "store"}, model_cache: {tmp_path / "models"}}}
data: {{format: builtin, limit: 2}}
backends:
  local: {{kind: transformers, device: cpu, dtype: float32, max_model_len: {limit}}}
{long_backend if long else ""}generators:
  - {{name: policy, role: policy, backend: local, model: {model}}}
evaluation:
  candidates:
    - {{name: tiny, model: {model}}}
  benchmarks:
    longbench_v2: {{path: {benchmarks / BENCH_FILES["longbench_v2"]}, limit: 2, max_input_tokens: 256, max_tokens: 6\
{", backend: local-long" if long else ""}}}
""")
    return path


def test_a_benchmark_that_cannot_fit_its_engine_is_refused_with_the_numbers(tmp_path, shared_benchmarks):
    path = budget_recipe(tmp_path, tmp_path, shared_benchmarks, limit=200)
    with pytest.raises(ConfigError) as caught:
        load_recipe(path)
    assert ("evaluation.benchmarks.longbench_v2: needs its prompts truncated to 256 tokens + 6 new tokens = at "
            "least 262 tokens of context, but backend 'local' has max_model_len 200") in str(caught.value)  # fmt: skip
    assert "evaluation.benchmarks.longbench_v2.backend" in str(caught.value)  # and says how to fit it
    load_recipe(
        budget_recipe(tmp_path, tmp_path, shared_benchmarks, limit=200, long=400)
    )  # its own engine fits


def test_the_paper_recipes_mismatch_is_refused_and_their_long_context_engine_fits():
    """The paper recipes' training engine (16,384 tokens) cannot hold LongBench v2's 120,000-token
    prompts nor LongBench-Write's 32,768 new tokens; their evaluation runs on `policy-vllm-long`."""
    for name in ("paper-qwen2.5-7b.yaml", "paper-llama3.1-8b.yaml"):
        path = PROJECT_ROOT / "configs" / name
        recipe = load_recipe(path)
        assert {b: recipe.evaluation.benchmarks[b].backend for b in ("longbench_v2", "longbench_write")} == {
            "longbench_v2": "policy-vllm-long", "longbench_write": "policy-vllm-long"}  # fmt: skip
        assert recipe.backends["policy-vllm-long"].max_model_len >= 120_128
        overrides = {f"evaluation.benchmarks.{b}.backend": None for b in ("longbench_v2", "longbench_write")}
        with pytest.raises(ConfigError) as caught:
            load_recipe(path, overrides)
        message = str(caught.value)
        assert (
            "120,000 tokens + 128 new tokens = at least 120,128" in message
            and "max_model_len 16,384" in message
        )
        assert "longbench_write: needs prompts + 32,768 new tokens" in message


def test_a_benchmark_backend_must_be_a_local_engine(tmp_path, shared_benchmarks):
    path = budget_recipe(tmp_path, tmp_path, shared_benchmarks, limit=4096)
    text = path.read_text()
    text = text.replace(
        "  local: {", "  api: {kind: openai-compatible, base_url: 'http://127.0.0.1:9'}\n  local: {"
    )
    text = text.replace("max_tokens: 6}", "max_tokens: 6, backend: api}")
    path.write_text(text)
    with pytest.raises(
        ConfigError, match=re.escape("longbench_v2.backend: 'api' is openai-compatible; it serves local")
    ):
        load_recipe(path)


def test_the_fitted_configuration_sends_no_prompt_over_the_limit(
    prefect_harness, tiny_model_dir, shared_benchmarks, tmp_path
):
    from flows.evaluate import evaluate_candidates

    # The candidate's own backend (200) cannot fit 256 + 6; the benchmark's engine (400) can.
    summary = evaluate_candidates(
        recipe_path=str(budget_recipe(tmp_path, tiny_model_dir, shared_benchmarks, limit=200, long=400))
    )
    (row,) = summary["results"]
    storage = open_storage(load_recipe(tmp_path / "budgets.yaml").storage)
    items = storage.datasets.read(DatasetRef.parse(row["items_ref"])).to_pylist()
    assert len(items) == 2 and all(i["generation_error"] is None for i in items), items
    with storage.catalog.connect() as con:
        (config,) = con.execute("SELECT config_json FROM stage_runs WHERE stage = 'evaluate'").fetchone()
    assert json.loads(config)["candidate"]["backend"]["name"] == "local-long"

    # An engine that passes the recipe check (262 <= 270) but not the chat template's own tokens:
    # the engine refuses the request, a recorded failure, never a prompt sent past its limit.
    tight = tmp_path / "tight"
    tight.mkdir()
    path = budget_recipe(tight, tiny_model_dir, shared_benchmarks, limit=200, long=270)
    summary = evaluate_candidates(recipe_path=str(path))
    (row,) = summary["results"]
    storage = open_storage(load_recipe(path).storage)
    items = storage.datasets.read(DatasetRef.parse(row["items_ref"])).to_pylist()
    assert all(
        "exceed max_model_len 270 of backend 'local-long'" in (i["generation_error"] or "") for i in items
    )
    assert row["n_failed"] == 2
