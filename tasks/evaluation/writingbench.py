"""WritingBench (Wu et al., 2025, arXiv:2503.05244): the official critic prompt and score aggregate
(overall and by domain), and the suite: its items from the benchmark file (the project's
`writingbench` loader), the critic calls for one response, and the aggregate.

What the official harness does (X-PLUG/WritingBench):

- Judging (`evaluate_benchmark.py` @ dab48ca; `evaluator/critic.py` @ 9058843): every query has
  its criteria (`checklist`, 5 per query in the released files); each criterion is judged in its
  own call: system `evaluate_system`, user `evaluate_prompt.format(query=, response=, criteria=)`
  where `criteria` is the criterion's dict from the JSONL file (so the prompt shows its Python
  repr) and the response has everything up to the first "</think>\\n\\n" removed
  (`process_gen_field`). The reply must be a JSON object with "score" in 1..10 and a string
  "reason". `EVAL_TIMES = 1` evaluation per criterion. Scoring decoding (README, 2025-04-29):
  top_p 0.95, temperature 1.0, max_length 2048. A criterion still unparsable after the retries
  raises `ValueError("Fail to generate score!")`, which aborts the whole run.
- Aggregate (`calculate_scores.py` @ ac3d0ca, and `calculate.py` @ ddbbe81, identical except that
  it multiplies every score by 10 first: the leaderboard's 10-100 scale, "Leaderboard scores are
  scaled from 10 to 100 by multiplying by 10" in the README):
  - Overall = the sum of ALL (query, criterion, evaluation) scores / their count: a mean over
    criterion scores, not over queries (`read_scores_file::overall_avg`).
  - Per query = the mean of its scores (`scores_data[index]`).
  - Domain1 / Domain2 = the mean over the domain's queries of the per-query means
    (`calculate_domain_scores`): a mean of query means. With 5 scores per query this equals the
    mean over the domain's criterion scores; with missing scores it does not, and we follow the
    official order.

The official prompt text: `EVALUATE_SYSTEM` / `EVALUATE_PROMPT` were first taken from three
independent public copies that agree character for character, and are now confirmed
byte-identical to `prompt.py`'s `evaluate_system` / `evaluate_prompt` in X-PLUG/WritingBench @
ae2d517 (`tests/test_evaluation_suites.py` keeps them from drifting). The README dates the current
prompt to its 2025-04-29 update. The template's first ```json block is never closed (kept as
is). At ae2d517, `evaluate_benchmark.py` passes `content["response"]` to `process_gen_field`
(the list bug of dab48ca, departure 3, is fixed there). The official judge is an LLM (README: Claude-3-7-Sonnet from 2025-04-29, Claude-Sonnet-4
from 2025-09-05, Claude-Sonnet-4-5 from 2025-11-27) or the released critic model, same prompt.

Departures from the official harness (scoring):

1. A failed criterion (unparsable reply after the re-asks, failed call) does not abort the run:
   it is a row with score None, EXCLUDED from every mean and COUNTED (`n_failed`, `failed`, per
   domain too); it is never scored 0 (which would read as "the worst writing") and never imputed.
   The overall mean is then over the scored (query, criterion) pairs, the official formula on the
   scores that exist; a query's mean is over its scored criteria; a query with no scored
   criterion has no mean and drops out of its domains (counted in `n_queries_without_score`).
   The official harness has no such case (it stops), so any result with `n_failed > 0` is not
   strictly comparable with the leaderboard, and says so by its counts.
2. Replies are parsed strictly with the project's `tasks.judging.pointwise.parse_score_reply`
   (re-exported as `parse_critic_reply`): exactly {"score": <int 1-10>, "reason": "<non-empty>"},
   optionally in one ```json fence. The official check (`json.loads(response.strip('json|```'))`
   then `score in [1..10]`) accepts 7.0 and `true` (== 1) as scores, and an empty reason.
3. The "</think>\\n\\n" stripping is applied by `critic_prompt`, as the official harness intends
   (the @ dab48ca file passes the literal list `["response"]` to `process_gen_field`, a bug fixed
   in later versions, which pass `content["response"]`).
4. Scores may be non-integers in [1, 10] (the project's logprob judge gives an expected value);
   the official critic only produces integers. The arithmetic is unchanged.

Requirement dimensions. The leaderboard also reports each requirement subset (style, format,
length) as R, the subset's score with its usual criteria, and C, the score on the one
requirement-specific criterion that the subset's `_C` file gives each query (the same query and
index). With `requirement_criteria` (that `_C` file) the suite judges the C criterion too, in the
same critic call shape, and reports `requirement/<name>/R` (the headline) and
`requirement/<name>/C` (x10, a mean over the queries whose C criterion was scored); the headline
is unchanged. The C file is part of the benchmark's data fingerprint.

Departures of the suite (the shared ones of every judged suite: `tasks.evaluation.common`):

5. Generation: temperature 0.7, top_p 0.8 and max_tokens 16000 (`GENERATION_DECODING`); its
   top_k 20 is not in our `Decoding` and is dropped. Critic: `CRITIC_DECODING` (temperature 1.0,
   top_p 0.95, max_tokens 2048), with the judge's seed.
6. An item's score (x10) exists only when all its criteria were scored; the aggregate still uses
   every scored criterion (`aggregate`, departure 1). A failed generation makes every criterion
   of the item a failed judgment (counted, never 0).
7. Logprob mode: both JSON output-format blocks of the critic prompt are replaced by "reply with
   only the grade, a single digit 0-9 (= score - 1)"; score = 1 + E[grade] on 1-10 (the scheme of
   `tasks.judging.pointwise`, which explains why not "1".."10"). The first criteria block moves
   from before the query to after the response, next to the restated criteria (suite version 2):
   the probes of one response's five criteria then share everything up to the end of the
   response, which an in-process judge computes once (tasks.llm.shared_prefix). The words are the
   official ones; only their order changes.
"""

from __future__ import annotations

import codecs
import json
import math
import numbers
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from configs.loading import ConfigError
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
from tasks.instructions.loaders import load_writingbench
from tasks.judging.pointwise import LOGPROB_DIGITS, expected_score, parse_score_reply
from tasks.llm.base import LLMClient, Message

SCORE_MIN, SCORE_MAX = 1, 10
LEADERBOARD_SCALE = 10  # calculate.py: every score x 10 (README: "scaled from 10 to 100")

# README (2025-04-29): decoding for the evaluated model's responses and for the judge.
GENERATION_DECODING: Mapping[str, float] = {
    "top_p": 0.8,
    "top_k": 20,
    "temperature": 0.7,
    "max_length": 16000,
}
CRITIC_DECODING: Mapping[str, float] = {"top_p": 0.95, "temperature": 1.0, "max_length": 2048}
EVAL_TIMES = 1  # evaluate_benchmark.py: evaluations per criterion

# calculate_scores.py::DOMAIN1_ORDER (display order of the six primary domains).
DOMAIN1_ORDER: tuple[str, ...] = (
    "Academic & Engineering",
    "Finance & Business",
    "Politics & Law",
    "Literature & Arts",
    "Education",
    "Advertising & Marketing",
)

# prompt.py::evaluate_system / evaluate_prompt (see the module docstring for the provenance).
EVALUATE_SYSTEM = (
    "You are an expert evaluator with extensive experience in evaluating response of given query."
)

# The two "** Output format ** " lines end with a space in the original: spelled out here so the
# source has no trailing whitespace.
OUTPUT_FORMAT = (
    "** Output format ** \n"
    "(Remove symbols that interfere with JSON parsing, don't use \" inside reason)\n"
    "Return the results in the following JSON format, Only output the following JSON format and nothing else:\n"
    "```json\n"
    "{{\n"
    '    "score": an integer score between 1 to 10,\n'
    '    "reason": "Specific and detailed justification for the score using text elements."\n'
    "}}\n"
)

EVALUATE_PROMPT = (
    """Evaluate the Response based on the Query and Criteria provided following the Scoring Rules.

** Scoring Rules **

"1-2": "Low score description: Critical deficiencies and major issues that prevent adequate functionality.",
"3-4": "Below average score description: Lacking with noticeable shortcomings that impact overall effectiveness and require improvement.",
"5-6": "Average score description: Adequate but not exemplary, Baseline performance that meets essential requirements. Most models may achieve this score.",
"7-8": "Above average score description: Strong performance characterized by competent execution, though minor refinements are needed to achieve excellence.",
"9-10": "High score description: Exceptional performance with all aspects optimally addressed, demonstrating superior effectiveness and quality without any flaws."

-Provide reasons for each score by indicating specific strengths or deficiencies within the Response. Reference exact text passages to justify the score, ensuring that each reason is concrete and aligns with the criteria requirements while highlighting key gaps from the ideal answer.

-Be very STRICT and do not be misled by format or length; ensure that the Response is thoroughly evaluated beyond superficial appearances.

-Carefully discern whether the content of the Response is an illusion, appearing substantial but actually entirely fabricated.

-Sometimes the model may only provide an introduction or an overview without truly completing the query, which should be considered a failed response. Carefully discern this.

-Scoring Range: Assign an integer score between 1 to 10

"""
    + OUTPUT_FORMAT
    + """
** Criteria **
```{criteria}```

** Query **
```{query}```

** Response **
```{response}```

Provide your evaluation based on the criteria restated below:

```{criteria}```

"""
    + OUTPUT_FORMAT
    + "```"
)

_THINK_END = "</think>\n\n"

parse_critic_reply = parse_score_reply  # the project's strict {"score", "reason"} parser


def strip_think(response: str) -> str:
    """evaluate_benchmark.py::process_gen_field: drop everything up to the first "</think>\\n\\n"."""
    position = response.find(_THINK_END)
    return response[position + len(_THINK_END) :] if position != -1 else response


def critic_prompt(query: str, response: str, criterion: Mapping[str, Any]) -> str:
    """The user message for one criterion: `criterion` is the checklist entry as read from the
    JSONL file (its dict repr is what the official prompt shows, keys in file order)."""
    return EVALUATE_PROMPT.format(query=query, response=strip_think(response), criteria=dict(criterion))


def critic_messages(query: str, response: str, criterion: Mapping[str, Any]) -> list[Message]:
    """System + user, as evaluator/critic.py and the LLM evaluator send them."""
    return [
        {"role": "system", "content": EVALUATE_SYSTEM},
        {"role": "user", "content": critic_prompt(query, response, criterion)},
    ]


# ---------------------------------------------------------------------------------------------
# Aggregate
# ---------------------------------------------------------------------------------------------


class WritingBenchRow(NamedTuple):
    """One (query, criterion) judgment; a plain 5-tuple in this order works too. Several rows for
    the same (index, criterion) are several evaluations (the official EVAL_TIMES > 1)."""

    index: int | str
    domain1: str
    domain2: str
    criterion: str
    score: float | None  # 1-10, or None when the judgment failed


def _check_score(row: WritingBenchRow) -> None:
    score = row.score
    if score is None:
        return
    is_number = isinstance(score, numbers.Real) and not isinstance(score, bool)
    if not is_number or not math.isfinite(score) or not SCORE_MIN <= score <= SCORE_MAX:
        raise ValueError(
            f"query {row.index!r}, criterion {row.criterion!r}: a score must be a number in "
            f"[{SCORE_MIN}, {SCORE_MAX}] or None for a failed judgment, got {score!r}"
        )


def _scaled_mean(scores: list[float]) -> tuple[float, float] | tuple[None, None]:
    """(mean on 1-10, mean on the leaderboard's 10-100: each score x 10 first, as calculate.py)."""
    if not scores:
        return None, None
    return sum(scores) / len(scores), sum(s * LEADERBOARD_SCALE for s in scores) / len(scores)


def _domain_order(name: str) -> tuple[int, str]:
    return (DOMAIN1_ORDER.index(name), "") if name in DOMAIN1_ORDER else (len(DOMAIN1_ORDER), name)


def aggregate(rows: Iterable[WritingBenchRow | tuple[Any, ...]]) -> dict[str, Any]:
    """WritingBench scores from per-criterion judgments, as calculate_scores.py computes them.

    Returns `score` (mean over every scored (query, criterion) pair, 1-10), `score_x10` (the
    leaderboard scale), `n_queries`, `n_scores` (scored pairs), `n_failed` and `failed` (the
    (index, criterion) pairs whose judgment failed: excluded from every mean, never 0),
    `n_queries_with_failures`, `n_queries_without_score`, and `by_domain1` / `by_domain2`: per
    domain, `score` / `score_x10` = the mean of its queries' means (official order), `n_queries`
    (queries with a mean), `n_scores`, `n_failed`. A score with nothing to average is None.
    Raises ValueError for a score outside [1, 10] or a query given two different domains.
    """
    parsed = [WritingBenchRow(*row) for row in rows]
    domains: dict[Any, tuple[str, str]] = {}
    per_query: dict[Any, list[float]] = defaultdict(list)
    failed: list[tuple[Any, str]] = []
    for row in parsed:
        _check_score(row)
        known = domains.setdefault(row.index, (row.domain1, row.domain2))
        if known != (row.domain1, row.domain2):
            raise ValueError(
                f"query {row.index!r} has two domain pairs: {known} and {(row.domain1, row.domain2)}"
            )
        if row.score is None:
            failed.append((row.index, row.criterion))
        else:
            per_query[row.index].append(float(row.score))

    all_scores = [float(row.score) for row in parsed if row.score is not None]
    score, score_x10 = _scaled_mean(all_scores)
    failed_queries = {index for index, _ in failed}

    def by_domain(level: int) -> dict[str, dict[str, Any]]:
        names = sorted({pair[level] for pair in domains.values()}, key=_domain_order)
        out: dict[str, dict[str, Any]] = {}
        for name in names:
            queries = [i for i, pair in domains.items() if pair[level] == name]
            means = [sum(per_query[i]) / len(per_query[i]) for i in queries if per_query[i]]
            d_score, d_x10 = _scaled_mean(means)
            out[name] = {
                "score": d_score,
                "score_x10": d_x10,
                "n_queries": len(means),
                "n_scores": sum(len(per_query[i]) for i in queries),
                "n_failed": sum(1 for i, _ in failed if domains[i][level] == name),
            }
        return out

    return {
        "score": score,
        "score_x10": score_x10,
        "n_queries": len(domains),
        "n_scores": len(all_scores),
        "n_failed": len(failed),
        "failed": failed,
        "n_queries_with_failures": len(failed_queries),
        "n_queries_without_score": sum(1 for i in domains if not per_query[i]),
        "by_domain1": by_domain(0),
        "by_domain2": by_domain(1),
    }


# ---------------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------------

WB_DIGIT_ANSWER = (
    "** Output format ** \n"
    "Reply with only the grade: a single digit from 0 to 9, equal to your integer score between "
    "1 to 10 minus 1 (score 1 is grade 0, score 10 is grade 9). Output the digit and nothing else.\n"
)
WB_REASK = (
    "Your reply could not be used: {error}. Reply again with only the JSON object "
    '{{"score": <an integer between 1 to 10>, "reason": "<specific justification>"}} and nothing else.'
)
# The critic prompt's criteria block before the query; the restated one after the response stays.
_WB_CRITERIA_BLOCK = "** Criteria **\n```{criteria}```\n\n"
_WB_RESTATED = "Provide your evaluation based on the criteria restated below:"


def _wb_logprob_template() -> str:
    """The official critic template for logprob probes: both JSON output-format blocks replaced by
    the digit request, and the first criteria block moved from before the query to after the
    response, just above the restated criteria. Every word of the official prompt stays; what
    varies between one response's criteria now comes last, so its probes share the prompt up to
    the end of the response (tasks.llm.shared_prefix computes that once)."""
    template = EVALUATE_PROMPT
    if (
        template.count(OUTPUT_FORMAT) != 2
        or not template.endswith(OUTPUT_FORMAT + "```")
        or template.count(_WB_CRITERIA_BLOCK) != 1
        or template.count(_WB_RESTATED) != 1
        or template.index(_WB_CRITERIA_BLOCK) > template.index("** Query **")
    ):
        raise RuntimeError(
            "the WritingBench critic prompt no longer has the layout the logprob probe expects"
        )
    template = template.removesuffix(OUTPUT_FORMAT + "```") + WB_DIGIT_ANSWER
    template = template.replace(OUTPUT_FORMAT, WB_DIGIT_ANSWER, 1)
    template = template.replace(_WB_CRITERIA_BLOCK, "", 1)
    return template.replace(_WB_RESTATED, _WB_CRITERIA_BLOCK + _WB_RESTATED, 1)


_WB_LOGPROB_TEMPLATE = _wb_logprob_template()


def wb_logprob_messages(query: str, response: str, criterion: Mapping[str, Any]) -> list[Message]:
    """The official critic messages as a digit-grade probe (`_wb_logprob_template`), filled as
    `critic_prompt` fills the official one."""
    messages = critic_messages(query, response, criterion)
    user = _WB_LOGPROB_TEMPLATE.format(query=query, response=strip_think(response), criteria=dict(criterion))
    return [messages[0], {"role": "user", "content": user}]


@dataclass(frozen=True)
class CriticForm:
    """One response on each of its query's criteria, one critic question per criterion: the
    official critic prompt parsed strictly (json), or its digit-grade probe (logprob). Both give
    a score on 1-10 (json: a `ParsedScore` with its reason)."""

    query: str
    response: str
    criteria: Sequence[Mapping[str, Any]]
    decoding: Decoding  # the critic's (json mode)

    def asks(self) -> list[RubricAsk[Any]]:
        return [
            RubricAsk(
                critic_messages(self.query, self.response, c),
                parse_score_reply,
                WB_REASK.format,
                decoding=self.decoding,
                criteria=(c["name"],),
            )
            for c in self.criteria
        ]

    def probes(self) -> list[RubricProbe[Any]]:
        return [
            RubricProbe(
                wb_logprob_messages(self.query, self.response, c),
                LOGPROB_DIGITS,
                expected_score,
                criteria=(c["name"],),
            )
            for c in self.criteria
        ]


REQUIREMENTS = ("style", "format", "length")  # the leaderboard's requirement subsets


def requirement_criteria(config: BenchmarkConfig) -> tuple[str, dict[str, list[dict[str, Any]]]]:
    """(the requirement's name, item id -> its requirement criteria) from the `_C` file; the name
    is the file's: `<style|format|length>_subset_C...jsonl`."""
    path = Path(config.requirement_criteria)  # type: ignore[arg-type]
    name = path.name.split("_subset_C", 1)[0]
    if name not in REQUIREMENTS or "_subset_C" not in path.name:
        raise ConfigError(
            f"evaluation.benchmarks.writingbench.requirement_criteria: {path.name} is not a requirement "
            f"subset's _C file (<{'|'.join(REQUIREMENTS)}>_subset_C*.jsonl)"
        )
    if not path.is_file():
        raise ConfigError(f"evaluation.benchmarks.writingbench.requirement_criteria: {path} does not exist")
    out: dict[str, list[dict[str, Any]]] = {}
    for number, row in _jsonl_rows(path):
        criteria = row.get("checklist") or row.get("criteria")
        if "index" not in row or not isinstance(criteria, list) or not criteria:
            raise ConfigError(f"{path}:{number}: a _C row needs `index` and a non-empty `checklist`")
        out[f"wb-{row['index']}"] = criteria
    return name, out


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) of a benchmark JSONL file, as the raw criteria are read (a BOM allowed);
    a line that is not a JSON object is an error naming the file and line."""
    for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        line = line.removeprefix(codecs.BOM_UTF8)
        if line.strip():
            try:
                row = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ConfigError(f"{path}:{number}: not a JSON line ({exc})") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}:{number}: not a JSON object")
            yield number, row


def _requirement_data(
    requirement: tuple[str, dict[str, list[dict[str, Any]]]], item_id: str, config: BenchmarkConfig
) -> dict[str, Any]:
    name, by_id = requirement
    if item_id not in by_id:
        raise ConfigError(
            f"evaluation.benchmarks.writingbench.requirement_criteria: {config.requirement_criteria} has no "
            f"row for {item_id} of {config.path}: it is not that subset's _C file"
        )
    return {"requirement": name, "requirement_criteria": by_id[item_id]}


class WritingBenchSuite:
    """WritingBench: each criterion of a query judged 1-10 in its own critic call; headline x10.

    BenchItem: id `wb-{index}`, prompt = the query, labels domain1/domain2, data = {index, domain1,
    domain2, criteria: the checklist dicts exactly as in the file (the critic prompt shows them)}.
    """

    name = "writingbench"
    version = 2  # 2: the logprob probe puts the criterion after the response
    needs_judge = True
    judge_modes = ("json", "logprob")
    truncates_input = False
    uses_writing_strategy = True

    def data_files(self, config: BenchmarkConfig) -> list[Path]:
        return jsonl_files(config) + (
            [Path(config.requirement_criteria)] if config.requirement_criteria else []
        )

    def load(self, config: BenchmarkConfig) -> list[BenchItem]:
        instructions = load_writingbench(DataConfig(format="writingbench", path=config.path))
        raw = self._raw_criteria(config)  # the loader validated every row: read its dicts as is
        requirement = requirement_criteria(config) if config.requirement_criteria else None
        items = []
        for instruction in instructions[: config.limit]:
            labels = {
                k: v for k, v in (("domain1", instruction.genre), ("domain2", instruction.subgenre)) if v
            }
            items.append(
                BenchItem(
                    id=instruction.id,
                    prompt=instruction.prompt,
                    labels=labels,
                    data={
                        "index": instruction.metadata.get("index"),
                        "domain1": instruction.genre,
                        "domain2": instruction.subgenre,
                        "criteria": raw[instruction.id],
                        **(_requirement_data(requirement, instruction.id, config) if requirement else {}),
                    },
                )
            )
        return items

    def _raw_criteria(self, config: BenchmarkConfig) -> dict[str, list[dict[str, Any]]]:
        return {
            f"wb-{row['index']}": row["criteria" if "criteria" in row else "checklist"]
            for path in jsonl_files(config)
            for _, row in _jsonl_rows(path)
        }

    def generation_decoding(self, config: BenchmarkConfig, seed: int | None) -> Decoding:
        official = GENERATION_DECODING
        return Decoding(
            temperature=official["temperature"],
            top_p=official["top_p"],
            max_tokens=config.max_tokens or int(official["max_length"]),
            seed=seed,
        )

    def judge_decoding(self, judge: JudgeConfig) -> Decoding:
        official = CRITIC_DECODING
        return harness_judge_decoding(
            official["temperature"], int(official["max_length"]), judge, official["top_p"]
        )

    def judge_form(self, item: BenchItem, response: str, judge: JudgeConfig) -> CriticForm:
        """Every criterion of the query, then its requirement criterion when the config gives one."""
        criteria = [*item.data["criteria"], *item.data.get("requirement_criteria", ())]
        return CriticForm(item.prompt, response, criteria, self.judge_decoding(judge))

    async def score(
        self, item: BenchItem, response: str | None, judge_client: LLMClient | None, judge: JudgeConfig | None
    ) -> ItemScore:
        judged_by = suite_judge(self.name, judge_client, judge)
        if response is None:
            return generation_failed()
        form = self.judge_form(item, response, judged_by.config)
        rated = await judge_form(judged_by, form)
        details = []
        for r in rated:
            value = r.judgment.value
            entry: dict[str, Any] = {
                "criterion": r.criteria[0],
                "score": None if value is None else float(getattr(value, "score", value)),
                "reason": getattr(value, "reason", None),
                "error": r.judgment.error,
            }
            if r.probed:
                entry["candidate_mass"] = r.judgment.mass
            details.append(entry)
        calls = sum(r.judgment.calls for r in rated)
        failed = [r for r, d in zip(rated, details, strict=True) if d["score"] is None]
        n = len(item.data["criteria"])  # the requirement criterion, if any, comes after: not in the score
        judged = {"criteria": details[:n], **({"requirement": details[n:]} if details[n:] else {})}
        if failed:
            reasons = "; ".join(str(r.error) for r in failed)  # each named by its criterion
            return ItemScore(
                None,
                details=judged,
                error=f"{len(failed)}/{len(details)} criteria failed: {reasons}",
                retryable=any(r.judgment.retryable for r in failed),
                llm_calls=calls,
            )
        mean = sum(d["score"] for d in details[:n]) / n
        return ItemScore(mean * LEADERBOARD_SCALE, details=judged, llm_calls=calls)

    def aggregate(self, items: Sequence[BenchItem], scores: Sequence[ItemScore]) -> BenchmarkResult:
        check_aligned(items, scores)
        rows = []
        for item, score in zip(items, scores, strict=True):
            judged = score.details.get("criteria") or [{"score": None}] * len(item.data["criteria"])
            domain1, domain2 = item.data.get("domain1") or "", item.data.get("domain2") or ""
            for criterion, j in zip(item.data["criteria"], judged, strict=True):
                rows.append(WritingBenchRow(item.id, domain1, domain2, criterion["name"], j["score"]))
        result = aggregate(rows)
        metrics: dict[str, float | None] = {
            "score": result["score"],
            "score_x10": result["score_x10"],
            "failed_criteria": float(result["n_failed"]),
        }
        for level in ("domain1", "domain2"):
            for name, domain in result[f"by_{level}"].items():
                metrics[f"{level}/{name}"] = domain["score_x10"]
        requirement = next((i.data["requirement"] for i in items if i.data.get("requirement")), None)
        if requirement is not None:
            c_scores = [
                d["score"] for s in scores for d in s.details.get("requirement", ()) if d["score"] is not None
            ]
            metrics[f"requirement/{requirement}/R"] = result["score_x10"]
            metrics[f"requirement/{requirement}/C"] = (
                sum(c_scores) / len(c_scores) * LEADERBOARD_SCALE if c_scores else None
            )
        return BenchmarkResult(
            score=result["score_x10"],
            metrics=metrics,
            n_items=len(items),
            n_failed=sum(1 for s in scores if s.score is None),
        )
