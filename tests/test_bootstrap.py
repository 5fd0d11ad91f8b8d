"""The bootstrap intervals on benchmark scores (tasks/evaluation/bootstrap.py) against cases
computed by hand, and the pairing of a difference."""

from __future__ import annotations

import pytest

from configs.schema import BootstrapConfig
from tasks.evaluation.base import BenchItem, BenchmarkResult, ItemScore
from tasks.evaluation.bootstrap import mean_interval, paired_interval, score_interval


class MeanSuite:
    """A suite whose headline is the plain mean of its items' scores."""

    def aggregate(self, items, scores):
        values = [s.score for s in scores if s.score is not None]
        return BenchmarkResult(sum(values) / len(values) if values else None, {}, len(items), 0)


def scored(*values: float) -> tuple[list[BenchItem], list[ItemScore]]:
    items = [BenchItem(id=str(i), prompt="p") for i in range(len(values))]
    return items, [ItemScore(v) for v in values]


def test_the_interval_of_a_mean_over_three_items_is_the_one_computed_by_hand():
    """Items 0, 0, 100: a resample's mean is 100k/3 with k ~ Binomial(3, 1/3) 100s, so
    P(0) = 8/27, P(33.3) = 12/27, P(66.7) = 6/27, P(100) = 1/27; cumulative 0.296, 0.741, 0.963, 1.
    The 2.5% and 97.5% points are 0 and 100; the 5% and 95% points, 0 and 66.7."""
    items, scores = scored(0, 0, 100)
    wide = score_interval(MeanSuite(), items, scores, BootstrapConfig(resamples=10_000, level=0.95))
    narrow = score_interval(MeanSuite(), items, scores, BootstrapConfig(resamples=10_000, level=0.90))
    assert (wide.low, wide.high) == (0.0, 100.0)
    assert (narrow.low, narrow.high) == (0.0, pytest.approx(200 / 3))
    # The same seed gives the same interval; another seed may not.
    again = score_interval(MeanSuite(), items, scores, BootstrapConfig(resamples=10_000, level=0.90))
    assert again == narrow


def test_one_item_or_equal_scores_have_no_spread_and_no_items_no_interval():
    assert score_interval(MeanSuite(), *scored(42), BootstrapConfig()).low == 42.0
    interval = score_interval(MeanSuite(), *scored(7, 7, 7, 7), BootstrapConfig())
    assert (interval.low, interval.high) == (7.0, 7.0)
    assert score_interval(MeanSuite(), *scored(), BootstrapConfig()) is None


def test_a_paired_difference_keeps_the_pairing():
    """b = a + 5 on every item: each candidate's own interval is wide (the items differ a lot), but
    their difference is exactly 5 on every resample, so it is significant."""
    items, a = scored(10, 90, 30, 70, 50)
    _, b = scored(15, 95, 35, 75, 55)
    config = BootstrapConfig()
    own_a, own_b = (
        score_interval(MeanSuite(), items, a, config),
        score_interval(MeanSuite(), items, b, config),
    )
    assert own_a.high > own_b.low  # unpaired, the two intervals overlap
    difference = paired_interval(MeanSuite(), items, a, b, config)
    assert (difference.low, difference.high) == (pytest.approx(5.0), pytest.approx(5.0))
    assert difference.excludes_zero()


def test_a_difference_that_goes_both_ways_is_not_significant():
    """Per item, b - a is +10 or -10, half each: every resample's difference is in [-10, 10], and
    the interval holds 0."""
    items, a = scored(50, 50, 50, 50, 50, 50)
    _, b = scored(60, 40, 60, 40, 60, 40)
    difference = paired_interval(MeanSuite(), items, a, b, BootstrapConfig())
    assert -10 <= difference.low < 0 < difference.high <= 10 and not difference.excludes_zero()


def test_the_interval_of_an_average_of_benchmarks_resamples_each_on_its_own():
    """The paper's writing average, by hand: benchmark A has items 0 and 100 (a resample's mean is
    0, 50 or 100 with probabilities 1/4, 1/2, 1/4), B one item of 50 (always 50). Their average is
    25, 50 or 75 with 1/4, 1/2, 1/4: the 2.5% and 97.5% points are 25 and 75. Had B been
    resampled with A's positions (paired), the average would still span 25-75; had the two been
    pooled into one benchmark of 3 items, the mean of (0, 100, 50) would reach 0 and 100."""
    parts = [(MeanSuite(), *scored(0, 100)), (MeanSuite(), *scored(50))]
    wide = mean_interval(parts, BootstrapConfig(resamples=10_000, level=0.95))
    assert (wide.low, wide.high) == (25.0, 75.0)
    pooled = score_interval(MeanSuite(), *scored(0, 100, 50), BootstrapConfig(resamples=10_000, level=0.95))
    assert (pooled.low, pooled.high) == (0.0, 100.0)  # all three drawn the same: 1/27 = 3.7% each end
    assert (
        mean_interval([(MeanSuite(), *scored(0, 100)), (MeanSuite(), *scored())], BootstrapConfig()) is None
    )
