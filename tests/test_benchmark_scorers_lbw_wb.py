"""Faithfulness of the LongBench-Write and WritingBench scorers to the official harnesses.

Expected values are written out as the official formulas' arithmetic (THUDM/LongWriter
evaluation/eval_length.py, eval_quality.py, pred.py; X-PLUG/WritingBench calculate_scores.py,
calculate.py), not copied from the code under test. Pure Python; no model, no LLM call.
"""

from __future__ import annotations

import json

import pytest

from tasks.evaluation import longbench_write as lbw
from tasks.evaluation import writingbench as wb
from tasks.judging.pointwise import ParseFailure

DIMS = lbw.DIMENSIONS

# ---------------------------------------------------------------------------------------------
# LongBench-Write: word counting (pred.py::count_words)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello world", 2),
        ("你好，世界", 4),  # 4 ideographs; the full-width comma is not counted
        ("Hello 世界!", 1 + 2),
        ("Hello世界", 0 + 2),  # no \b between "o" and "世" (both \w): the Latin word is not counted
        ("don't stop", 2 + 1),  # "don", "t", "stop"
        ("GPT-4o has 3 apples", 1 + 0 + 1 + 1),  # "4o" and "3" have no ASCII-letter word
        ("日本語のテキスト", 3),  # only U+4E00..U+9FFF count: kana do not
        ("café ok", 0 + 1),  # "caf" is glued to "é" (a \w): not a word
        ("", 0),
    ],
)
def test_count_words_is_the_official_counter(text, expected):
    assert lbw.count_words(text) == expected


def test_count_words_differs_from_the_project_counter():
    from tasks.text import count_words as project_count_words

    text = "In 2024, GPT-4o wrote 日本語のテキスト."
    assert lbw.count_words(text) == 1 + 1 + 0 + 1 + 3  # In, GPT, wrote, 日本語
    assert project_count_words(text) != lbw.count_words(text)


# ---------------------------------------------------------------------------------------------
# LongBench-Write: length score (eval_length.py::score)
# ---------------------------------------------------------------------------------------------


def test_length_score_hand_values():
    assert lbw.length_score(1000, 1000) == 100.0
    assert lbw.length_score(1500, 1000) == pytest.approx(100 * (1 - (1.5 - 1) / 3))
    assert lbw.length_score(2000, 1000) == pytest.approx(100 * (1 - (2 - 1) / 3))  # 2x long: 66.67
    assert lbw.length_score(500, 1000) == pytest.approx(100 * (1 - (2 - 1) / 2))  # half: 50
    assert lbw.length_score(750, 1000) == pytest.approx(100 * (1 - (1000 / 750 - 1) / 2))
    assert lbw.length_score(4000, 1000) == 0.0  # 4x long: 1 - 3/3 = 0
    assert lbw.length_score(5000, 1000) == 0.0  # max(0, 1 - 4/3)
    assert lbw.length_score(1000, 3000) == 0.0  # 3x short: 1 - 2/2 = 0
    assert lbw.length_score(100, 1000) == 0.0  # far too short: max(0, 1 - 9/2)


def test_length_score_empty_output_is_zero_not_a_division_error():
    assert lbw.length_score(0, 1000) == 0.0
    assert lbw.length_score(lbw.count_words(""), 200) == 0.0


def test_length_score_refuses_bad_lengths():
    with pytest.raises(ValueError):
        lbw.length_score(100, 0)
    with pytest.raises(ValueError):
        lbw.length_score(-1, 100)


# ---------------------------------------------------------------------------------------------
# LongBench-Write: buckets
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("required", "label"),
    [
        (1, "0-500"),
        (499, "0-500"),
        (500, "500-2k"),
        (1999, "500-2k"),
        (2000, "2k-4k"),
        (3999, "2k-4k"),
        (4000, "4k-20k"),
        (19999, "4k-20k"),
        (20000, "4k-20k"),  # the benchmark has a 20,000-word item: the last bucket is closed
    ],
)
def test_length_bucket_edges(required, label):
    assert lbw.length_bucket(required) == label


@pytest.mark.parametrize("required", [0, -5, 20001])
def test_length_bucket_outside_the_benchmark_range(required):
    with pytest.raises(ValueError):
        lbw.length_bucket(required)


def test_every_real_item_falls_in_a_bucket(shared_benchmarks):
    path = shared_benchmarks / "longbench_write" / "longbench_write.jsonl"
    items = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(items) == 120
    counts = dict.fromkeys(lbw.BUCKET_LABELS, 0)
    for item in items:
        counts[lbw.length_bucket(item["length"])] += 1
    assert sum(counts.values()) == 120
    assert counts == {"0-500": 26, "500-2k": 36, "2k-4k": 31, "4k-20k": 27}
    assert max(item["length"] for item in items) == 20000


# ---------------------------------------------------------------------------------------------
# LongBench-Write: judge prompt, strict parser, quality mapping
# ---------------------------------------------------------------------------------------------


def test_judge_prompt_is_judge_txt_filled_in():
    assert len(lbw.JUDGE_PROMPT) == 1884  # evaluation/judge.txt @ ca6ccd4
    assert DIMS == (
        "Relevance",
        "Accuracy",
        "Coherence",
        "Clarity",
        "Breadth and Depth",
        "Reading Experience",
    )
    for number, dim in enumerate(DIMS, start=1):
        assert f"{number}. {dim}: From " in lbw.JUDGE_PROMPT
    messages = lbw.judge_messages("Write 100 words on tea.", "Tea is ...")
    assert [m["role"] for m in messages] == ["user"]
    content = messages[0]["content"]
    assert "<User Request>\n\nWrite 100 words on tea.\n\n</User Request>" in content
    assert "<Response>\n\nTea is ...\n\n</Response>" in content
    assert "$INST$" not in content and "$RESPONSE$" not in content


def _reply(**overrides):
    scores = {"Analysis": "Solid.", **dict(zip(DIMS, (5, 4, 4, 3, 2, 4), strict=True))}
    scores.update(overrides)
    return json.dumps(scores)


def test_parser_accepts_a_plain_and_a_fenced_object():
    plain = lbw.parse_judge_reply(_reply())
    assert not isinstance(plain, ParseFailure)
    assert dict(plain.scores) == dict(zip(DIMS, (5.0, 4.0, 4.0, 3.0, 2.0, 4.0), strict=True))
    assert list(plain.scores) == list(DIMS)
    assert plain.analysis == "Solid."
    fenced = lbw.parse_judge_reply(f"```json\n{_reply()}\n```")
    assert not isinstance(fenced, ParseFailure) and fenced.scores == plain.scores
    no_analysis = json.loads(_reply())
    del no_analysis["Analysis"]
    assert not isinstance(lbw.parse_judge_reply(json.dumps(no_analysis)), ParseFailure)


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (json.dumps({d: 3 for d in DIMS if d != "Clarity"}), "missing dimension(s) 'Clarity'"),
        (_reply(Coherence=6), "'Coherence' must be between 1 and 5, got 6"),
        (_reply(Accuracy=0), "'Accuracy' must be between 1 and 5, got 0"),
        (_reply(Relevance="4"), "'Relevance' must be a number"),
        (_reply(Relevance=True), "'Relevance' must be a number"),
        (_reply(Overall=4), "unexpected key(s) 'Overall'"),
        ("Here is my evaluation: " + _reply(), "not exactly one JSON value"),
        (_reply() + "\nHope this helps.", "not exactly one JSON value"),
        ("```json\n" + _reply() + "\n```\nDone.", "code fence"),
        (_reply()[:-1] + ', "Clarity": 5}', "duplicate key(s) 'Clarity'"),
        ("[1, 2, 3]", "expected a JSON object"),
        ("", "empty"),
    ],
)
def test_parser_refuses_with_a_message(reply, message):
    parsed = lbw.parse_judge_reply(reply)
    assert isinstance(parsed, ParseFailure)
    assert message in parsed.error


def test_quality_score_mapping():
    assert lbw.quality_score(dict.fromkeys(DIMS, 5)) == 100.0
    assert lbw.quality_score(dict.fromkeys(DIMS, 1)) == 0.0
    mixed = dict(zip(DIMS, (4, 3, 5, 2, 1, 4), strict=True))
    expected = ((4 - 1) * 25 + (3 - 1) * 25 + (5 - 1) * 25 + (2 - 1) * 25 + (1 - 1) * 25 + (4 - 1) * 25) / 6
    assert lbw.quality_score(mixed) == pytest.approx(expected)  # 325 / 6
    with pytest.raises(ValueError):
        lbw.quality_score({d: 3 for d in DIMS[:5]})


def test_quality_aggregate_maps_per_dimension_means_then_averages():
    a = dict(zip(DIMS, (5, 5, 5, 5, 5, 5), strict=True))
    b = dict(zip(DIMS, (4, 3, 5, 2, 1, 4), strict=True))
    result = lbw.quality_aggregate([a, b])
    assert result is not None
    per_dim = {d: ((a[d] + b[d]) / 2 - 1) * 25 for d in DIMS}
    assert result["Relevance"] == pytest.approx(((5 + 4) / 2 - 1) * 25)
    assert result["Breadth and Depth"] == pytest.approx(((5 + 1) / 2 - 1) * 25)
    assert result["total"] == pytest.approx(sum(per_dim.values()) / 6)
    # the affine map makes it equal to the mean of per-item scores
    assert result["total"] == pytest.approx((lbw.quality_score(a) + lbw.quality_score(b)) / 2)
    assert lbw.quality_aggregate([]) is None


# ---------------------------------------------------------------------------------------------
# LongBench-Write: aggregate
# ---------------------------------------------------------------------------------------------


def test_aggregate_by_hand_with_a_failed_judgment():
    all5 = dict.fromkeys(DIMS, 5)
    mixed = dict(zip(DIMS, (4, 3, 5, 2, 1, 4), strict=True))
    all1 = dict.fromkeys(DIMS, 1)
    rows = [
        lbw.LongBenchWriteRow(required=100, output_words=100, quality=all5),  # 0-500
        lbw.LongBenchWriteRow(required=1000, output_words=2000, quality=mixed),  # 500-2k
        lbw.LongBenchWriteRow(required=3000, output_words=1500, quality=None),  # 2k-4k, judge failed
        lbw.LongBenchWriteRow(required=5000, output_words=0, quality=all1),  # 4k-20k, empty output
    ]
    result = lbw.aggregate(rows)

    s_l = (100 + 100 * (1 - (2 - 1) / 3) + 100 * (1 - (2 - 1) / 2) + 0) / 4
    # S_q over the three judged items only, per dimension first (eval_quality.py)
    dims_judged = [(5, 4, 1), (5, 3, 1), (5, 5, 1), (5, 2, 1), (5, 1, 1), (5, 4, 1)]
    s_q = sum((sum(v) / 3 - 1) * 25 for v in dims_judged) / 6
    assert result["n"] == 4
    assert result["n_quality"] == 3
    assert result["n_quality_failed"] == 1
    assert result["S_l"] == pytest.approx(s_l)
    assert result["S_q"] == pytest.approx(s_q)
    assert result["S"] == pytest.approx((s_l + s_q) / 2)
    assert result["dimensions"]["Relevance"] == pytest.approx(((5 + 4 + 1) / 3 - 1) * 25)

    buckets = result["by_bucket"]
    assert list(buckets) == ["0-500", "500-2k", "2k-4k", "4k-20k"]
    assert (buckets["0-500"]["S_l"], buckets["0-500"]["S_q"], buckets["0-500"]["S"]) == (100.0, 100.0, 100.0)
    assert buckets["500-2k"]["S_l"] == pytest.approx(100 * (1 - (2 - 1) / 3))
    assert buckets["500-2k"]["S_q"] == pytest.approx(325 / 6)
    assert buckets["2k-4k"]["S_l"] == pytest.approx(50.0)
    assert buckets["2k-4k"]["S_q"] is None and buckets["2k-4k"]["S"] is None  # never 0
    assert buckets["2k-4k"]["n_quality_failed"] == 1
    assert (buckets["4k-20k"]["S_l"], buckets["4k-20k"]["S_q"], buckets["4k-20k"]["S"]) == (0.0, 0.0, 0.0)


def test_aggregate_empty_and_from_text():
    empty = lbw.aggregate([])
    assert empty["n"] == 0 and empty["S_l"] is None and empty["S"] is None
    assert all(b["n"] == 0 for b in empty["by_bucket"].values())
    row = lbw.LongBenchWriteRow.from_text(4, "Tea is 很好", None)
    assert row.output_words == 2 + 2
    with pytest.raises(ValueError):
        lbw.aggregate([lbw.LongBenchWriteRow(required=100, output_words=10, quality={"Relevance": 5})])


# ---------------------------------------------------------------------------------------------
# WritingBench
# ---------------------------------------------------------------------------------------------

AE, EDU = "Academic & Engineering", "Education"


def _wb_rows():
    rows = [(1, AE, "Introduction", f"c{k}", s) for k, s in enumerate((8, 6, 7, 9, 5), start=1)]
    rows += [(2, AE, "Paper Outline", f"c{k}", s) for k, s in enumerate((10, 10, 9, None, 8), start=1)]
    rows += [(3, EDU, "Lesson Plan", f"c{k}", s) for k, s in enumerate((4, 4, 4, 4, 3), start=1)]
    return rows


def test_writingbench_aggregate_by_hand():
    result = wb.aggregate(_wb_rows())
    overall = (8 + 6 + 7 + 9 + 5 + 10 + 10 + 9 + 8 + 4 + 4 + 4 + 4 + 3) / 14  # 91 / 14 = 6.5
    assert result["score"] == pytest.approx(overall)
    assert result["score_x10"] == pytest.approx(overall * 10)  # 65.0, the leaderboard scale
    assert result["score"] != pytest.approx(91 / 15)  # a failure is not scored 0
    assert (result["n_queries"], result["n_scores"], result["n_failed"]) == (3, 14, 1)
    assert result["failed"] == [(2, "c4")]
    assert result["n_queries_with_failures"] == 1 and result["n_queries_without_score"] == 0

    q1, q2, q3 = 35 / 5, 37 / 4, 19 / 5  # per-query means over scored criteria
    d1 = result["by_domain1"]
    assert list(d1) == [AE, EDU]  # DOMAIN1_ORDER
    assert d1[AE]["score"] == pytest.approx((q1 + q2) / 2)  # mean of query means: 8.125, not 72/9
    assert d1[AE]["score_x10"] == pytest.approx((q1 * 10 + q2 * 10) / 2)
    assert (d1[AE]["n_queries"], d1[AE]["n_scores"], d1[AE]["n_failed"]) == (2, 9, 1)
    assert d1[EDU]["score"] == pytest.approx(q3) and d1[EDU]["score_x10"] == pytest.approx(38.0)
    d2 = result["by_domain2"]
    assert d2["Introduction"]["score"] == pytest.approx(7.0)
    assert d2["Paper Outline"]["score"] == pytest.approx(9.25)
    assert d2["Paper Outline"]["n_failed"] == 1
    assert d2["Lesson Plan"]["score_x10"] == pytest.approx(38.0)


def test_writingbench_query_with_every_criterion_failed():
    rows = [(1, AE, "Introduction", "c1", 6), (1, AE, "Introduction", "c2", 8)]
    rows += [(2, EDU, "Lesson Plan", f"c{k}", None) for k in (1, 2)]
    result = wb.aggregate(rows)
    assert result["score"] == pytest.approx((6 + 8) / 2)
    assert result["n_failed"] == 2 and result["n_queries_without_score"] == 1
    assert result["by_domain1"][EDU]["score"] is None  # nothing to average: None, never 0
    assert result["by_domain1"][EDU]["n_queries"] == 0


def test_writingbench_aggregate_refuses_bad_rows():
    with pytest.raises(ValueError):
        wb.aggregate([(1, AE, "Introduction", "c1", 11)])
    with pytest.raises(ValueError):
        wb.aggregate([(1, AE, "Introduction", "c1", 0)])
    with pytest.raises(ValueError):
        wb.aggregate([(1, AE, "Introduction", "c1", 5), (1, EDU, "Introduction", "c2", 5)])
    empty = wb.aggregate([])
    assert empty["score"] is None and empty["n_queries"] == 0


def test_writingbench_critic_prompt():
    criterion = {"name": "Length", "criteria_description": "About 500 words.", "1-2": "far off"}
    messages = wb.critic_messages("Write an essay.", "<think>plan</think>\n\nThe essay.", criterion)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == wb.EVALUATE_SYSTEM
    user = messages[1]["content"]
    assert user.startswith("Evaluate the Response based on the Query and Criteria provided")
    assert user.count(f"```{criterion!r}```") == 2  # the dict's repr, twice, as the official format()
    assert "** Query **\n```Write an essay.```" in user
    assert "** Response **\n```The essay.```" in user and "plan" not in user
    assert user.count("** Output format ** \n") == 2
    assert user.endswith('text elements."\n}\n```')
    reply = wb.parse_critic_reply('{"score": 7, "reason": "Close to 500 words."}')
    assert not isinstance(reply, ParseFailure) and reply.score == 7
    assert isinstance(wb.parse_critic_reply('{"score": 7.0, "reason": "x"}'), ParseFailure)
