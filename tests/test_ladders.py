"""Stage 4 ladders: every response ascending by score, the policy's included (the paper), or the
policy first; ties, exclusions."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from configs.schema import OrderingConfig
from tasks.curation import EXCLUDED_SCHEMA, LADDERS_SCHEMA, build_ladders, criteria_text


def _gen(iid, generator, role="competitor", text=None, error=None, sample_index=0):
    return {
        "instruction_id": iid,
        "generator": generator,
        "role": role,
        "sample_index": sample_index,
        "text": text if text is not None or error else f"{generator} on {iid}",
        "error": error,
    }


def _frames(gens: list[dict], scores: dict[tuple[str, str], float | None]):
    role = {(g["instruction_id"], g["generator"]): g["role"] for g in gens}
    score_rows = [
        {"instruction_id": i, "generator": g, "role": role.get((i, g), "competitor"), "score": s}
        for (i, g), s in scores.items()
    ]
    return pd.DataFrame(gens), pd.DataFrame(score_rows)


INSTRUCTIONS = pd.DataFrame(
    [
        {
            "id": "x",
            "prompt": "Write about X.",
            "criteria_json": json.dumps([{"name": "Depth", "description": "d"}]),
        },
        {"id": "y", "prompt": "Write about Y.", "criteria_json": "[]"},
    ]
)


def _build(gens, scores, ids=("x",), **cfg):
    g, s = _frames(gens, scores)
    ladders, excluded = build_ladders(list(ids), g, s, OrderingConfig(**cfg), instructions=INSTRUCTIONS)
    assert ladders.schema.equals(LADDERS_SCHEMA) and excluded.schema.equals(EXCLUDED_SCHEMA)
    return ladders.to_pylist(), excluded.to_pylist()


def test_policy_sorted_among_references_by_score_as_the_paper():
    gens = [_gen("x", "pol", "policy"), _gen("x", "c1"), _gen("x", "c2"), _gen("x", "c3")]
    scores = {("x", "pol"): 6.0, ("x", "c1"): 7.0, ("x", "c2"): 3.0, ("x", "c3"): 5.0}
    (ladder,), excluded = _build(gens, scores)
    assert [r["generator"] for r in ladder["rungs"]] == ["c2", "c3", "pol", "c1"]
    assert [r["rung"] for r in ladder["rungs"]] == [0, 1, 2, 3]
    assert ladder["policy_rung"] == 2 and ladder["rungs"][2]["text"] == "pol on x"
    assert ladder["score_gaps"] == [2.0, 1.0, 1.0]  # ascends all the way
    assert ladder["prompt"] == "Write about X." and json.loads(ladder["criteria_json"])[0]["name"] == "Depth"
    assert excluded == []
    # Beating every reference puts the policy on top; scoring lowest, at the bottom.
    (top,), _ = _build(gens, scores | {("x", "pol"): 9.5})
    assert [r["generator"] for r in top["rungs"]] == ["c2", "c3", "c1", "pol"] and top["policy_rung"] == 3
    (bottom,), _ = _build(gens, scores | {("x", "pol"): 1.0})
    assert bottom["policy_rung"] == 0 and bottom["rungs"][0]["generator"] == "pol"


def test_policy_ties_go_below_the_equal_references():
    gens = [_gen("x", "pol", "policy"), _gen("x", "aa"), _gen("x", "zz"), _gen("x", "low")]
    scores = {("x", "pol"): 5.0, ("x", "aa"): 5.0, ("x", "zz"): 5.0, ("x", "low"): 4.0}
    (ladder,), _ = _build(list(reversed(gens)), scores)
    assert [r["generator"] for r in ladder["rungs"]] == ["low", "pol", "aa", "zz"]
    assert ladder["policy_rung"] == 1


def test_policy_first_mode_keeps_the_policy_on_rung0_even_when_it_outscores_everyone():
    gens = [_gen("x", "pol", "policy"), _gen("x", "c1"), _gen("x", "c2"), _gen("x", "c3")]
    scores = {("x", "pol"): 9.5, ("x", "c1"): 7.0, ("x", "c2"): 3.0, ("x", "c3"): 5.0}
    (ladder,), excluded = _build(gens, scores, policy_rung="first")
    assert [r["generator"] for r in ladder["rungs"]] == ["pol", "c2", "c3", "c1"]
    assert [r["rung"] for r in ladder["rungs"]] == [0, 1, 2, 3] and ladder["policy_rung"] == 0
    assert ladder["rungs"][0]["text"] == "pol on x" and ladder["n_rungs"] == 4
    assert ladder["score_gaps"] == [-6.5, 2.0, 2.0]  # goes down after rung 0
    assert excluded == []


def test_equal_scores_ordered_by_generator_name():
    gens = [_gen("x", "pol", "policy"), _gen("x", "zeta"), _gen("x", "alpha"), _gen("x", "mid")]
    scores = {("x", "pol"): 4.0, ("x", "zeta"): 6.0, ("x", "alpha"): 6.0, ("x", "mid"): 5.0}
    for mode in ("by-score", "first"):
        (ladder,), _ = _build(list(reversed(gens)), scores, policy_rung=mode)
        assert [r["generator"] for r in ladder["rungs"]] == ["pol", "mid", "alpha", "zeta"]


def test_failed_unscored_and_orphan_references_are_recorded():
    gens = [
        _gen("x", "pol", "policy"),
        _gen("x", "ok"),
        _gen("x", "broken", error="HTTP 500"),
        _gen("x", "blank", text="   "),
        _gen("x", "unjudged"),
    ]
    scores = {
        ("x", "pol"): 4.0,
        ("x", "ok"): 6.0,
        ("x", "broken"): 8.0,
        ("x", "unjudged"): None,
        ("x", "ghost"): 7.0,
    }
    (ladder,), excluded = _build(gens, scores)
    assert [r["generator"] for r in ladder["rungs"]] == ["pol", "ok"]
    why = {e["generator"]: e["reason"] for e in excluded}
    assert all(e["kind"] == "reference" for e in excluded)
    assert why == {
        "broken": "generation failed: HTTP 500",
        "blank": "generation has no text",
        "unjudged": "no score",
        "ghost": "scored but no generation row",
    }


def test_drop_below_policy_keeps_equal_scores():
    gens = [_gen("x", "pol", "policy"), _gen("x", "low"), _gen("x", "same"), _gen("x", "high")]
    scores = {("x", "pol"): 5.0, ("x", "low"): 4.0, ("x", "same"): 5.0, ("x", "high"): 8.0}
    for mode in ("by-score", "first"):  # the policy is then the lowest rung in both modes
        (ladder,), excluded = _build(gens, scores, drop_below_policy=True, policy_rung=mode)
        assert [r["generator"] for r in ladder["rungs"]] == ["pol", "same", "high"]
        assert ladder["policy_rung"] == 0
    assert excluded == [
        {
            "instruction_id": "x",
            "kind": "reference",
            "generator": "low",
            "reason": "scored below the policy (4.0 < 5.0)",
        }
    ]
    (kept,), _ = _build(gens, scores)
    assert kept["n_rungs"] == 4 and [r["generator"] for r in kept["rungs"]] == ["low", "pol", "same", "high"]


def test_min_rungs_and_failed_or_missing_policy_exclude_the_instruction():
    gens = [
        _gen("x", "pol", "policy"),
        _gen("x", "c1"),
        _gen("y", "pol", "policy", error="timeout"),
        _gen("y", "c1"),
    ]
    scores = {("x", "pol"): 5.0, ("x", "c1"): 6.0, ("y", "pol"): None, ("y", "c1"): 6.0}
    ladders, excluded = _build(gens, scores, ids=["x", "y", "z", "x"], min_rungs=3)
    assert ladders == []
    assert [(e["instruction_id"], e["kind"], e["generator"], e["reason"]) for e in excluded] == [
        ("x", "instruction", None, "only 2 rung(s) including the policy's; min_rungs=3"),
        ("y", "instruction", None, "policy generation failed: timeout"),
        ("z", "instruction", None, "instruction not found in the instructions table"),
    ]
    ladders, _ = _build(gens, scores, ids=["y", "x"], min_rungs=2)
    assert [lad["instruction_id"] for lad in ladders] == ["x"]


def test_policy_without_score_goes_first_and_only_sample_0_used():
    gens = [
        _gen("x", "pol", "policy"),
        _gen("x", "c1"),
        _gen("x", "c1", text="second sample", sample_index=1),
    ]
    (ladder,), _ = _build(gens, {("x", "c1"): 6.0}, drop_below_policy=True)
    assert ladder["rungs"][0] == {"rung": 0, "generator": "pol", "score": None, "text": "pol on x"}
    assert ladder["rungs"][1]["text"] == "c1 on x" and ladder["score_gaps"] == [None]
    assert ladder["policy_rung"] == 0


def test_two_policy_rows_refused():
    gens = [_gen("x", "p1", "policy"), _gen("x", "p2", "policy")]
    with pytest.raises(ValueError, match="more than one policy"):
        _build(gens, {})


def test_criteria_text():
    crit = [{"name": "Depth", "description": "Goes deep", "rubric": {"1-2": "shallow"}}, {"name": "Style"}]
    assert criteria_text(json.dumps(crit)) == "1. Depth: Goes deep\n   - 1-2: shallow\n2. Style"
    assert criteria_text("[]") is None and criteria_text(None) is None


def test_validation_split_is_a_seeded_draw_that_ignores_row_order():
    ids = [f"i{k}" for k in range(10)]
    gens = [_gen(i, "pol", "policy") for i in ids] + [_gen(i, "c1") for i in ids]
    scores = {(i, "pol"): 5.0 for i in ids} | {(i, "c1"): 6.0 for i in ids}
    g, s = _frames(gens, scores)

    def split(order, **cfg):
        ladders, _ = build_ladders(order, g, s, OrderingConfig(validation_size=3, **cfg))
        return {r["instruction_id"]: r["split"] for r in ladders.to_pylist()}

    first = split(ids)
    assert sorted(first.values()).count("validation") == 3 and set(first.values()) == {"train", "validation"}
    assert split(list(reversed(ids))) == first  # row order does not matter
    assert split(ids, seed=1) != first  # the seed does
    (one,), _ = _build([_gen("x", "pol", "policy"), _gen("x", "c1")], {("x", "pol"): 5.0, ("x", "c1"): 6.0})
    assert one["split"] == "train"
    with pytest.raises(ValueError, match="validation_size=10 leaves no ladder to train on"):
        build_ladders(ids, g, s, OrderingConfig(validation_size=10))
