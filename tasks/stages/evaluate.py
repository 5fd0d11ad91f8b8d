"""Stage 6, evaluate: one candidate on one benchmark, generation then judging, cached.

Each (candidate, benchmark) pair is its own cached stage run, keyed on the candidate's identity
(model, backend, strategy), the benchmark's config, data fingerprint and scorer version, and the
judge: adding a candidate or a benchmark computes only the new pairs, and a killed evaluation
resumes with every finished call served by the response cache.

Writes `eval_items` (one row per item: the response, its score, the judge's details, failures)
and `eval_scores` (one row per metric, the headline first, with the pair's lineage). A failed
generation or judge call keeps the pair out of the stage cache, so the next run retries exactly
those calls; a judge reply that stayed unparsable is final and counted.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm

from configs.loading import ConfigError
from configs.schema import BenchmarkConfig, GeneratorConfig, Recipe
from tasks.evaluation.base import BenchItem, BenchmarkResult, BenchmarkSuite, ItemScore
from tasks.evaluation.bootstrap import Interval, score_interval
from tasks.evaluation.candidates import Candidate
from tasks.evaluation.longbench_v2 import truncate_middle
from tasks.evaluation.registry import SUITES, check_benchmark_names, data_fingerprint
from tasks.generation import STRATEGIES, generate_many
from tasks.instructions.schema import Instruction
from tasks.llm.base import gather_or_stop
from tasks.llm.embedded import resolve_model_path_once
from tasks.stages.runner import StageContext, StageOutput, StageResult, StageSpec, run_stage

VERSION = 2  # 2: a bootstrap interval with every headline (tasks/evaluation/bootstrap.py)
ITEMS_SCHEMA = pa.schema(
    [
        ("candidate", pa.string()), ("benchmark", pa.string()), ("item_id", pa.string()),
        ("labels_json", pa.string()), ("response", pa.string()), ("finish_reason", pa.string()),
        ("output_tokens", pa.int64()), ("generation_error", pa.string()), ("score", pa.float64()),
        ("details_json", pa.string()), ("error", pa.string()), ("retryable", pa.bool_()),
        ("judge_calls", pa.int32()),
    ]
)  # fmt: skip
SCORES_SCHEMA = pa.schema(
    [
        ("candidate", pa.string()), ("candidate_model", pa.string()), ("candidate_source", pa.string()),
        ("train_run_id", pa.string()), ("step", pa.int64()), ("benchmark", pa.string()),
        ("benchmark_version", pa.string()), ("judge", pa.string()), ("metric", pa.string()),
        ("value", pa.float64()), ("n_items", pa.int32()), ("n_failed", pa.int32()),
    ]
)  # fmt: skip
HEADLINE = (
    "headline"  # the metric row holding the benchmark's 0-100 headline (suites may have their own "score")
)
BATCHES = True  # every pair can wait for its answers: batch mode applies (tasks/llm/batch.py)
CI_LOW, CI_HIGH = "ci/low", "ci/high"  # the headline's bootstrap interval (metric rows)
LOCAL_KINDS = ("transformers", "vllm")


def benchmark_version(name: str, config: BenchmarkConfig) -> str:
    """Scorer version + data fingerprint: a different file or scorer is a different benchmark."""
    return f"{name}-v{SUITES[name].version}-{data_fingerprint(config, name)[:12]}"


def spec_for(candidate: Candidate, benchmark: str) -> StageSpec:
    def config_slice(recipe: Recipe) -> dict[str, Any]:
        assert recipe.evaluation is not None
        config = recipe.evaluation.benchmarks[benchmark]
        judge = recipe.judge_for(benchmark) if SUITES[benchmark].needs_judge else None
        return {
            "candidate": candidate.identity(recipe),
            "benchmark": {"name": benchmark, "version": benchmark_version(benchmark, config),
                          # Files are in the version's data fingerprint, not by their paths.
                          **config.model_dump(mode="json", exclude={"path", "requirement_criteria", "opponents"})},
            "seed": recipe.evaluation.seed,
            "bootstrap": recipe.evaluation.bootstrap.model_dump(mode="json"),
            "judge": recipe.call_identity(judge),
        }  # fmt: skip

    return StageSpec(
        name="evaluate",
        version=VERSION,
        inputs=(),
        outputs=("eval_items", "eval_scores"),
        description=f"{candidate.name} on {benchmark}",
        config_slice=config_slice,
        batches=BATCHES,
    )


def select_items(suite: BenchmarkSuite, config: BenchmarkConfig) -> list[BenchItem]:
    """The suite's items, narrowed to `config.ids` (then `limit`); an unknown id is an error."""
    if config.ids is None:
        return suite.load(config)
    items = suite.load(config.model_copy(update={"limit": None}))
    known = {item.id for item in items}
    missing = [i for i in config.ids if i not in known]
    if missing:
        raise ConfigError(
            f"evaluation.benchmarks.{suite.name}.ids: {missing} are not items of {config.path} "
            f"(ids look like {', '.join(sorted(known)[:3])})"
        )
    wanted = set(config.ids)
    chosen = [item for item in items if item.id in wanted]
    return chosen[: config.limit]


def check_benchmark_paths(recipe: Recipe, benchmarks: list[str] | None = None) -> None:
    """Every configured (or named) benchmark is registered and its file exists; else a ConfigError
    naming the field."""
    assert recipe.evaluation is not None
    check_benchmark_names(recipe.evaluation.benchmarks)
    for name in benchmarks or list(recipe.evaluation.benchmarks):
        path = recipe.evaluation.benchmarks[name].path
        if not Path(path).exists():
            raise ConfigError(
                f"evaluation.benchmarks.{name}.path: {path} does not exist (cwd {Path.cwd()}); run from the "
                f"directory the path is relative to, or point it at your copy, e.g. "
                f"--set evaluation.benchmarks.{name}.path=/data/{name}"
            )


def check_evaluation(recipe: Recipe, candidates: list[Candidate], benchmarks: list[str]) -> None:
    """Refuse, before any call, what cannot run: a benchmark without a registered suite, a judged
    benchmark without a judge or with a judge in a mode it has no form for, a truncating benchmark (LongBench v2) for an API model without a
    tokenizer to truncate with,
    a missing benchmark file."""
    assert recipe.evaluation is not None
    check_benchmark_names(recipe.evaluation.benchmarks)
    unjudged = [b for b in benchmarks if SUITES[b].needs_judge and recipe.judge_for(b) is None]
    if unjudged:
        raise ConfigError(
            f"benchmarks {unjudged} need a judge: set `evaluation.judge` (or the benchmark's own, or a "
            "top-level `judge`)"
        )
    for b in benchmarks:
        judge = recipe.judge_for(b) if SUITES[b].needs_judge else None
        if judge is not None and judge.mode not in SUITES[b].judge_modes:
            raise ConfigError(
                f"evaluation.benchmarks.{b}: its judge ({judge.label}) is in {judge.mode} mode, and {b} judges "
                f"only in {' or '.join(SUITES[b].judge_modes)} mode: give it its own `judge`"
            )
    check_benchmark_paths(recipe, benchmarks)
    for benchmark in (b for b in benchmarks if SUITES[b].truncates_input):
        for c in candidates:
            if c.tokenizer is None and not _is_local(recipe, c):
                raise ConfigError(
                    f"evaluation.candidates '{c.name}': {benchmark} truncates prompts with the candidate's "
                    "tokenizer; an API model needs `tokenizer:` (a local tokenizer folder or hub name)"
                )


def _is_local(recipe: Recipe, candidate: Candidate) -> bool:
    backend = recipe.backends[candidate.backend]
    return backend.kind in LOCAL_KINDS or getattr(backend, "serve_locally", None) is not None


def _fit_prompts(recipe: Recipe, candidate: Candidate, items: list[BenchItem], max_tokens: int) -> list[str]:
    """The harness's middle truncation, with the candidate's own tokenizer (pred.py)."""
    from transformers import AutoTokenizer

    source = candidate.tokenizer or resolve_model_path_once(candidate.model, Path(recipe.storage.model_cache))
    tokenizer = AutoTokenizer.from_pretrained(source)
    fitted = []
    for item in items:
        ids = tokenizer.encode(item.prompt, add_special_tokens=False)
        fitted.append(
            item.prompt
            if len(ids) <= max_tokens
            else tokenizer.decode(truncate_middle(ids, max_tokens), skip_special_tokens=True)
        )
    return fitted


async def _evaluate(ctx: StageContext, candidate: Candidate, benchmark: str) -> StageOutput:
    recipe = ctx.recipe
    assert recipe.evaluation is not None
    suite: BenchmarkSuite = SUITES[benchmark]
    config = recipe.evaluation.benchmarks[benchmark]
    items = select_items(suite, config)
    prompts = [i.prompt for i in items]
    if suite.truncates_input:
        prompts = _fit_prompts(recipe, candidate, items, suite.max_input_tokens(config))  # type: ignore[attr-defined]
    strategy = candidate.strategy if suite.uses_writing_strategy else "direct"
    generator = GeneratorConfig(
        name=re.sub(r"[^a-z0-9_.\-]", "-", candidate.name.lower()), backend=candidate.backend,
        model=candidate.model, strategy=strategy, system_prompt=candidate.system_prompt,
        decoding=suite.generation_decoding(config, recipe.evaluation.seed),
    )  # fmt: skip
    instructions = [
        Instruction(
            id=item.id, prompt=prompt, source=f"benchmark:{benchmark}", required_length=item.required_length
        )
        for item, prompt in zip(items, prompts, strict=True)
    ]
    client = ctx.llm(candidate.backend, candidate.model)
    try:
        generated = await generate_many(
            STRATEGIES[strategy], client, instructions, generator,
            max_concurrency=ctx.concurrency(candidate.backend),
            description=f"evaluate[{candidate.name}/{benchmark}] generate",
        )  # fmt: skip
    finally:
        await client.aclose()
    responses = [r.completion.text if r.completion.ok else None for r in generated]
    ctx.logger.info(
        "evaluate[%s/%s]: %d responses (%d failed); scoring", candidate.name, benchmark,
        len(responses), sum(1 for r in responses if r is None),
    )  # fmt: skip

    judge = recipe.judge_for(benchmark) if suite.needs_judge else None
    judge_client = ctx.llm(judge.backend, judge.model) if judge is not None else None
    limit = asyncio.Semaphore(ctx.concurrency(judge.backend) if judge else 64)

    bar = tqdm(
        total=len(items), desc=f"evaluate[{candidate.name}/{benchmark}] score", unit="item", leave=False
    )

    async def one(item: BenchItem, response: str | None) -> ItemScore:
        async with limit:
            score = await suite.score(item, response, judge_client, judge)
        bar.update(1)
        return score

    try:
        scores = await gather_or_stop(one(i, r) for i, r in zip(items, responses, strict=True))
    finally:
        bar.close()
        if judge_client is not None:
            await judge_client.aclose()
    result = suite.aggregate(items, scores)
    interval = score_interval(suite, items, scores, recipe.evaluation.bootstrap)
    return _output(recipe, candidate, benchmark, config, judge, items, generated, scores, result, interval)


def _output(recipe, candidate, benchmark, config, judge, items, generated, scores, result: BenchmarkResult,
            interval: Interval | None):  # fmt: skip
    item_rows = []
    for item, gen, score in zip(items, generated, scores, strict=True):
        c = gen.completion
        item_rows.append(
            {"candidate": candidate.name, "benchmark": benchmark, "item_id": item.id,
             "labels_json": json.dumps(dict(item.labels), ensure_ascii=False, sort_keys=True),
             "response": c.text if c.ok else None, "finish_reason": c.finish_reason,
             "output_tokens": c.usage.output_tokens, "generation_error": c.error, "score": score.score,
             "details_json": json.dumps(dict(score.details), ensure_ascii=False, sort_keys=True, default=str),
             "error": score.error, "retryable": score.retryable, "judge_calls": score.llm_calls}
        )  # fmt: skip
    common = {**candidate.lineage(), "benchmark": benchmark,
              "benchmark_version": benchmark_version(benchmark, config), "judge": None if judge is None else judge.label,
              "n_items": result.n_items, "n_failed": result.n_failed}  # fmt: skip
    metrics = {HEADLINE: result.score, **{k: v for k, v in result.metrics.items() if k != HEADLINE}}
    bootstrap = recipe.evaluation.bootstrap
    metrics |= {  # stored with the result, so the nightly history keeps each interval and its method
        CI_LOW: None if interval is None else interval.low, CI_HIGH: None if interval is None else interval.high,
        "ci/level": bootstrap.level, "ci/resamples": bootstrap.resamples, "ci/seed": bootstrap.seed,
    }  # fmt: skip
    score_rows = [
        {**common, "metric": k, "value": None if v is None else float(v)} for k, v in metrics.items()
    ]
    generation_failures = sum(1 for g in generated if not g.completion.ok)
    retryable = generation_failures + sum(1 for s in scores if s.retryable)
    return StageOutput(
        tables={
            "eval_items": pa.Table.from_pylist(item_rows, schema=ITEMS_SCHEMA),
            "eval_scores": pa.Table.from_pylist(score_rows, schema=SCORES_SCHEMA),
        },
        summary={
            "candidate": candidate.name,
            "benchmark": benchmark,
            "score": result.score,
            "items": result.n_items,
            "unscored": result.n_failed,
            "generation_failures": generation_failures,
        },
        failures=retryable,
    )


def compute(ctx: StageContext, candidate: Candidate, benchmark: str) -> StageOutput:
    return asyncio.run(_evaluate(ctx, candidate, benchmark))


def on_benchmark_backend(recipe: Recipe, candidate: Candidate, benchmark: str) -> Candidate:
    """The candidate as `benchmark` runs it: a local candidate moves to the benchmark's own
    `backend` when it has one (e.g. a long-context engine for LongBench v2)."""
    backend = recipe.local_eval_backend(benchmark, candidate.backend)
    return candidate if backend == candidate.backend else replace(candidate, backend=backend)


@task(name="evaluate", cache_policy=NO_CACHE, persist_result=False)
def evaluate(
    recipe: Recipe, candidate: Candidate, benchmark: str, run_id: str | None = None, refresh: bool = False
) -> StageResult:
    candidate = on_benchmark_backend(recipe, candidate, benchmark)
    return run_stage(
        spec_for(candidate, benchmark), partial(compute, candidate=candidate, benchmark=benchmark),
        recipe, {}, run_id=run_id, refresh=refresh,
    )  # fmt: skip
