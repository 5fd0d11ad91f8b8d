"""The CI sample of the fault drills in benchmarks/ (full runs and their figures: docs/reliability.md)."""

from __future__ import annotations

import random

import pytest

import benchmarks.judge_fault_drill as drill
from benchmarks.judge_fault_drill import FAULTS, run_drill


@pytest.mark.parametrize("kind", ["pairwise", "pointwise"])
def test_judge_faults_at_30_percent_never_become_a_reward_or_a_score(kind):
    result = run_drill(kind, n=40, p=0.3, rng=random.Random(1))
    injected = sum(result["injected"].values())
    assert injected >= 0.15 * result["requests"]  # the drill did inject faults
    assert result["mismatches"] == 0  # no fault turned into a wrong reward or score
    assert result["as_expected"] + result["failed"] == 40  # every judgment: its true value or a failure


def test_the_judge_fault_drill_would_catch_a_parser_that_reads_any_a_as_a_verdict(monkeypatch):
    """The official code's parser: any reply containing "A" is a verdict for A."""
    import tasks.rewards.pairwise as pairwise

    def naive(text: str):
        return (
            "A"
            if "A" in text
            else "B"
            if "B" in text
            else "C"
            if "C" in text
            else pairwise.parse_verdict(text)
        )

    monkeypatch.setattr(pairwise, "parse_verdict", naive)
    (no_verdict_with_an_a,) = [f for f in FAULTS if f.kind == "text" and "A" in (f.message or "")]
    monkeypatch.setattr(drill, "FAULTS", [no_verdict_with_an_a])  # only this fault, at 30%
    result = run_drill("pairwise", n=40, p=0.3, rng=random.Random(1))
    assert result["mismatches"] > 0
