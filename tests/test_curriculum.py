"""The reference-scheduling curriculum: the promotion and reference rules (tasks/curriculum) and
the state in the catalog (storage/curriculum.py) on a real DuckDB."""

from __future__ import annotations

import math

import pytest

import storage.curriculum as curriculum_module
from configs.schema import CurriculumConfig, StorageConfig
from storage import CurriculumError, Promotion, StepOutcome, open_storage
from tasks.curriculum import (
    LadderShape,
    build_outcome,
    count_outcomes,
    reference_rung,
    sample_key,
    should_promote,
    validate_static_rung,
)

DYNAMIC = CurriculumConfig()  # dynamic, any-win
LADDERS = {"a": 3, "b": 2, "c": 1}


@pytest.fixture()
def store(tmp_path):
    return open_storage(StorageConfig(root=tmp_path / "store"))


def outcome(iid: str, rung: int | None, rewards, cfg: CurriculumConfig = DYNAMIC) -> StepOutcome:
    return build_outcome(iid, rung, rewards, cfg)


# -- rules ----------------------------------------------------------------------------------------


def test_failures_are_excluded_from_every_rule():
    assert count_outcomes([None, None, 0.0]) == (0, 0, 1, 2)
    assert count_outcomes([None, math.nan, 1.0, 0.5, 0.75, 0.25]) == (2, 1, 1, 2)
    for rule in ("any-win", "majority", "mean-threshold"):
        assert not should_promote(rule, [None, None, 0.0], 0.5)
        assert not should_promote(rule, [None, None], 0.0)
        assert not should_promote(rule, [], 0.0)
    assert should_promote("any-win", [None, 1.0])
    assert should_promote("majority", [None, None, None, 1.0])
    assert should_promote("mean-threshold", [None, 1.0, 0.0], 0.5)  # mean 0.5 over 2 scored


def test_any_win_counts_swap_mode_rewards_above_a_tie():
    assert should_promote("any-win", [0.0, 0.75])
    assert not should_promote("any-win", [0.5, 0.5, 0.25, 0.0])


def test_majority_needs_more_wins_than_half_of_the_scored_rollouts():
    assert not should_promote("majority", [1.0, 0.5])  # a tie is not a win
    assert not should_promote("majority", [1.0, 1.0, 0.5, 0.0])
    assert should_promote("majority", [1.0, 1.0, 0.5])
    assert should_promote("majority", [1.0, 1.0, 0.0, None, None])


def test_mean_threshold():
    assert should_promote("mean-threshold", [1.0, 0.5, 0.0], 0.5)
    assert not should_promote("mean-threshold", [1.0, 0.5, 0.0], 0.51)
    assert should_promote("mean-threshold", [0.75, 0.75], 0.7)
    with pytest.raises(ValueError, match="unknown promotion rule"):
        should_promote("best-of", [1.0])  # type: ignore[arg-type]


def test_build_outcome_asks_for_promotion_only_under_the_dynamic_schedule():
    dynamic = build_outcome("a", 1, [None, 1.0, 0.0], DYNAMIC)
    assert dynamic == StepOutcome("a", 1, 1, 0, 1, 1, 0.5, True)
    for schedule in ("static", "random"):
        assert not build_outcome("a", 1, [1.0, 1.0], CurriculumConfig(schedule=schedule)).promote
    assert build_outcome("a", 0, [None, None], DYNAMIC).mean_reward is None


def test_reference_rung_per_schedule():
    assert reference_rung(DYNAMIC, 2, 4) == 2
    assert reference_rung(CurriculumConfig(schedule="static", static_rung="self"), 2, 4) == 0
    assert reference_rung(CurriculumConfig(schedule="static", static_rung="best"), 0, 4) == 3
    assert reference_rung(CurriculumConfig(schedule="static", static_rung=2), 0, 4) == 2
    with pytest.raises(ValueError, match="static_rung=4 is not in the ladder of instruction 'x'"):
        reference_rung(CurriculumConfig(schedule="static", static_rung=4), 0, 4, instruction_id="x")
    with pytest.raises(ValueError, match="outside its ladder"):
        reference_rung(DYNAMIC, 4, 4)


def test_random_reference_rung_is_uniform_over_references_and_deterministic_given_the_key():
    cfg = CurriculumConfig(schedule="random")
    draws = [reference_rung(cfg, 0, 4, key=sample_key(7, 3, "a", i)) for i in range(300)]
    assert set(draws) == {1, 2, 3}  # never rung 0, the policy's own response
    assert min(draws.count(r) for r in (1, 2, 3)) > 60
    assert draws == [reference_rung(cfg, 2, 4, key=sample_key(7, 3, "a", i)) for i in range(300)]
    assert draws != [reference_rung(cfg, 0, 4, key=sample_key(8, 3, "a", i)) for i in range(300)]
    assert reference_rung(cfg, 0, 1, key="k") == 0
    assert reference_rung(cfg, 0, 4, key=12345) == reference_rung(cfg, 0, 4, key="12345")  # int keys too
    with pytest.raises(ValueError, match="needs a key"):
        reference_rung(cfg, 0, 4)


# A ladder sorted by score (the paper): c2, c3, the policy's own response, c1.
SORTED = LadderShape(4, policy_rung=2, generators=("c2", "c3", "pol", "c1"))


def test_static_self_is_the_policys_own_rung_wherever_it_sorts():
    assert reference_rung(CurriculumConfig(schedule="static", static_rung="self"), 0, SORTED) == 2
    assert reference_rung(CurriculumConfig(schedule="static", static_rung=0), 3, SORTED) == 0
    assert reference_rung(CurriculumConfig(schedule="static", static_rung="best"), 0, SORTED) == 3


def test_static_reference_by_generator_name():
    cfg = CurriculumConfig(schedule="static", static_generator="c3")
    assert reference_rung(cfg, 0, SORTED) == 1
    assert reference_rung(cfg, 0, LadderShape(3, 0, ("pol", "c1", "c3"))) == 2
    with pytest.raises(ValueError, match="static_generator='c3' is not in the ladder of instruction 'z'"):
        reference_rung(cfg, 0, LadderShape(2, 0, ("pol", "c1")), instruction_id="z")
    validate_static_rung(cfg, {"a": SORTED})
    with pytest.raises(ValueError) as err:
        validate_static_rung(cfg, {"a": SORTED, "b": LadderShape(2, 0, ("pol", "c1"))})
    assert "1 of 2 instructions: 'b' (2 rungs)" in str(err.value) and "ladder_exclusions" in str(err.value)
    with pytest.raises(ValueError, match="only used by schedule 'static'"):
        CurriculumConfig(schedule="dynamic", static_generator="c3")


def test_staged_schedule_moves_every_ladder_up_one_rung_at_each_boundary():
    cfg = CurriculumConfig(schedule="staged", stage_steps=(3, 5))
    rungs = [reference_rung(cfg, 0, SORTED, step=t) for t in range(1, 8)]
    assert rungs == [0, 0, 1, 1, 2, 2, 2]  # step 3 is the first on rung 1
    assert [reference_rung(cfg, 0, 2, step=t) for t in (1, 3, 9)] == [0, 1, 1]  # capped at the top
    # It never promotes: the stored rungs stay where they started.
    assert not build_outcome("a", 0, [1.0, 1.0], cfg).promote
    with pytest.raises(ValueError, match="needs the training step"):
        reference_rung(cfg, 0, SORTED)
    for bad in ((), (5, 3), (0, 2), (2, 2)):
        with pytest.raises(ValueError, match="stage_steps"):
            CurriculumConfig(schedule="staged", stage_steps=bad)
    with pytest.raises(ValueError, match="only used by schedule 'staged'"):
        CurriculumConfig(stage_steps=(3,))


def test_random_rung_skips_the_policys_own_rung_wherever_it_sorts():
    cfg = CurriculumConfig(schedule="random")
    draws = [reference_rung(cfg, 0, SORTED, key=sample_key(7, 3, "a", i)) for i in range(300)]
    assert set(draws) == {0, 1, 3}
    # With the policy on rung 0 the draw is the one made before ladders were sorted by score.
    assert [reference_rung(cfg, 0, LadderShape(4, 0), key=sample_key(1, 1, "a", i)) for i in range(50)] == [
        reference_rung(cfg, 0, 4, key=sample_key(1, 1, "a", i)) for i in range(50)
    ]


def test_validate_static_rung_names_the_instructions_whose_ladder_is_too_short():
    cfg = CurriculumConfig(schedule="static", static_rung=2)
    validate_static_rung(cfg, {"a": 3, "b": 5})
    with pytest.raises(ValueError) as err:
        validate_static_rung(cfg, {"a": 3, "short": 2, "tiny": 1})
    assert "static_rung=2" in str(err.value)
    assert "2 of 3 instructions: 'short' (2 rungs), 'tiny' (1 rungs)" in str(err.value)
    validate_static_rung(CurriculumConfig(schedule="static", static_rung="best"), {"tiny": 1})
    validate_static_rung(CurriculumConfig(schedule="dynamic", static_rung=9), {"tiny": 1})


# -- store ----------------------------------------------------------------------------------------


def test_create_is_idempotent_and_refuses_different_ladders(store):
    cur = store.curriculum
    assert cur.create("run1", LADDERS, config_json={"schedule": "dynamic"}, ladders_ref="ladders@2") == {
        "a": 0,
        "b": 0,
        "c": 0,
    }
    cur.apply_step("run1", 1, [outcome("a", 0, [1.0])])
    assert cur.create("run1", LADDERS) == {"a": 1, "b": 0, "c": 0}  # existing state, unchanged
    with pytest.raises(CurriculumError, match="1 new instruction"):
        cur.create("run1", {**LADDERS, "d": 2})
    with pytest.raises(CurriculumError, match=r"a: 3 -> 4 rungs"):
        cur.create("run1", {**LADDERS, "a": 4})
    info = cur.info("run1")
    assert (info["config_json"], info["ladders_ref"]) == ('{"schedule": "dynamic"}', "ladders@2")
    assert (info["n_instructions"], info["last_step"], info["snapshot_steps"]) == (3, 1, [0])
    assert cur.create("run2", LADDERS, start_rungs={"a": 2}) == {"a": 2, "b": 0, "c": 0}
    with pytest.raises(ValueError, match="outside its ladder"):
        cur.create("run3", LADDERS, start_rungs={"b": 2})
    with pytest.raises(CurriculumError, match="no curriculum 'nope'"):
        cur.state("nope")


def test_one_rung_per_step_top_stays_and_stale_outcomes_do_not_promote(store):
    cur = store.curriculum
    cur.create("run", LADDERS)
    promotions = cur.apply_step(
        "run",
        1,
        [outcome("a", 0, [1.0, 1.0, 1.0, 1.0]), outcome("b", 0, [0.0, 0.5]), outcome("c", 0, [1.0])],
    )
    assert promotions == [Promotion("a", 0, 1)]  # four wins, one rung; c has only rung 0
    assert cur.state("run") == {"a": 1, "b": 0, "c": 0}

    # "a" judged against rung 0 again (a stale outcome, e.g. computed before the last promotion).
    assert cur.apply_step("run", 2, [outcome("a", 0, [1.0]), outcome("b", 0, [1.0])]) == [
        Promotion("b", 0, 1)
    ]
    assert cur.apply_step("run", 3, [outcome("a", 1, [1.0]), outcome("b", 1, [1.0])]) == [
        Promotion("a", 1, 2)
    ]
    assert cur.apply_step("run", 4, [outcome("a", 2, [1.0])]) == []  # top rung stays
    assert cur.state("run") == {"a": 2, "b": 1, "c": 0}
    assert cur.state("run", ["b", "a"]) == {"a": 2, "b": 1}  # a training step reads its batch only
    with pytest.raises(CurriculumError, match=r"no instruction\(s\) \['zz'\]"):
        cur.state("run", ["a", "zz"])
    assert cur.last_step("run") == 4


def test_history_rows_are_exact(store):
    cur = store.curriculum
    cur.create("run", LADDERS)
    cur.apply_step("run", 1, [outcome("a", 0, [None, 1.0, 0.5, 0.0]), outcome("b", 0, [None, None])])
    cur.apply_step("run", 2, [outcome("a", 0, [1.0])])  # stale
    rows = cur.history("run").drop_columns(["recorded_at"]).to_pylist()
    assert rows == [
        dict(step=1, instruction_id="a", rung_judged=0, rung_before=0, rung_after=1, wins=1, ties=1,
             losses=1, failures=1, mean_reward=0.5, promoted=True, reached_top=False),
        dict(step=1, instruction_id="b", rung_judged=0, rung_before=0, rung_after=0, wins=0, ties=0,
             losses=0, failures=2, mean_reward=None, promoted=False, reached_top=False),
        dict(step=2, instruction_id="a", rung_judged=0, rung_before=1, rung_after=1, wins=1, ties=0,
             losses=0, failures=0, mean_reward=1.0, promoted=False, reached_top=False),
    ]  # fmt: skip
    assert cur.history("run").column("recorded_at").null_count == 0


def test_replaying_a_step_does_not_promote_twice(store):
    cur = store.curriculum
    cur.create("run", LADDERS)
    step1 = [outcome("a", 0, [1.0, 1.0]), outcome("b", 0, [0.0])]
    assert cur.apply_step("run", 1, step1) == [Promotion("a", 0, 1)]
    assert cur.apply_step("run", 1, step1) == [Promotion("a", 0, 1)]  # same outcomes: a no-op
    assert cur.state("run") == {"a": 1, "b": 0, "c": 0}
    assert cur.history("run").num_rows == 2
    with pytest.raises(CurriculumError, match="already recorded with different outcomes"):
        cur.apply_step("run", 1, [outcome("a", 0, [1.0]), outcome("b", 0, [0.0])])
    with pytest.raises(CurriculumError, match="already recorded with different outcomes"):
        cur.apply_step("run", 1, [outcome("a", 0, [1.0, 1.0])])
    cur.apply_step("run", 3, [outcome("b", 0, [0.0])])
    with pytest.raises(CurriculumError, match="steps must increase"):
        cur.apply_step("run", 2, [outcome("a", 1, [1.0])])
    with pytest.raises(ValueError, match="counted from 1"):
        cur.apply_step("run", 0, [])
    with pytest.raises(ValueError, match="two outcomes in one step"):
        cur.apply_step("run", 4, [outcome("a", 1, [1.0]), outcome("a", 1, [0.0])])
    assert cur.state("run") == {"a": 1, "b": 0, "c": 0}


def test_snapshot_and_restore_drop_the_lost_tail(store):
    cur = store.curriculum
    cur.create("run", {"a": 6, "b": 6})
    states = {0: cur.state("run")}
    for step in range(1, 6):
        rung = cur.state("run")
        cur.apply_step(
            "run", step, [outcome("a", rung["a"], [1.0]), outcome("b", rung["b"], [float(step % 2)])]
        )
        states[step] = cur.state("run")
        if step == 3:
            cur.snapshot("run", 3)
    assert states[5] == {"a": 5, "b": 3} and states[3] == {"a": 3, "b": 2}
    with pytest.raises(CurriculumError, match="cannot snapshot step 4"):
        cur.snapshot("run", 4)  # the state already includes step 5
    with pytest.raises(CurriculumError, match="no snapshot for step 4"):
        cur.restore("run", 4)

    assert cur.restore("run", 3) == states[3]
    assert cur.state("run") == states[3]
    assert cur.last_step("run") == 3
    assert max(cur.history("run").column("step").to_pylist()) == 3
    assert cur.snapshot_steps("run") == [0, 3]
    # The resumed run applies step 4 again, this time with different outcomes.
    assert cur.apply_step("run", 4, [outcome("a", 3, [0.0]), outcome("b", 2, [1.0])]) == [
        Promotion("b", 2, 3)
    ]
    assert cur.state("run") == {"a": 3, "b": 3}
    assert cur.restore("run", 0) == states[0]
    assert cur.history("run").num_rows == 0 and cur.last_step("run") is None


def test_a_second_storage_on_the_same_root_sees_committed_state(tmp_path):
    first = open_storage(StorageConfig(root=tmp_path / "store"))
    second = open_storage(StorageConfig(root=tmp_path / "store"))
    first.curriculum.create("run", LADDERS)
    first.curriculum.apply_step("run", 1, [outcome("a", 0, [1.0])])
    assert second.curriculum.state("run") == {"a": 1, "b": 0, "c": 0}
    second.curriculum.apply_step("run", 2, [outcome("a", 1, [1.0])])
    assert first.curriculum.state("run")["a"] == 2
    assert first.curriculum.last_step("run") == 2


def test_a_failed_step_writes_nothing(store, monkeypatch):
    cur = store.curriculum
    cur.create("run", LADDERS)
    cur.apply_step("run", 1, [outcome("a", 0, [1.0])])
    before = (cur.state("run"), cur.history("run"))

    with pytest.raises(CurriculumError, match=r"no instruction\(s\) \['zzz'\]"):
        cur.apply_step("run", 2, [outcome("a", 1, [1.0]), outcome("zzz", 0, [1.0])])

    def crash(*args, **kwargs):
        raise RuntimeError("killed between the history rows and the state update")

    monkeypatch.setattr(curriculum_module, "_update_state", crash)
    with pytest.raises(RuntimeError, match="killed"):
        cur.apply_step("run", 2, [outcome("a", 1, [1.0]), outcome("b", 0, [1.0])])
    monkeypatch.undo()

    assert cur.state("run") == before[0]
    assert cur.history("run").equals(before[1])
    assert cur.last_step("run") == 1
    assert cur.apply_step("run", 2, [outcome("a", 1, [1.0])]) == [Promotion("a", 1, 2)]
