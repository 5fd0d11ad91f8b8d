"""The `evaluate` flow: every candidate on every benchmark, then the comparison.

Each (candidate, benchmark) pair is one cached stage task (tasks/stages/evaluate.py), run one
candidate at a time so a GPU holds one candidate model at once. The headline of each pair goes to
the catalog's `eval_results` with its lineage; the flow then publishes the comparison table
(candidates x benchmarks + average) as table and markdown artifacts and, for each training run
among the candidates, a plot of every benchmark's score over its steps, drawn from all the
evaluations of that run so far (a nightly evaluation adds a point per night).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext
from prefect.runtime import flow_run

from configs.loading import ConfigError, load_recipe, stable_hash
from flows.pipeline import run_tags, tag_flow_run, tag_flow_run_with_datasets
from flows.reporting import artifact_key, figures_drawn_before, image_artifact
from storage import DatasetRef, Storage, code_version, open_storage
from tasks.evaluation.bootstrap import Difference, mean_interval, paired_difference, scored_items
from tasks.evaluation.candidates import Candidate, resolve_candidates
from tasks.evaluation.registry import SUITES
from tasks.evaluation.report import (
    WRITING,
    comparison_markdown,
    comparison_table,
    difference_row,
    intervals_over_steps,
    plot_score_over_steps,
    score_over_steps,
)
from tasks.llm.embedded import resolve_model_path_once
from tasks.stages import evaluate as evaluate_stage
from tasks.stages.publish import artifact_link, producer_links
from tasks.stages.runner import StageResult, run_status


@flow(name="evaluate")
def evaluate_candidates(
    recipe_path: str = "configs/demo.yaml",
    overrides: dict[str, Any] | None = None,
    candidates: list[str] | None = None,
    benchmarks: list[str] | None = None,
    refresh: bool = False,
) -> dict[str, Any]:
    """Evaluate the recipe's candidates (or the named ones) on its benchmarks (or the named ones).
    `refresh` recomputes every pair instead of using the stage cache."""
    return run_evaluation(recipe_path, overrides, candidates, benchmarks, refresh)


def run_evaluation(
    recipe_path: str,
    overrides: dict[str, Any] | None = None,
    candidates: list[str] | None = None,
    benchmarks: list[str] | None = None,
    refresh: bool = False,
) -> dict[str, Any]:
    recipe = load_recipe(recipe_path, overrides)
    if recipe.evaluation is None:
        raise ConfigError(f"{recipe_path}: no `evaluation:` block (candidates and benchmarks)")
    configured = list(recipe.evaluation.benchmarks)
    unknown = sorted(set(benchmarks or ()) - set(configured))
    if unknown:
        raise ConfigError(f"benchmarks {unknown} are not in evaluation.benchmarks ({', '.join(configured)})")
    chosen = [b for b in configured if not benchmarks or b in benchmarks]
    storage = open_storage(recipe.storage)
    storage.catalog.mark_abandoned()
    resolved = resolve_candidates(recipe, storage, candidates)
    evaluate_stage.check_evaluation(recipe, resolved, chosen)
    run_id = storage.catalog.start_run(
        flow="evaluate", recipe=recipe.name, recipe_path=str(recipe_path), config_hash=stable_hash(recipe),
        code_version=code_version(), prefect_flow_run_id=str(flow_run.id) if flow_run.id else None,
    )  # fmt: skip
    pairs: list[tuple[Candidate, StageResult]] = []
    try:
        tag_flow_run(run_tags(recipe, [recipe.judge_for(b) for b in chosen]))
        for candidate in resolved:
            for benchmark in chosen:
                stage_task = evaluate_stage.evaluate.with_options(
                    task_run_name=f"evaluate[{candidate.name}/{benchmark}]"
                )
                pairs.append(
                    (candidate, stage_task(recipe, candidate, benchmark, run_id=run_id, refresh=refresh))
                )
            _release_candidate_models(recipe)
    except BaseException as exc:
        storage.catalog.finish_run(run_id, status=run_status(exc), error=f"{type(exc).__name__}: {exc}")
        raise
    tag_flow_run_with_datasets(r.outputs.values() for _, r in pairs)
    rows = _result_rows(storage, run_id, pairs)
    storage.evaluations.record(rows)
    failures = sum(int(r.summary.get("failures", 0)) for _, r in pairs)
    storage.catalog.finish_run(run_id, status="completed" if failures == 0 else "completed_with_failures")
    report = _report(storage, run_id, rows, recipe)
    report["artifacts"] = _publish(report, recipe.name, storage, rows)
    return {"run_id": run_id, "flow": "evaluate", "recipe": recipe.name, "storage": str(storage.root),
            "results": rows, **report}  # fmt: skip


def _release_candidate_models(recipe) -> None:
    """Free the candidate's in-process weights before the next candidate loads its own; the
    judge's stay loaded."""
    from tasks.llm.transformers_backend import loaded_paths, release_models

    if not loaded_paths():  # every pair was a cache hit: nothing to free (and no path to verify)
        return
    keep = set()
    for benchmark in recipe.evaluation.benchmarks:
        judge = recipe.judge_for(benchmark)
        if judge is not None and recipe.backends[judge.backend].kind == "transformers":
            keep.add(resolve_model_path_once(judge.model, Path(recipe.storage.model_cache)))
    release_models(keep)


def _result_rows(
    storage: Storage, run_id: str, pairs: list[tuple[Candidate, StageResult]]
) -> list[dict[str, Any]]:
    rows = []
    for candidate, result in pairs:
        scores = storage.datasets.read(result.outputs["eval_scores"]).to_pylist()
        if not scores:
            raise RuntimeError(f"{result.outputs['eval_scores']}: no metric rows for {candidate.name}")
        first = scores[0]
        metrics = {r["metric"]: r["value"] for r in scores}
        rows.append(
            {"eval_run_id": run_id, "stage_run_id": result.stage_run_id, **candidate.lineage(),
             "benchmark": first["benchmark"], "benchmark_version": first["benchmark_version"],
             "judge": first["judge"], "score": metrics[evaluate_stage.HEADLINE], "n_items": first["n_items"],
             "n_failed": first["n_failed"], "metrics_json": json.dumps(metrics, sort_keys=True),
             "items_ref": str(result.outputs["eval_items"]), "cached": result.cached}
        )  # fmt: skip
    return rows


class _ScoredItems:
    """What the report's intervals resample, each read once per report: every benchmark's items
    (its file, as the stage selected them) and every pair's `eval_items` rows."""

    def __init__(self, storage: Storage, recipe: Any) -> None:
        self.storage, self.recipe = storage, recipe
        self._items: dict[str, list[Any]] = {}
        self._rows: dict[str, list[dict[str, Any]]] = {}

    def items(self, benchmark: str) -> list[Any]:
        if benchmark not in self._items:
            config = self.recipe.evaluation.benchmarks[benchmark]
            self._items[benchmark] = evaluate_stage.select_items(SUITES[benchmark], config)
        return self._items[benchmark]

    def rows(self, result: dict[str, Any]) -> list[dict[str, Any]]:
        ref = result["items_ref"]
        if ref not in self._rows:
            self._rows[ref] = self.storage.datasets.read(DatasetRef.parse(ref)).to_pylist()
        return self._rows[ref]


def _differences(scored: _ScoredItems, recipe: Any, rows: list[dict[str, Any]]) -> list[Difference]:
    """Each candidate against the first, per benchmark, on the items both were scored on (paired
    bootstrap: tasks/evaluation/bootstrap.py)."""
    candidates = list(dict.fromkeys(r["candidate"] for r in rows))
    by_pair = {(r["candidate"], r["benchmark"]): r for r in rows}
    differences = []
    for benchmark in dict.fromkeys(r["benchmark"] for r in rows):
        base = by_pair.get((candidates[0], benchmark))
        others = [by_pair[(c, benchmark)] for c in candidates[1:] if (c, benchmark) in by_pair]
        if base is None or not others:
            continue
        suite, items = SUITES[benchmark], scored.items(benchmark)
        baseline = (base["candidate"], scored.rows(base))
        for row in others:
            differences.append(paired_difference(
                suite, benchmark, items, baseline, (row["candidate"], scored.rows(row)), recipe.evaluation.bootstrap
            ))  # fmt: skip
    return differences


def _writing_average_intervals(
    scored: _ScoredItems, recipe: Any, rows: list[dict[str, Any]]
) -> dict[str, tuple[float, float] | None]:
    """Per candidate scored on all three writing benchmarks: the bootstrap interval of their mean
    (the paper's Table 1 Average), each benchmark's items resampled on its own."""
    by_pair = {(r["candidate"], r["benchmark"]): r for r in rows}
    intervals: dict[str, tuple[float, float] | None] = {}
    for candidate in dict.fromkeys(r["candidate"] for r in rows):
        if not all(
            (candidate, b) in by_pair and by_pair[(candidate, b)]["score"] is not None for b in WRITING
        ):
            continue
        parts = [
            (SUITES[b], *scored_items(scored.items(b), scored.rows(by_pair[(candidate, b)]))) for b in WRITING
        ]
        interval = mean_interval(parts, recipe.evaluation.bootstrap)
        intervals[candidate] = None if interval is None else (interval.low, interval.high)
    return intervals


def _report(storage: Storage, run_id: str, rows: list[dict[str, Any]], recipe: Any) -> dict[str, Any]:
    scored = _ScoredItems(storage, recipe)
    table = comparison_table(rows, _writing_average_intervals(scored, recipe, rows))
    differences = _differences(scored, recipe, rows)
    plots = {}
    for train_run_id in sorted({r["train_run_id"] for r in rows if r["train_run_id"]}):
        history = storage.evaluations.results(train_run_id=train_run_id)
        series = score_over_steps(history, train_run_id)
        intervals = intervals_over_steps(history, train_run_id)
        path = storage.root / "reports" / run_id / f"scores-over-steps-{train_run_id}.png"
        if (
            plot_score_over_steps(series, train_run_id, path, figures_drawn_before(storage), intervals)
            is not None
        ):
            plots[train_run_id] = {"path": str(path), "series": series}
    return {"table": table, "markdown": comparison_markdown(table, rows, differences), "plots": plots,
            "differences": [difference_row(d) for d in differences]}  # fmt: skip


def _publish(report: dict[str, Any], recipe: str, storage: Storage, rows: list[dict[str, Any]]) -> list[str]:
    """The comparison table, the plots, then the summary: the table in markdown, linked to the
    other artifacts and to the task run that scored each (candidate, benchmark) pair."""
    if FlowRunContext.get() is None:
        return []
    keys = [artifact_key(recipe, "comparison", section="evaluation")]
    create_table_artifact(
        table=report["table"], key=keys[0], description="Candidates x benchmarks (0-100) and the average"
    )
    for train_run_id, plot in report["plots"].items():
        keys.append(image_artifact(plot["path"], artifact_key(recipe, "steps", section="evaluation"),
                                   f"benchmark scores over the steps of {train_run_id}"))  # fmt: skip
    links = producer_links(storage, [DatasetRef.parse(r["items_ref"]) for r in rows])
    pairs = ["| candidate | benchmark | items | scored by |", "|---|---|---|---|"]
    pairs += [f"| {r['candidate']} | {r['benchmark']} | `{r['items_ref']}` | "
              f"{links[DatasetRef.parse(r['items_ref'])]} |" for r in rows]  # fmt: skip
    markdown = "\n\n".join([
        report["markdown"],
        "**Report artifacts**: " + ", ".join(artifact_link(k) for k in keys),
        "**Pairs** (each linked to the task run that scored it):\n\n" + "\n".join(pairs),
    ])  # fmt: skip
    keys.append(artifact_key(recipe, "summary", section="evaluation"))
    create_markdown_artifact(markdown=markdown, key=keys[-1], description="Evaluation: table and lineage")
    return keys
