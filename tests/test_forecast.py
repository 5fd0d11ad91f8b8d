"""The cost forecast (`wrl config cost`) against what a real run called, and what the store
already holds subtracted."""

from __future__ import annotations

from configs.loading import load_recipe
from flows.build_dataset import build_dataset
from storage import open_storage
from tasks.stages.forecast import forecast
from tests.support.cli import wrl
from tests.support.recipes import curation_recipe


def _measured(storage) -> dict[str, dict[str, int]]:
    """Per stage: calls (paid or served from the response cache) and tokens, from llm_usage."""
    with storage.catalog.connect() as con:
        rows = con.execute(
            "SELECT s.stage, sum(u.requests + u.cache_hits), sum(u.input_tokens), sum(u.output_tokens) "
            "FROM llm_usage u JOIN stage_runs s USING (stage_run_id) GROUP BY s.stage"
        ).fetchall()
    return {stage: {"calls": calls, "input_tokens": i, "output_tokens": o} for stage, calls, i, o in rows}


def test_the_forecast_counts_the_calls_a_run_makes_and_nothing_the_store_holds(
    prefect_harness, tiny_model_dir, tmp_path
):
    recipe_path = curation_recipe(tmp_path, tiny_model_dir)
    recipe = load_recipe(recipe_path)
    before = forecast(recipe)  # a new machine: from the budgets
    build_dataset(recipe_path=recipe_path)
    storage = open_storage(recipe.storage)
    measured = _measured(storage)

    # Calls: exactly what the run made, stage by stage (4 instructions x 2 generators; the logprob
    # judge's probes, one per (response, criterion)).
    planned = before.by_stage()
    assert {s: planned[s]["calls"] for s in ("generate", "score")} == {
        s: measured[s]["calls"] for s in ("generate", "score")
    }
    # Output tokens: the budget is an upper bound; these tiny generators always reach it.
    assert planned["generate"]["output_tokens"] >= measured["generate"]["output_tokens"] > 0
    # Input tokens: characters / 4 against the tokenizer's count with its chat template; the
    # tolerance stated in docs/operations.md (the template's own tokens are not forecast).
    ratio = planned["generate"]["input_tokens"] / measured["generate"]["input_tokens"]
    assert 0.5 <= ratio <= 1.5, ratio

    # The same recipe on that store: every stage is cached, nothing to pay.
    again = forecast(recipe, storage)
    assert {line.stage for line in again.lines if not line.cached} == set()
    assert again.totals()["calls"] == 0
    # ... and the generations' measured length is used instead of the budget.
    assert {line.basis for line in again.lines if line.stage == "generate"} == {"measured"}

    # A judge change: generation is still cached, scoring is to pay again, in full.
    changed = load_recipe(recipe_path, {"judge.max_parse_retries": 3})
    after_change = forecast(changed, storage).by_stage()
    assert "generate" not in after_change and after_change["score"]["calls"] == planned["score"]["calls"]


def test_wrl_config_cost_prints_the_forecast_and_its_total(tiny_model_dir, tmp_path):
    recipe_path = curation_recipe(tmp_path, tiny_model_dir)
    done = wrl("config", "cost", "--config", recipe_path, "--fresh")
    assert done.returncode == 0, done.stdout + done.stderr
    planned = forecast(load_recipe(recipe_path)).totals()
    assert f"total to pay: {planned['calls']:,} calls" in done.stdout.replace("\n", " ")


def test_batch_mode_halves_the_forecast_of_the_stages_that_batch_and_not_of_training(
    tiny_model_dir, tmp_path
):
    """A competitor on a `batch: true` backend costs its price's batch_discount in generate; the
    policy (a local model, no batch) and the calls themselves are unchanged."""
    base = load_recipe(curation_recipe(tmp_path, tiny_model_dir))
    backends = {**base.backends, "api": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}}
    generators = [*base.generators, {"name": "api", "backend": "api", "model": "gpt-x"}]
    prices = {"gpt-x": {"input_per_mtok": 2.0, "output_per_mtok": 8.0}}

    def plan(batch: bool):
        recipe = base.model_validate({
            **base.model_dump(mode="json", exclude={"backends", "generators"}),
            "backends": {k: (v if isinstance(v, dict) else v.model_dump(mode="json")) for k, v in backends.items()}
            | {"api": {**backends["api"], "batch": batch}},
            "generators": [g if isinstance(g, dict) else g.model_dump(mode="json") for g in generators],
            "prices": prices,
        })  # fmt: skip
        (line,) = [line for line in forecast(recipe).lines if line.model == "gpt-x"]
        return line, line.cost(recipe)

    (live, live_cost), (batched, batched_cost) = plan(False), plan(True)
    assert (batched.calls, batched.input_tokens, batched.output_tokens) == (
        live.calls,
        live.input_tokens,
        live.output_tokens,
    )
    assert live_cost > 0 and batched_cost == live_cost * 0.5
