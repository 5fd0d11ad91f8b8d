"""The judge, as one component: every judgment in the project (the pointwise score, the pairwise
reward, the criteria writer, the four benchmark suites) goes through here.

A user of the judge supplies only a prompt and a parser, for each mode:

- `Ask` (json mode, API judges): messages, a strict `parse(text) -> value | ParseFailure` and the
  re-ask text. `ask` sends it, parses strictly, and re-asks an unusable reply up to
  `max_parse_retries` times with the bad reply and what was wrong appended (so each ask is a new
  request and a new cache key, not a replay). A failed call is not re-asked: the backend already
  retried.
- `Probe` (logprob mode, in-process judges): messages, candidate tokens and a `read(logprobs) ->
  (value, mass) | ParseFailure`. `probe` asks the client for the candidates' next-token logprobs.

`Judge` binds a client to a `JudgeConfig` and is the one place that dispatches on `judge.mode`:
a `JudgeForm` offers both question sets, and the judge asks the one its mode needs. Forms may ask
several questions in one mode and one in the other (Creative Writing v3: one rubric reply in json
mode, one probe per criterion in logprob mode); the form's owner combines the judgments.

Every outcome is a `Judgment`: a value, or an error that is either retryable (a call or a probe
failed: the next run retries it) or final (a reply still unparsable after the re-asks, a probe
whose values are unusable). A failure is never a score, a win or a loss. Only
`EndpointFailingError` (the endpoint is down) propagates, through `gather_or_stop`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from configs.schema import Decoding, JudgeConfig
from tasks.llm.base import Completion, EndpointFailingError, LLMClient, Message, gather_or_stop

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

__all__ = [
    "Ask",
    "Judge",
    "JudgeForm",
    "Judgment",
    "ParseFailure",
    "Probe",
    "ask",
    "expected_value",
    "gather_or_stop",
    "probe",
    "questions_for",
    "require_logprob_probe",
]


@dataclass(frozen=True)
class ParseFailure:
    """Why a reply (or a probe's values) could not be read; a parser returns it instead of raising."""

    error: str


# ---------------------------------------------------------------------------------------------
# The record
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Judgment(Generic[T]):
    """One judgment: the value a reply or a probe gave, or why there is none."""

    value: T | None
    error: str | None = None  # set iff value is None
    retryable: bool = False  # the error is a failed call or probe (the next run retries it); else final
    calls: int = 0  # asks made (1 + re-asks) or probes
    completions: tuple[Completion, ...] = ()  # ask: every chat completion, in order (usage, cached, raw text)
    latency_s: float = 0.0  # ask: summed over its completions; probe: the probe's wall time
    mass: float | None = None  # probe: the probability the judge put on the candidates (a diagnostic)

    @property
    def ok(self) -> bool:
        return self.error is None and self.value is not None

    @property
    def input_tokens(self) -> int:
        return sum(c.usage.input_tokens for c in self.completions)

    @property
    def output_tokens(self) -> int:
        return sum(c.usage.output_tokens for c in self.completions)


# ---------------------------------------------------------------------------------------------
# The two paths
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ask(Generic[T]):
    """A question for a json-mode judge: its messages and a strict parser of the reply."""

    messages: Sequence[Message]
    parse: Callable[[str], T | ParseFailure]
    reask: Callable[..., str]  # reask(error=...): the user turn after an unusable reply, e.g. TEMPLATE.format
    decoding: Decoding | None = None  # None: the judge's own decoding (a harness may fix its own)
    caller: str = "judge"  # names the failure: "<caller> call failed: ..."
    reply: str = "judge reply"  # ... and "unparsable <reply> after N asks: ..."


@dataclass(frozen=True)
class Probe(Generic[T]):
    """A question for a logprob-mode judge: its messages, the candidate next tokens, and how their
    logprobs become a value: `read(logprobs) -> (value, mass on the candidates) | ParseFailure`."""

    messages: Sequence[Message]
    candidates: Sequence[str]
    read: Callable[[dict[str, float]], tuple[T, float] | ParseFailure]


async def ask(
    client: LLMClient, question: Ask[T], decoding: Decoding, max_parse_retries: int, sample_index: int = 0
) -> Judgment[T]:
    """Ask, parse strictly, re-ask an unusable reply up to `max_parse_retries` times, else fail.

    The bad reply and what was wrong join the conversation, so the next ask is a new request (a
    new cache key); deterministic given the replies. `sample_index` > 0 asks the same question
    again as an independent sample (its own cache entry, and its own seed when the decoding has
    one): how a judge's self-consistency is measured. Raises only `EndpointFailingError`."""
    messages = list(question.messages)
    decoding = question.decoding or decoding
    if sample_index and decoding.seed is not None:
        decoding = decoding.model_copy(update={"seed": decoding.seed + sample_index})
    calls: list[Completion] = []
    error = ""
    for _ in range(max_parse_retries + 1):
        try:
            completion = await client.chat(messages, decoding, sample_index=sample_index)
        except EndpointFailingError:
            raise
        except Exception as exc:  # the contract says chat does not raise; record it if one does
            completion = Completion.failure(f"{type(exc).__name__}: {exc}")
        calls.append(completion)
        if not completion.ok:
            return _asked(None, calls, f"{question.caller} call failed: {completion.error}", retryable=True)
        text = completion.text or ""
        parsed = question.parse(text)
        if not isinstance(parsed, ParseFailure):
            return _asked(parsed, calls)
        error = parsed.error
        if completion.finish_reason == "length":
            error += " (the reply was cut off at max_tokens)"
        messages = [
            *messages,
            {"role": "assistant", "content": text},
            {"role": "user", "content": question.reask(error=error)},
        ]
    return _asked(None, calls, f"unparsable {question.reply} after {len(calls)} asks: {error}")


def _asked(
    value: Any, calls: list[Completion], error: str | None = None, retryable: bool = False
) -> Judgment:
    return Judgment(value, error, retryable, calls=len(calls), completions=tuple(calls),
                    latency_s=sum(c.latency_s for c in calls))  # fmt: skip


def require_logprob_probe(client: LLMClient, judge: JudgeConfig) -> None:
    """A logprob judge needs `next_token_logprobs` (in-process backends): refuse before any call."""
    if judge.mode == "logprob" and not callable(getattr(client, "next_token_logprobs", None)):
        raise TypeError(
            f"judge mode 'logprob' needs an in-process backend with next_token_logprobs; "
            f"{client.backend_name!r} ({client.model}) has none: use mode 'json'"
        )


async def probe(client: LLMClient, question: Probe[T]) -> Judgment[T]:
    """One logprob probe. `next_token_logprobs` raises on failure: that is a retryable failure of
    the judgment; values `read` refuses are a final one. Raises only `EndpointFailingError`."""
    started = time.perf_counter()
    try:
        logprobs = await client.next_token_logprobs(list(question.messages), question.candidates)  # type: ignore[attr-defined]
    except EndpointFailingError:
        raise
    except Exception as exc:
        error = f"logprob probe failed: {type(exc).__name__}: {exc}"
        return Judgment(None, error, retryable=True, calls=1, latency_s=time.perf_counter() - started)
    latency = time.perf_counter() - started
    result = question.read(logprobs)
    if isinstance(result, ParseFailure):
        return Judgment(None, f"logprob probe unusable: {result.error}", calls=1, latency_s=latency)
    value, mass = result
    return Judgment(value, calls=1, latency_s=latency, mass=mass)


def expected_value(
    logprobs: Mapping[str, float], values: Mapping[str, float]
) -> tuple[float, float] | ParseFailure:
    """(E[value] over the candidates' renormalised probabilities, the mass on the candidates).

    `values` maps each candidate token to the number it stands for. A candidate without a logprob,
    a NaN or +inf, or no finite logprob at all is a failure, never a score; -inf is a probability
    of zero."""
    missing = [c for c in values if logprobs.get(c) is None]
    if missing:
        return ParseFailure(f"no logprob for candidate(s) {', '.join(missing)}")
    raw = [logprobs[c] for c in values]
    if any(math.isnan(v) or v == math.inf for v in raw) or not any(math.isfinite(v) for v in raw):
        return ParseFailure(f"no usable probability on the candidates {', '.join(values)}")
    top = max(v for v in raw if math.isfinite(v))  # subtract the max before exp: no underflow
    weights = [math.exp(v - top) if math.isfinite(v) else 0.0 for v in raw]
    total = sum(weights)
    mean = sum(w * x for w, x in zip(weights, values.values(), strict=True)) / total
    return mean, math.exp(top) * total


# ---------------------------------------------------------------------------------------------
# The judge: a client and its config, one dispatch on the mode
# ---------------------------------------------------------------------------------------------


class JudgeForm(Protocol[T_co]):
    """What a user of the judge supplies: the questions of one judgment in each mode."""

    def asks(self) -> Sequence[Ask[T_co]]: ...  # json mode

    def probes(self) -> Sequence[Probe[T_co]]: ...  # logprob mode


def questions_for(mode: str, form: JudgeForm[T]) -> Sequence[Ask[T] | Probe[T]]:
    """The questions a judge in `mode` asks for `form` (also what a forecast counts)."""
    return form.probes() if mode == "logprob" else form.asks()  # the one mode branch


class Judge:
    """A judge client with its `JudgeConfig`. Refuses a logprob judge without a probe at once."""

    def __init__(self, client: LLMClient, config: JudgeConfig) -> None:
        require_logprob_probe(client, config)
        self.client, self.config = client, config

    def questions(self, form: JudgeForm[T]) -> Sequence[Ask[T] | Probe[T]]:
        return questions_for(self.config.mode, form)

    async def run(self, question: Ask[T] | Probe[T], sample_index: int = 0) -> Judgment[T]:
        """One question. `sample_index` (json mode) asks it again as an independent sample; a
        probe reads one forward pass, the same every time, so it has none."""
        if isinstance(question, Probe):
            return await probe(self.client, question)
        return await ask(
            self.client, question, self.config.decoding, self.config.max_parse_retries, sample_index
        )

    async def judge(self, form: JudgeForm[T]) -> list[Judgment[T]]:
        """Every question of the form for this judge's mode, concurrently, in order."""
        return await self.judge_all(self.questions(form))

    async def judge_all(self, questions: Iterable[Ask[T] | Probe[T]]) -> list[Judgment[T]]:
        return await gather_or_stop(self.run(q) for q in questions)

    async def judge_one(self, form: JudgeForm[T]) -> Judgment[T]:
        """A form that asks exactly one question in either mode."""
        (judgment,) = await self.judge(form)
        return judgment
