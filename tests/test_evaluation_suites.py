"""The benchmark suites of stage 6: loaders on the real benchmark files, the official judge prompts,
json and logprob judging with hand-computed scores, failures (unparsable, failed call, failed
generation), and the aggregates."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil

import pytest

from configs.loading import ConfigError
from configs.schema import (
    BENCHMARKS,
    HARNESS_INPUT_TOKENS,
    HARNESS_OUTPUT_TOKENS,
    BenchmarkConfig,
    JudgeConfig,
)
from tasks.evaluation import creative_writing_v3 as cw3
from tasks.evaluation import longbench_v2 as lbv2
from tasks.evaluation import longbench_write as lbw
from tasks.evaluation import writingbench as wb
from tasks.evaluation.base import BenchItem, ItemScore
from tasks.evaluation.creative_writing_v3 import CW3_CRITERION_ANSWER
from tasks.evaluation.longbench_write import LBW_DIMENSION_ANSWER
from tasks.evaluation.registry import SUITES, data_fingerprint
from tasks.evaluation.writingbench import WB_DIGIT_ANSWER
from tasks.instructions.loaders import InstructionDataError
from tasks.llm.base import EndpointFailingError
from tests.support.fake_llm import FakeCall, FakeLLM, FakeProbe, fail

WB, LBW, CW3, LBV2, CW3_ELO = (SUITES[name] for name in BENCHMARKS)
JUDGE = JudgeConfig(backend="api", model="judge", max_parse_retries=1)
LOGPROB_JUDGE = JudgeConfig(backend="local", model="judge", mode="logprob")


def run(coro):
    return asyncio.run(coro)


def serialisable(score: ItemScore) -> ItemScore:
    json.dumps(score.details, allow_nan=False)  # the stage stores details as JSON
    return score


def raw_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# Registry and decodings
# ---------------------------------------------------------------------------------------------


def test_registry_holds_one_suite_per_benchmark_name():
    assert list(SUITES) == list(BENCHMARKS)
    assert [s.name for s in SUITES.values()] == list(BENCHMARKS)
    assert [s.needs_judge for s in SUITES.values()] == [True, True, True, False, True]
    assert [s.truncates_input for s in SUITES.values()] == [False, False, False, True, False]


def test_generation_decodings_are_the_harnesses_with_max_tokens_applied(tmp_path):
    default, capped = BenchmarkConfig(path=tmp_path), BenchmarkConfig(path=tmp_path, max_tokens=300)
    d = WB.generation_decoding(default, 7)
    assert (d.temperature, d.top_p, d.max_tokens, d.seed) == (0.7, 0.8, 16000, 7)
    d = LBW.generation_decoding(default, 7)
    assert (d.temperature, d.top_p, d.max_tokens) == (0.5, 1.0, 32768)
    d = CW3.generation_decoding(default, None)
    assert (d.temperature, d.max_tokens, d.seed) == (0.7, 4000, None)
    d = LBV2.generation_decoding(default, 0)
    assert (d.temperature, d.max_tokens) == (0.1, 128)
    assert CW3_ELO.generation_decoding(default, 3) == CW3.generation_decoding(
        default, 3
    )  # the rubric run's pieces
    for suite in SUITES.values():
        assert suite.generation_decoding(capped, 0).max_tokens == 300
    assert LBV2.max_input_tokens(default) == 120_000
    assert LBV2.max_input_tokens(BenchmarkConfig(path=tmp_path, max_input_tokens=4096)) == 4096
    # The recipe's context check reads the same budgets (configs.schema, which cannot import suites).
    assert {
        n: s.generation_decoding(default, 0).max_tokens for n, s in SUITES.items()
    } == HARNESS_OUTPUT_TOKENS
    assert {"longbench_v2": LBV2.max_input_tokens(default)} == HARNESS_INPUT_TOKENS


def test_a_judged_suite_without_judge_or_with_logprob_on_a_chat_only_client_refuses(tmp_path):
    item = BenchItem(id="x", prompt="p", data={"required": 100})
    with pytest.raises(ValueError, match="needs a judge"):
        run(LBW.score(item, "text", None, None))
    with pytest.raises(TypeError, match="next_token_logprobs"):
        run(LBW.score(item, "text", FakeLLM([]), LOGPROB_JUDGE))


# ---------------------------------------------------------------------------------------------
# Loaders and fingerprints on the real files
# ---------------------------------------------------------------------------------------------


def test_writingbench_loads_every_query_with_its_raw_criteria(shared_benchmarks):
    path = shared_benchmarks / "writingbench" / "length_subset.jsonl"
    rows = raw_jsonl(path)
    items = WB.load(BenchmarkConfig(path=path))
    assert len(items) == len(rows) == 222
    assert [i.id for i in items] == [f"wb-{r['index']}" for r in rows]
    first, row = items[0], rows[0]
    assert first.id == "wb-16" and first.prompt == row["query"]
    assert first.labels == {"domain1": "Academic & Engineering", "domain2": "Introduction"}
    assert first.required_length is None
    for item, r in zip(items, rows, strict=True):
        assert item.data["criteria"] == r["checklist"]  # the dicts as in the file, key order too
        assert [list(c) for c in item.data["criteria"]] == [list(c) for c in r["checklist"]]
    limited = WB.load(BenchmarkConfig(path=path, limit=3))
    assert [i.id for i in limited] == [i.id for i in items[:3]]


def test_the_judge_prompts_are_the_official_files_byte_for_byte():
    """sha256 of the official texts, read from the repositories themselves: X-PLUG/WritingBench @
    ae2d517 `prompt.py` (evaluate_system, evaluate_prompt) and EQ-bench/creative-writing-bench @
    e7ab009 `data/creative_writing_judging_prompt.txt` (1,666 bytes, no final newline)."""
    import hashlib

    from tasks.evaluation import creative_writing_v3 as cw

    def sha(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    assert sha(wb.EVALUATE_SYSTEM) == "27ba80325caaf209ad169b616fc7ef203445f93649a85cda9328133489f46cc1"
    assert sha(wb.EVALUATE_PROMPT) == "db50de309a38e922c29bdaf9dae753a84f6141b0d60f35bd5001bf5e17d6f7ef"
    assert sha(cw.JUDGE_PROMPT_TEMPLATE) == "650da667804d81f5e2af042502a84c9cbe9d29920ab44d2e6ae05d3b42f573ac"


def test_writingbench_critic_prompt_is_the_official_one_on_the_raw_criterion(shared_benchmarks):
    path = shared_benchmarks / "writingbench" / "length_subset.jsonl"
    row = raw_jsonl(path)[0]
    item = WB.load(BenchmarkConfig(path=path, limit=1))[0]
    llm = FakeLLM(lambda call: '{"score": 7, "reason": "ok"}')
    run(WB.score(item, "<think>zqxplan</think>\n\nThe essay.", llm, JUDGE))
    assert len(llm.calls) == 5
    expected = [wb.critic_messages(row["query"], "The essay.", c) for c in row["checklist"]]
    got = [list(call.messages) for call in llm.calls]
    assert sorted(got, key=str) == sorted(expected, key=str)
    # each call shows its criterion's Python dict repr (twice), as the official harness does
    assert sorted(sum(call.user.count(repr(c)) for call in llm.calls) for c in row["checklist"]) == [2] * 5
    assert all("zqxplan" not in call.user for call in llm.calls)  # "</think>\n\n" stripped
    params = llm.calls[0].params
    assert (params.temperature, params.top_p, params.max_tokens) == (1.0, 0.95, 2048)


def test_longbench_write_loads_lengths_buckets_and_languages(shared_benchmarks):
    path = shared_benchmarks / "longbench_write" / "longbench_write.jsonl"
    rows = raw_jsonl(path)
    items = LBW.load(BenchmarkConfig(path=path.parent))  # the folder works too
    assert len(items) == 120
    assert [i.required_length for i in items] == [r["length"] for r in rows]
    assert [i.prompt for i in items] == [r["prompt"] for r in rows]
    assert items[0].labels == {"bucket": "0-500", "type": "Community Forum", "language": "en"}
    assert items[0].data["required"] == 100
    languages = [i.labels["language"] for i in items]
    assert languages.count("en") == 60 and languages.count("zh") == 60
    assert {i.labels["bucket"] for i in items} == set(lbw.BUCKET_LABELS)
    longest = next(i for i in items if i.required_length == 20000)
    assert longest.labels["bucket"] == "4k-20k"
    assert len({i.id for i in items}) == 120 and all(i.id.startswith("lbw-") for i in items)
    assert [i.id for i in LBW.load(BenchmarkConfig(path=path, limit=5))] == [i.id for i in items[:5]]


def test_longbench_write_refuses_a_length_outside_the_benchmark(tmp_path):
    path = tmp_path / "lbw.jsonl"
    lines = [{"prompt": "Write 100 words.", "type": "x", "length": 100}, {"prompt": "Huge.", "length": 30000}]
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    with pytest.raises(InstructionDataError) as info:
        LBW.load(BenchmarkConfig(path=path))
    message = str(info.value)
    assert "lbw.jsonl:item 2" in message and "length" in message and "30000" in message
    path.write_text(json.dumps({"type": "x", "length": 100}) + "\n")
    with pytest.raises(InstructionDataError, match=r"lbw\.jsonl:1 prompt: missing"):
        LBW.load(BenchmarkConfig(path=path))


def test_creative_writing_items_follow_the_official_seed_per_iteration(shared_benchmarks):
    folder = shared_benchmarks / "creative_writing_v3"
    doc = json.loads((folder / "creative_writing_prompts_v3.json").read_text(encoding="utf-8"))
    items = CW3.load(BenchmarkConfig(path=folder, iterations=3))
    assert len(items) == 3 * len(doc) == 96
    assert [i.id for i in items[:4]] == ["cw3-1-i1", "cw3-1-i2", "cw3-1-i3", "cw3-2-i1"]
    first = doc["1"]
    for iteration, item in enumerate(items[:3], start=1):
        seed = first["seed_modifiers"][iteration - 1]
        assert item.prompt == first["writing_prompt"].replace("<SEED>", seed)
        assert item.data["writing_prompt"] == first["writing_prompt"]  # unexpanded, for the judge
        assert "<SEED>" in item.data["writing_prompt"]
        assert item.data["seed_modifier"] == seed and item.data["seed_index"] == iteration
        assert item.labels == {"iteration": str(iteration), "category": first["category"]}
    # limit counts prompts; iterations past the seed list wrap around, as the harness does
    wrapped = CW3.load(
        BenchmarkConfig(path=folder / "creative_writing_prompts_v3.json", limit=2, iterations=12)
    )
    assert len(wrapped) == 24 and {i.data["prompt_id"] for i in wrapped} == {"1", "2"}
    eleventh = next(i for i in wrapped if i.id == "cw3-1-i11")
    assert eleventh.data["seed_index"] == 1 and eleventh.prompt == items[0].prompt


def test_creative_writing_bad_file_names_the_file_prompt_and_field(shared_benchmarks, tmp_path):
    doc = json.loads(
        (shared_benchmarks / "creative_writing_v3" / "creative_writing_prompts_v3.json").read_text("utf-8")
    )
    del doc["2"]["writing_prompt"]
    path = tmp_path / "creative_writing_prompts_v3.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(InstructionDataError) as info:
        CW3.load(BenchmarkConfig(path=tmp_path))
    assert "creative_writing_prompts_v3.json:prompt 2" in str(info.value)
    assert "writing_prompt: missing" in str(info.value)


def test_longbench_v2_loads_the_official_prompt_and_labels(shared_benchmarks):
    path = shared_benchmarks / "longbench_v2" / "sample.json"
    rows = json.loads(path.read_text(encoding="utf-8"))
    items = LBV2.load(BenchmarkConfig(path=path.parent))  # a folder with one *.json
    assert [i.id for i in items] == [r["_id"] for r in rows] and len(items) == 6
    assert [i.prompt for i in items] == [lbv2.build_prompt(r) for r in rows]
    assert rows[0]["context"].strip() in items[0].prompt
    assert items[0].labels == {
        "difficulty": "easy",
        "length": "short",
        "domain": "Single-Document QA",
        "sub_domain": "Narrative",
    }
    assert [i.data["answer"] for i in items] == [r["answer"] for r in rows]
    assert [i.id for i in LBV2.load(BenchmarkConfig(path=path, limit=2))] == [r["_id"] for r in rows[:2]]


def test_longbench_v2_bad_file_lists_every_problem_with_file_item_and_field(shared_benchmarks, tmp_path):
    rows = json.loads((shared_benchmarks / "longbench_v2" / "sample.json").read_text(encoding="utf-8"))
    rows[1]["answer"] = "E"
    del rows[3]["question"]
    rows[4]["_id"] = rows[0]["_id"]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(InstructionDataError) as info:
        LBV2.load(BenchmarkConfig(path=path))
    message = str(info.value)
    assert "3 problems in" in message
    assert "data.json:item 1 answer: must be one of A, B, C, D, got 'E'" in message
    assert "data.json:item 3 question: missing" in message
    assert "data.json:item 4 _id: duplicate _id 'lbv2-sample-001'" in message
    path.write_text(json.dumps({"not": "a list"}))
    with pytest.raises(InstructionDataError, match="expected a JSON array"):
        LBV2.load(BenchmarkConfig(path=path))
    path.write_text("[{")
    with pytest.raises(InstructionDataError, match=r"data\.json:1 json: not valid JSON"):
        LBV2.load(BenchmarkConfig(path=path))


def test_data_fingerprint_is_the_sha256_of_the_bytes_load_reads(shared_benchmarks, tmp_path):
    prompts = shared_benchmarks / "creative_writing_v3" / "creative_writing_prompts_v3.json"
    digest = hashlib.sha256(prompts.read_bytes()).hexdigest()
    assert data_fingerprint(BenchmarkConfig(path=prompts)) == digest
    # the folder holds slop lists too: the suite hashes only the prompts file it reads
    assert data_fingerprint(BenchmarkConfig(path=prompts.parent), "creative_writing_v3") == digest
    assert data_fingerprint(BenchmarkConfig(path=prompts.parent)) != digest
    copy = tmp_path / "sample.json"
    shutil.copyfile(shared_benchmarks / "longbench_v2" / "sample.json", copy)
    before = data_fingerprint(BenchmarkConfig(path=copy), "longbench_v2")
    copy.write_bytes(copy.read_bytes().replace(b'"answer": "B"', b'"answer": "C"', 1))
    assert data_fingerprint(BenchmarkConfig(path=copy), "longbench_v2") != before


# ---------------------------------------------------------------------------------------------
# WritingBench scoring
# ---------------------------------------------------------------------------------------------


def _criterion(name: str) -> dict[str, str]:
    return {"name": name, "criteria_description": f"About {name}.", **{b: f"{name} {b}" for b in wb_bands()}}


def wb_bands():
    return ("1-2", "3-4", "5-6", "7-8", "9-10")


def wb_item(names=("A", "B", "C"), id="wb-1", domain1="Education", domain2="Essay") -> BenchItem:
    return BenchItem(
        id=id,
        prompt=f"Write query {id}.",
        labels={"domain1": domain1, "domain2": domain2},
        data={
            "index": id,
            "domain1": domain1,
            "domain2": domain2,
            "criteria": [_criterion(n) for n in names],
        },
    )


def by_wb_criterion(replies: dict[str, list[str] | str]):
    """Reply to each critic call by the criterion named in it (a list is consumed in order)."""

    def script(call: FakeCall) -> str:
        first_user = next(m["content"] for m in call.messages if m["role"] == "user")
        name = next(n for n in replies if f"'name': '{n}'" in first_user)
        reply = replies[name]
        return reply.pop(0) if isinstance(reply, list) else reply

    return script


def score_json(score: int) -> str:
    return json.dumps({"score": score, "reason": f"Scored {score}."})


def test_writingbench_item_score_is_the_criterion_mean_x10():
    llm = FakeLLM(by_wb_criterion({"A": score_json(6), "B": score_json(7), "C": score_json(10)}))
    result = serialisable(run(WB.score(wb_item(), "An answer.", llm, JUDGE)))
    assert result.score == pytest.approx(230 / 3)  # (6 + 7 + 10) / 3 x 10
    assert result.error is None and result.llm_calls == 3
    assert result.details["criteria"] == [
        {"criterion": "A", "score": 6.0, "reason": "Scored 6.", "error": None},
        {"criterion": "B", "score": 7.0, "reason": "Scored 7.", "error": None},
        {"criterion": "C", "score": 10.0, "reason": "Scored 10.", "error": None},
    ]


def test_writingbench_requirement_criterion_is_judged_and_reported_outside_the_headline(shared_benchmarks):
    """The leaderboard's requirement dimension: R is the subset's own score, C the mean of each
    query's requirement criterion from the subset's _C file (x10); the headline is unchanged."""
    folder = shared_benchmarks / "writingbench"
    config = BenchmarkConfig(path=folder / "length_subset.jsonl", limit=2,
                             requirement_criteria=folder / "length_subset_C.jsonl")  # fmt: skip
    items = WB.load(config)
    c_rows = {f"wb-{r['index']}": r["checklist"] for r in raw_jsonl(folder / "length_subset_C.jsonl")}
    assert [i.data["requirement_criteria"] for i in items] == [c_rows[i.id] for i in items]
    assert {i.data["requirement"] for i in items} == {"length"}
    assert WB.data_files(config)[-1].name == "length_subset_C.jsonl"  # in the benchmark's fingerprint

    item = wb_item()
    item.data.update(requirement="length", requirement_criteria=[_criterion("R")])
    llm = FakeLLM(
        by_wb_criterion({"A": score_json(6), "B": score_json(7), "C": score_json(10), "R": score_json(4)})
    )
    scored = serialisable(run(WB.score(item, "An answer.", llm, JUDGE)))
    assert scored.score == pytest.approx(230 / 3) and scored.llm_calls == 4  # the headline: A, B, C only
    assert [d["criterion"] for d in scored.details["requirement"]] == ["R"]
    other = wb_item(id="wb-2")
    other.data.update(requirement="length", requirement_criteria=[_criterion("R")])
    failed_c = ItemScore(80.0, {"criteria": scored.details["criteria"],
                                "requirement": [{"criterion": "R", "score": None, "error": "x"}]})  # fmt: skip
    result = WB.aggregate([item, other], [scored, failed_c])
    assert result.metrics["requirement/length/R"] == result.score
    assert result.metrics["requirement/length/C"] == 40.0  # the one scored C criterion, x10


def test_writingbench_requirement_file_that_does_not_match_is_refused(shared_benchmarks, tmp_path):
    folder = shared_benchmarks / "writingbench"
    wrong = BenchmarkConfig(
        path=folder / "length_subset.jsonl", requirement_criteria=folder / "format_subset_C_v1.jsonl"
    )
    with pytest.raises(ConfigError, match="has no row for wb-"):
        WB.load(wrong)
    broken = tmp_path / "length_subset_C.jsonl"
    broken.write_text('{"index": 1, "checklist": [{"name": "x"}]}\n{"index": 2, "checklist": \n')
    with pytest.raises(ConfigError, match=re.escape(f"{broken}:2: not a JSON line")):
        WB.load(BenchmarkConfig(path=folder / "length_subset.jsonl", requirement_criteria=broken))
    named = tmp_path / "criteria.jsonl"
    named.write_text("{}\n")
    with pytest.raises(ConfigError, match="not a requirement subset's _C file"):
        WB.load(BenchmarkConfig(path=folder / "length_subset.jsonl", requirement_criteria=named))


def test_writingbench_unparsable_reply_is_reasked_then_a_final_failure_not_a_score():
    llm = FakeLLM(
        by_wb_criterion({"A": score_json(8), "B": ["Score: 7", "I'd say 7/10."], "C": score_json(9)})
    )
    result = serialisable(run(WB.score(wb_item(), "An answer.", llm, JUDGE)))
    assert result.score is None and result.retryable is False
    assert result.llm_calls == 4  # B asked twice (max_parse_retries=1)
    assert "1/3 criteria failed" in result.error and "'B'" in result.error and "unparsable" in result.error
    b = result.details["criteria"][1]
    assert b["score"] is None and "unparsable judge reply after 2 asks" in b["error"]
    reask = next(c for c in llm.calls if len(c.messages) == 4)
    assert reask.messages[2] == {"role": "assistant", "content": "Score: 7"}
    assert "could not be used" in reask.user


def test_writingbench_reask_that_succeeds_scores_the_criterion():
    llm = FakeLLM(by_wb_criterion({"A": ["7", score_json(4)], "B": score_json(6)}))
    result = run(WB.score(wb_item(("A", "B")), "An answer.", llm, JUDGE))
    assert result.score == pytest.approx(50.0) and result.llm_calls == 3


def test_writingbench_failed_call_is_retryable_and_endpoint_failure_propagates():
    llm = FakeLLM(lambda call: fail("HTTP 503") if "'name': 'B'" in call.user else score_json(8))
    result = run(WB.score(wb_item(("A", "B")), "An answer.", llm, JUDGE))
    assert result.score is None and result.retryable is True and "HTTP 503" in result.error
    boom = FakeLLM(lambda call: EndpointFailingError("endpoint down"))
    with pytest.raises(EndpointFailingError, match="endpoint down"):
        run(WB.score(wb_item(), "An answer.", boom, JUDGE))


def test_writingbench_failed_generation_is_a_final_failure_without_judge_calls():
    llm = FakeLLM([])
    result = run(WB.score(wb_item(), None, llm, JUDGE))
    assert (result.score, result.error, result.retryable, result.llm_calls) == (
        None,
        "generation failed",
        False,
        0,
    )
    assert llm.calls == []


def test_writingbench_logprob_mode_probes_a_digit_grade_on_the_official_prompt():
    # grade 5 and 7 equally likely -> E[grade] 6 -> score 7 -> x10 70; half the mass elsewhere
    probe = FakeProbe(lambda messages, candidates: {"5": 0.25, "7": 0.25})
    item = wb_item(("A", "B"))
    result = serialisable(run(WB.score(item, "An answer.", probe, LOGPROB_JUDGE)))
    assert result.score == pytest.approx(70.0) and result.llm_calls == 2
    assert [c["score"] for c in result.details["criteria"]] == [pytest.approx(7.0)] * 2
    assert result.details["criteria"][0]["candidate_mass"] == pytest.approx(0.5)
    messages, candidates = probe.probes[0]
    assert candidates == tuple("0123456789")
    official = wb.critic_messages(item.prompt, "An answer.", item.data["criteria"][0])
    assert messages[0] == official[0]  # the official system message
    user = messages[1]["content"]
    assert user.endswith(WB_DIGIT_ANSWER) and user.count(WB_DIGIT_ANSWER) == 2
    assert '"score": an integer score' not in user and "```json" not in user
    # everything else is the official prompt: rules, criteria dict, query, response
    assert "** Scoring Rules **" in user and user.count(repr(item.data["criteria"][0])) == 2
    assert official[1]["content"].startswith(user.split(WB_DIGIT_ANSWER)[0])
    # ... with the criteria block moved after the response, so what varies comes last
    query, response, criteria = (user.index(s) for s in ("** Query **", "** Response **", "** Criteria **"))
    assert query < response < criteria
    second = run(WB.score(wb_item(("A", "B")), "An answer.", probe, LOGPROB_JUDGE))
    assert second.llm_calls == 2
    one, two = (m[1]["content"] for m, _ in probe.probes[2:4])
    assert one[: one.index("** Criteria **")] == two[: two.index("** Criteria **")]  # a shared prefix
    # moved, not reworded: the same lines as the official prompt, but for the output format
    official_lines = official[1]["content"].replace(wb.OUTPUT_FORMAT.format(), "").removesuffix("```")
    ours = user.replace(WB_DIGIT_ANSWER, "")
    assert sorted(filter(str.strip, ours.splitlines())) == sorted(
        filter(str.strip, official_lines.splitlines())
    )


def test_writingbench_logprob_probe_failure_is_retryable_and_no_mass_is_final():
    raising = FakeProbe(lambda messages, candidates: RuntimeError("CUDA OOM"))
    result = run(WB.score(wb_item(("A",)), "x", raising, LOGPROB_JUDGE))
    assert result.score is None and result.retryable is True and "CUDA OOM" in result.error
    empty = FakeProbe(lambda messages, candidates: {})
    result = run(WB.score(wb_item(("A",)), "x", empty, LOGPROB_JUDGE))
    assert result.score is None and result.retryable is False and "no usable probability" in result.error


def test_writingbench_aggregate_follows_the_official_means_and_counts_failures():
    items = [
        wb_item(("A", "B"), id="wb-1", domain1="Education", domain2="Essay"),
        wb_item(("A", "B"), id="wb-2", domain1="Finance & Business", domain2="Report"),
        wb_item(("A", "B"), id="wb-3", domain1="Politics & Law", domain2="Report"),
    ]

    def judged(*scores):
        return [
            {"criterion": n, "score": s, "reason": None, "error": None}
            for n, s in zip("AB", scores, strict=True)
        ]

    scores = [
        ItemScore(70.0, details={"criteria": judged(8.0, 6.0)}),
        ItemScore(None, details={"criteria": judged(None, 10.0)}, error="1/2 criteria failed"),
        ItemScore(None, details={"generation_failed": True}, error="generation failed"),
    ]
    result = WB.aggregate(items, scores)
    # overall: every scored criterion (8, 6, 10) -> 8 -> 80; domains: means of query means
    assert result.score == pytest.approx(80.0)
    assert result.metrics["score"] == pytest.approx(8.0)
    assert result.metrics["domain1/Education"] == pytest.approx(70.0)
    assert result.metrics["domain1/Finance & Business"] == pytest.approx(100.0)
    assert result.metrics["domain1/Politics & Law"] is None
    assert result.metrics["domain2/Report"] == pytest.approx(100.0)  # wb-3 has no mean
    assert result.metrics["failed_criteria"] == 3
    assert (result.n_items, result.n_failed) == (3, 2)
    with pytest.raises(ValueError, match="one score per item"):
        WB.aggregate(items, scores[:2])


# ---------------------------------------------------------------------------------------------
# LongBench-Write scoring
# ---------------------------------------------------------------------------------------------


def lbw_item(required=100, id="lbw-1") -> BenchItem:
    return BenchItem(
        id=id,
        prompt=f"Write {required} words about tides.",
        labels={"bucket": lbw.length_bucket(required)},
        data={"required": required},
        required_length=required,
    )


def lbw_reply(*scores, analysis="Fine.") -> str:
    return json.dumps({"Analysis": analysis, **dict(zip(lbw.DIMENSIONS, scores, strict=True))})


def test_longbench_write_json_mode_scores_length_and_quality():
    response = "word " * 80  # y = 80 < x = 100: S_l = 100 * (1 - (100/80 - 1) / 2) = 87.5
    llm = FakeLLM([lbw_reply(5, 4, 4, 3, 5, 3)])  # mapped 100, 75, 75, 50, 100, 50 -> S_q 75
    item = lbw_item()
    result = serialisable(run(LBW.score(item, response, llm, JUDGE)))
    assert result.score == pytest.approx((87.5 + 75) / 2)
    assert result.details["output_words"] == 80 and result.details["required"] == 100
    assert result.details["S_l"] == pytest.approx(87.5) and result.details["S_q"] == pytest.approx(75.0)
    assert result.details["dimensions"]["Coherence"] == 4.0 and result.details["analysis"] == "Fine."
    assert result.llm_calls == 1
    call = llm.calls[0]
    assert list(call.messages) == lbw.judge_messages(item.prompt, response)
    assert (call.params.temperature, call.params.max_tokens) == (0.5, 1024)


def test_longbench_write_unparsable_quality_is_final_but_keeps_the_length_score():
    llm = FakeLLM(["Relevance: 5", lbw_reply(5, 5, 5, 5, 5, "5"), "{}"])
    judge = JUDGE.model_copy(update={"max_parse_retries": 2})
    result = serialisable(run(LBW.score(lbw_item(), "word " * 100, llm, judge)))
    assert result.score is None and result.retryable is False and result.llm_calls == 3
    assert "unparsable judge reply after 3 asks" in result.error
    assert result.details["S_l"] == 100.0 and result.details["S_q"] is None
    assert set(result.details["dimensions"].values()) == {None}


def test_longbench_write_failed_judge_call_is_retryable():
    result = run(LBW.score(lbw_item(), "word " * 100, FakeLLM([fail("timeout")]), JUDGE))
    assert result.score is None and result.retryable is True and "timeout" in result.error


def test_longbench_write_logprob_mode_probes_each_dimension_on_1_to_5():
    # "4": 0.3, "5": 0.1 renormalise to 0.75 / 0.25 -> 4.25 -> (4.25 - 1) * 25 = 81.25 per dimension
    probe = FakeProbe(lambda messages, candidates: {"4": 0.3, "5": 0.1})
    item = lbw_item(required=200)
    response = "word " * 200  # S_l 100
    result = serialisable(run(LBW.score(item, response, probe, LOGPROB_JUDGE)))
    assert result.details["S_q"] == pytest.approx(81.25)
    assert result.score == pytest.approx((100 + 81.25) / 2) and result.llm_calls == 6
    assert result.details["candidate_mass"]["Clarity"] == pytest.approx(0.4)
    official = lbw.judge_prompt(item.prompt, response)
    endings = set()
    for messages, candidates in probe.probes:
        assert candidates == ("1", "2", "3", "4", "5") and len(messages) == 1
        text = messages[0]["content"]
        assert "The output must strictly follow the JSON format" not in text
        official_part = text.split("Please evaluate the quality of the response on one dimension only")[0]
        assert official.startswith(official_part) and item.prompt in official_part
        endings |= {
            n
            for n, d in enumerate(lbw.DIMENSIONS, 1)
            if text.endswith(LBW_DIMENSION_ANSWER.format(number=n, dimension=d))
        }
    assert endings == {1, 2, 3, 4, 5, 6}  # one probe per dimension


def test_longbench_write_logprob_dimension_failure_fails_the_quality():
    def probs(messages, candidates):
        return RuntimeError("probe died") if "Clarity." in messages[0]["content"] else {"3": 1.0}

    result = run(LBW.score(lbw_item(), "word " * 100, FakeProbe(probs), LOGPROB_JUDGE))
    assert result.score is None and result.retryable is True and "'Clarity'" in result.error
    assert result.details["dimensions"]["Clarity"] is None and result.details["dimensions"]["Accuracy"] == 3.0


def test_longbench_write_failed_generation_is_left_out_of_the_aggregate():
    llm = FakeLLM([])
    failed = run(LBW.score(lbw_item(), None, llm, JUDGE))
    assert (failed.score, failed.error, failed.retryable) == (
        None,
        "generation failed",
        False,
    ) and not llm.calls
    items = [lbw_item(100, "a"), lbw_item(100, "b"), lbw_item(3000, "c"), lbw_item(100, "d")]
    five = dict.fromkeys(lbw.DIMENSIONS, 5.0)
    three = dict.fromkeys(lbw.DIMENSIONS, 3.0)
    scores = [
        ItemScore(100.0, details={"required": 100, "output_words": 100, "S_l": 100.0, "dimensions": five}),
        # y = 160: S_l = 100 * (1 - 0.6 / 3) = 80; quality failed: in S_l, not in S_q
        ItemScore(None, details={"required": 100, "output_words": 160, "dimensions": dict.fromkeys(five)}),
        # y = 1500 of 3000: S_l = 100 * (1 - (2 - 1) / 2) = 50; quality all 3 -> 50
        ItemScore(50.0, details={"required": 3000, "output_words": 1500, "dimensions": three}),
        failed,
    ]
    result = LBW.aggregate(items, scores)
    s_l, s_q = (100 + 80 + 50) / 3, (100 + 50) / 2
    assert result.metrics["S_l"] == pytest.approx(s_l) and result.metrics["S_q"] == pytest.approx(s_q)
    assert result.score == pytest.approx((s_l + s_q) / 2) == result.metrics["S"]
    assert result.metrics["bucket/0-500/S_l"] == pytest.approx(90.0)
    assert result.metrics["bucket/0-500/S_q"] == pytest.approx(100.0)
    assert result.metrics["bucket/0-500/S"] == pytest.approx(95.0)
    assert result.metrics["bucket/2k-4k/S"] == pytest.approx(50.0)
    assert result.metrics["bucket/4k-20k/S_l"] is None
    assert result.metrics["quality_failed"] == 1
    assert (result.n_items, result.n_failed) == (4, 2)


# ---------------------------------------------------------------------------------------------
# Creative Writing v3 scoring
# ---------------------------------------------------------------------------------------------

TEMPLATE = "Write a scene about a lighthouse. <SEED> Third person, 1000 words."
POSITIVE = [c for c in cw3.CRITERIA if c not in cw3.NEGATIVE_CRITERIA]


def cw3_item(id="cw3-1-i1", category="mystery") -> BenchItem:
    return BenchItem(
        id=id,
        prompt=TEMPLATE.replace("<SEED>", "Include a storm."),
        labels={"category": category, "iteration": "1"},
        data={"writing_prompt": TEMPLATE, "prompt_id": "1", "iteration": 1, "seed_index": 1},
    )


def rubric_reply(scores: dict[str, float]) -> str:
    lines = "\n\n".join(f"{name}: {value:g}" for name, value in scores.items())
    return f"[Analysis]\n\nA tidy piece, 10:30 at night.\n\n[Scores]\n\n{lines}\n"


def test_creative_writing_json_mode_scores_the_rubric_with_negatives_inverted():
    scores = {c: (12 if c in POSITIVE else 2) for c in cw3.CRITERIA}  # 13 x 12 and 9 x (20 - 2)
    llm = FakeLLM([rubric_reply(scores)])
    story = "<think>zqxoutline</think>" + "The keeper lit the lamp. " * 3
    result = serialisable(run(CW3.score(cw3_item(), story, llm, JUDGE)))
    piece = (13 * 12 + 9 * 18) / 22
    assert result.details["piece_score"] == pytest.approx(piece)
    assert result.score == pytest.approx(5 * piece)
    assert result.details["criteria"]["Meandering"] == 2.0 and result.llm_calls == 1
    call = llm.calls[0]
    stripped = cw3.strip_reasoning(story)
    # the UNEXPANDED prompt, and the piece stripped as the official `model_response` is
    assert list(call.messages) == cw3.judge_messages(TEMPLATE, stripped.strip())
    assert stripped != stripped.strip() and "lamp.\n\n[TEST MODEL RESPONSE END]" in call.user
    assert "<SEED>" in call.user and "Include a storm." not in call.user and "zqxoutline" not in call.user
    assert (call.params.temperature, call.params.max_tokens) == (0.0, 1000)
    # a short piece is judged as is and flagged with its length
    assert result.details["piece_chars"] == len(stripped.strip()) < 500 and result.details["short_piece"]


def test_creative_writing_too_few_criteria_is_reasked_then_final():
    few = rubric_reply({c: 15 for c in cw3.CRITERIA[:5]})
    llm = FakeLLM([few, few])
    result = serialisable(run(CW3.score(cw3_item(), "A story. " * 80, llm, JUDGE)))
    assert result.score is None and result.retryable is False and result.llm_calls == 2
    assert "5 criteria parsed, at least 11 needed" in result.error
    assert result.details["piece_score"] is None and result.details["short_piece"] is False
    llm = FakeLLM([few, rubric_reply(dict.fromkeys(cw3.CRITERIA, 10))])
    result = run(CW3.score(cw3_item(), "A story. " * 80, llm, JUDGE))
    assert result.score == pytest.approx(50.0) and result.llm_calls == 2
    assert "could not be used" in llm.calls[1].user


def test_creative_writing_logprob_mode_probes_each_criterion_as_a_digit_grade():
    def probs(messages, candidates):
        text = messages[0]["content"]
        criterion = text.rsplit("following criteria:\n\n- ", 1)[1].split("\n", 1)[0]
        return {"9": 1.0} if criterion in POSITIVE else {"3": 0.5, "6": 0.5}  # 20, or 4.5 * 20/9 = 10

    probe = FakeProbe(probs)
    result = serialisable(run(CW3.score(cw3_item(), "A story. " * 80, probe, LOGPROB_JUDGE)))
    piece = (13 * 20 + 9 * (20 - 10)) / 22
    assert result.details["piece_score"] == pytest.approx(piece) and result.score == pytest.approx(5 * piece)
    assert result.details["criteria"]["Purple Prose"] == pytest.approx(10.0) and result.llm_calls == 22
    rated = []
    for messages, candidates in probe.probes:
        assert candidates == tuple("0123456789")
        text = messages[0]["content"]
        assert text.endswith(CW3_CRITERION_ANSWER) and "<SEED>" in text
        listed = text.rsplit("following criteria:\n\n", 1)[1].removesuffix(CW3_CRITERION_ANSWER)
        assert listed.count("\n- ") == 0 and listed.startswith("- ")  # one criterion only
        rated.append(listed[2:].strip())
        assert ", ".join(cw3.NEGATIVE_CRITERIA) in text  # lower-is-better list kept whole
    assert sorted(rated) == sorted(cw3.CRITERIA)


def test_creative_writing_failed_call_is_retryable_and_generation_failure_final():
    result = run(CW3.score(cw3_item(), "A story.", FakeLLM([fail("rate limited")]), JUDGE))
    assert result.score is None and result.retryable is True and "rate limited" in result.error
    result = run(CW3.score(cw3_item(), None, FakeLLM([]), JUDGE))
    assert (result.score, result.error, result.retryable) == (None, "generation failed", False)


def test_creative_writing_aggregate_is_five_times_the_mean_piece_and_per_category():
    items = [cw3_item("a1", "mystery"), cw3_item("a2", "mystery"), cw3_item("b1", "romance")]
    scores = [
        ItemScore(50.0, details={"piece_score": 10.0, "short_piece": True}),
        ItemScore(70.0, details={"piece_score": 14.0, "short_piece": False}),
        ItemScore(None, details={"generation_failed": True}, error="generation failed"),
    ]
    result = CW3.aggregate(items, scores)
    assert result.score == pytest.approx(60.0) and result.metrics["score_0_20"] == pytest.approx(12.0)
    assert result.metrics["category/mystery"] == pytest.approx(60.0)
    assert result.metrics["category/romance"] is None
    assert (result.metrics["scored"], result.metrics["failed"], result.metrics["short_pieces"]) == (2, 1, 1)
    assert (result.n_items, result.n_failed) == (3, 1)


# ---------------------------------------------------------------------------------------------
# LongBench v2 scoring
# ---------------------------------------------------------------------------------------------


def test_longbench_v2_scores_extracted_answers_and_counts_failed_generation_wrong(shared_benchmarks):
    items = LBV2.load(BenchmarkConfig(path=shared_benchmarks / "longbench_v2" / "sample.json"))
    # answers B C B B B B; difficulty e h h e h e; length s s m m l l
    responses = [
        "The correct answer is (B)",  # 001 easy short: right
        "**The correct answer is C**",  # 002 hard short: right (bare letter, * removed)
        "The correct answer is (A)",  # 003 hard medium: wrong
        "I think it is B.",  # 004 easy medium: unextracted -> wrong
        None,  # 005 hard long: generation failed -> wrong, reported
        "The correct answer is (B)",  # 006 easy long: right
    ]
    scores = [serialisable(run(LBV2.score(i, r, None, None))) for i, r in zip(items, responses, strict=True)]
    assert [s.score for s in scores] == [100.0, 100.0, 0.0, 0.0, 0.0, 100.0]
    assert scores[3].details["extracted"] is False and scores[3].error is None
    assert scores[4].error == "generation failed" and scores[4].retryable is False
    result = LBV2.aggregate(items, scores)
    assert result.score == pytest.approx(50.0) == result.metrics["accuracy"]
    assert result.metrics["difficulty/easy"] == pytest.approx(200 / 3)
    assert result.metrics["difficulty/hard"] == pytest.approx(100 / 3)
    assert result.metrics["length/short"] == pytest.approx(100.0)
    assert result.metrics["length/medium"] == pytest.approx(0.0)
    assert result.metrics["length/long"] == pytest.approx(50.0)
    assert (result.metrics["failed_calls"], result.metrics["unextracted"]) == (1, 1)
    assert (result.n_items, result.n_failed) == (6, 1)
