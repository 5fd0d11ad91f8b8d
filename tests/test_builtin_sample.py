"""The packaged sample: a small, varied, valid instruction set the demo recipe runs on."""

from __future__ import annotations

from collections import Counter

import pytest

from configs.schema import DataConfig
from tasks.instructions import load_instructions
from tasks.instructions.loaders import RUBRIC_BANDS

GENRES = {"story", "essay", "report", "letter", "speech", "technical", "poem"}


@pytest.fixture(scope="module")
def sample():
    return load_instructions(DataConfig(format="builtin"))  # raises on any validation problem


def test_size_ids_and_source(sample):
    assert 20 <= len(sample) <= 30
    assert len({r.id for r in sample}) == len(sample)
    assert all(r.id.startswith("sample-") and r.source == "builtin" for r in sample)


def test_every_genre_at_least_twice(sample):
    counts = Counter(r.genre for r in sample)
    assert set(counts) == GENRES
    assert min(counts.values()) >= 2


def test_languages(sample):
    counts = Counter(r.language for r in sample)
    assert set(counts) == {"en", "zh"}
    assert counts["zh"] >= 2 and counts["en"] > counts["zh"]


def test_required_lengths_span_the_range(sample):
    lengths = [r.required_length for r in sample]
    assert all(length is not None and 100 <= length <= 3000 for length in lengths)
    assert min(lengths) <= 300 and max(lengths) >= 2000


def test_criteria_are_complete(sample):
    with_criteria = [r for r in sample if r.criteria]
    assert len(with_criteria) >= 6
    for r in with_criteria:
        assert len(r.criteria) == 5, r.id
        assert len({c.name for c in r.criteria}) == 5, r.id
        for c in r.criteria:
            assert c.description and set(c.rubric) == set(RUBRIC_BANDS), (r.id, c.name)
