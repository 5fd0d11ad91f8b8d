"""Pointwise judge and criteria writer: prompts, the strict parsers, re-asks, failures, the mean,
logprob mode (fake and a real tiny model)."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from configs.schema import CriteriaWriterConfig, JudgeConfig, Recipe
from tasks.instructions.schema import Criterion, Instruction
from tasks.judging import (
    POINTWISE_PROMPTS,
    CriteriaFailure,
    ParsedScore,
    ParseFailure,
    ResponseScore,
    expected_score,
    parse_criteria_reply,
    parse_score_reply,
    score_response,
    write_criteria,
)
from tasks.llm.base import EndpointFailingError
from tests.support.fake_llm import FakeCall, FakeLLM, fail

INSTRUCTION = Instruction(id="i1", prompt="Write a haiku about autumn rain.", source="test")
RESPONSE = "Cold rain on the roof\nleaves drift in the gutter's stream\nthe kettle whistles"
CLARITY = Criterion(
    name="Clarity",
    description="Images are concrete and easy to picture.",
    rubric={"1-2": "Vague throughout.", "9-10": "Every line is vivid."},
)
FORM = Criterion(name="Form", description="Follows the 5-7-5 haiku form.")
JUDGE = JudgeConfig(backend="api", model="judge", max_parse_retries=2)
LOGPROB_JUDGE = JudgeConfig(backend="local", model="judge", mode="logprob")


def run(coro):
    return asyncio.run(coro)


def reply(score, reason="Solid."):
    return json.dumps({"score": score, "reason": reason})


def by_criterion(scores: dict[str, str]):
    """A script answering each criterion's call by the criterion named in its prompt."""

    def script(call: FakeCall) -> str:
        return next(text for name, text in scores.items() if f"Name: {name}" in call.messages[1]["content"])

    return script


# --- prompt ---------------------------------------------------------------------------------


def test_prompt_holds_instruction_delimited_response_criterion_and_rubric():
    messages = POINTWISE_PROMPTS["v1"].messages(INSTRUCTION, RESPONSE, CLARITY, "json")
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert INSTRUCTION.prompt in user
    assert f"<<<RESPONSE START>>>\n{RESPONSE}\n<<<RESPONSE END>>>" in user
    assert "Name: Clarity" in user and CLARITY.description in user
    assert "- 1-2: Vague throughout." in user and "- 9-10: Every line is vivid." in user
    assert '{"score": <integer 1-10>, "reason": "<one or two sentences>"}' in user
    assert "Name: Form" not in user  # one criterion per call


def test_logprob_prompt_asks_for_a_digit_with_bands_relabelled():
    user = POINTWISE_PROMPTS["v1"].messages(INSTRUCTION, RESPONSE, CLARITY, "logprob")[1]["content"]
    assert "0 (worst) to 9 (best)" in user and "single digit" in user
    assert "- 0-1: Vague throughout." in user and "- 8-9: Every line is vivid." in user
    assert '"score"' not in user


# --- strict parser --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"score": 8, "reason": "Vivid."}',
        '  \n{"reason": "Vivid.", "score": 8}\n',
        '{\n  "score": 8,\n  "reason": "Vivid."\n}',
        '```json\n{"score": 8, "reason": "Vivid."}\n```',
        '```\n{"score": 8, "reason": "Vivid."}\n```',
    ],
)
def test_parser_accepts_canonical_and_fenced_forms(text):
    assert parse_score_reply(text) == ParsedScore(score=8, reason="Vivid.")


@pytest.mark.parametrize(
    "text",
    [
        'Here is my verdict: {"score": 8, "reason": "Vivid."}',
        '{"score": 8, "reason": "Vivid."} Hope this helps!',
        '{"score": 8, "reason": "Vivid."}\n{"score": 7, "reason": "Again."}',
        '```json\n{"score": 8, "reason": "Vivid."}\n```\nThanks',
        '{"score": 11, "reason": "Vivid."}',
        '{"score": 0, "reason": "Vivid."}',
        '{"score": 7.5, "reason": "Vivid."}',
        '{"score": 8.0, "reason": "Vivid."}',
        '{"score": "7", "reason": "Vivid."}',
        '{"score": true, "reason": "Vivid."}',
        '{"score": null, "reason": "Vivid."}',
        '{"score": 8}',
        '{"score": 8, "reason": ""}',
        '{"score": 8, "reason": 3}',
        '{"score": 8, "reason": "Vivid.", "confidence": 0.9}',
        '{"score": 8, "score": 9, "reason": "Vivid."}',
        "[8]",
        "8",
        "Score: 8",
        "I'd give it 8/10",
        "",
    ],
)
def test_parser_refuses_anything_else(text):
    assert isinstance(parse_score_reply(text), ParseFailure)


# --- json mode ------------------------------------------------------------------------------


def test_scores_every_criterion_in_its_own_call_and_takes_the_mean():
    llm = FakeLLM(by_criterion({"Clarity": reply(8), "Form": reply(5)}))
    result = run(score_response(llm, JUDGE, INSTRUCTION, RESPONSE, [CLARITY, FORM]))
    assert isinstance(result, ResponseScore) and result.ok
    assert result.score == pytest.approx(6.5)
    assert [(c.criterion, c.score, c.attempts) for c in result.criteria] == [
        ("Clarity", 8, 1),
        ("Form", 5, 1),
    ]
    assert result.criteria[0].reason == "Solid."
    assert len(llm.calls) == 2 and all(call.params == JUDGE.decoding for call in llm.calls)


def test_reask_appends_the_bad_reply_and_a_deterministic_complaint_then_succeeds():
    llm = FakeLLM(["Score: 8", reply(8)])
    result = run(score_response(llm, JUDGE, INSTRUCTION, RESPONSE, [CLARITY]))
    assert result.score == 8 and result.criteria[0].attempts == 2
    assert len(result.criteria[0].llm_calls) == 2
    second = llm.calls[1].messages
    assert second[:2] == llm.calls[0].messages
    assert second[2] == {"role": "assistant", "content": "Score: 8"}
    assert second[3]["role"] == "user" and "could not be used" in second[3]["content"]
    # Same bad reply -> same re-ask messages: a killed run replays from the cache.
    again = FakeLLM(["Score: 8", reply(8)])
    run(score_response(again, JUDGE, INSTRUCTION, RESPONSE, [CLARITY]))
    assert again.calls[1].messages == second


def test_exhausted_reasks_are_a_failure_without_a_score():
    llm = FakeLLM(["I'd give it 8/10"] * 3 + [reply(9)])
    result = run(score_response(llm, JUDGE, INSTRUCTION, RESPONSE, [CLARITY]))
    criterion = result.criteria[0]
    assert criterion.score is None and criterion.attempts == 3 and len(llm.calls) == 3
    assert "unparsable judge reply after 3 asks" in criterion.error
    assert result.score is None and "Clarity" in result.error


def test_failed_api_call_is_a_failure_and_not_reasked():
    llm = FakeLLM([fail("HTTP 500 after 3 retries")])
    result = run(score_response(llm, JUDGE, INSTRUCTION, RESPONSE, [CLARITY]))
    assert result.score is None and len(llm.calls) == 1
    assert "HTTP 500" in result.criteria[0].error and result.criteria[0].score is None


def test_one_failed_criterion_means_no_mean():
    llm = FakeLLM(by_criterion({"Clarity": reply(9), "Form": "Form is fine, 7."}))
    result = run(score_response(llm, JUDGE, INSTRUCTION, RESPONSE, [CLARITY, FORM]))
    assert result.score is None and not result.ok
    assert result.criteria[0].score == 9 and result.criteria[1].score is None
    assert "1/2 criteria failed" in result.error and "'Form'" in result.error


def test_no_criteria_is_a_failure():
    result = run(score_response(FakeLLM([]), JUDGE, INSTRUCTION, RESPONSE, []))
    assert result.score is None and "no criteria" in result.error


def test_endpoint_failing_propagates():
    llm = FakeLLM([EndpointFailingError("down")])
    with pytest.raises(EndpointFailingError, match="down"):
        run(score_response(llm, JUDGE, INSTRUCTION, RESPONSE, [CLARITY]))


def test_unknown_prompt_version_fails_before_any_call():
    llm = FakeLLM([reply(8)])
    with pytest.raises(KeyError, match="pointwise judge prompt"):
        run(
            score_response(
                llm, JUDGE.model_copy(update={"prompt_version": "v999"}), INSTRUCTION, RESPONSE, [CLARITY]
            )
        )
    assert llm.calls == []


# --- logprob mode ---------------------------------------------------------------------------


class FakeLogprobLLM(FakeLLM):
    def __init__(self, probs: dict[str, float] | Exception):
        super().__init__([])
        self.probs = probs
        self.probes: list[tuple[tuple, tuple[str, ...]]] = []

    async def next_token_logprobs(self, messages, candidates):
        self.probes.append((tuple(messages), tuple(candidates)))
        if isinstance(self.probs, Exception):
            raise self.probs
        return {c: math.log(self.probs[c]) if self.probs.get(c, 0) > 0 else -math.inf for c in candidates}


def test_logprob_all_mass_on_one_digit():
    llm = FakeLogprobLLM({"7": 0.5})  # grade 7 of 0-9 -> score 8; half the mass elsewhere
    result = run(score_response(llm, LOGPROB_JUDGE, INSTRUCTION, RESPONSE, [CLARITY]))
    assert result.score == pytest.approx(8.0)
    assert result.criteria[0].candidate_mass == pytest.approx(0.5)
    assert llm.calls == []  # no chat call: one probe
    messages, candidates = llm.probes[0]
    assert candidates == tuple("0123456789") and messages[-1]["role"] == "user"


def test_logprob_split_mass_is_a_normalised_weighted_mean():
    llm = FakeLogprobLLM({"3": 0.2, "9": 0.6})  # renormalised: 0.25 * 4 + 0.75 * 10
    result = run(score_response(llm, LOGPROB_JUDGE, INSTRUCTION, RESPONSE, [CLARITY, FORM]))
    assert result.score == pytest.approx(8.5)
    assert expected_score({d: math.log(0.1) for d in "0123456789"}) == pytest.approx((5.5, 1.0))


def test_logprob_backend_error_or_no_mass_is_a_failure():
    result = run(
        score_response(FakeLogprobLLM(RuntimeError("OOM")), LOGPROB_JUDGE, INSTRUCTION, RESPONSE, [CLARITY])
    )
    assert result.score is None and "OOM" in result.criteria[0].error
    result = run(score_response(FakeLogprobLLM({}), LOGPROB_JUDGE, INSTRUCTION, RESPONSE, [CLARITY]))
    assert result.score is None and "no usable probability" in result.criteria[0].error


def test_logprob_mode_needs_next_token_logprobs():
    with pytest.raises(TypeError, match="next_token_logprobs"):
        run(score_response(FakeLLM([]), LOGPROB_JUDGE, INSTRUCTION, RESPONSE, [CLARITY]))


def test_logprob_mode_on_a_real_tiny_model(tiny_model_dir, tmp_path):
    from tasks.llm.registry import create_client

    recipe = Recipe.model_validate(
        {
            "name": "t",
            "storage": {"model_cache": str(tmp_path / "cache")},
            "backends": {"local": {"kind": "transformers", "device": "cpu"}},
            "generators": [{"name": "policy", "role": "policy", "backend": "local", "model": "m"}],
        }
    )
    client = create_client(recipe, "local", str(tiny_model_dir))

    async def go() -> ResponseScore:
        try:
            return await score_response(client, LOGPROB_JUDGE, INSTRUCTION, RESPONSE, [CLARITY, FORM])
        finally:
            await client.aclose()

    result = run(go())
    assert result.ok, result.error
    assert math.isfinite(result.score) and 1.0 <= result.score <= 10.0
    for criterion in result.criteria:
        assert 0.0 < criterion.candidate_mass <= 1.0 + 1e-6


# --- criteria writer ------------------------------------------------------------------------

WRITER = CriteriaWriterConfig(backend="api", model="writer", num_criteria=2)
TWO = json.dumps(
    [{"name": "Imagery", "description": "Concrete images."}, {"name": "Form", "description": "5-7-5."}]
)


def test_criteria_writer_success():
    llm = FakeLLM([f"```json\n{TWO}\n```"])
    criteria = run(write_criteria(llm, WRITER, INSTRUCTION))
    assert criteria == (
        Criterion(name="Imagery", description="Concrete images."),
        Criterion(name="Form", description="5-7-5."),
    )
    user = llm.calls[0].messages[-1]["content"]
    assert INSTRUCTION.prompt in user and "exactly 2" in user


@pytest.mark.parametrize(
    "text",
    [
        json.dumps([{"name": "Imagery", "description": "Concrete images."}]),  # wrong count
        json.dumps([{"name": "A", "description": "x"}, {"name": "a", "description": "y"}]),  # duplicate names
        json.dumps([{"name": "A", "description": "x"}, {"name": "B"}]),
        json.dumps([{"name": "A", "description": "x"}, {"name": "B", "description": "y", "weight": 2}]),
        json.dumps([{"name": "A", "description": "x"}, {"name": "", "description": "y"}]),
        json.dumps({"criteria": [{"name": "A", "description": "x"}, {"name": "B", "description": "y"}]}),
        f"Sure! {TWO}",
    ],
)
def test_criteria_parser_refuses(text):
    assert isinstance(parse_criteria_reply(text, 2), ParseFailure)


def test_criteria_writer_reasks_then_succeeds_or_fails():
    one = json.dumps([{"name": "Imagery", "description": "Concrete images."}])
    llm = FakeLLM([one, TWO])
    assert len(run(write_criteria(llm, WRITER, INSTRUCTION))) == 2
    assert llm.calls[1].messages[-2] == {"role": "assistant", "content": one}
    assert "expected exactly 2 criteria, got 1" in llm.calls[1].messages[-1]["content"]

    llm = FakeLLM([one] * 5)
    failure = run(write_criteria(llm, WRITER, INSTRUCTION, max_parse_retries=1))
    assert isinstance(failure, CriteriaFailure) and failure.attempts == 2 and len(llm.calls) == 2

    failure = run(write_criteria(FakeLLM([fail("HTTP 429")]), WRITER, INSTRUCTION))
    assert isinstance(failure, CriteriaFailure) and "HTTP 429" in failure.error
