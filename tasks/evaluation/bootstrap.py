"""Confidence intervals on benchmark scores: the percentile bootstrap over items.

A benchmark's headline is its suite's own aggregate of the item scores (a mean, a mean of domain
means, S = (S_l + S_q) / 2, an accuracy...). The interval recomputes that same aggregate on
`resamples` resamples of the items, drawn with replacement (numpy's default generator, seeded), and
takes the percentiles `(1 - level) / 2` and `(1 + level) / 2` of the results (numpy's linear
quantile). Any suite gets an interval without code of its own, whatever its formula.

For two candidates scored on the same items, `paired_interval` resamples item positions once per
draw and applies them to both, so the interval of the difference keeps the pairing (the items that
are hard for one are hard for the other); a difference is significant at the level when its
interval excludes 0.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from configs.schema import BootstrapConfig
from tasks.evaluation.base import BenchItem, BenchmarkSuite, ItemScore


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    level: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def percentile_interval(
    statistic: Callable[[np.ndarray], float | None], n: int, config: BootstrapConfig
) -> Interval | None:
    """The bootstrap interval of `statistic(indices)` over n items; None when no resample has a
    value (no item, or an aggregate that is empty on every draw)."""
    if n == 0:
        return None
    rng = np.random.default_rng(config.seed)
    values = [statistic(rng.integers(0, n, size=n)) for _ in range(config.resamples)]
    return _percentiles([v for v in values if v is not None], config)


def _percentiles(values: Sequence[float], config: BootstrapConfig) -> Interval | None:
    if not values:
        return None
    tail = (1 - config.level) / 2
    low, high = np.quantile(np.asarray(values, dtype=float), [tail, 1 - tail])
    return Interval(float(low), float(high), config.level)


def _resampled(suite: BenchmarkSuite, items: Sequence[BenchItem], scores: Sequence[ItemScore]):
    def headline(indices: np.ndarray) -> float | None:
        # An item drawn twice is two items: each copy gets its own id (suites key rows on ids, and
        # LongBench v2's official aggregate refuses a duplicate).
        drawn = [replace(items[i], id=f"{items[i].id}~{k}") for k, i in enumerate(indices)]
        picked = [scores[i] for i in indices]
        # A suite whose aggregate does more than its headline needs (Creative Writing v3 Elo's
        # interval solve) offers `headline`, the same number for less.
        cheaper = getattr(suite, "headline", None)
        return cheaper(drawn, picked) if cheaper is not None else suite.aggregate(drawn, picked).score

    return headline


def score_interval(
    suite: BenchmarkSuite, items: Sequence[BenchItem], scores: Sequence[ItemScore], config: BootstrapConfig
) -> Interval | None:
    """The interval of one candidate's headline on these items."""
    return percentile_interval(_resampled(suite, items, scores), len(items), config)


def paired_interval(
    suite: BenchmarkSuite, items: Sequence[BenchItem], scores_a: Sequence[ItemScore],
    scores_b: Sequence[ItemScore], config: BootstrapConfig,
) -> Interval | None:  # fmt: skip
    """The interval of headline(b) - headline(a) on the same items, resampled together."""
    a, b = _resampled(suite, items, scores_a), _resampled(suite, items, scores_b)

    def difference(indices: np.ndarray) -> float | None:
        first, second = a(indices), b(indices)
        return None if first is None or second is None else second - first

    return percentile_interval(difference, len(items), config)


def mean_interval(
    parts: Sequence[tuple[BenchmarkSuite, Sequence[BenchItem], Sequence[ItemScore]]], config: BootstrapConfig
) -> Interval | None:
    """The interval of the mean of several benchmarks' headlines (the paper's writing average).
    Each draw resamples every benchmark's own items, independently, from one seeded generator: the
    benchmarks are different item sets, so nothing pairs them."""
    if not parts or any(not items for _, items, _ in parts):
        return None
    rng = np.random.default_rng(config.seed)
    headlines = [(_resampled(suite, items, scores), len(items)) for suite, items, scores in parts]
    values = []
    for _ in range(config.resamples):
        drawn = [headline(rng.integers(0, n, size=n)) for headline, n in headlines]
        if all(v is not None for v in drawn):
            values.append(sum(drawn) / len(drawn))  # type: ignore[arg-type]
    return _percentiles(values, config)


def scored_items(
    items: Sequence[BenchItem], rows: Sequence[Mapping[str, Any]]
) -> tuple[list[BenchItem], list[ItemScore]]:
    """The benchmark's items a candidate has `eval_items` rows for, with their scores, in item order."""
    by_id = {r["item_id"]: r for r in rows}
    kept = [item for item in items if item.id in by_id]
    return kept, [item_score_of(by_id[item.id]) for item in kept]


@dataclass(frozen=True)
class Difference:
    """headline(candidate) - headline(baseline) on the items both were scored on, with its paired
    interval."""

    benchmark: str
    candidate: str
    baseline: str
    value: float | None
    interval: Interval | None
    n_items: int


def item_score_of(row: Mapping[str, Any]) -> ItemScore:
    """An `eval_items` row back as the ItemScore the suite aggregated."""
    return ItemScore(row["score"], json.loads(row.get("details_json") or "{}"), row.get("error"),
                     bool(row.get("retryable")))  # fmt: skip


def paired_difference(
    suite: BenchmarkSuite, benchmark: str, items: Sequence[BenchItem], baseline: tuple[str, Sequence[Mapping[str, Any]]],
    candidate: tuple[str, Sequence[Mapping[str, Any]]], config: BootstrapConfig,
) -> Difference:  # fmt: skip
    """From two candidates' `eval_items` rows (name, rows): the difference on their shared items."""
    (base_name, base_rows), (name, rows) = baseline, candidate
    base_by_id, by_id = {r["item_id"]: r for r in base_rows}, {r["item_id"]: r for r in rows}
    shared = [item for item in items if item.id in base_by_id and item.id in by_id]
    a = [item_score_of(base_by_id[item.id]) for item in shared]
    b = [item_score_of(by_id[item.id]) for item in shared]
    first, second = suite.aggregate(shared, a).score, suite.aggregate(shared, b).score
    value = None if first is None or second is None or not shared else second - first
    interval = paired_interval(suite, shared, a, b, config) if value is not None else None
    return Difference(benchmark, name, base_name, value, interval, len(shared))
