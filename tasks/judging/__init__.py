"""The judge (`judgment.py`: one record, the ask and probe paths, one dispatch on the mode), the
WritingBench-style pointwise score and the LLM criteria writer.

Pure: they call the LLMClient they are given (the stage passes a caching one) and return results
with failures recorded; storing them is the stage's business."""

from tasks.judging.criteria import (
    CriteriaFailure,
    criteria_messages,
    parse_criteria_reply,
    write_criteria,
)
from tasks.judging.judgment import (
    Ask,
    Judge,
    JudgeForm,
    Judgment,
    ParseFailure,
    Probe,
    ask,
    expected_value,
    probe,
    require_logprob_probe,
)
from tasks.judging.pointwise import (
    HOLISTIC,
    LOGPROB_DIGITS,
    POINTWISE_PROMPTS,
    CriterionForm,
    CriterionScore,
    ParsedScore,
    PointwisePrompt,
    ResponseScore,
    aggregate,
    expected_score,
    load_strict_json,
    parse_score_reply,
    score_criterion,
    score_response,
)

__all__ = [
    "HOLISTIC",
    "LOGPROB_DIGITS",
    "POINTWISE_PROMPTS",
    "Ask",
    "CriteriaFailure",
    "CriterionForm",
    "CriterionScore",
    "Judge",
    "JudgeForm",
    "Judgment",
    "ParseFailure",
    "ParsedScore",
    "PointwisePrompt",
    "Probe",
    "ResponseScore",
    "aggregate",
    "ask",
    "criteria_messages",
    "expected_score",
    "expected_value",
    "load_strict_json",
    "parse_criteria_reply",
    "parse_score_reply",
    "probe",
    "require_logprob_probe",
    "score_criterion",
    "score_response",
    "write_criteria",
]
