"""`wrl judge calibrate`: the metrics against hand-computed rows, the labelled-pairs format and its
errors, and the flow on a simulated judge with a known bias (fault server, real OpenAI SDK):
it measures the bias, recommends from it, is cached, and records failures without counting them."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from configs.loading import load_recipe
from storage import open_storage
from tasks.instructions import InstructionDataError
from tasks.rewards.calibration import calibration_metrics, load_labelled_pairs, recommend
from tests.support.fault_server import Fault, FaultServer
from tests.support.paths import PROJECT_ROOT
from tests.support.simulated_judge import SimulatedJudge

EXAMPLE = PROJECT_ROOT / "tasks" / "rewards" / "labelled_pairs_example.jsonl"


def row(pair: str, order: str, letter: str | None, *, sample: int = 0, words=(10, 20), label=None) -> dict:
    preferred = None if letter is None else "tie" if letter == "C" else (
        ("x" if letter == "A" else "y") if order == "xy" else ("y" if letter == "A" else "x"))  # fmt: skip
    return {"pair_id": pair, "order": order, "sample": sample, "letter": letter, "preferred": preferred,
            "x_words": words[0], "y_words": words[1], "label": label, "calls": 1, "input_tokens": 100,
            "output_tokens": 5, "p_a": {"A": 0.8, "B": 0.1, "C": 0.3}.get(letter or "")}  # fmt: skip


def test_metrics_match_a_hand_computed_case():
    rows = [
        # p1: A then A: the judge picks the first both times -> a flip (x, then y).
        row("p1", "xy", "A", label="x"), row("p1", "yx", "A", label="x"),
        # p2: B then A: y both times -> consistent, y (20 words) is longer -> the longer won.
        row("p2", "xy", "B", label="y"), row("p2", "yx", "A", label="y"),
        # p3: a tie, then x: a flip; a repeat of the first order agrees, one of the second does not.
        row("p3", "xy", "C", label="tie"), row("p3", "yx", "B", label="tie"),
        row("p3", "xy", "C", sample=1, label="tie"), row("p3", "yx", "A", sample=1, label="tie"),
        # p4: the second order failed: in no both-orders count.
        row("p4", "xy", "A"), row("p4", "yx", None),
    ]  # fmt: skip
    m = calibration_metrics(rows, "json")
    assert (m["pairs"], m["judgments"], m["failed"], m["pairs_in_both_orders"]) == (4, 10, 1, 3)
    assert m["flip_rate"] == pytest.approx(2 / 3)
    # Decisive verdicts: A, A, B, A, B, A, A (p1 x2, p2 x2, p3 yx B, p3 yx#1 A, p4 xy A): 5 of 7 are A.
    assert m["first_position_rate"] == pytest.approx(5 / 7) and m["decisive_verdicts"] == 7
    assert m["tie_rate"] == pytest.approx(2 / 9)
    assert m["self_consistency"] == pytest.approx(1 / 2) and m["repeated_samples"] == 2
    assert m["longer_wins_rate"] == 1.0 and m["consistent_pairs_by_length"] == 1
    # Both orders: p1 -> tie (disagree; label x: wrong), p2 -> y (right), p3 -> tie (right).
    assert m["agreement"] == pytest.approx(2 / 3) and m["labelled_pairs"] == 3
    assert m["agreement_one_order"] == 1.0  # order xy alone: p1 x, p2 y, p3 tie: all the labels
    assert m["input_tokens_per_judgment"] == 100 and m["mean_p_first"] is None
    logprob = calibration_metrics(rows, "logprob")
    # A probe is asked once and reports no tokens; P(A) is averaged over the 9 verdicts.
    assert logprob["self_consistency"] is None and logprob["input_tokens_per_judgment"] is None
    assert logprob["mean_p_first"] == pytest.approx((0.8 * 5 + 0.1 * 2 + 0.3 * 2) / 9)


@pytest.mark.parametrize(
    "flips,first,expected",
    [(0.02, 0.7, "position-disadvantage"), (0.2, 0.7, "recheck"), (0.2, 0.3, "swap"), (0.8, 0.9, "swap"),
     (None, None, None)],
)  # fmt: skip
def test_recommendation_follows_the_measured_bias(flips, first, expected):
    mode, why = recommend({"flip_rate": flips, "first_position_rate": first, "self_consistency": 1.0})
    assert mode == expected and why


def test_labelled_pairs_errors_name_the_file_line_and_field(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        '{"instruction": "Write.", "response_a": "a", "response_b": "b", "label": "A"}\n'
        "not json\n"
        '{"instruction": "Write.", "response_a": "", "response_b": "b"}\n'
        '{"instruction": "Write.", "response_a": "a", "response_b": "b", "label": "left"}\n'
        '{"instruction": "Write.", "response_a": "a", "response_b": "b", "colour": 1}\n'
    )
    with pytest.raises(InstructionDataError) as caught:
        load_labelled_pairs(path)
    message = str(caught.value)
    for expected in (f"{path}:2 line: not JSON", f"{path}:3 response_a: required", f"{path}:4 label: 'left'",
                     f"{path}:5 colour: unknown field"):  # fmt: skip
        assert expected in message, message
    assert "4 problems" in message


def test_the_shipped_example_loads_with_its_labels():
    pairs = load_labelled_pairs(EXAMPLE)
    assert len(pairs) == 10 and {p.label for p in pairs} == {"x", "y", "tie"}
    assert pairs[0].pair_id == "example-01" and pairs[0].x_source == "response_a"


# ---------------------------------------------------------------------------------------------
# The flow, on a simulated judge with a known truth
# ---------------------------------------------------------------------------------------------

JUDGES = {
    "fair": SimulatedJudge(noise=0.0, tie_band=0.0),
    "first-biased": SimulatedJudge(position_bias=0.6, noise=0.1),
    "first-only": SimulatedJudge(position_bias=5.0, noise=0.1),
    "sampling": SimulatedJudge(noise=1.5),
}


def reply_text(body: dict[str, Any]) -> str:
    return JUDGES[body["model"]].reply_text(body)


def pairs_file(tmp_path: Path, n: int = 24) -> Path:
    """`n` pairs with hidden qualities, labelled by the truth; lengths independent of quality."""
    rng = random.Random(3)
    path = tmp_path / "pairs.jsonl"
    with path.open("w") as f:
        for i in range(n):
            qa, qb = rng.gauss(0, 1), rng.gauss(0, 1)
            a, b = (f"[a{i}] " + "word " * rng.randint(5, 40), f"[b{i}] " + "word " * rng.randint(5, 40))
            for judge in JUDGES.values():
                judge.add(a, qa), judge.add(b, qb)
            f.write(json.dumps({"id": f"p{i}", "instruction": f"Write essay {i}.", "response_a": a,
                                "response_b": b, "label": "A" if qa > qb else "B"}) + "\n")  # fmt: skip
    return path


def recipe(tmp_path: Path, server: FaultServer, model: str, pairs: Path, temperature: float = 0.0) -> Path:
    path = tmp_path / f"{model}.yaml"
    path.write_text(f"""\
name: calibrate-{model}
storage: {{root: {tmp_path / "store"}, model_cache: {tmp_path / "models"}}}
backends:
  oai: {{kind: openai-compatible, base_url: '{server.openai_base_url}', max_retries: 0, timeout_s: 10}}
generators:
  - {{name: policy, role: policy, backend: oai, model: writer}}
judge: {{backend: oai, model: {model}, mode: json, decoding: {{temperature: {temperature}, max_tokens: 64}}}}
calibration: {{pairs_file: {pairs}, repeats: 2}}
""")
    return path


def test_calibration_measures_a_known_bias_recommends_from_it_and_is_cached(prefect_harness, tmp_path):
    from flows.calibrate import calibrate_judge

    pairs = pairs_file(tmp_path)
    with FaultServer(reply_text=reply_text) as server:
        results = {m: calibrate_judge(recipe_path=str(recipe(tmp_path, server, m, pairs)))
                   for m in ("fair", "first-biased", "first-only")}  # fmt: skip
        fair, biased, only = (results[m]["metrics"] for m in ("fair", "first-biased", "first-only"))
        # No bias, no noise: no flips, the labels every time, one order suffices.
        assert fair["flip_rate"] == 0 and fair["agreement"] == 1.0 and fair["self_consistency"] == 1.0
        assert fair["recommended_position"] == "position-disadvantage"
        # A first-position bias of 0.6 sd: some pairs flip, A is favoured; recheck is recommended.
        assert 0.05 < biased["flip_rate"] < 0.5 and biased["first_position_rate"] > 0.6
        assert biased["recommended_position"] == "recheck" and biased["agreement"] < 1.0
        # The verdict is the position: every pair flips; swap, and a stronger judge.
        assert only["flip_rate"] == 1.0 and only["first_position_rate"] == 1.0
        assert only["recommended_position"] == "swap" and "stronger judge" in only["recommendation"]
        assert fair["judgments"] == 24 * 2 * 2 and fair["failed"] == 0 and fair["calls_per_judgment"] == 1.0
        assert fair["cost_usd_per_judgment"] is None  # a paid endpoint without a price: unpriced

        # The same recipe again: the stage is a cache hit; nothing is sent.
        server.clear()
        again = calibrate_judge(recipe_path=str(recipe(tmp_path, server, "fair", pairs)))
        assert again["cached"] and server.requests == [] and again["metrics"] == results["fair"]["metrics"]
        assert "Recommended `reward.position`: position-disadvantage" in again["markdown"]
        assert Path(again["plot"]).read_bytes()[:4] == b"\x89PNG"
        assert again["artifacts"] == ["calibrate-fair-judge-calibration-plot",
                                      "calibrate-fair-judge-calibration-summary"]  # fmt: skip

        # A sampling judge (temperature 1): repeats disagree sometimes.
        sampling = calibrate_judge(recipe_path=str(recipe(tmp_path, server, "sampling", pairs, 1.0)))[
            "metrics"
        ]
        assert 0.5 < sampling["self_consistency"] < 1.0

    storage = open_storage(load_recipe(recipe(tmp_path, server, "fair", pairs)).storage)
    rows = storage.datasets.read(storage.datasets.latest("judge_calibration")).to_pylist()
    assert len(rows) == 96 and {r["order"] for r in rows} == {"xy", "yx"}


def test_failed_judgments_are_recorded_not_counted_and_the_rerun_redoes_only_them(prefect_harness, tmp_path):
    from flows.calibrate import calibrate_judge

    pairs = pairs_file(tmp_path, n=6)
    with FaultServer([Fault("500"), Fault("500"), Fault("text", message="I cannot decide.")] * 1,
                     reply_text=reply_text) as server:  # fmt: skip
        path = recipe(tmp_path, server, "fair", pairs)
        first = calibrate_judge(recipe_path=str(path))
        m = first["metrics"]
        assert m["failed"] == 2 and m["judgments"] == 24 and not first["cached"]
        # The unparsable reply was re-asked and answered: not a failure, and never a verdict itself.
        assert m["calls_per_judgment"] == pytest.approx(25 / 24)
        assert m["flip_rate"] == 0 and m["agreement"] == 1.0  # computed from the verdicts that exist
        server.clear()
        second = calibrate_judge(recipe_path=str(path))
        assert second["metrics"]["failed"] == 0 and len(server.requests) == 2  # only the two failures


def test_pairs_from_the_ladders_need_the_curations_judge_and_are_refused_before_any_run(
    prefect_harness, tmp_path
):
    from configs.loading import ConfigError
    from flows.calibrate import calibrate_judge

    path = tmp_path / "reward-judge-only.yaml"
    path.write_text(f"""\
name: reward-judge-only
storage: {{root: {tmp_path / "store"}, model_cache: {tmp_path / "models"}}}
backends:
  oai: {{kind: openai-compatible, base_url: 'http://127.0.0.1:9'}}
generators:
  - {{name: policy, role: policy, backend: oai, model: writer}}
reward: {{judge: {{backend: oai, model: j, mode: json}}}}
""")
    with pytest.raises(ConfigError, match="need a `judge:` block"):
        calibrate_judge(recipe_path=str(path))
    assert not (tmp_path / "store" / "datasets").exists()  # nothing was run or written
