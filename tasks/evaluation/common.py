"""What every benchmark suite shares: the benchmark files, the judge, and the departures that
apply to all judged suites. Each benchmark's own module (`writingbench.py`, `longbench_write.py`,
`creative_writing_v3.py`, `longbench_v2.py`) holds its official data, prompts and formulas, its
suite and its own departures; `registry.py` names the suites.

A judged suite supplies only a form (its prompt and parser in each judge mode, built from
`RubricAsk` / `RubricProbe`, which say which criteria a question rates) and combines the
judgments it gets back; `tasks.judging.judgment.Judge` asks the questions of its mode.

Departures from the official harnesses shared by every judged suite:

- An unparsable judge reply is re-asked `judge.max_parse_retries` times with the bad reply and
  what was wrong appended (`tasks.judging.judgment.ask`), so each ask is a new request; the
  harnesses re-send the same request a fixed number of times (LongBench-Write: 5 asks). A reply
  still unparsable then is a final failure (no score, not retryable); a failed judge call or
  probe is retryable; `EndpointFailingError` propagates.
- Logprob mode (in-process judges, `judge.mode: logprob`) has no official counterpart: the
  official prompt is kept and only its answer format changes to one score token, and the score is
  the expectation over the candidate tokens' renormalised probabilities
  (`tasks.judging.judgment.expected_value`). Each benchmark's module says how its prompt changes.
- A failed generation (response None) is never judged. How it counts is per suite.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from configs.schema import BenchmarkConfig, Decoding, JudgeConfig
from tasks.evaluation.base import BenchItem, ItemScore
from tasks.judging.judgment import Ask, Judge, JudgeForm, Judgment, Probe
from tasks.llm.base import LLMClient

T = TypeVar("T")

GENERATION_FAILED = "generation failed"

# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def resolve_path(config: BenchmarkConfig) -> tuple[Path, str]:
    """(absolute path, the path as written, for messages). Relative paths use the cwd."""
    path = config.path.expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    if not path.exists():
        raise FileNotFoundError(f"benchmark path {config.path} does not exist (resolved to {path})")
    return path, str(config.path)


def jsonl_files(config: BenchmarkConfig) -> list[Path]:
    """The file, or every non-hidden *.jsonl under the folder in path order (as the loaders read)."""
    path, _ = resolve_path(config)
    if path.is_file():
        return [path]
    return sorted(
        (p for p in path.rglob("*.jsonl") if p.is_file() and not p.name.startswith(".")),
        key=lambda p: p.relative_to(path).as_posix(),
    )


def single_file(config: BenchmarkConfig, name: str, suffix: str) -> Path:
    """The file itself, or in a folder the file `name`, else its only `*suffix` file."""
    path, display = resolve_path(config)
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


def files_fingerprint(files: Sequence[Path], root: Path) -> str:
    """sha256 hex of `files`: one file's bytes, or several with their names relative to `root`."""
    if len(files) == 1:  # the same whether `path` names the file or its folder
        return _sha256_file(files[0]).hex()
    h = hashlib.sha256()
    for f in files:
        rel = f.relative_to(root).as_posix().encode() if f.is_relative_to(root) else f.name.encode()
        h.update(len(rel).to_bytes(8, "big") + rel + _sha256_file(f))  # names cannot run together
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------


def check_aligned(items: Sequence[BenchItem], scores: Sequence[ItemScore]) -> None:
    if len(items) != len(scores):
        raise ValueError(
            f"aggregate needs one score per item, got {len(scores)} scores for {len(items)} items"
        )


def generation_failed(**details: Any) -> ItemScore:
    return ItemScore(None, details={"generation_failed": True, **details}, error=GENERATION_FAILED)


# ---------------------------------------------------------------------------------------------
# The judge
# ---------------------------------------------------------------------------------------------


def suite_judge(suite: str, client: LLMClient | None, judge: JudgeConfig | None) -> Judge:
    """The judge of a judged suite; refuses a missing one, and a logprob judge without a probe."""
    if client is None or judge is None:
        raise ValueError(f"benchmark '{suite}' needs a judge: pass a judge client and its JudgeConfig")
    return Judge(client, judge)


def harness_judge_decoding(
    temperature: float, max_tokens: int, judge: JudgeConfig, top_p: float = 1.0
) -> Decoding:
    """The harness's judge decoding; the seed is the judge's (it is part of the cache key)."""
    return Decoding(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=judge.decoding.seed)


@dataclass(frozen=True)
class RubricAsk(Ask[T]):
    """An ask that rates `criteria` of a benchmark's rubric (one, or the whole rubric in one reply)."""

    criteria: tuple[str, ...] = ()


@dataclass(frozen=True)
class RubricProbe(Probe[T]):
    """A probe that rates `criteria` of a benchmark's rubric (one criterion: its expected score)."""

    criteria: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rated(Generic[T]):
    """One judgment of a form, with what its question rated."""

    question: RubricAsk[T] | RubricProbe[T]
    judgment: Judgment[T]

    @property
    def criteria(self) -> tuple[str, ...]:
        return self.question.criteria

    @property
    def probed(self) -> bool:
        """A logprob probe: its `judgment.mass` is its criterion's candidate mass (None on failure)."""
        return isinstance(self.question, Probe)

    @property
    def error(self) -> str | None:
        """The judgment's error, named by its criterion when the question rated only one."""
        error = self.judgment.error
        if error is None or len(self.criteria) != 1:
            return error
        return f"{self.criteria[0]!r}: {error}"


async def judge_form(judge: Judge, form: JudgeForm[T]) -> list[Rated[T]]:
    """Every question of `form` (`RubricAsk`s and `RubricProbe`s) for the judge's mode, asked
    concurrently, each with its judgment, in the form's order."""
    questions = judge.questions(form)
    judgments = await judge.judge_all(questions)
    return [Rated(q, j) for q, j in zip(questions, judgments, strict=True)]  # type: ignore[arg-type]
