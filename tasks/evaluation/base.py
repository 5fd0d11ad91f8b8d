"""The contract between the evaluation stage and a benchmark: items in, item scores, one result.

A suite never calls the candidate: the stage generates every response (through the response
cache, with the candidate's strategy) and hands each to `score`. A suite calls only the judge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from configs.schema import BenchmarkConfig, Decoding, JudgeConfig
from tasks.judging.judgment import JudgeForm
from tasks.llm.base import LLMClient


@dataclass(frozen=True)
class BenchItem:
    id: str  # stable within the benchmark and its file: the response cache and the rows key on it
    prompt: str  # the one user message the candidate gets (the harness's template, filled)
    labels: Mapping[str, str] = field(default_factory=dict)  # report splits: domain1, bucket, difficulty...
    data: Mapping[str, Any] = field(default_factory=dict)  # what scoring needs: criteria, answer, length...
    required_length: int | None = None  # words, when the item states one (AgentWrite plans with it)


@dataclass(frozen=True)
class ItemScore:
    """One item's score. `score` is None when the item could not be scored; it is then either
    `retryable` (an LLM call failed: the next run retries it) or final (e.g. unparsable after the
    re-asks). A suite decides, per its harness, whether a failed generation is a failure or a
    wrong answer (LongBench v2 counts it wrong); either way it is reported."""

    score: float | None  # the item's score on the benchmark's 0-100 scale
    details: Mapping[str, Any] = field(default_factory=dict)  # per criterion / dimension, answer...
    error: str | None = None
    retryable: bool = False
    llm_calls: int = 0


@dataclass(frozen=True)
class BenchmarkResult:
    score: float | None  # the headline, 0-100 (WritingBench x10, S, rubric x5, accuracy %)
    metrics: Mapping[str, float | None]  # flat names: "S_l", "bucket/[0,500)/S_q", "difficulty/easy"
    n_items: int
    n_failed: int  # items without a score (excluded or counted wrong, per the suite's docstring)


class BenchmarkSuite(Protocol):
    name: str
    version: int  # bump when prompts, parsing or aggregation change: it is part of the cache key
    needs_judge: bool
    # The judge modes it has a form for (json, logprob): the stage refuses a judge in another.
    judge_modes: tuple[str, ...]
    truncates_input: bool  # the stage fits `prompt` to the candidate's context (middle truncation)
    # False for tasks that are answered, not written (multiple choice): the candidate answers
    # directly whatever its writing strategy (AgentWrite would plan an essay about an answer letter).
    uses_writing_strategy: bool

    def load(self, config: BenchmarkConfig) -> list[BenchItem]:
        """The first `config.limit` items (in file order), with errors naming file, row and field."""
        ...

    def generation_decoding(self, config: BenchmarkConfig, seed: int | None) -> Decoding:
        """The harness's decoding for the candidate, `config.max_tokens` applied."""
        ...

    def judge_form(self, item: BenchItem, response: str, judge: JudgeConfig) -> JudgeForm[Any] | None:
        """The judge's questions for one response (`tasks.judging.judgment.JudgeForm`), None when the
        benchmark calls no judge. `score` asks them; the cost forecast counts them."""
        ...

    async def score(
        self, item: BenchItem, response: str | None, judge_client: LLMClient | None, judge: JudgeConfig | None
    ) -> ItemScore:
        """Score one response (None: its generation failed). Raises only EndpointFailingError."""
        ...

    def aggregate(self, items: Sequence[BenchItem], scores: Sequence[ItemScore]) -> BenchmarkResult: ...
