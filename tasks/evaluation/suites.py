"""The four benchmark suites of stage 6: items from the benchmark files, the candidate's decoding,
the judge calls for one response, and the aggregate. The official prompts, parsers and formulas
live in `tasks/benchmarks/` (their docstrings document the harnesses and the departures made
there); this module wires them to the `BenchmarkSuite` contract of `tasks.evaluation.base`.

`SUITES` holds one suite per `configs.schema.BENCHMARKS` name; `data_fingerprint` hashes the bytes
a suite's `load` reads (cache keys, lineage). Every judgment records its errors: a judge reply
still unparsable after `judge.max_parse_retries` re-asks is a final failure (no score, not
retryable), a failed judge call or probe is retryable, `EndpointFailingError` propagates.

Departures from the official harnesses, beyond those documented in `tasks/benchmarks/*`:

All judged suites
- An unparsable judge reply is re-asked `judge.max_parse_retries` times with the bad reply and
  what was wrong appended (the project's `ask_until_parsed`), so each ask is a new request; the
  harnesses re-send the same request a fixed number of times (LongBench-Write: 5 asks).
- Logprob mode (in-process judges, `judge.mode: logprob`) has no official counterpart: the
  official prompt is kept and only its answer format changes to one score token, and the score is
  the expectation over the candidate tokens' renormalised probabilities:
  - WritingBench: both JSON output-format blocks of the critic prompt are replaced by "reply with
    only the grade, a single digit 0-9 (= score - 1)"; score = 1 + E[grade] on 1-10 (the scheme
    of `tasks.judging.pointwise`, which explains why not "1".."10"). The first criteria block
    moves from before the query to after the response, next to the restated criteria (suite
    version 2): the probes of one response's five criteria then share everything up to the end
    of the response, which an in-process judge computes once (tasks.llm.shared_prefix). The words
    are the official ones; only their order changes.
  - LongBench-Write: six probes, one per dimension; the prompt's closing paragraph (the JSON
    format) is replaced by a request for that dimension's integer 1-5; candidates "1".."5".
  - Creative Writing v3: 22 probes, one per criterion; the rubric list holds only that criterion
    and a closing line asks for a digit grade 0-9, mapped linearly to 0-20 (grade * 20 / 9).
- A failed generation (response None) is never judged. How it counts is per suite (below).

WritingBench
- Generation: temperature 0.7, top_p 0.8 and max_tokens 16000 (`GENERATION_DECODING`); its
  top_k 20 is not in our `Decoding` and is dropped. Critic: `CRITIC_DECODING` (temperature 1.0,
  top_p 0.95, max_tokens 2048), with the judge's seed.
- An item's score (x10) exists only when all its criteria were scored; the aggregate still uses
  every scored criterion (`writingbench.aggregate`, its departure 1). A failed generation makes
  every criterion of the item a failed judgment (counted, never 0).

LongBench-Write
- The response is measured and judged as returned (no reasoning stripping, as `pred.py`).
- A failed generation (no response at all, not an empty one) leaves the item out of S_l, S_q and
  S and counts in `n_failed`: there is no output to measure, and y = 0 would report it as a model
  that wrote nothing. An item whose quality judgment failed still counts in S_l, as officially.

Creative Writing v3
- Generation: temperature 0.7, max_tokens 4000; min_p 0.1 is not in our `Decoding` (dropped).
- A piece shorter than 500 characters is not regenerated (a suite cannot call the candidate) but
  judged as is; its length is recorded (`piece_chars`, `short_piece`) and counted
  (`short_pieces`). A failed generation is a failed piece: no score, counted in `failed`.

LongBench v2
- Only the 0-shot prompt without chain of thought. The middle truncation to `max_input_tokens`
  (the candidate's tokenizer, `longbench_v2.truncate_middle`) is the stage's job.
"""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import json
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from configs.schema import BENCHMARKS, BenchmarkConfig, DataConfig, Decoding, JudgeConfig
from tasks.benchmarks import creative_writing_v3 as cw3
from tasks.benchmarks import longbench_v2 as lbv2
from tasks.benchmarks import longbench_write as lbw
from tasks.benchmarks import writingbench as wb
from tasks.evaluation.base import BenchItem, BenchmarkResult, BenchmarkSuite, ItemScore
from tasks.instructions.loaders import (
    CW3_FILE,
    InstructionDataError,
    RowProblem,
    load_creative_writing_v3,
    load_json_document,
    load_longbench_write,
    load_writingbench,
)
from tasks.judging.pointwise import (
    LOGPROB_DIGITS,
    ParseFailure,
    ask_until_parsed,
    expected_score,
    parse_score_reply,
    probe_logprobs,
    require_logprob_probe,
)
from tasks.llm.base import EndpointFailingError, LLMClient, Message
from tasks.registry import Registry

__all__ = [
    "SUITES",
    "CreativeWritingV3Suite",
    "LongBenchV2Suite",
    "LongBenchWriteSuite",
    "WritingBenchSuite",
    "data_fingerprint",
]

SUITES: Registry[BenchmarkSuite] = Registry("benchmark suite", allowed=BENCHMARKS)

T = TypeVar("T")

GENERATION_FAILED = "generation failed"
LBV2_DATA_FILE = "data.json"  # the official file name (THUDM/LongBench-v2 on the hub)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _resolve(config: BenchmarkConfig) -> tuple[Path, str]:
    """(absolute path, the path as written, for messages). Relative paths use the cwd."""
    path = config.path.expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    if not path.exists():
        raise FileNotFoundError(f"benchmark path {config.path} does not exist (resolved to {path})")
    return path, str(config.path)


def _jsonl_files(config: BenchmarkConfig) -> list[Path]:
    """The file, or every non-hidden *.jsonl under the folder in path order (as the loaders read)."""
    path, _ = _resolve(config)
    if path.is_file():
        return [path]
    return sorted(
        (p for p in path.rglob("*.jsonl") if p.is_file() and not p.name.startswith(".")),
        key=lambda p: p.relative_to(path).as_posix(),
    )


def _single_file(config: BenchmarkConfig, name: str, suffix: str) -> Path:
    """The file itself, or in a folder the file `name`, else its only `*suffix` file."""
    path, display = _resolve(config)
    if path.is_file():
        return path
    if (path / name).is_file():
        return path / name
    found = sorted(p for p in path.glob(f"*{suffix}") if p.is_file() and not p.name.startswith("."))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise FileNotFoundError(
            f"benchmark path {display} is a folder without {name} and with {what} *{suffix} files; "
            "point `path` at the file"
        )
    return found[0]


def _sha256_file(path: Path) -> bytes:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").digest()


def _fingerprint(files: Sequence[Path], root: Path) -> str:
    if len(files) == 1:  # the same whether `path` names the file or its folder
        return _sha256_file(files[0]).hex()
    h = hashlib.sha256()
    for f in files:
        rel = f.relative_to(root).as_posix().encode() if f.is_relative_to(root) else f.name.encode()
        h.update(len(rel).to_bytes(8, "big") + rel + _sha256_file(f))  # names cannot run together
    return h.hexdigest()


def data_fingerprint(config: BenchmarkConfig, benchmark: str | None = None) -> str:
    """sha256 hex of the benchmark data, for cache keys and lineage: changes when the data does.

    One file: the sha256 of its bytes (whether `path` names it or its folder). A folder: with
    `benchmark`, exactly the files that suite's `load` reads; without, every file of the folder (a
    superset: it may change when nothing that is read changed, never the reverse). Several files
    are hashed with their relative names, so renames count."""
    path, _ = _resolve(config)
    if benchmark is not None:
        files = SUITES[benchmark].data_files(config)  # type: ignore[attr-defined]
    elif path.is_file():
        files = [path]
    else:
        files = sorted(
            (p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix()
        )
    return _fingerprint(files, path)


# ---------------------------------------------------------------------------------------------
# Shared judging machinery
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Judged:
    """One judgment (a parsed reply or a probe): its value, or why there is none."""

    value: Any
    calls: int
    error: str | None = None
    retryable: bool = False  # the error is a failed call: the next run retries it
    mass: float | None = None  # logprob probes: the probability on the candidates


def _check_judge(
    suite: str, client: LLMClient | None, judge: JudgeConfig | None
) -> tuple[LLMClient, JudgeConfig]:
    if client is None or judge is None:
        raise ValueError(f"benchmark '{suite}' needs a judge: pass a judge client and its JudgeConfig")
    require_logprob_probe(client, judge)
    return client, judge


async def _gather(awaitables: Sequence[Awaitable[T]]) -> list[T]:
    """Run concurrently, results in order; an EndpointFailingError cancels the rest and propagates."""

    async def wrap(awaitable: Awaitable[T]) -> T:
        return await awaitable

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(wrap(a)) for a in awaitables]
    except* EndpointFailingError as failing:
        raise failing.exceptions[0] from None
    return [t.result() for t in tasks]


def _judge_decoding(temperature: float, max_tokens: int, judge: JudgeConfig, top_p: float = 1.0) -> Decoding:
    """The harness's judge decoding; the seed is the judge's (it is part of the cache key)."""
    return Decoding(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=judge.decoding.seed)


async def _ask(
    client: LLMClient,
    messages: list[Message],
    decoding: Decoding,
    parse: Callable[[str], Any],
    reask: str,
    judge: JudgeConfig,
) -> _Judged:
    asked = await ask_until_parsed(
        client, messages, decoding, parse, lambda error: reask.format(error=error), judge.max_parse_retries
    )
    calls = len(asked.calls)
    if asked.call_error is not None:
        return _Judged(None, calls, f"judge call failed: {asked.call_error}", retryable=True)
    if asked.parse_error is not None:
        return _Judged(None, calls, f"unparsable judge reply after {calls} asks: {asked.parse_error}")
    return _Judged(asked.parsed, calls)


def expected_value(
    logprobs: Mapping[str, float], values: Mapping[str, float]
) -> tuple[float, float] | ParseFailure:
    """(E[value] over the candidates' renormalised probabilities, the mass on the candidates).

    `values` maps each candidate token to the number it stands for. A candidate without a logprob,
    a NaN or +inf, or no finite logprob at all is a failure, never a score."""
    missing = [c for c in values if c not in logprobs]
    if missing:
        return ParseFailure(f"no logprob for candidate(s) {', '.join(missing)}")
    raw = [logprobs[c] for c in values]
    if any(math.isnan(v) or v == math.inf for v in raw) or not any(math.isfinite(v) for v in raw):
        return ParseFailure(f"no usable probability on the candidates {', '.join(values)}")
    top = max(v for v in raw if math.isfinite(v))
    weights = [math.exp(v - top) if math.isfinite(v) else 0.0 for v in raw]
    total = sum(weights)
    mean = sum(w * x for w, x in zip(weights, values.values(), strict=True)) / total
    return mean, math.exp(top) * total


async def _probe(
    client: LLMClient,
    messages: list[Message],
    candidates: Sequence[str],
    to_value: Callable[[dict[str, float]], tuple[float, float] | ParseFailure],
) -> _Judged:
    """One logprob probe: `to_value` turns the candidates' logprobs into (value, mass)."""
    logprobs = await probe_logprobs(client, messages, candidates)
    if isinstance(logprobs, str):
        return _Judged(None, 1, logprobs, retryable=True)
    result = to_value(logprobs)
    if isinstance(result, ParseFailure):
        return _Judged(None, 1, f"logprob probe unusable: {result.error}")
    value, mass = result
    return _Judged(value, 1, mass=mass)


def _check_aligned(items: Sequence[BenchItem], scores: Sequence[ItemScore]) -> None:
    if len(items) != len(scores):
        raise ValueError(
            f"aggregate needs one score per item, got {len(scores)} scores for {len(items)} items"
        )


def _generation_failed(**details: Any) -> ItemScore:
    return ItemScore(None, details={"generation_failed": True, **details}, error=GENERATION_FAILED)


# ---------------------------------------------------------------------------------------------
# WritingBench
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
    template = wb.EVALUATE_PROMPT
    if (
        template.count(wb.OUTPUT_FORMAT) != 2
        or not template.endswith(wb.OUTPUT_FORMAT + "```")
        or template.count(_WB_CRITERIA_BLOCK) != 1
        or template.count(_WB_RESTATED) != 1
        or template.index(_WB_CRITERIA_BLOCK) > template.index("** Query **")
    ):
        raise RuntimeError(
            "the WritingBench critic prompt no longer has the layout the logprob probe expects"
        )
    template = template.removesuffix(wb.OUTPUT_FORMAT + "```") + WB_DIGIT_ANSWER
    template = template.replace(wb.OUTPUT_FORMAT, WB_DIGIT_ANSWER, 1)
    template = template.replace(_WB_CRITERIA_BLOCK, "", 1)
    return template.replace(_WB_RESTATED, _WB_CRITERIA_BLOCK + _WB_RESTATED, 1)


_WB_LOGPROB_TEMPLATE = _wb_logprob_template()


def wb_logprob_messages(query: str, response: str, criterion: Mapping[str, Any]) -> list[Message]:
    """The official critic messages as a digit-grade probe (`_wb_logprob_template`), filled as
    `writingbench.critic_prompt` fills the official one."""
    messages = wb.critic_messages(query, response, criterion)
    user = _WB_LOGPROB_TEMPLATE.format(
        query=query, response=wb.strip_think(response), criteria=dict(criterion)
    )
    return [messages[0], {"role": "user", "content": user}]


class WritingBenchSuite:
    """WritingBench: each criterion of a query judged 1-10 in its own critic call; headline x10.

    BenchItem: id `wb-{index}`, prompt = the query, labels domain1/domain2, data = {index, domain1,
    domain2, criteria: the checklist dicts exactly as in the file (the critic prompt shows them)}.
    """

    name = "writingbench"
    version = 2  # 2: the logprob probe puts the criterion after the response
    needs_judge = True
    truncates_input = False

    def data_files(self, config: BenchmarkConfig) -> list[Path]:
        return _jsonl_files(config)

    def load(self, config: BenchmarkConfig) -> list[BenchItem]:
        instructions = load_writingbench(DataConfig(format="writingbench", path=config.path))
        raw = self._raw_criteria(config)  # the loader validated every row: read its dicts as is
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
                    },
                )
            )
        return items

    def _raw_criteria(self, config: BenchmarkConfig) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for path in self.data_files(config):
            for line in path.read_bytes().split(b"\n"):
                line = line.removeprefix(codecs.BOM_UTF8)
                if line.strip():
                    row = json.loads(line.decode("utf-8"))
                    out[f"wb-{row['index']}"] = row["criteria" if "criteria" in row else "checklist"]
        return out

    def generation_decoding(self, config: BenchmarkConfig, seed: int | None) -> Decoding:
        official = wb.GENERATION_DECODING
        return Decoding(
            temperature=official["temperature"],
            top_p=official["top_p"],
            max_tokens=config.max_tokens or int(official["max_length"]),
            seed=seed,
        )

    def judge_decoding(self, judge: JudgeConfig) -> Decoding:
        official = wb.CRITIC_DECODING
        return _judge_decoding(official["temperature"], int(official["max_length"]), judge, official["top_p"])

    async def score(
        self, item: BenchItem, response: str | None, judge_client: LLMClient | None, judge: JudgeConfig | None
    ) -> ItemScore:
        client, judge = _check_judge(self.name, judge_client, judge)
        criteria = list(item.data["criteria"])
        if response is None:
            return _generation_failed()

        async def one(criterion: Mapping[str, Any]) -> _Judged:
            if judge.mode == "logprob":
                messages = wb_logprob_messages(item.prompt, response, criterion)
                return await _probe(client, messages, LOGPROB_DIGITS, expected_score)
            messages = wb.critic_messages(item.prompt, response, criterion)
            return await _ask(
                client, messages, self.judge_decoding(judge), parse_score_reply, WB_REASK, judge
            )

        judged = await _gather([one(c) for c in criteria])
        details = []
        for criterion, j in zip(criteria, judged, strict=True):
            parsed = j.value
            entry: dict[str, Any] = {
                "criterion": criterion["name"],
                "score": None if parsed is None else float(getattr(parsed, "score", parsed)),
                "reason": getattr(parsed, "reason", None),
                "error": j.error,
            }
            if judge.mode == "logprob":
                entry["candidate_mass"] = j.mass
            details.append(entry)
        calls = sum(j.calls for j in judged)
        failed = [(d, j) for d, j in zip(details, judged, strict=True) if d["score"] is None]
        if failed:
            reasons = "; ".join(f"{d['criterion']!r}: {d['error']}" for d, _ in failed)
            return ItemScore(
                None,
                details={"criteria": details},
                error=f"{len(failed)}/{len(details)} criteria failed: {reasons}",
                retryable=any(j.retryable for _, j in failed),
                llm_calls=calls,
            )
        mean = sum(d["score"] for d in details) / len(details)
        return ItemScore(mean * wb.LEADERBOARD_SCALE, details={"criteria": details}, llm_calls=calls)

    def aggregate(self, items: Sequence[BenchItem], scores: Sequence[ItemScore]) -> BenchmarkResult:
        _check_aligned(items, scores)
        rows = []
        for item, score in zip(items, scores, strict=True):
            judged = score.details.get("criteria") or [{"score": None}] * len(item.data["criteria"])
            domain1, domain2 = item.data.get("domain1") or "", item.data.get("domain2") or ""
            for criterion, j in zip(item.data["criteria"], judged, strict=True):
                rows.append(wb.WritingBenchRow(item.id, domain1, domain2, criterion["name"], j["score"]))
        result = wb.aggregate(rows)
        metrics: dict[str, float | None] = {
            "score": result["score"],
            "score_x10": result["score_x10"],
            "failed_criteria": float(result["n_failed"]),
        }
        for level in ("domain1", "domain2"):
            for name, domain in result[f"by_{level}"].items():
                metrics[f"{level}/{name}"] = domain["score_x10"]
        return BenchmarkResult(
            score=result["score_x10"],
            metrics=metrics,
            n_items=len(items),
            n_failed=sum(1 for s in scores if s.score is None),
        )


# ---------------------------------------------------------------------------------------------
# LongBench-Write
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
_LBW_FINAL_PARAGRAPH = lbw.JUDGE_PROMPT.rsplit("\n\n", 1)[1]  # "Please evaluate ... JSON format ..."
_LBW_VALUES = {str(s): float(s) for s in range(lbw.DIMENSION_MIN, lbw.DIMENSION_MAX + 1)}


def _lbw_score(logprobs: dict[str, float]) -> tuple[float, float] | ParseFailure:
    return expected_value(logprobs, _LBW_VALUES)


def lbw_dimension_messages(instruction: str, response: str, dimension: str) -> list[Message]:
    """judge.txt filled as officially, its closing paragraph (the JSON format) replaced by a request
    for one dimension's integer score 1-5."""
    prompt = lbw.judge_prompt(instruction, response)
    if not prompt.endswith(_LBW_FINAL_PARAGRAPH):
        raise RuntimeError("the LongBench-Write judge prompt no longer ends with its format paragraph")
    number = lbw.DIMENSIONS.index(dimension) + 1
    text = prompt[: -len(_LBW_FINAL_PARAGRAPH)] + LBW_DIMENSION_ANSWER.format(
        number=number, dimension=dimension
    )
    return [{"role": "user", "content": text}]


class LongBenchWriteSuite:
    """LongBench-Write: S = (S_l + S_q) / 2, overall and per required-length bucket.

    BenchItem: id `lbw-<content hash>`, prompt = the file's prompt, labels bucket/type/language,
    data = {required, type, language}, required_length = the file's `length`.
    """

    name = "longbench_write"
    version = 1
    needs_judge = True
    truncates_input = False

    def data_files(self, config: BenchmarkConfig) -> list[Path]:
        return _jsonl_files(config)

    def load(self, config: BenchmarkConfig) -> list[BenchItem]:
        instructions = load_longbench_write(DataConfig(format="longbench_write", path=config.path))
        problems = []
        items = []
        for n, instruction in enumerate(instructions, start=1):
            required = instruction.required_length
            assert required is not None  # the loader requires `length`
            try:
                bucket = lbw.length_bucket(required)
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
            temperature=lbw.GENERATION_TEMPERATURE,
            max_tokens=config.max_tokens or lbw.GENERATION_MAX_NEW_TOKENS,
            seed=seed,
        )

    def judge_decoding(self, judge: JudgeConfig) -> Decoding:
        return _judge_decoding(lbw.JUDGE_TEMPERATURE, lbw.JUDGE_MAX_TOKENS, judge)

    async def score(
        self, item: BenchItem, response: str | None, judge_client: LLMClient | None, judge: JudgeConfig | None
    ) -> ItemScore:
        client, judge = _check_judge(self.name, judge_client, judge)
        required = int(item.data["required"])
        if response is None:
            return _generation_failed(required=required)
        output_words = lbw.count_words(response)
        s_l = lbw.length_score(output_words, required)
        details: dict[str, Any] = {"required": required, "output_words": output_words, "S_l": s_l}
        if judge.mode == "logprob":
            judged = await _gather(
                [
                    _probe(
                        client,
                        lbw_dimension_messages(item.prompt, response, d),
                        tuple(_LBW_VALUES),
                        _lbw_score,
                    )
                    for d in lbw.DIMENSIONS
                ]
            )
            dimensions = {d: j.value for d, j in zip(lbw.DIMENSIONS, judged, strict=True)}
            details["candidate_mass"] = {d: j.mass for d, j in zip(lbw.DIMENSIONS, judged, strict=True)}
            errors = [f"{d!r}: {j.error}" for d, j in zip(lbw.DIMENSIONS, judged, strict=True) if j.error]
            calls, retryable = len(judged), any(j.retryable for j in judged)
        else:
            messages = lbw.judge_messages(item.prompt, response)
            one = await _ask(
                client, messages, self.judge_decoding(judge), lbw.parse_judge_reply, LBW_REASK, judge
            )
            parsed = one.value
            dimensions = dict(parsed.scores) if parsed is not None else dict.fromkeys(lbw.DIMENSIONS)
            details["analysis"] = None if parsed is None else parsed.analysis
            errors = [one.error] if one.error else []
            calls, retryable = one.calls, one.retryable
        details["dimensions"] = dimensions
        if errors:
            details["S_q"] = None
            error = f"quality judgment failed: {'; '.join(errors)}"
            return ItemScore(None, details=details, error=error, retryable=retryable, llm_calls=calls)
        s_q = lbw.quality_score(dimensions)
        details["S_q"] = s_q
        return ItemScore((s_l + s_q) / 2, details=details, llm_calls=calls)

    def aggregate(self, items: Sequence[BenchItem], scores: Sequence[ItemScore]) -> BenchmarkResult:
        _check_aligned(items, scores)
        rows = []
        for item, score in zip(items, scores, strict=True):
            details = score.details
            if details.get("generation_failed") or details.get("output_words") is None:
                continue  # no prediction: in no denominator (see the module docstring)
            dimensions = details.get("dimensions") or {}
            complete = set(dimensions) == set(lbw.DIMENSIONS) and None not in dimensions.values()
            rows.append(
                lbw.LongBenchWriteRow(
                    required=int(item.data["required"]),
                    output_words=int(details["output_words"]),
                    quality=dict(dimensions) if complete else None,
                )
            )
        result = lbw.aggregate(rows)
        metrics: dict[str, float | None] = {
            "S": result["S"],
            "S_l": result["S_l"],
            "S_q": result["S_q"],
            "quality_failed": float(result["n_quality_failed"]),
        }
        for dimension in lbw.DIMENSIONS:
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


# ---------------------------------------------------------------------------------------------
# Creative Writing v3
# ---------------------------------------------------------------------------------------------

CW3_REASK = (
    "Your reply could not be used: {error}. Reply again in the output format given above: [Analysis], "
    "then [Scores] with one line per criterion, written exactly as `Criterion name: score` with a "
    "score from 0 to 20."
)
CW3_CRITERION_ANSWER = (
    "\nRate the piece on this one criterion only. Reply with only the grade, a single digit from 0 to 9 "
    "(0 = a score of 0, 9 = a score of 20 on the 0-20 scale), and nothing else."
)


def _cw3_grade(logprobs: dict[str, float]) -> tuple[float, float] | ParseFailure:
    """Digit grade 0-9 -> 0-20, linearly: `expected_score` gives 1 + E[grade]."""
    result = expected_score(logprobs)
    if isinstance(result, ParseFailure):
        return result
    score, mass = result
    return (score - 1) * cw3.SCORE_MAX / 9, mass


def cw3_criterion_messages(writing_prompt: str, response: str, criterion: str) -> list[Message]:
    """The official judge prompt rating only `criterion` (the lower-is-better list is kept whole),
    closed by a request for a digit grade 0-9."""
    messages = cw3.judge_messages(writing_prompt, response, criteria=(criterion,))
    return [{"role": "user", "content": messages[0]["content"] + CW3_CRITERION_ANSWER}]


def _parse_cw3(text: str) -> tuple[cw3.RubricParse, float] | ParseFailure:
    parsed = cw3.parse_rubric_reply(cw3.strip_reasoning(text))
    try:
        return parsed, cw3.piece_score(parsed.scores)
    except cw3.TooFewCriteria as exc:
        return ParseFailure(f"{exc} (one line per criterion, `Criterion name: score`)")


class CreativeWritingV3Suite:
    """EQ-Bench Creative Writing v3: each piece judged on the 22-criterion rubric (0-20), negative
    criteria inverted; headline 5 x the mean piece score (0-100).

    BenchItem: id `cw3-{prompt id}-i{iteration}`, prompt = the writing prompt with the official
    seed modifier of that iteration, labels category/iteration, data = {writing_prompt (the
    UNEXPANDED template the judge sees), prompt_id, iteration, seed_index, seed_modifier, title}.
    """

    name = "creative_writing_v3"
    version = 1
    needs_judge = True
    truncates_input = False

    def data_files(self, config: BenchmarkConfig) -> list[Path]:
        path, display = _resolve(config)
        if path.is_dir():
            path = path / CW3_FILE
            if not path.is_file():
                raise FileNotFoundError(f"benchmark path {display} is a folder without {CW3_FILE}")
        return [path]

    def load(self, config: BenchmarkConfig) -> list[BenchItem]:
        instructions = load_creative_writing_v3(DataConfig(format="creative_writing_v3", path=config.path))
        (path,) = self.data_files(config)
        templates = json.loads(path.read_bytes().decode("utf-8-sig"))  # validated by the loader
        seeds: dict[str, list[Any]] = {}
        for instruction in instructions:
            seeds.setdefault(str(instruction.metadata["prompt_id"]), []).append(instruction)
        items = []
        for prompt_id in list(seeds)[: config.limit]:
            expansions = seeds[prompt_id]
            for iteration in range(1, config.iterations + 1):
                seed_index = cw3.official_seed_number(iteration, len(expansions))
                instruction = expansions[seed_index - 1]
                assert instruction.metadata["seed_index"] == seed_index
                labels = {"iteration": str(iteration)} | (
                    {"category": instruction.genre} if instruction.genre else {}
                )
                items.append(
                    BenchItem(
                        id=f"cw3-{prompt_id}-i{iteration}",
                        prompt=instruction.prompt,
                        labels=labels,
                        data={
                            "writing_prompt": templates[prompt_id]["writing_prompt"],
                            "prompt_id": prompt_id,
                            "iteration": iteration,
                            "seed_index": seed_index,
                            "seed_modifier": instruction.metadata["seed_modifier"],
                            "title": instruction.metadata.get("title"),
                        },
                    )
                )
        return items

    def generation_decoding(self, config: BenchmarkConfig, seed: int | None) -> Decoding:
        return Decoding(
            temperature=cw3.GENERATION_TEMPERATURE,
            max_tokens=config.max_tokens or cw3.GENERATION_MAX_TOKENS,
            seed=seed,
        )

    def judge_decoding(self, judge: JudgeConfig) -> Decoding:
        return _judge_decoding(cw3.JUDGE_TEMPERATURE, cw3.JUDGE_MAX_TOKENS, judge)

    async def score(
        self, item: BenchItem, response: str | None, judge_client: LLMClient | None, judge: JudgeConfig | None
    ) -> ItemScore:
        client, judge = _check_judge(self.name, judge_client, judge)
        if response is None:
            return _generation_failed()
        piece = cw3.strip_reasoning(response)
        chars = len(piece.strip())
        details: dict[str, Any] = {"piece_chars": chars, "short_piece": chars < cw3.MIN_PIECE_CHARS}
        template = str(item.data["writing_prompt"])
        if judge.mode == "logprob":
            judged = await _gather(
                [
                    _probe(client, cw3_criterion_messages(template, piece, c), LOGPROB_DIGITS, _cw3_grade)
                    for c in cw3.CRITERIA
                ]
            )
            details["criteria"] = {c: j.value for c, j in zip(cw3.CRITERIA, judged, strict=True)}
            details["candidate_mass"] = {c: j.mass for c, j in zip(cw3.CRITERIA, judged, strict=True)}
            calls = len(judged)
            errors = [f"{c!r}: {j.error}" for c, j in zip(cw3.CRITERIA, judged, strict=True) if j.error]
            if errors:
                details["piece_score"] = None
                retryable = any(j.retryable for j in judged)
                error = f"judgment failed: {'; '.join(errors)}"
                return ItemScore(None, details=details, error=error, retryable=retryable, llm_calls=calls)
            value = cw3.piece_score(details["criteria"])
        else:
            messages = cw3.judge_messages(template, piece)
            one = await _ask(client, messages, self.judge_decoding(judge), _parse_cw3, CW3_REASK, judge)
            if one.value is None:
                details["piece_score"] = None
                error = f"judgment failed: {one.error}"
                return ItemScore(
                    None, details=details, error=error, retryable=one.retryable, llm_calls=one.calls
                )
            parsed, value = one.value
            details["criteria"] = dict(parsed.scores)
            details["unknown"] = list(parsed.unknown)
            details["out_of_range"] = [[name, v] for name, v in parsed.out_of_range]
            calls = one.calls
        details["piece_score"] = value
        return ItemScore(value * cw3.BENCHMARK_SCALE, details=details, llm_calls=calls)

    def aggregate(self, items: Sequence[BenchItem], scores: Sequence[ItemScore]) -> BenchmarkResult:
        _check_aligned(items, scores)
        pieces = [s.details.get("piece_score") if s.score is not None else None for s in scores]
        summary = cw3.benchmark_summary(pieces)
        metrics: dict[str, float | None] = {
            "score": summary["score"],
            "score_0_20": summary["score_0_20"],
            "scored": float(summary["scored"] or 0),
            "failed": float(summary["failed"] or 0),
            "short_pieces": float(sum(1 for s in scores if s.details.get("short_piece"))),
        }
        categories = sorted({item.labels["category"] for item in items if "category" in item.labels})
        for category in categories:
            subset = [
                p for item, p in zip(items, pieces, strict=True) if item.labels.get("category") == category
            ]
            metrics[f"category/{category}"] = cw3.benchmark_summary(subset)["score"]
        return BenchmarkResult(
            score=summary["score"],
            metrics=metrics,
            n_items=len(items),
            n_failed=sum(1 for p in pieces if p is None),
        )


# ---------------------------------------------------------------------------------------------
# LongBench v2
# ---------------------------------------------------------------------------------------------

_LBV2_TEXT_FIELDS = ("question", *lbv2.CHOICE_FIELDS, "context")
_LBV2_CHOICES = {"difficulty": lbv2.DIFFICULTIES, "length": lbv2.LENGTHS, "answer": lbv2.ANSWERS}


def _lbv2_problems(location: str, row: Any) -> list[RowProblem]:
    if not isinstance(row, dict):
        return [RowProblem(location, "item", f"must be an object, got {type(row).__name__}")]
    problems = []
    item_id = row.get("_id")
    if not isinstance(item_id, str) or not item_id.strip():
        problems.append(RowProblem(location, "_id", f"must be a non-empty string, got {item_id!r}"))
    for field in _LBV2_TEXT_FIELDS:
        if field not in row:
            problems.append(RowProblem(location, field, "missing"))
        elif not isinstance(row[field], str):
            problems.append(RowProblem(location, field, f"must be a string, got {type(row[field]).__name__}"))
    for field, allowed in _LBV2_CHOICES.items():
        if row.get(field) not in allowed:
            problems.append(
                RowProblem(location, field, f"must be one of {', '.join(allowed)}, got {row.get(field)!r}")
            )
    for field in ("domain", "sub_domain"):
        if row.get(field) is not None and not isinstance(row[field], str):
            problems.append(RowProblem(location, field, f"must be a string, got {type(row[field]).__name__}"))
    return problems


class LongBenchV2Suite:
    """LongBench v2: multiple choice over a long context, 0-shot without CoT; headline accuracy %.

    BenchItem: id = `_id`, prompt = `longbench_v2.build_prompt(item)`, UNTRUNCATED: the stage fits
    it with `truncate_middle` to `max_input_tokens(config)` tokens of the candidate's tokenizer.
    labels difficulty/length/domain/sub_domain, data = {answer, difficulty, length, domain,
    sub_domain}. A failed generation scores 0 (counted wrong, reported as `failed_calls`).
    """

    name = "longbench_v2"
    version = 1
    needs_judge = False
    truncates_input = True

    def data_files(self, config: BenchmarkConfig) -> list[Path]:
        return [_single_file(config, LBV2_DATA_FILE, ".json")]

    def max_input_tokens(self, config: BenchmarkConfig) -> int:
        return config.max_input_tokens or lbv2.MAX_INPUT_TOKENS

    def load(self, config: BenchmarkConfig) -> list[BenchItem]:
        (path,) = self.data_files(config)
        display = str(config.path) if path == _resolve(config)[0] else str(Path(config.path) / path.name)
        doc = load_json_document(path.read_bytes(), display)
        if not isinstance(doc, list):
            raise InstructionDataError(
                display,
                [RowProblem(display, "json", f"expected a JSON array of items, got {type(doc).__name__}")],
            )
        problems: list[RowProblem] = []
        first_seen: dict[str, str] = {}
        items = []
        for i, row in enumerate(doc):
            location = f"{display}:item {i}"
            found = _lbv2_problems(location, row)
            if not found:
                first = first_seen.setdefault(row["_id"], location)
                if first != location:
                    found.append(
                        RowProblem(location, "_id", f"duplicate _id {row['_id']!r}, first at {first}")
                    )
            problems += found
            if found:
                continue
            meta = {k: row.get(k) for k in ("difficulty", "length", "domain", "sub_domain")}
            items.append(
                BenchItem(
                    id=row["_id"],
                    prompt=lbv2.build_prompt(row),
                    labels={k: v for k, v in meta.items() if isinstance(v, str) and v},
                    data={"answer": row["answer"], **meta},
                )
            )
        if problems:
            raise InstructionDataError(display, problems)
        return items[: config.limit]

    def generation_decoding(self, config: BenchmarkConfig, seed: int | None) -> Decoding:
        return Decoding(
            temperature=lbv2.TEMPERATURE, max_tokens=config.max_tokens or lbv2.MAX_NEW_TOKENS, seed=seed
        )

    async def score(
        self, item: BenchItem, response: str | None, judge_client: LLMClient | None, judge: JudgeConfig | None
    ) -> ItemScore:
        answer = item.data["answer"]
        if response is None:
            details = {"generation_failed": True, "pred": None, "answer": answer, "correct": False}
            return ItemScore(0.0, details=details, error=GENERATION_FAILED)
        pred = lbv2.extract_answer(response)
        correct = pred == answer
        details = {"pred": pred, "answer": answer, "correct": correct, "extracted": pred is not None}
        return ItemScore(100.0 if correct else 0.0, details=details)

    def aggregate(self, items: Sequence[BenchItem], scores: Sequence[ItemScore]) -> BenchmarkResult:
        _check_aligned(items, scores)
        rows = []
        for item, score in zip(items, scores, strict=True):
            if score.details.get("generation_failed"):
                response = None
            else:  # the reply as `extract_answer` reads it back: the aggregate re-extracts
                pred = score.details.get("pred")
                response = "" if pred is None else f"The correct answer is ({pred})"
            rows.append(
                {
                    "_id": item.id,
                    **{k: item.data[k] for k in ("difficulty", "length", "answer")},
                    "response": response,
                }
            )
        result = lbv2.aggregate(rows)
        metrics: dict[str, float | None] = {
            "accuracy": result["accuracy"],
            "failed_calls": float(result["failed_calls"]),
            "unextracted": float(result["unextracted"]),
        }
        metrics |= {f"difficulty/{k}": v["accuracy"] for k, v in result["by_difficulty"].items()}
        metrics |= {f"length/{k}": v["accuracy"] for k, v in result["by_length"].items()}
        return BenchmarkResult(
            score=result["accuracy"], metrics=metrics, n_items=len(items), n_failed=result["failed_calls"]
        )


for _suite in (WritingBenchSuite(), LongBenchWriteSuite(), CreativeWritingV3Suite(), LongBenchV2Suite()):
    SUITES.register(_suite.name)(_suite)
