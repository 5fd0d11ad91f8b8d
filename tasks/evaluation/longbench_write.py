"""LongBench-Write (LongWriter, Bai et al., 2024, arXiv:2408.07055): length score S_l, quality
score S_q from a six-dimension judge, and S = (S_l + S_q) / 2, overall and per required-length
bucket; and the suite: its items from the benchmark file (the project's `longbench_write`
loader), the judge calls for one response, and the aggregate.

What the official harness does (THUDM/LongWriter @ ca6ccd4, `evaluation/`):

- `pred.py::count_words`: output length y = number of matches of `[\\u4e00-\\u9fff]` (one per CJK
  unified ideograph) plus matches of `\\b[a-zA-Z]+\\b` (ASCII-letter words). Nothing else counts:
  digits, punctuation, kana, Hangul, accented letters. The regex is applied to a `str`, so `\\b` is
  a Unicode word boundary: a Latin word glued to a CJK character ("GPT模型"), to a digit ("4o") or
  to an accented letter ("café") has no boundary there and is not counted. We reproduce that
  exactly (`count_words`); the project's `tasks.text.count_words` is a different counter, kept
  for the instructions and rewards.
- `eval_length.py::score(x, y)`: with required length x and output length y,
  `100 * max(0, 1 - (y/x - 1)/3)` if y > x else `100 * max(0, 1 - (x/y - 1)/2)`; S_l is the plain
  mean of `score` over all items (`np.mean(scores)`).
- `judge.txt` (`JUDGE_PROMPT`) with `$INST$` then `$RESPONSE$` replaced, sent as one user message
  to gpt-4o-2024-05-13 at temperature 0.5, max_tokens 1024 (`eval_quality.py`). The reply is read
  leniently: if it contains "```json" the text between "```json\\n" and "\\n```" is taken, newlines
  are removed, `json.loads`, and the reply is accepted if the six dimensions
  (`eval_quality.py::dims`, `DIMENSIONS`) are keys. Up to 5 asks per item; an item still without
  scores is printed and left out of `judge.jsonl`.
- `eval_quality.py` aggregate: for each dimension, the mean over the judged items of
  `float(score[dim])`, mapped by `(mean - 1) * 25`; then 'total' = the mean of the six mapped
  values. That is S_q (`quality_aggregate`). Per item, `quality_score` is the same map applied to
  one item; because the map is affine the two orders agree up to float rounding, and `aggregate`
  uses the official order.
- S = (S_l + S_q) / 2 and the four required-length buckets come from the paper (its results
  tables give S_l and S_q per bucket); the repository has no code for either.

Departures from the official harness (scoring):

1. Empty output (y = 0): the official `score` divides by zero; here it scores 0, the worst score,
   which is also the limit of the formula as y -> 0.
2. The judge reply is parsed STRICTLY (`parse_judge_reply`): exactly one JSON object, optionally
   inside one ```json fence, with the six dimensions as JSON numbers in [1, 5], an optional
   "Analysis" (any value: it is not scored), and nothing else. Prose around the JSON, duplicate
   keys, unknown keys, numbers given as strings ("4", which the official `float()` accepts), out of
   range or non-finite values are parse failures with a message. The official reader would take a
   score of 7 or "4" at face value; a wrong number silently changes S_q, a failure is visible and
   can be re-asked.
3. A failed quality judgment (unparsable after the re-asks, or a failed call) is excluded from S_q
   and counted (`n_quality_failed`, per bucket too); it is never scored. This matches what the
   official script does in effect (the item is missing from `judge.jsonl`, so it is missing from
   the mean), but there it is only printed; here it is part of the result so a reader can see how
   many items S_q rests on. S_l still covers every item, as in the official `eval_length.py`,
   which does not depend on the judge.
4. The last bucket is [4000, 20000], closed: the paper labels it "[4k, 20k)", but the benchmark
   file has an item requiring exactly 20,000 words, which a half-open bucket would drop. A required
   length outside (0, 20000] is refused (ValueError): it is not a LongBench-Write item.
5. Per-bucket S_q and S use the same official order (per-dimension means within the bucket).
   A bucket (or the whole run) whose judgments all failed has S_q = S = None, never 0.

Departures of the suite (the shared ones of every judged suite: `tasks.evaluation.common`):

6. The response is measured and judged as returned (no reasoning stripping, as `pred.py`).
7. A failed generation (no response at all, not an empty one) leaves the item out of S_l, S_q and
   S and counts in `n_failed`: there is no output to measure, and y = 0 would report it as a model
   that wrote nothing. An item whose quality judgment failed still counts in S_l, as officially.
8. Logprob mode: six probes, one per dimension; judge.txt's closing paragraph (the JSON format) is
   replaced by a request for that dimension's integer 1-5 (`LBW_DIMENSION_ANSWER`); candidates
   "1".."5".
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from configs.schema import BenchmarkConfig, DataConfig, Decoding, JudgeConfig
from tasks.evaluation.base import BenchItem, BenchmarkResult, ItemScore
from tasks.evaluation.common import (
    RubricAsk,
    RubricProbe,
    check_aligned,
    generation_failed,
    harness_judge_decoding,
    jsonl_files,
    judge_form,
    suite_judge,
)
from tasks.instructions.loaders import InstructionDataError, RowProblem, load_longbench_write
from tasks.judging.judgment import ParseFailure, expected_value
from tasks.judging.pointwise import load_strict_json
from tasks.llm.base import LLMClient, Message

# ---------------------------------------------------------------------------------------------
# Official settings (THUDM/LongWriter @ ca6ccd4, evaluation/pred.py and eval_quality.py)
# ---------------------------------------------------------------------------------------------

GENERATION_MAX_NEW_TOKENS = 32768  # pred.py
GENERATION_TEMPERATURE = 0.5  # pred.py
JUDGE_MODEL = "gpt-4o-2024-05-13"  # eval_quality.py::GPT_MODEL
JUDGE_TEMPERATURE = 0.5  # eval_quality.py::get_response_gpt4
JUDGE_MAX_TOKENS = 1024  # eval_quality.py::get_response_gpt4
JUDGE_MAX_ASKS = 5  # eval_quality.py::process_data: `trys < 5`

# eval_quality.py::dims, in the official order (the order of judge.txt and of the aggregate).
DIMENSIONS: tuple[str, ...] = (
    "Relevance",
    "Accuracy",
    "Coherence",
    "Clarity",
    "Breadth and Depth",
    "Reading Experience",
)
ANALYSIS_KEY = "Analysis"  # asked for by judge.txt; not scored
DIMENSION_MIN, DIMENSION_MAX = 1, 5

# evaluation/judge.txt, verbatim (1,884 characters, no trailing newline).
JUDGE_PROMPT = """You are an expert in evaluating text quality. Please evaluate the quality of an AI assistant's response to a user's writing request. Be as strict as possible.

You need to evaluate across the following six dimensions, with scores ranging from 1 to 5. The scoring criteria from 5 to 1 for each dimension are as follows:

1. Relevance: From content highly relevant and fully applicable to the user's request to completely irrelevant or inapplicable.

2. Accuracy: From content completely accurate with no factual errors or misleading information to content with numerous errors and highly misleading.

3. Coherence: From clear structure with smooth logical connections to disorganized structure with no coherence.

4. Clarity: From clear language, rich in detail, and easy to understand to confusing expression with minimal details.

5. Breadth and Depth: From both broad and deep content with a lot of information to seriously lacking breadth and depth with minimal information.

6. Reading Experience: From excellent reading experience, engaging and easy to understand content to very poor reading experience, boring and hard to understand content.

Please evaluate the quality of the following response to a user's request according to the above requirements.

<User Request>

$INST$

</User Request>

<Response>

$RESPONSE$

</Response>

Please evaluate the quality of the response. You must first provide a brief analysis of its quality, then give a comprehensive analysis with scores for each dimension. The output must strictly follow the JSON format: {"Analysis": ..., "Relevance": ..., "Accuracy": ..., "Coherence": ..., "Clarity": ..., "Breadth and Depth": ..., "Reading Experience": ...}. You do not need to consider whether the response meets the user's length requirements in your evaluation. Ensure that only one integer between 1 and 5 is output for each dimension score."""

# ---------------------------------------------------------------------------------------------
# Length
# ---------------------------------------------------------------------------------------------

# pred.py::count_words, the same two patterns (applied to str, so `\b` is Unicode-aware).
_CHINESE_CHARACTER = re.compile(r"[\u4e00-\u9fff]")
_ENGLISH_WORD = re.compile(r"\b[a-zA-Z]+\b")


def count_words(text: str) -> int:
    """The official LongBench-Write length (THUDM/LongWriter@evaluation/pred.py::count_words):
    CJK unified ideographs U+4E00..U+9FFF one each, plus `\\b[a-zA-Z]+\\b` words. See the module
    docstring for what this does not count."""
    return len(_CHINESE_CHARACTER.findall(text)) + len(_ENGLISH_WORD.findall(text))


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_required(required_words: int) -> None:
    if not _is_int(required_words):
        raise TypeError(f"a required length must be an int, got {required_words!r}")
    if required_words <= 0:
        raise ValueError(f"a required length must be positive, got {required_words}")


def length_score(output_words: int, required_words: int) -> float:
    """S_l of one item in [0, 100] (THUDM/LongWriter@evaluation/eval_length.py::score, x = required,
    y = output): 100 at the exact length, 0 at 4x too long or 3x too short. An empty output scores
    0 (the official formula divides by zero there)."""
    _check_required(required_words)
    if not _is_int(output_words) or output_words < 0:
        raise ValueError(f"an output length must be a non-negative int, got {output_words!r}")
    x, y = required_words, output_words
    if y == 0:
        return 0.0
    if y > x:
        return 100 * max(0, 1.0 - (y / x - 1) / 3)
    return 100 * max(0, 1.0 - (x / y - 1) / 2)


# (label, low, high): low <= required < high, except the last bucket, which includes its high end.
LENGTH_BUCKETS: tuple[tuple[str, int, int], ...] = (
    ("0-500", 0, 500),
    ("500-2k", 500, 2000),
    ("2k-4k", 2000, 4000),
    ("4k-20k", 4000, 20000),
)
BUCKET_LABELS: tuple[str, ...] = tuple(label for label, _, _ in LENGTH_BUCKETS)


def length_bucket(required: int) -> str:
    """The paper's required-length bucket: [0, 500), [500, 2k), [2k, 4k), [4k, 20k] (the last one
    closed: the benchmark has a 20,000-word item). Outside (0, 20000]: ValueError."""
    _check_required(required)
    for index, (label, low, high) in enumerate(LENGTH_BUCKETS):
        last = index == len(LENGTH_BUCKETS) - 1
        if low <= required < high or (last and required == high):
            return label
    raise ValueError(f"required length {required} is outside LongBench-Write's range (0, 20000]")


# ---------------------------------------------------------------------------------------------
# Quality judge
# ---------------------------------------------------------------------------------------------


def judge_prompt(instruction: str, response: str) -> str:
    """judge.txt filled in as eval_quality.py::process_data does: `$INST$` first, then
    `$RESPONSE$` (so an instruction containing "$RESPONSE$" would be filled too, as there)."""
    return JUDGE_PROMPT.replace("$INST$", instruction).replace("$RESPONSE$", response)


def judge_messages(instruction: str, response: str) -> list[Message]:
    """One user message and no system message, as eval_quality.py::get_response_gpt4 sends."""
    return [{"role": "user", "content": judge_prompt(instruction, response)}]


@dataclass(frozen=True)
class QualityJudgment:
    scores: Mapping[str, float]  # the six DIMENSIONS, in order, each in [1, 5]
    analysis: Any = None  # the judge's "Analysis", when given (any JSON value; not scored)


def _dimension_value(name: str, value: Any) -> float | str:
    """The score as a float, or why it is not one."""
    if not _is_number(value):  # a bool (an int subclass) is refused, as are strings
        return f"{name!r} must be a number, got {json.dumps(value)}"
    if not math.isfinite(value) or not DIMENSION_MIN <= value <= DIMENSION_MAX:
        return f"{name!r} must be between {DIMENSION_MIN} and {DIMENSION_MAX}, got {value}"
    return float(value)


def parse_judge_reply(text: str) -> QualityJudgment | ParseFailure:
    """The judge's reply, strictly: exactly one JSON object (optionally in one ```json fence), the
    six DIMENSIONS as numbers in [1, 5], optionally "Analysis", nothing else. Never a number read
    out of prose; every refusal says why."""
    value = load_strict_json(text)
    if isinstance(value, ParseFailure):
        return value
    if not isinstance(value, dict):
        return ParseFailure(f"expected a JSON object, got a JSON {type(value).__name__}")
    missing = [d for d in DIMENSIONS if d not in value]
    extra = sorted(set(value) - set(DIMENSIONS) - {ANALYSIS_KEY})
    if missing or extra:
        parts = [f"missing dimension(s) {', '.join(map(repr, missing))}"] if missing else []
        parts += [f"unexpected key(s) {', '.join(map(repr, extra))}"] if extra else []
        return ParseFailure("; ".join(parts))
    scores: dict[str, float] = {}
    for dimension in DIMENSIONS:
        checked = _dimension_value(dimension, value[dimension])
        if isinstance(checked, str):
            return ParseFailure(checked)
        scores[dimension] = checked
    return QualityJudgment(scores=scores, analysis=value.get(ANALYSIS_KEY))


def _checked_scores(dimension_scores: Mapping[str, float]) -> dict[str, float]:
    """Exactly the six dimensions, each a number in [1, 5]; anything else is a caller's error."""
    keys = set(dimension_scores)
    if keys != set(DIMENSIONS):
        missing = sorted(set(DIMENSIONS) - keys)
        extra = sorted(keys - set(DIMENSIONS))
        raise ValueError(f"quality scores need exactly the six dimensions (missing {missing}, extra {extra})")
    out: dict[str, float] = {}
    for dimension in DIMENSIONS:
        checked = _dimension_value(dimension, dimension_scores[dimension])
        if isinstance(checked, str):
            raise ValueError(checked)
        out[dimension] = checked
    return out


def quality_score(dimension_scores: Mapping[str, float]) -> float:
    """One item's quality in [0, 100]: the mean over the six dimensions of (s - 1) * 25 (all 5s ->
    100, all 1s -> 0). The benchmark's S_q is `quality_aggregate`, which maps per-dimension means
    as the official eval_quality.py does; for a single item the two are the same number."""
    scores = _checked_scores(dimension_scores)
    return sum((scores[d] - 1) * 25 for d in DIMENSIONS) / len(DIMENSIONS)


def quality_aggregate(judgments: Sequence[Mapping[str, float]]) -> dict[str, float] | None:
    """S_q over judged items, in the official order (THUDM/LongWriter@evaluation/eval_quality.py):
    per dimension `((sum / n) - 1) * 25`, then "total" = the mean of the six. Returns the six
    mapped dimensions and "total"; None when there is no judgment (never 0)."""
    checked = [_checked_scores(j) for j in judgments]
    if not checked:
        return None
    total_score: dict[str, float] = {}
    for dimension in DIMENSIONS:
        scores = [s[dimension] for s in checked]
        total_score[dimension] = ((sum(scores) / len(scores)) - 1) * 25
    total_score["total"] = sum(total_score.values()) / len(total_score)
    return total_score


# ---------------------------------------------------------------------------------------------
# Benchmark aggregate
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LongBenchWriteRow:
    """One item's result: required words (the file's `length`), output words (`count_words` of
    the response) and the parsed quality scores, or None when the quality judgment failed."""

    required: int
    output_words: int
    quality: Mapping[str, float] | None = field(default=None)

    @classmethod
    def from_text(
        cls, required: int, response: str, quality: Mapping[str, float] | None = None
    ) -> LongBenchWriteRow:
        return cls(required=required, output_words=count_words(response), quality=quality)


def _summary(rows: Sequence[LongBenchWriteRow]) -> dict[str, Any]:
    judged = [r.quality for r in rows if r.quality is not None]
    s_l = sum(length_score(r.output_words, r.required) for r in rows) / len(rows) if rows else None
    quality = quality_aggregate(judged)
    s_q = None if quality is None else quality["total"]
    return {
        "n": len(rows),
        "n_quality": len(judged),
        "n_quality_failed": len(rows) - len(judged),
        "S_l": s_l,
        "S_q": s_q,
        "S": None if s_l is None or s_q is None else (s_l + s_q) / 2,
        "dimensions": None if quality is None else {d: quality[d] for d in DIMENSIONS},
    }


def aggregate(rows: Iterable[LongBenchWriteRow]) -> dict[str, Any]:
    """The benchmark result, overall and per bucket (`by_bucket`, all four labels, in order).

    Each level has: `n` (items), `S_l` (mean length score over ALL n items, as eval_length.py),
    `S_q` (official quality aggregate over the judged items only), `S` = (S_l + S_q) / 2,
    `n_quality` (items with a quality judgment), `n_quality_failed` (items whose judgment failed:
    excluded from S_q and counted here, never scored, so S_q's basis is visible) and `dimensions`
    (the six mapped dimension scores). Scores with nothing to average are None, never 0.
    """
    rows = list(rows)
    for row in rows:
        length_bucket(row.required)  # refuses a length outside the benchmark's range
        if row.quality is not None:
            _checked_scores(row.quality)
    result = _summary(rows)
    result["by_bucket"] = {
        label: _summary([r for r in rows if length_bucket(r.required) == label]) for label in BUCKET_LABELS
    }
    return result


# ---------------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------------

LBW_REASK = (
    "Your reply could not be used: {error}. Reply again with only the JSON object "
    '{{"Analysis": ..., "Relevance": ..., "Accuracy": ..., "Coherence": ..., "Clarity": ..., '
    '"Breadth and Depth": ..., "Reading Experience": ...}}, each dimension score one integer between 1 and 5.'
)
LBW_DIMENSION_ANSWER = (
    "Please evaluate the quality of the response on one dimension only: {number}. {dimension}. "
    "You do not need to consider whether the response meets the user's length requirements in your "
    "evaluation. Reply with only the score for this dimension, one integer between 1 and 5, and nothing else."
)
_LBW_FINAL_PARAGRAPH = JUDGE_PROMPT.rsplit("\n\n", 1)[1]  # "Please evaluate ... JSON format ..."
_LBW_VALUES = {str(s): float(s) for s in range(DIMENSION_MIN, DIMENSION_MAX + 1)}


def _lbw_score(logprobs: dict[str, float]) -> tuple[float, float] | ParseFailure:
    return expected_value(logprobs, _LBW_VALUES)


def lbw_dimension_messages(instruction: str, response: str, dimension: str) -> list[Message]:
    """judge.txt filled as officially, its closing paragraph (the JSON format) replaced by a request
    for one dimension's integer score 1-5."""
    prompt = judge_prompt(instruction, response)
    if not prompt.endswith(_LBW_FINAL_PARAGRAPH):
        raise RuntimeError("the LongBench-Write judge prompt no longer ends with its format paragraph")
    number = DIMENSIONS.index(dimension) + 1
    text = prompt[: -len(_LBW_FINAL_PARAGRAPH)] + LBW_DIMENSION_ANSWER.format(
        number=number, dimension=dimension
    )
    return [{"role": "user", "content": text}]


@dataclass(frozen=True)
class QualityForm:
    """The quality of one response: one reply that rates the six dimensions (json: judge.txt,
    parsed strictly into a `QualityJudgment`), or one probe per dimension (logprob: its expected
    score on 1-5)."""

    instruction: str
    response: str
    decoding: Decoding  # the harness's judge decoding (json mode)

    def asks(self) -> list[RubricAsk[Any]]:
        messages = judge_messages(self.instruction, self.response)
        return [RubricAsk(messages, parse_judge_reply, LBW_REASK.format, self.decoding, criteria=DIMENSIONS)]

    def probes(self) -> list[RubricProbe[Any]]:
        return [
            RubricProbe(
                lbw_dimension_messages(self.instruction, self.response, d),
                tuple(_LBW_VALUES),
                _lbw_score,
                criteria=(d,),
            )
            for d in DIMENSIONS
        ]


class LongBenchWriteSuite:
    """LongBench-Write: S = (S_l + S_q) / 2, overall and per required-length bucket.

    BenchItem: id `lbw-<content hash>`, prompt = the file's prompt, labels bucket/type/language,
    data = {required, type, language}, required_length = the file's `length`.
    """

    name = "longbench_write"
    version = 1
    needs_judge = True
    judge_modes = ("json", "logprob")
    truncates_input = False
    uses_writing_strategy = True

    def data_files(self, config: BenchmarkConfig) -> list[Path]:
        return jsonl_files(config)

    def load(self, config: BenchmarkConfig) -> list[BenchItem]:
        instructions = load_longbench_write(DataConfig(format="longbench_write", path=config.path))
        problems = []
        items = []
        for n, instruction in enumerate(instructions, start=1):
            required = instruction.required_length
            assert required is not None  # the loader requires `length`
            try:
                bucket = length_bucket(required)
            except ValueError as exc:
                problems.append(RowProblem(f"{config.path}:item {n} ({instruction.id})", "length", str(exc)))
                continue
            labels = {
                "bucket": bucket,
                "type": instruction.subgenre or "",
                "language": instruction.language or "",
            }
            items.append(
                BenchItem(
                    id=instruction.id,
                    prompt=instruction.prompt,
                    labels={k: v for k, v in labels.items() if v},
                    data={
                        "required": required,
                        "type": instruction.subgenre,
                        "language": instruction.language,
                    },
                    required_length=required,
                )
            )
        if problems:
            raise InstructionDataError(str(config.path), problems)
        return items[: config.limit]

    def generation_decoding(self, config: BenchmarkConfig, seed: int | None) -> Decoding:
        return Decoding(
            temperature=GENERATION_TEMPERATURE,
            max_tokens=config.max_tokens or GENERATION_MAX_NEW_TOKENS,
            seed=seed,
        )

    def judge_decoding(self, judge: JudgeConfig) -> Decoding:
        return harness_judge_decoding(JUDGE_TEMPERATURE, JUDGE_MAX_TOKENS, judge)

    def judge_form(self, item: BenchItem, response: str, judge: JudgeConfig) -> QualityForm:
        return QualityForm(item.prompt, response, self.judge_decoding(judge))

    async def score(
        self, item: BenchItem, response: str | None, judge_client: LLMClient | None, judge: JudgeConfig | None
    ) -> ItemScore:
        judged_by = suite_judge(self.name, judge_client, judge)
        required = int(item.data["required"])
        if response is None:
            return generation_failed(required=required)
        output_words = count_words(response)
        s_l = length_score(output_words, required)
        details: dict[str, Any] = {"required": required, "output_words": output_words, "S_l": s_l}
        form = self.judge_form(item, response, judged_by.config)
        rated = await judge_form(judged_by, form)
        dimensions: dict[str, Any] = {}
        masses: dict[str, float | None] = {}
        for r in rated:
            value = r.judgment.value
            if isinstance(value, QualityJudgment):  # one reply rated every dimension
                dimensions |= value.scores
            else:  # a probe's score, or None for every dimension its question rated
                dimensions |= dict.fromkeys(r.criteria, value)
            if r.probed:
                masses |= dict.fromkeys(r.criteria, r.judgment.mass)
            else:  # a reply: the judge's analysis, when it could be read
                details["analysis"] = getattr(value, "analysis", None)
        if masses:
            details["candidate_mass"] = masses
        details["dimensions"] = dimensions
        errors = [r.error for r in rated if r.error]
        calls = sum(r.judgment.calls for r in rated)
        if errors:
            details["S_q"] = None
            error = f"quality judgment failed: {'; '.join(errors)}"
            retryable = any(r.judgment.retryable for r in rated)
            return ItemScore(None, details=details, error=error, retryable=retryable, llm_calls=calls)
        s_q = quality_score(dimensions)
        details["S_q"] = s_q
        return ItemScore((s_l + s_q) / 2, details=details, llm_calls=calls)

    def aggregate(self, items: Sequence[BenchItem], scores: Sequence[ItemScore]) -> BenchmarkResult:
        check_aligned(items, scores)
        rows = []
        for item, score in zip(items, scores, strict=True):
            details = score.details
            if details.get("generation_failed") or details.get("output_words") is None:
                continue  # no prediction: in no denominator (see the module docstring)
            dimensions = details.get("dimensions") or {}
            complete = set(dimensions) == set(DIMENSIONS) and None not in dimensions.values()
            rows.append(
                LongBenchWriteRow(
                    required=int(item.data["required"]),
                    output_words=int(details["output_words"]),
                    quality=dict(dimensions) if complete else None,
                )
            )
        result = aggregate(rows)
        metrics: dict[str, float | None] = {
            "S": result["S"],
            "S_l": result["S_l"],
            "S_q": result["S_q"],
            "quality_failed": float(result["n_quality_failed"]),
        }
        for dimension in DIMENSIONS:
            metrics[f"dimension/{dimension}"] = (result["dimensions"] or {}).get(dimension)
        for label, bucket in result["by_bucket"].items():
            for key in ("S_l", "S_q", "S"):
                metrics[f"bucket/{label}/{key}"] = bucket[key]
        return BenchmarkResult(
            score=result["S"],
            metrics=metrics,
            n_items=len(items),
            n_failed=sum(1 for s in scores if s.score is None),
        )
