"""Generation strategies: how one generator turns one instruction into one answer.

A strategy makes one or more `LLMClient.chat` calls and returns a `StrategyResult`: the final
answer as a `Completion` (usage, latency and attempts summed over its calls), every call as a
`StrategyStep` for traceability, and strategy-specific metadata (the plan, the think block...).
Strategies work on any backend; they live in `STRATEGIES`, keyed by the names that
`configs.schema.STRATEGIES` allows. This module holds direct and think-then-write and the call
helpers every strategy shares; AgentWrite has its own module (`tasks.generation.agentwrite`), and
`tasks/generation/__init__.py` registers all three, so the imports run one way (agentwrite ->
strategies).

Two rules make multi-call strategies restartable through the response cache: every call passes
`sample_index` through, and every call's messages are a deterministic function of the instruction,
the generator config and earlier steps' outputs (no timestamps, no randomness). A killed run then
replays the steps it already made from the cache and resumes where it stopped.

Failures: a failed step stops the strategy, and the result's error names the step
("agentwrite section 3/6 failed: ..."); its text is None, never a partial or empty answer.
`EndpointFailingError` propagates (the endpoint is down: the stage stops).

Seeds: like `chat_many`, each call uses `decoding.seed + sample_index`, so n > 1 samples of one
instruction differ.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol, runtime_checkable

from configs.loading import ConfigError
from configs.schema import STRATEGIES as SCHEMA_STRATEGIES
from configs.schema import Decoding, GeneratorConfig
from tasks.generation import prompts
from tasks.instructions.schema import Instruction
from tasks.llm.base import Completion, EndpointFailingError, LLMClient, Message, Usage
from tasks.registry import Registry
from tasks.text import prompt_language, split_think

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StrategyStep:
    """One LLM call inside a strategy: "direct", "plan", "plan-retry", "section-3", "think-write"."""

    name: str
    completion: Completion


@dataclass(frozen=True)
class StrategyResult:
    completion: Completion  # text = the visible answer; None with `error` set when the strategy failed
    steps: tuple[StrategyStep, ...]
    metadata: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable

    @property
    def ok(self) -> bool:
        return self.completion.ok


@runtime_checkable
class Strategy(Protocol):
    name: str
    version: int  # bump when prompts or parsing change (goes into cache keys)

    async def generate(
        self,
        client: LLMClient,
        instruction: Instruction,
        generator: GeneratorConfig,
        *,
        sample_index: int = 0,
    ) -> StrategyResult: ...


STRATEGIES: Registry[Strategy] = Registry("generation strategy", allowed=SCHEMA_STRATEGIES)


# ---------------------------------------------------------------------------------------------
# Shared helpers (also used by tasks.generation.agentwrite)
# ---------------------------------------------------------------------------------------------


def _base_messages(
    generator: GeneratorConfig, user: str, *, system_extra: str | None = None
) -> list[Message]:
    system = "\n\n".join(p for p in (generator.system_prompt, system_extra) if p)
    head: list[Message] = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": user}]


def _params(decoding: Decoding, sample_index: int, max_tokens: int | None = None) -> Decoding:
    update: dict[str, Any] = {}
    if decoding.seed is not None and sample_index:
        update["seed"] = decoding.seed + sample_index
    if max_tokens is not None:
        update["max_tokens"] = max(1, min(max_tokens, decoding.max_tokens))
    return decoding.model_copy(update=update) if update else decoding


async def _call(
    client: LLMClient, name: str, messages: Sequence[Message], params: Decoding, sample_index: int
) -> StrategyStep:
    try:
        completion = await client.chat(tuple(messages), params, sample_index=sample_index)
    except EndpointFailingError:
        raise
    except Exception as exc:  # clients should not raise; if one does, it is this step's failure
        completion = Completion.failure(f"{type(exc).__name__}: {exc}")
    return StrategyStep(name, completion)


def _combine(
    steps: Sequence[StrategyStep],
    *,
    text: str | None,
    error: str | None = None,
    finish_reason: str | None = None,
    logprobs: Any = None,
) -> Completion:
    """The strategy's answer: usage, latency and attempts summed; cached only if every step was."""
    completions = [s.completion for s in steps]
    return Completion(
        text=None if error is not None else text,
        finish_reason=None if error is not None else finish_reason,
        usage=Usage(
            input_tokens=sum(c.usage.input_tokens for c in completions),
            output_tokens=sum(c.usage.output_tokens for c in completions),
        ),
        latency_s=sum(c.latency_s for c in completions),
        logprobs=None if error is not None else logprobs,
        error=error,
        attempts=sum(c.attempts for c in completions) or 1,
        cached=bool(completions) and all(c.cached for c in completions),
    )


# ---------------------------------------------------------------------------------------------
# direct
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DirectStrategy:
    """One call: the generator's system prompt (if any) and the instruction.

    The call's Completion is returned unchanged (logprobs and error included): direct is a
    transparent wrapper, so its generations match a plain `chat` call.
    """

    name: str = "direct"
    version: int = 1

    def messages(self, instruction: Instruction, generator: GeneratorConfig) -> list[Message]:
        """The one call's messages (RL training prompts the policy with exactly these)."""
        return _base_messages(generator, instruction.prompt)

    async def generate(
        self,
        client: LLMClient,
        instruction: Instruction,
        generator: GeneratorConfig,
        *,
        sample_index: int = 0,
    ) -> StrategyResult:
        messages = self.messages(instruction, generator)
        step = await _call(
            client, "direct", messages, _params(generator.decoding, sample_index), sample_index
        )
        return StrategyResult(completion=step.completion, steps=(step,), metadata={})


# ---------------------------------------------------------------------------------------------
# think-then-write
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThinkThenWriteStrategy:
    """LongWriter-Zero's format: think inside `<think>...</think>`, then write the answer.

    One call. The format instruction goes into the system message (after the generator's own
    system prompt, if any); the instruction is the user message. The visible text is what follows
    `</think>` (see `split_think`); metadata records `format_ok` and the `think` text.
    A reply with no think block is kept whole with `format_ok: False`. A think block that is never
    closed (typically cut by max_tokens, which covers thinking and answer together) or an empty
    answer is a failure: an empty answer is never returned as a success.
    """

    name: str = "think-then-write"
    version: int = 1

    def messages(self, instruction: Instruction, generator: GeneratorConfig) -> list[Message]:
        """The one call's messages (RL training prompts the policy with exactly these)."""
        return _base_messages(
            generator, instruction.prompt, system_extra=prompts.THINK[prompt_language(instruction)]
        )

    async def generate(
        self,
        client: LLMClient,
        instruction: Instruction,
        generator: GeneratorConfig,
        *,
        sample_index: int = 0,
    ) -> StrategyResult:
        lang = prompt_language(instruction)
        messages = self.messages(instruction, generator)
        step = await _call(
            client, "think-write", messages, _params(generator.decoding, sample_index), sample_index
        )
        completion = step.completion
        if not completion.ok:
            error = f"think-then-write failed: {completion.error}"
            return StrategyResult(_combine([step], text=None, error=error), (step,), {"language": lang})
        parts = split_think(completion.text or "")
        meta: dict[str, Any] = {"language": lang, "format_ok": parts.format_ok, "think": parts.think}
        error = None
        if not parts.closed:
            error = (
                "think-then-write: no answer after the think block "
                f"(<think> never closed; finish_reason={completion.finish_reason})"
            )
        elif not parts.visible:
            error = (
                "think-then-write: no answer after the think block"
                if parts.format_ok
                else "think-then-write: empty reply"
            )
        if error is not None:
            logger.warning("%s (instruction %s)", error, instruction.id)
        elif not parts.format_ok:
            logger.info(
                "think-then-write: no think block for instruction %s; kept the whole reply", instruction.id
            )
        result = _combine(
            [step],
            text=parts.visible,
            error=error,
            finish_reason=completion.finish_reason,
            logprobs=completion.logprobs,
        )
        return StrategyResult(result, (step,), meta)


_FIXED_FIELDS = frozenset({"name", "version"})


def configured_strategy(generator: GeneratorConfig, where: str = "generator") -> Strategy:
    """The generator's strategy with its `strategy_options` applied (a copy; the registered one is
    the defaults). An unknown option, or a value of the wrong type, is a ConfigError naming it."""
    strategy = STRATEGIES[generator.strategy]
    if not generator.strategy_options:
        return strategy
    names = [f.name for f in fields(strategy) if f.name not in _FIXED_FIELDS]  # type: ignore[arg-type]
    settable = sorted(n for n in names if isinstance(getattr(strategy, n), int | float | str))
    problems = []
    for name, value in generator.strategy_options.items():
        default = getattr(strategy, name, None)
        if name not in settable:
            problems.append(
                f"{where}.strategy_options.{name}: '{generator.strategy}' has no such option "
                f"(options: {', '.join(settable) or 'none'})"
            )
        elif isinstance(default, int) and not isinstance(value, int):
            problems.append(f"{where}.strategy_options.{name}: expected an integer, got {value!r}")
        elif isinstance(default, float) and not isinstance(value, int | float):
            problems.append(f"{where}.strategy_options.{name}: expected a number, got {value!r}")
        elif isinstance(default, str) and not isinstance(value, str):
            problems.append(f"{where}.strategy_options.{name}: expected a string, got {value!r}")
    if problems:
        raise ConfigError("; ".join(problems))
    options = {
        k: float(v) if isinstance(getattr(strategy, k), float) else v
        for k, v in generator.strategy_options.items()
    }
    try:
        return replace(strategy, **options)  # type: ignore[type-var]
    except ValueError as exc:  # the strategy's own cross-field checks
        raise ConfigError(f"{where}.strategy_options: {exc}") from None
