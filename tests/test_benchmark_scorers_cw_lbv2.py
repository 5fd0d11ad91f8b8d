"""Creative Writing v3 and LongBench v2 scorers against the official formulas, worked by hand."""

from __future__ import annotations

import json
import re

import pytest

from tasks.evaluation import creative_writing_v3 as cw
from tasks.evaluation import longbench_v2 as lb

# ----------------------------------------------------------------------------- Creative Writing v3

# One judge reply in the official output format, all 22 criteria. Positives (13) and negatives (9):
POSITIVE = {
    "Adherence to Instructions": 16,
    "Believable Character Actions": 14,
    "Nuanced Characters": 12,
    "Consistent Voice/Tone of Writing": 15,
    "Imagery and Descriptive Quality": 17,
    "Elegant Prose": 13,
    "Emotionally Engaging": 14,
    "Emotionally Complex": 11,
    "Coherent": 16,
    "Well-earned Lightness or Darkness": 12,
    "Sentences Flow Naturally": 15,
    "Overall Reader Engagement": 13,
    "Overall Impression": 14,
}
NEGATIVE = {
    "Meandering": 4,
    "Weak Dialogue": 6,
    "Tell-Don't-Show": 5,
    "Unsurprising or Uncreative": 7,
    "Amateurish": 3,
    "Purple Prose": 2,
    "Overwrought": 4,
    "Incongruent Ending Positivity": 8,
    "Unearned Transformations": 5,
}
# positives: 16+14+12+15+17+13+14+11+16+12+15+13+14 = 182
# negatives inverted (20 - s): 16+14+15+13+17+18+16+12+15 = 136
# piece score = (182 + 136) / 22 = 318 / 22 = 159 / 11 = 14.4545...
FULL_PIECE_SCORE = 318 / 22


def _reply(scores: dict[str, float], analysis: str = "The piece opens well.") -> str:
    lines = "\n\n".join(f"{name}: {value:g}" for name, value in scores.items())
    return f"[Analysis]\n\n{analysis}\n\n[Scores]\n\n{lines}\n"


def _official_parse(text: str) -> dict[str, float]:
    """core/scoring.py::parse_judge_scores_creative, for comparison (EQ-bench/creative-writing-bench)."""
    scores = {}
    for pattern in (r"(.*?):\s*(?:Score\s+)?(-?\d+(?:\.\d+)?)", r"(.*?):\s*\[(-?\d+(?:\.\d+)?)\]"):
        for name, value in re.findall(pattern, text):
            if float(value) <= 20:
                scores[name.strip()] = float(value)
    return scores


def _official_piece(scores: dict[str, float]) -> float:
    """core/scoring.py::compute_creative_scores for one piece."""
    values = [20.0 - v if k in cw.NEGATIVE_CRITERIA else v for k, v in scores.items()]
    values = [v for v in values if v <= 20]
    return sum(values) / len(values)


def test_rubric_constants_are_the_official_lists():
    assert len(cw.CRITERIA) == 22 and len(set(cw.CRITERIA)) == 22
    assert len(cw.NEGATIVE_CRITERIA) == 9 and set(cw.NEGATIVE_CRITERIA) <= set(cw.CRITERIA)
    assert set(POSITIVE) | set(NEGATIVE) == set(cw.CRITERIA)
    assert set(NEGATIVE) == set(cw.NEGATIVE_CRITERIA)


def test_full_reply_piece_score_by_hand_and_as_the_official_code():
    reply = _reply({**POSITIVE, **NEGATIVE})
    parsed = cw.parse_rubric_reply(reply)
    assert parsed.scores == {**POSITIVE, **NEGATIVE}
    assert parsed.unknown == () and parsed.out_of_range == () and parsed.missing() == ()
    assert cw.piece_score(parsed.scores) == pytest.approx(FULL_PIECE_SCORE)
    assert round(FULL_PIECE_SCORE, 6) == 14.454545
    # On a clean reply the official parser and formula give the same numbers.
    assert _official_parse(reply) == parsed.scores
    assert _official_piece(_official_parse(reply)) == pytest.approx(FULL_PIECE_SCORE)


def test_unknown_criteria_and_out_of_range_values_are_ignored():
    reply = (
        _reply(
            {**POSITIVE, **NEGATIVE},
            analysis="Pacing: 9\nScore: 15\nThe bells ring at 10:30 sharp.",
        )
        .replace("Coherent: 16", "Coherent: 25")
        .replace("Meandering: 4", "Meandering: -2")
    )
    parsed = cw.parse_rubric_reply(reply)
    assert parsed.unknown == ("Pacing", "Score")
    assert parsed.out_of_range == (("Coherent", 25.0), ("Meandering", -2.0))
    assert parsed.missing() == ("Coherent", "Meandering")
    assert "Pacing" not in parsed.scores and "Score" not in parsed.scores
    # 20 criteria left: 318 - 16 (Coherent) - (20 - 4) (Meandering inverted) = 286; 286 / 20 = 14.3
    assert cw.piece_score(parsed.scores) == pytest.approx(286 / 20) == 14.3
    # For contrast, the official parser keeps "Pacing: 9" and "Score: 15" (then averages them in),
    # keeps "Meandering: -2" (dropped only later: 20 - -2 = 22 > 20), drops "Coherent: 25" (> 20)
    # and reads "10:30" as "The bells ring at 10": 30 (dropped: > 20).
    official = _official_parse(reply)
    assert official["Pacing"] == 9 and official["Score"] == 15 and official["Meandering"] == -2
    assert "Coherent" not in official and "The bells ring at 10" not in official


def test_partial_replies_are_scored_on_what_was_parsed_above_the_threshold():
    twelve = dict(list(POSITIVE.items())[:8] + list(NEGATIVE.items())[:4])
    # positives 16+14+12+15+17+13+14+11 = 112; negatives Meandering 4, Weak Dialogue 6,
    # Tell-Don't-Show 5, Unsurprising 7 -> 16+14+15+13 = 58; (112 + 58) / 12 = 170 / 12
    parsed = cw.parse_rubric_scores(_reply(twelve))
    assert parsed == twelve
    assert cw.piece_score(parsed) == pytest.approx(170 / 12)

    ten = dict(list(POSITIVE.items())[:10])  # 10 < MIN_PARSED_CRITERIA = 11: a parse failure
    with pytest.raises(cw.TooFewCriteria):
        cw.piece_score(cw.parse_rubric_scores(_reply(ten)))
    with pytest.raises(cw.TooFewCriteria):
        cw.piece_score(cw.parse_rubric_scores("I cannot rate this piece."))
    # The official rule (any parsed number suffices): 16+14+12+15+17+13+14+11+16+12 = 140 / 10
    assert cw.piece_score(cw.parse_rubric_scores(_reply(ten)), min_criteria=1) == pytest.approx(14.0)


def test_score_line_surface_forms():
    reply = "\n".join(
        [
            "**Coherent:** 15",
            "- Meandering: [4]",
            "1. Elegant Prose: Score 12",
            "overall impression: 13/20",
            "Tell-Don’t-Show: 5",  # curly apostrophe
            "Consistent Voice / Tone of Writing: 14.5",
            "Nuanced Characters: 11 (could be deeper)",  # commentary after the score: not a score line
            "Weak Dialogue: 9",
            "Weak Dialogue: 7",  # a criterion seen twice keeps its last valid value
            "Weak Dialogue: 30",  # ... and a refused value never replaces it
        ]
    )
    parsed = cw.parse_rubric_reply(reply)
    assert parsed.scores == {
        "Coherent": 15,
        "Meandering": 4,
        "Elegant Prose": 12,
        "Overall Impression": 13,
        "Tell-Don't-Show": 5,
        "Consistent Voice/Tone of Writing": 14.5,
        "Weak Dialogue": 7,
    }
    assert parsed.out_of_range == (("Weak Dialogue", 30.0),)
    # 15 + (20-4) + 12 + 13 + (20-5) + 14.5 + (20-7) = 98.5 over 7 criteria
    assert cw.piece_score(parsed.scores, min_criteria=1) == pytest.approx(98.5 / 7)


def test_piece_score_refuses_what_the_parser_never_returns():
    with pytest.raises(ValueError, match="not a criterion"):
        cw.piece_score({"Pacing": 10.0}, min_criteria=1)
    with pytest.raises(ValueError, match="outside"):
        cw.piece_score({"Coherent": 21.0}, min_criteria=1)


def test_benchmark_score_is_five_times_the_flat_mean():
    pieces = [FULL_PIECE_SCORE, 10.0, 16.5]
    # mean = (159/11 + 10 + 16.5) / 3 = (450.5/11) / 3 = 13.6515...; x 5 = 68.2575...
    assert cw.benchmark_score(pieces) == pytest.approx(5 * (450.5 / 11) / 3)
    assert cw.benchmark_score(pieces) == pytest.approx(68.257576, abs=1e-6)
    assert cw.benchmark_score([20.0, 20.0]) == 100.0 and cw.benchmark_score([0.0]) == 0.0
    with pytest.raises(ValueError):
        cw.benchmark_score([])
    summary = cw.benchmark_summary([FULL_PIECE_SCORE, None, 10.0, 16.5])
    assert summary["score"] == pytest.approx(cw.benchmark_score(pieces))
    assert summary["score_0_20"] == pytest.approx((450.5 / 11) / 3)
    assert (summary["pieces"], summary["scored"], summary["failed"]) == (4, 3, 1)
    assert cw.benchmark_summary([None])["score"] is None


def test_judge_prompt_is_filled_as_the_official_code_fills_it():
    prompt = cw.judge_prompt("Write a story. <SEED>", "Once {upon} a time.")
    assert "[PROMPT START]\n\nWrite a story. <SEED>\n\n[PROMPT END]" in prompt
    assert "[TEST MODEL RESPONSE]\n\nOnce {upon} a time.\n\n[TEST MODEL RESPONSE END]" in prompt
    assert "lower is better:\n" + ", ".join(cw.NEGATIVE_CRITERIA) + "\n\n" in prompt
    # The official file ends with the last criterion: no final newline (checked at e7ab009).
    assert prompt.endswith("following criteria:\n\n" + "\n".join("- " + c for c in cw.CRITERIA))
    assert "- Adherence to Instructions\n- Believable Character Actions\n" in prompt
    assert "Unearned Transformations, Incongruent Ending Positivity, Overwrought" in prompt
    assert cw.judge_messages("p", "r") == [{"role": "user", "content": cw.judge_prompt("p", "r")}]


def test_reasoning_strip_and_seed_numbers():
    assert cw.strip_reasoning("<think>hm</think>Coherent: 5") == "Coherent: 5"
    assert cw.strip_reasoning("no tags </think> here") == "no tags </think> here"
    assert [cw.official_seed_number(i, 10) for i in (1, 2, 3, 10, 11)] == [1, 2, 3, 10, 1]


# ------------------------------------------------------------------------------------- LongBench v2


@pytest.mark.parametrize(
    "text,expected",
    [
        ("The correct answer is (B)", "B"),
        ("The correct answer is C.", "C"),
        ("**The correct answer is (D)**", "D"),  # every * is deleted first
        ("The correct answer is **(A)**", "A"),
        ("The correct answer is B, although The correct answer is (C) too", "C"),  # parens first
        ("The correct answer is (A) ... The correct answer is (B)", "A"),  # the first match
        ("The correct answer is Apples", "A"),  # no word boundary in the official regex
        ("the correct answer is (a)", None),  # case-sensitive
        ("The correct answer is (E)", None),
        ("The answer is (B)", None),
        ("", None),
    ],
)
def test_extract_answer_official_patterns(text, expected):
    assert lb.extract_answer(text) == expected


def test_truncate_middle_keeps_first_and_last_halves():
    ids = list(range(10))
    # m = 5: ids[:5//2] + ids[-5//2:] = ids[:2] + ids[-3:]  (-5//2 == -3)
    assert lb.truncate_middle(ids, 5) == [0, 1, 7, 8, 9]
    # m = 6: ids[:3] + ids[-3:]
    assert lb.truncate_middle(ids, 6) == [0, 1, 2, 7, 8, 9]
    assert lb.truncate_middle(ids, 1) == [9]
    assert lb.truncate_middle(ids, 10) == ids and lb.truncate_middle(ids, 50) == ids
    with pytest.raises(ValueError):
        lb.truncate_middle(ids, 0)


ITEM = {
    "_id": "x",
    "question": " Which? ",
    "choice_A": " one",
    "choice_B": "two ",
    "choice_C": "three",
    "choice_D": "four",
    "answer": "B",
    "context": "\n Some $Q$ text. \n",
}


def test_build_prompt_fills_the_official_template():
    assert lb.build_prompt(ITEM) == (
        "Please read the following text and answer the question below.\n\n<text>\nSome $Q$ text.\n"
        "</text>\n\nWhat is the correct answer to this question: Which?\nChoices:\n(A) one\n(B) two\n"
        "(C) three\n(D) four\n\n"
        'Format your response as follows: "The correct answer is (insert answer here)".'
    )
    assert "<text>\nother\n</text>" in lb.build_prompt(ITEM, " other ")
    no_context = lb.build_prompt(
        {k: v for k, v in ITEM.items() if k != "context"}, template=lb.TEMPLATE_0SHOT_NO_CONTEXT
    )
    assert no_context.startswith("What is the correct answer to this question: Which?\n")
    assert lb.build_prompt(ITEM, template=lb.TEMPLATE_0SHOT_COT).endswith(
        "(D) four\n\nLet’s think step by step:"
    )
    ans = lb.build_cot_answer_prompt(ITEM, "  B looks right. \n")
    assert "Let’s think step by step: B looks right.\n\nBased on the above" in ans
    assert "The text is too long and omitted here." in ans
    with pytest.raises(ValueError):
        lb.build_prompt(ITEM, template=lb.TEMPLATE_0SHOT_COT_ANS)
    assert lb.prompt_messages("p") == [{"role": "user", "content": "p"}]


def _row(i, difficulty, length, response, answer):
    return {"_id": i, "difficulty": difficulty, "length": length, "response": response, "answer": answer}


ROWS = [
    _row("r1", "easy", "short", "The correct answer is (B)", "B"),  # right
    _row("r2", "hard", "short", "The correct answer is C", "D"),  # wrong
    _row("r3", "hard", "medium", None, "A"),  # the call failed: wrong, reported
    _row("r4", "easy", "long", "I think it is B.", "B"),  # nothing extractable: wrong, reported
    _row("r5", "easy", "medium", "**The correct answer is (A)**", "A"),  # right
    _row("r6", "hard", "long", "The correct answer is (D)", "D"),  # right
]


def test_aggregate_by_hand():
    out = lb.aggregate(ROWS)
    # overall 3 right of 6 = 50% (the official code would drop r3: 3 of 5 = 60%)
    assert (out["n"], out["correct"], out["accuracy"]) == (6, 3, pytest.approx(50.0))
    # easy r1 r4 r5: 2/3; hard r2 r3 r6: 1/3
    assert out["by_difficulty"]["easy"] == {"n": 3, "correct": 2, "accuracy": pytest.approx(200 / 3)}
    assert out["by_difficulty"]["hard"] == {"n": 3, "correct": 1, "accuracy": pytest.approx(100 / 3)}
    # short r1 r2: 1/2; medium r3 r5: 1/2; long r4 r6: 1/2
    for length in ("short", "medium", "long"):
        assert out["by_length"][length] == {"n": 2, "correct": 1, "accuracy": pytest.approx(50.0)}
    assert (out["failed_calls"], out["failed_ids"]) == (1, ["r3"])
    assert (out["unextracted"], out["unextracted_ids"]) == (1, ["r4"])
    assert out["predictions"] == {"r1": "B", "r2": "C", "r3": None, "r4": None, "r5": "A", "r6": "D"}
    # result.py's `compensated`: r4 (unextracted) earns 0.25, r3 (failed) still 0
    comp = lb.aggregate(ROWS, compensated=True)
    assert comp["accuracy"] == pytest.approx(100 * 3.25 / 6)
    assert comp["by_difficulty"]["easy"]["accuracy"] == pytest.approx(100 * 2.25 / 3)
    assert comp["by_length"]["long"]["accuracy"] == pytest.approx(100 * 1.25 / 2)
    assert comp["by_length"]["medium"]["accuracy"] == pytest.approx(50.0)


def test_aggregate_refuses_bad_rows_and_handles_empty_splits():
    with pytest.raises(ValueError, match="duplicate"):
        lb.aggregate([ROWS[0], ROWS[0]])
    with pytest.raises(ValueError, match="difficulty"):
        lb.aggregate([{**ROWS[0], "difficulty": "medium"}])
    with pytest.raises(ValueError, match="gold"):
        lb.aggregate([{**ROWS[0], "answer": "E"}])
    out = lb.aggregate([ROWS[0]])
    assert out["by_difficulty"]["hard"] == {"n": 0, "correct": 0, "accuracy": None}
    assert lb.aggregate([])["accuracy"] is None


# ------------------------------------------------------------------------------- the real files


def test_real_benchmark_files(shared_benchmarks):
    prompts = json.loads(
        (shared_benchmarks / "creative_writing_v3" / "creative_writing_prompts_v3.json").read_text("utf-8")
    )
    assert len(prompts) == 32
    for entry in prompts.values():
        base = entry["writing_prompt"]
        assert cw.SEED_SLOT in base and len(entry["seed_modifiers"]) >= cw.ITERATIONS
        judge = cw.judge_prompt(base, "A response.")  # the official judge sees the unexpanded prompt
        assert base in judge and all(f"\n- {c}" in judge for c in cw.CRITERIA)

    items = json.loads((shared_benchmarks / "longbench_v2" / "sample.json").read_text("utf-8"))
    assert items
    rows = []
    for item in items:
        assert item["answer"] in lb.ANSWERS
        assert item["difficulty"] in lb.DIFFICULTIES and item["length"] in lb.LENGTHS
        prompt = lb.build_prompt(item)
        assert f"<text>\n{item['context'].strip()}\n</text>" in prompt
        assert f"question: {item['question'].strip()}\nChoices:\n" in prompt
        for letter in lb.ANSWERS:
            assert f"({letter}) {item['choice_' + letter].strip()}\n" in prompt
        assert "$" not in prompt.replace(item["context"].strip(), "")
        rows.append({**item, "response": f"The correct answer is ({item['answer']})"})
    out = lb.aggregate(rows)
    assert out["accuracy"] == 100.0 and out["n"] == len(items)
    assert sum(s["n"] for s in out["by_length"].values()) == len(items)
