"""The LLM criteria writer, for instructions that carry no criteria of their own.

The writer must reply with a strict JSON list of exactly `num_criteria` objects
{"name": ..., "description": ...}; the same strictness and re-ask rule as the pointwise judge. There
is deliberately no fixed fallback: a failure is a failure, and the instruction then gets no scores
(recorded by the caller), rather than being judged against generic criteria that look like real ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from configs.schema import CriteriaWriterConfig
from tasks.instructions.schema import Criterion, Instruction
from tasks.judging.judgment import Ask, ParseFailure, ask
from tasks.judging.pointwise import load_strict_json
from tasks.llm.base import Completion, LLMClient, Message

CRITERION_KEYS = ("name", "description")
# CriteriaWriterConfig has no max_parse_retries field (yet): the judge's default.
DEFAULT_MAX_PARSE_RETRIES = 2

CRITERIA_SYSTEM = (
    "You are an expert writing evaluator. You design evaluation criteria that are specific to one "
    "writing instruction."
)
CRITERIA_USER = (
    "Writing instruction:\n{instruction}\n\n"
    "Write exactly {n} evaluation criteria for judging responses to this instruction on a 1-10 scale. "
    "Together they should cover what the instruction explicitly asks for (task, content, format, "
    "length, audience) and the quality a strong response would show. Each criterion needs a short, "
    "distinct name and a description of what a high score requires.\n\n"
    'Reply with only a JSON list of exactly {n} objects, each {{"name": "<short name>", '
    '"description": "<one or two sentences>"}}, and no other text.'
)
CRITERIA_REASK = (
    "Your reply could not be used: {error}. Reply again with only a JSON list of exactly {n} objects, "
    'each {{"name": "<short name>", "description": "<one or two sentences>"}}, and no other text.'
)


@dataclass(frozen=True)
class CriteriaFailure:
    error: str
    attempts: int  # asks made: 1 + re-asks
    llm_calls: tuple[Completion, ...] = ()


def criteria_messages(instruction: Instruction, num_criteria: int) -> list[Message]:
    return [
        {"role": "system", "content": CRITERIA_SYSTEM},
        {"role": "user", "content": CRITERIA_USER.format(instruction=instruction.prompt, n=num_criteria)},
    ]


def parse_criteria_reply(text: str, num_criteria: int) -> tuple[Criterion, ...] | ParseFailure:
    """Exactly `num_criteria` objects with exactly the keys name and description (non-empty
    strings), names distinct; one JSON list and nothing else."""
    value = load_strict_json(text)
    if isinstance(value, ParseFailure):
        return value
    if not isinstance(value, list):
        return ParseFailure(f"expected a JSON list, got a JSON {type(value).__name__}")
    if len(value) != num_criteria:
        return ParseFailure(f"expected exactly {num_criteria} criteria, got {len(value)}")
    out: list[Criterion] = []
    for i, item in enumerate(value, start=1):
        if not isinstance(item, dict):
            return ParseFailure(f"item {i} is not a JSON object")
        keys = set(item)
        if keys != set(CRITERION_KEYS):
            missing = sorted(set(CRITERION_KEYS) - keys)
            extra = sorted(keys - set(CRITERION_KEYS))
            problems = [f"missing key(s) {', '.join(map(repr, missing))}"] if missing else []
            problems += [f"unexpected key(s) {', '.join(map(repr, extra))}"] if extra else []
            return ParseFailure(f"item {i}: {'; '.join(problems)}")
        name, description = item["name"], item["description"]
        for key, v in (("name", name), ("description", description)):
            if not isinstance(v, str) or not v.strip():
                return ParseFailure(f'item {i}: "{key}" must be a non-empty string')
        out.append(Criterion(name=name.strip(), description=description.strip()))
    names = [c.name.casefold() for c in out]
    if len(set(names)) != len(names):
        return ParseFailure("criterion names must be distinct")
    return tuple(out)


async def write_criteria(
    client: LLMClient,
    cfg: CriteriaWriterConfig,
    instruction: Instruction,
    *,
    max_parse_retries: int = DEFAULT_MAX_PARSE_RETRIES,
) -> tuple[Criterion, ...] | CriteriaFailure:
    """Ask for `cfg.num_criteria` criteria; re-ask an unusable reply up to `max_parse_retries`
    times, then a `CriteriaFailure`. Raises only `EndpointFailingError`."""
    question = Ask(
        criteria_messages(instruction, cfg.num_criteria),
        lambda text: parse_criteria_reply(text, cfg.num_criteria),
        partial(CRITERIA_REASK.format, n=cfg.num_criteria),
        caller="criteria writer",
        reply="criteria",
    )
    judgment = await ask(client, question, cfg.decoding, max_parse_retries)
    if judgment.value is None:
        return CriteriaFailure(judgment.error or "no criteria", judgment.calls, judgment.completions)
    return judgment.value
