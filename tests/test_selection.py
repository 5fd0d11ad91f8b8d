"""Stage 3 selection: learning potential, floor drops, cuts, baselines and missing scores."""

from __future__ import annotations

import typing

import pandas as pd
import pyarrow as pa
import pytest

from configs.schema import SelectionConfig
from tasks.curation import SELECTIONS_SCHEMA, SELECTORS, cut_size, select, selected_ids


def _scores(rows: list[tuple[str, str, str, float | None]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["instruction_id", "generator", "role", "score"])


# s_policy, competitor scores -> p
POOL = {
    "a": (5.0, {"gpt": 9.0, "claude": 7.0}),  # p 4
    "b": (3.0, {"gpt": 6.0, "claude": 6.5}),  # p 3.5
    "c": (8.0, {"gpt": 7.0, "claude": 7.5}),  # p -0.5
    "d": (2.0, {"gpt": 6.0, "claude": None}),  # p 4 (ties with a)
    "e": (4.0, {"gpt": 5.0, "claude": 4.5}),  # p 1
}


def _pool() -> pd.DataFrame:
    rows = []
    for iid, (sp, comps) in POOL.items():
        rows.append((iid, "policy", "policy", sp))
        rows += [(iid, g, "competitor", s) for g, s in comps.items()]
    return _scores(rows)


def _by_id(table: pa.Table) -> dict[str, dict]:
    assert table.schema.equals(SELECTIONS_SCHEMA)
    return {r["instruction_id"]: r for r in table.to_pylist()}


def test_registry_covers_the_schema():
    assert set(SELECTORS) == set(typing.get_args(SelectionConfig.model_fields["strategy"].annotation))


def test_margin_p_best_competitor_and_tie_by_id():
    out = select(_pool(), SelectionConfig(strategy="margin", top_k=3, tie_break="instruction_id"))
    rows = _by_id(out)
    assert rows["a"]["p"] == 4.0 and rows["a"]["best_competitor"] == "gpt"
    assert rows["b"]["p"] == 3.5 and rows["b"]["best_competitor"] == "claude"
    assert rows["c"]["p"] == -0.5
    assert rows["d"]["p"] == 4.0 and rows["d"]["n_competitors_scored"] == 1  # unscored claude ignored
    # a and d tie on p: instruction_id breaks it.
    assert selected_ids(out) == ["a", "d", "b"]
    assert [rows[i]["rank"] for i in "adbec"] == [1, 2, 3, 4, 5]
    assert rows["e"]["reason"] == "below the top-k cut (k=3)" and rows["a"]["reason"] is None
    assert set(out.column("strategy").to_pylist()) == {"margin"}


def test_input_order_and_arrow_input_do_not_matter():
    cfg = SelectionConfig(strategy="margin", top_k=3)
    shuffled = _pool().sample(frac=1, random_state=3)
    assert select(pa.Table.from_pandas(shuffled, preserve_index=False), cfg).equals(select(_pool(), cfg))


def test_floor_drops_with_reason():
    out = _by_id(select(_pool(), SelectionConfig(strategy="full", competitor_floor=6.0)))
    assert out["e"]["selected"] is False and out["e"]["rank"] is None
    assert out["e"]["reason"] == "every competitor below floor 6.0 (best 5.0 by gpt)"
    assert all(out[i]["selected"] for i in "abcd")


def test_top_fraction_rounds_half_up_and_keeps_at_least_one():
    assert cut_size(10, SelectionConfig(top_fraction=0.7)) == 7  # 0.7 * 10 in floats is 7.000000000000001
    assert cut_size(5, SelectionConfig(top_fraction=0.5)) == 3  # 2.5 -> 3
    assert cut_size(5, SelectionConfig(top_fraction=0.1)) == 1  # 0.5 -> 1
    assert cut_size(3, SelectionConfig(top_fraction=0.01)) == 1  # at least one
    assert cut_size(0, SelectionConfig(top_fraction=0.5)) == 0
    assert cut_size(3, SelectionConfig(top_k=10)) == 3
    out = _by_id(select(_pool(), SelectionConfig(top_fraction=0.4)))
    assert sorted(i for i, r in out.items() if r["selected"]) == ["a", "d"]
    assert out["b"]["reason"] == "below the top-fraction cut (fraction=0.4 -> k=2)"


def test_difficulty_lowest_policy_score_first():
    out = select(_pool(), SelectionConfig(strategy="difficulty", top_k=2))
    assert selected_ids(out) == ["d", "b"]
    assert [r["instruction_id"] for r in out.to_pylist() if r["rank"]] == ["d", "b", "e", "a", "c"]


def test_random_is_reproducible_with_the_seed():
    pool = _pool()
    picks = {
        s: selected_ids(select(pool, SelectionConfig(strategy="random", top_k=2, seed=s))) for s in range(6)
    }
    again = selected_ids(select(pool.iloc[::-1], SelectionConfig(strategy="random", top_k=2, seed=0)))
    assert again == picks[0]
    assert len({tuple(p) for p in picks.values()}) > 1  # the seed matters
    assert all(len(p) == 2 for p in picks.values())


def test_full_keeps_every_candidate_and_ignores_size():
    out = select(_pool(), SelectionConfig(strategy="full", top_k=1))
    assert sorted(selected_ids(out)) == list("abcde")


def test_missing_scores_are_dropped_with_reasons():
    scores = _scores(
        [
            ("ok", "policy", "policy", 5.0),
            ("ok", "gpt", "competitor", 8.0),
            ("nopol", "policy", "policy", None),
            ("nopol", "gpt", "competitor", 8.0),
            ("nocomp", "policy", "policy", 5.0),
            ("nocomp", "gpt", "competitor", None),
            ("nocomp", "claude", "competitor", float("nan")),
            ("orphan", "gpt", "competitor", 9.0),
        ]
    )
    out = _by_id(select(scores, SelectionConfig(strategy="full")))
    assert out["ok"]["selected"] and out["ok"]["p"] == 3.0
    assert out["nopol"]["reason"] == "policy response has no score" and out["nopol"]["p"] is None
    assert out["nocomp"]["reason"] == "no competitor has a score" and out["nocomp"]["best_competitor"] is None
    assert out["orphan"]["reason"] == "no policy response"
    # Ranked candidates first, then the dropped ones by instruction_id.
    assert list(out) == ["ok", "nocomp", "nopol", "orphan"]


def test_duplicates_are_refused():
    dup = _scores([("a", "p", "policy", 5.0), ("a", "p", "policy", 6.0)])
    with pytest.raises(ValueError, match="several rows"):
        select(dup, SelectionConfig(strategy="full"))
    two = _scores([("a", "p1", "policy", 5.0), ("a", "p2", "policy", 6.0)])
    with pytest.raises(ValueError, match="more than one policy"):
        select(two, SelectionConfig(strategy="full"))


def test_empty_table():
    out = select(_scores([]), SelectionConfig(top_k=3))
    assert out.num_rows == 0 and out.schema.equals(SELECTIONS_SCHEMA)


def _tied_pool(n: int) -> pd.DataFrame:
    """n instructions wb-0..wb-(n-1), all with p = 2 (one tie block), as integer scores make."""
    rows = []
    for i in range(n):
        rows += [(f"wb-{i}", "policy", "policy", 6.0), (f"wb-{i}", "gpt", "competitor", 8.0)]
    return _scores(rows)


def test_ties_at_the_cut_are_a_seeded_shuffle_recorded_per_instruction():
    by_id = select(_tied_pool(12), SelectionConfig(strategy="margin", top_k=4, tie_break="instruction_id"))
    assert selected_ids(by_id) == ["wb-0", "wb-1", "wb-10", "wb-11"]  # lexicographic: the bias
    first = select(_tied_pool(12), SelectionConfig(strategy="margin", top_k=4))
    rows = _by_id(first)
    assert sorted(r["tie_break"] for r in rows.values()) == list(range(12))
    kept = selected_ids(first)
    assert kept == sorted(kept, key=lambda i: rows[i]["tie_break"])  # the recorded order is the cut's
    assert [rows[i]["tie_break"] for i in kept] == [0, 1, 2, 3]
    assert kept != ["wb-0", "wb-1", "wb-10", "wb-11"]
    again = select(_tied_pool(12).sample(frac=1, random_state=3), SelectionConfig(strategy="margin", top_k=4))
    assert selected_ids(again) == kept  # row order does not matter
    other = select(_tied_pool(12), SelectionConfig(strategy="margin", top_k=4, seed=5))
    assert selected_ids(other) != kept  # the seed does
    # Higher p still wins over any tie position.
    pool = pd.concat(
        [_tied_pool(12), _scores([("z", "policy", "policy", 1.0), ("z", "gpt", "competitor", 9.0)])]
    )
    assert selected_ids(select(pool, SelectionConfig(strategy="margin", top_k=2)))[0] == "z"


def test_per_source_top_k_takes_k_from_each_source():
    pool = _pool()
    sources = {
        "a": "longwriter",
        "b": "longwriter",
        "c": "writingbench",
        "d": "writingbench",
        "e": "writingbench",
    }
    out = select(pool, SelectionConfig(strategy="margin", top_k=1, per_source=True), sources)
    rows = _by_id(out)
    assert sorted(selected_ids(out)) == ["a", "d"]  # the best of each source, not a and d by p overall
    assert {i: rows[i]["source"] for i in "ace"} == {
        "a": "longwriter",
        "c": "writingbench",
        "e": "writingbench",
    }
    assert rows["b"]["reason"] == "below the top-k cut of its source (k=1)" and rows["b"]["rank"] == 2
    frac = select(pool, SelectionConfig(strategy="margin", top_fraction=0.5, per_source=True), sources)
    assert sorted(selected_ids(frac)) == ["a", "d", "e"]  # round-half-up(1.0) of 2, (1.5) of 3
    with pytest.raises(ValueError, match="every instruction needs its data source"):
        select(pool, SelectionConfig(strategy="margin", top_k=1, per_source=True))
    with pytest.raises(ValueError, match="none for"):
        select(pool, SelectionConfig(strategy="margin", top_k=1, per_source=True), {"a": "x"})
    whole = select(pool, SelectionConfig(strategy="margin", top_k=2), sources)
    assert sorted(selected_ids(whole)) == ["a", "d"] and _by_id(whole)["a"]["source"] == "longwriter"
