"""Runs one pipeline stage with caching and lineage; every stage module goes through `run_stage`.

The cache key is stage name + stage version + the hash of exactly the config slice the stage
reads + the versions of its input datasets. A hit is used only if every output version it points
at still exists in the dataset store; otherwise the stage recomputes. A stage whose items partly
failed is recorded but never entered in the cache, so the next run retries (and, with the
response cache, redoes only the failed calls). Bump a stage's `version` when its code changes
what it writes.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from configs.loading import stable_hash
from configs.schema import Recipe
from storage import DatasetRef, Storage, code_version, open_storage
from tasks.llm.budget import Allowance, BudgetedClient, BudgetExhaustedError, BudgetMeter, Remaining
from tasks.llm.cache import CachingClient, UsageMeter
from tasks.llm.registry import create_client
from tasks.stages.publish import publish_stage_run

# Calls a batching stage issues at once: the largest batch a provider takes (Anthropic's 100,000).
BATCH_CONCURRENCY = 100_000


def batches_on(stage_batches: bool, recipe: Recipe, backend_name: str) -> bool:
    """Whether a stage that can batch (`StageSpec.batches`) sends its calls on `backend_name` through
    the provider's batch API: the backend says `batch: true` (in-process backends have no such field)."""
    return stage_batches and bool(getattr(recipe.backends[backend_name], "batch", False))


@dataclass(frozen=True)
class StageSpec:
    name: str
    version: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    description: str
    config_slice: Callable[[Recipe], Any]  # exactly the config this stage reads
    # Inputs a recipe adds (generate and train read `sft_models` when `sft.writer` is set). A recipe
    # that adds none passes the stage the same inputs, so its cache keys are what they were.
    extra_inputs: Callable[[Recipe], tuple[str, ...]] = lambda recipe: ()
    # Whether the recipe runs this stage at all (the sft stages run only when configured).
    enabled: Callable[[Recipe], bool] = lambda recipe: True
    # Whether the stage can wait hours for answers: its calls go through the provider's batch API
    # on a backend that says `batch: true` (tasks/llm/batch.py). Training's judge cannot.
    batches: bool = False

    def inputs_for(self, recipe: Recipe) -> tuple[str, ...]:
        """The datasets this stage reads under `recipe`: its fixed inputs, then the recipe's extras."""
        return (*self.inputs, *self.extra_inputs(recipe))


@dataclass
class StageContext:
    spec: StageSpec
    recipe: Recipe
    storage: Storage
    inputs: dict[str, DatasetRef]
    stage_run_id: str
    logger: logging.Logger | logging.LoggerAdapter
    usage: UsageMeter = field(default_factory=UsageMeter)
    cache_key: str = ""  # same config + same inputs -> same key: a resumable stage keys its work dir on it
    budget: BudgetMeter = field(default_factory=lambda: BudgetMeter(Allowance()))

    def read(self, role: str) -> pa.Table:
        return self.storage.datasets.read(self.inputs[role])

    def llm(self, backend_name: str, model: str) -> CachingClient:
        """A client for `model` on the recipe's backend, behind the response cache and this
        stage run's usage meter. Every stage talks to LLMs through this."""
        inner = create_client(self.recipe, backend_name, model)
        batched = self.batches_on(backend_name)
        if batched:
            from tasks.llm.batch import BatchingClient

            inner = BatchingClient(inner, self.storage.batches, stage_run_id=self.stage_run_id)
        if self.budget.allowance and self.recipe.is_paid(backend_name):  # inside the cache: a hit is free
            inner = BudgetedClient(inner, self.budget, batched=batched)
        return CachingClient(inner, self.storage.responses, stage_run_id=self.stage_run_id, meter=self.usage)

    def batches_on(self, backend_name: str) -> bool:
        """Whether this stage's calls on `backend_name` go through the provider's batch API."""
        return batches_on(self.spec.batches, self.recipe, backend_name)

    def concurrency(self, backend_name: str) -> int:
        """How many calls this stage keeps in flight on `backend_name`: its max_concurrency, or, in
        batch mode, everything at once (they are collected into batches, not sent)."""
        if self.batches_on(backend_name):
            return BATCH_CONCURRENCY
        return self.recipe.backends[backend_name].max_concurrency


@dataclass(frozen=True)
class StageOutput:
    tables: dict[str, pa.Table]
    summary: dict[str, Any] = field(default_factory=dict)
    failures: int = 0  # items that failed (recorded in the tables); >0 keeps the result out of the cache


@dataclass(frozen=True)
class StageResult:
    stage: str
    stage_run_id: str
    outputs: dict[str, DatasetRef]
    cached: bool
    cache_key: str
    config_hash: str
    summary: dict[str, Any]
    elapsed_s: float


def stage_keys(spec: StageSpec, recipe: Recipe, inputs: Mapping[str, DatasetRef]) -> tuple[str, str]:
    """(config_hash, cache_key) for a stage given a recipe and its input versions."""
    config_hash = stable_hash(spec.config_slice(recipe))
    cache_key = stable_hash(
        {
            "stage": spec.name,
            "version": spec.version,
            "config": config_hash,
            "inputs": {role: str(ref) for role, ref in sorted(inputs.items())},
        }
    )
    return config_hash, cache_key


def run_stage(
    spec: StageSpec,
    compute: Callable[[StageContext], StageOutput],
    recipe: Recipe,
    inputs: Mapping[str, DatasetRef] | None = None,
    *,
    run_id: str | None = None,
    refresh: bool = False,
    storage: Storage | None = None,
) -> StageResult:
    started = time.perf_counter()
    inputs = dict(inputs or {})
    missing = set(spec.inputs_for(recipe)) - set(inputs)
    if missing:
        raise ValueError(f"stage '{spec.name}' needs inputs {sorted(missing)}; got {sorted(inputs)}")
    storage = storage or open_storage(recipe.storage)
    logger = _logger(spec.name)
    config_hash, cache_key = stage_keys(spec, recipe, inputs)
    flow_run_id, task_run_id = _prefect_ids()
    common = dict(
        config=spec.config_slice(recipe),
        run_id=run_id,
        stage=spec.name,
        stage_version=spec.version,
        config_hash=config_hash,
        cache_key=cache_key,
        code_version=code_version(),
        prefect_flow_run_id=flow_run_id,
        prefect_task_run_id=task_run_id,
        inputs=inputs,
    )

    def serve_from_cache() -> StageResult | None:
        # One catalog connection for the lookup, the record and the lineage of a hit: a warm demo
        # serves 14 stages from the cache, and each connection costs ~20 ms.
        with storage.catalog.session("stage cache lookup"):
            hit = storage.catalog.lookup_cache(cache_key)
            if hit is None:
                return None
            gone = [str(ref) for ref in hit.outputs.values() if not storage.datasets.exists(ref)]
            if gone or set(hit.outputs) != set(spec.outputs):
                logger.warning("%s: cached outputs %s are gone; recomputing", spec.name, ", ".join(gone))
                storage.catalog.forget_cache(cache_key)
                return None
            stage_run_id = storage.catalog.start_stage_run(
                **common, status="cached", cached_from=hit.stage_run_id
            )
            summary = {"cached_from": hit.stage_run_id}
            storage.catalog.finish_stage_run(
                stage_run_id, status="cached", outputs=hit.outputs, summary=summary
            )
            producers = storage.catalog.producers([*inputs.values(), *hit.outputs.values()])
        logger.info(
            "%s: cache hit (key %s) -> %s",
            spec.name,
            cache_key[:12],
            ", ".join(str(r) for r in hit.outputs.values()),
        )
        result = StageResult(
            spec.name,
            stage_run_id,
            hit.outputs,
            True,
            cache_key,
            config_hash,
            summary,
            time.perf_counter() - started,
        )
        publish_stage_run(result, inputs, common["config"], storage, producers=producers)
        return result

    if not refresh and (cached := serve_from_cache()) is not None:
        return cached

    def waiting() -> None:
        logger.info(
            "%s: another process is computing this stage (key %s); waiting for it", spec.name, cache_key[:12]
        )

    with storage.claims.hold(cache_key, on_wait=waiting):
        # Whoever held the claim may have just finished this exact stage: take its result.
        if not refresh and (cached := serve_from_cache()) is not None:
            return cached
        return _compute_and_record(spec, compute, recipe, storage, inputs, common, logger, started)


def _compute_and_record(
    spec: StageSpec,
    compute: Callable[[StageContext], StageOutput],
    recipe: Recipe,
    storage: Storage,
    inputs: dict[str, DatasetRef],
    common: dict[str, Any],
    logger: logging.Logger | logging.LoggerAdapter,
    started: float,
) -> StageResult:
    run_id, config_hash, cache_key = common["run_id"], common["config_hash"], common["cache_key"]
    flow_run_id = common["prefect_flow_run_id"]
    stage_run_id = storage.catalog.start_stage_run(**common)
    ctx = StageContext(
        spec, recipe, storage, inputs, stage_run_id, logger, UsageMeter(recipe.prices), cache_key=cache_key,
        budget=BudgetMeter(allowance_for(recipe, spec.name, storage, run_id, cache_key), recipe.prices),
    )  # fmt: skip
    try:
        try:
            output = compute(ctx)
        except Exception as exc:  # whatever a refused call led to, the stage stopped at its budget
            if ctx.budget.exhausted is None or isinstance(exc, BudgetExhaustedError):
                raise
            raise _stopped(spec.name, ctx.budget) from exc
        if ctx.budget.exhausted is not None:  # stopped taking calls: nothing is written, nothing cached
            raise _stopped(spec.name, ctx.budget)
        unexpected = set(output.tables) ^ set(spec.outputs)
        if unexpected:
            raise RuntimeError(
                f"stage '{spec.name}' must write {spec.outputs}, wrote {sorted(output.tables)}"
            )
        lineage = {
            "stage": spec.name,
            "stage_version": spec.version,
            "stage_run_id": stage_run_id,
            "run_id": run_id or "",
            "config_hash": config_hash,
            "cache_key": cache_key,
            "code_version": code_version(),
            "prefect_flow_run_id": flow_run_id or "",
            "inputs": [str(ref) for ref in inputs.values()],
        }
        outputs = {
            name: storage.datasets.write(name, table, lineage=lineage, stage_run_id=stage_run_id)
            for name, table in output.tables.items()
        }
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        status = run_status(exc)
        if status == "failed":
            logger.error("%s failed: %s\n%s", spec.name, error, traceback.format_exc(limit=5))
        else:
            logger.warning("%s", exc)
        storage.responses.record_usage(ctx.usage.rows(stage_run_id))  # calls paid for still count
        summary = {"llm": ctx.usage.summary()} | (
            {"budget": ctx.budget.summary()} if ctx.budget.allowance else {}
        )
        storage.catalog.finish_stage_run(
            stage_run_id, status=status, outputs={}, error=error, summary=summary
        )
        raise
    storage.responses.record_usage(ctx.usage.rows(stage_run_id))
    summary = {**output.summary, "failures": output.failures}
    if ctx.usage.rows(stage_run_id):
        summary["llm"] = ctx.usage.summary()
    complete = output.failures == 0
    storage.catalog.finish_stage_run(
        stage_run_id,
        status="completed" if complete else "completed_with_failures",
        outputs=outputs,
        summary=summary,
        cache_key=cache_key if complete else None,
        stage=spec.name,
        stage_version=spec.version,
    )
    elapsed = time.perf_counter() - started
    logger.info(
        "%s: wrote %s in %.1fs%s",
        spec.name,
        ", ".join(str(r) for r in outputs.values()),
        elapsed,
        "" if complete else f" ({output.failures} failed items; not cached, retried next run)",
    )
    result = StageResult(spec.name, stage_run_id, outputs, False, cache_key, config_hash, summary, elapsed)
    publish_stage_run(result, inputs, common["config"], storage)
    return result


def _stopped(stage: str, budget: BudgetMeter) -> BudgetExhaustedError:
    return BudgetExhaustedError(
        f"{stage} stopped at its budget: {budget.exhausted}. {budget.refused} calls were not sent; every "
        "call paid for is recorded. Raise the budget and run again: it continues from here and pays "
        "for nothing twice."
    )


def run_status(exc: BaseException) -> str:
    """How a flow run that raised `exc` ends: stopped at its budget (resumable), or failed."""
    return "stopped_at_budget" if isinstance(exc, BudgetExhaustedError) else "failed"


def allowance_for(
    recipe: Recipe, stage: str, storage: Storage, run_id: str | None, cache_key: str
) -> Allowance:
    """What `stage` may spend under `recipe.budget`: each limit over it, with what was already
    spent on it. A stage's spending is every attempt at the same work (stage runs with this cache
    key); a run's is the spending of every stage it has run so far (their cache keys, cached ones
    included) plus this stage's. So a stopped stage, run again under the same budget, has only what
    its earlier attempts left (it may still send a call their in-flight reservations held back);
    raised, it continues."""
    budget = recipe.budget
    if budget is None or not (limits := budget.limits_for(stage)):
        return Allowance()
    # Free backends (in process, served locally) are not counted; one the recipe no longer names is.
    free = [name for name in recipe.backends if not recipe.is_paid(name)] or [""]
    spent_sql = (
        "SELECT coalesce(sum(u.cost_usd), 0), coalesce(sum(u.input_tokens + u.output_tokens), 0)"
        " FROM llm_usage u JOIN stage_runs s USING (stage_run_id) WHERE s.cache_key IN ({keys})"
        f" AND u.backend NOT IN ({', '.join('?' * len(free))})"
    )
    with storage.catalog.connect("budget: what was spent") as con:
        stage_spent = con.execute(spent_sql.format(keys="?"), [cache_key, *free]).fetchone()
        run_spent = con.execute(
            spent_sql.format(keys="SELECT cache_key FROM stage_runs WHERE run_id = ? UNION SELECT ?"),
            [run_id, cache_key, *free],
        ).fetchone()
    remaining = []
    for where, limit in limits.items():
        cost, tokens = stage_spent if where.startswith("budget.stages.") else run_spent
        remaining.append(Remaining(where, limit.cost_usd, limit.tokens, float(cost), int(tokens)))
    return Allowance(tuple(remaining))


def _logger(stage: str) -> logging.Logger | logging.LoggerAdapter:
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:  # outside a Prefect run (CLI single stage, unit tests)
        return logging.getLogger(f"wrl.stage.{stage}")


def _prefect_ids() -> tuple[str | None, str | None]:
    from prefect.runtime import flow_run, task_run

    return (str(flow_run.id) if flow_run.id else None, str(task_run.id) if task_run.id else None)
