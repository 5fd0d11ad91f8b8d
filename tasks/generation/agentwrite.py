"""AgentWrite (LongWriter, Bai et al., 2024): plan a long piece, then write it section by section.

The plan is the model's own, read by `parse_plan` (LongWriter's "Paragraph 1 - Main Point: ... -
Word Count: 400 words" format and its common variants), with an even-split `fallback_plan` for
models that cannot write one. `AgentWriteStrategy` says where this departs from LongWriter. The
calls go through the shared helpers of `tasks.generation.strategies`, so the restart and failure
rules of every strategy hold here too.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from configs.schema import GeneratorConfig
from tasks.generation import prompts
from tasks.generation.strategies import StrategyResult, StrategyStep, _base_messages, _call, _combine, _params
from tasks.instructions.schema import Instruction
from tasks.llm.base import LLMClient
from tasks.text import Lang, count_words, prompt_language

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# plan parsing
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanSection:
    main_point: str
    words: int


_CN_DIGITS = "一二三四五六七八九十百零两〇"
_NUM = r"\d[\d,，]*"
_RANGE_SEP = r"\s*(?:-|–|—|~|～|to|至|到)\s*"
_UNIT = r"(?:words?|字|个字|词)"
# "Paragraph 3", "Section 2", "第三段", "段落3", "3.", "3)", "(3)", "3 -": a new plan item starts here.
_HEADER = re.compile(
    r"^(?:"
    r"(?:paragraphs?|para\.?|sections?|parts?|steps?|segments?|chapters?|subtasks?)\s*#?\s*\d+"
    rf"|第\s*[\d{_CN_DIGITS}]+\s*(?:段落?|部分|节|章|步)"
    rf"|(?:段落|部分|章节|小节|步骤)\s*[\d{_CN_DIGITS}]+"
    r"|\d+\s*(?:[.)、:：](?!\d)|\s+-)"
    r"|[(（]\s*\d+\s*[)）]"
    r")\s*",
    re.IGNORECASE,
)
_BULLET = re.compile(r"^\s*(?:[-*•·]|\+)\s+")
# "Word Count: about 400 words", "字数要求：500字", "Length: 300-400 words"
_LABELLED_COUNT = re.compile(
    r"(?:word\s*count|word\s*budget|length|words|字数要求|字数|篇幅)\s*[:：]?\s*"
    r"(?:about|approximately|approx\.?|around|roughly|~|约|大约|左右)?\s*"
    rf"(?P<a>{_NUM})(?:{_RANGE_SEP}(?P<b>{_NUM}))?\s*{_UNIT}?\s*(?:左右)?",
    re.IGNORECASE,
)
# "(400 words)", "300-400 words", "500字"
_BARE_COUNT = re.compile(
    rf"(?:about|approximately|approx\.?|around|roughly|~|约|大约)?\s*"
    rf"(?P<a>{_NUM})(?:{_RANGE_SEP}(?P<b>{_NUM}))?\s*{_UNIT}(?![a-z])\s*(?:左右)?",
    re.IGNORECASE,
)
_MAIN_LABEL = re.compile(
    r"(?:main\s*points?|main\s*ideas?|key\s*points?|content|topic|focus|主要内容|内容要点|内容|要点|主题)\s*[:：]",
    re.IGNORECASE,
)
_EDGE_JUNK = " \t-–—:：|,，;；.。、*#[]【】"


def _to_int(number: str) -> int:
    return int(re.sub(r"[,，]", "", number))


def _clean_markdown(line: str) -> str:
    line = re.sub(r"\*\*|__|`", "", line)
    line = re.sub(r"^\s*(?:#+|>+)\s*", "", line)
    return line.replace("|", " - ").strip()


def _parse_block(text: str) -> PlanSection | None:
    """One plan item (header already removed) -> its main point and word count, or None."""
    found = _LABELLED_COUNT.search(text) or _BARE_COUNT.search(text)
    if found is None:
        return None
    low = _to_int(found["a"])
    words = (low + _to_int(found["b"])) // 2 if found["b"] else low
    if words <= 0:
        return None
    rest = text[: found.start()] + " " + text[found.end() :]
    label = _MAIN_LABEL.search(rest)
    if label is not None:
        rest = rest[label.end() :]
    rest = re.sub(r"[(（\[]\s*[)）\]]", " ", rest)  # "(400 words)" leaves "()"
    main_point = _tidy(rest)
    return PlanSection(main_point, words) if main_point else None


def _tidy(text: str) -> str:
    # Lines of one item are joined with "; "; drop the separators left around removed parts.
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s*[;；]\s*(?:[;；:：\-–—]\s*)*", "; ", text)
    return re.sub(r"\s+(?=[;:,.；：，。])", "", text).strip(_EDGE_JUNK)


def _blocks_by_header(lines: list[str]) -> list[str]:
    blocks: list[str] = []
    current: list[str] | None = None  # text before the first header is preamble: dropped
    for line in lines:
        header = _HEADER.match(_BULLET.sub("", line))
        if header is not None:
            if current is not None:
                blocks.append("; ".join(current))
            current = [_BULLET.sub("", line)[header.end() :]]
        elif current is not None:
            current.append(_BULLET.sub("", line))
    if current is not None:
        blocks.append("; ".join(current))
    return blocks


def _sections_from_blocks(blocks: list[str]) -> list[PlanSection]:
    # An item with no word count is taken as the continuation of the item before it (a model that
    # numbers sub-points inside a paragraph), or of the next one when it comes first.
    sections: list[PlanSection] = []
    pending = ""
    for block in blocks:
        parsed = _parse_block(block)
        if parsed is None:
            text = _tidy(block)
            if sections and text:
                last = sections[-1]
                sections[-1] = PlanSection(f"{last.main_point}; {text}", last.words)
            elif text:
                pending = f"{pending}; {text}" if pending else text
            continue
        if pending:
            parsed = PlanSection(f"{pending}; {parsed.main_point}", parsed.words)
            pending = ""
        sections.append(parsed)
    return sections


def parse_plan(text: str, *, min_sections: int = 2) -> list[PlanSection] | None:
    """Read a plan in LongWriter's format, or something close to it; None when it cannot be read.

    Accepts "Paragraph 1 - Main Point: ... - Word Count: 400 words" and its variants: other item
    words (Section/Part/Step), bare numbering ("1.", "2)", "(3)"), markdown bold, headings, bullets
    and tables, items spread over several lines, ranges ("300-400 words" -> 350), thousands
    separators, and the Chinese form ("段落1 - 主要内容：... - 字数要求：500字", "第一段 ... 500字").
    Without numbered items, each line that states a word count is taken as one item.
    """
    lines = [cleaned for raw in text.splitlines() if (cleaned := _clean_markdown(raw))]
    sections = _sections_from_blocks(_blocks_by_header(lines))
    if len(sections) < min_sections:
        sections = [s for line in lines if (s := _parse_block(_BULLET.sub("", line))) is not None]
    return sections if len(sections) >= min_sections else None


def _merge_to(sections: list[PlanSection], limit: int) -> list[PlanSection]:
    """Merge neighbouring sections into `limit` groups of near-equal size (content is kept)."""
    if len(sections) <= limit:
        return sections
    size, extra = divmod(len(sections), limit)
    merged, start = [], 0
    for g in range(limit):
        group = sections[start : start + size + (1 if g < extra else 0)]
        start += len(group)
        merged.append(PlanSection("; ".join(s.main_point for s in group), sum(s.words for s in group)))
    return merged


def _rescale(sections: list[PlanSection], target: int, tolerance: float) -> tuple[list[PlanSection], bool]:
    total = sum(s.words for s in sections)
    if abs(total - target) <= tolerance * target:
        return sections, False
    floor = max(1, min(50, target // len(sections)))  # no section shrinks to a token-sized budget
    scaled = [
        PlanSection(s.main_point, max(floor, round(s.words * target / total / 10) * 10)) for s in sections
    ]
    return scaled, True


def section_count(target: int, *, section_words: int, min_sections: int, max_sections: int) -> int:
    """Sections of about `section_words` words for `target` words, within [min, max]: what the plan
    prompt suggests and what the even-split fallback writes."""
    return min(max_sections, max(min_sections, math.ceil(target / section_words)))


def fallback_plan(
    target: int, lang: Lang, *, section_words: int, min_sections: int, max_sections: int
) -> list[PlanSection]:
    """An even split: opening / development i / conclusion, about `section_words` words each."""
    n = section_count(
        target, section_words=section_words, min_sections=min_sections, max_sections=max_sections
    )
    base, extra = divmod(target, n)
    points = [
        prompts.FALLBACK_OPENING[lang],
        *(prompts.FALLBACK_DEVELOPMENT[lang].format(i=i) for i in range(1, n - 1)),
        prompts.FALLBACK_CONCLUSION[lang],
    ]
    return [PlanSection(point, base + (1 if i < extra else 0)) for i, point in enumerate(points)]


def render_plan(sections: Sequence[PlanSection], lang: Lang) -> str:
    return "\n".join(
        prompts.PLAN_LINE[lang].format(index=i, main_point=s.main_point, words=s.words)
        for i, s in enumerate(sections, start=1)
    )


def tail_text(text: str, max_chars: int, lang: Lang) -> tuple[str, bool]:
    """The last ~`max_chars` characters of `text`, cut at a line (or word) boundary; (text, cut?)."""
    if len(text) <= max_chars:
        return text, False
    tail = text[-max_chars:]
    for boundary in ("\n", " ") if lang == "en" else ("\n",):
        at = tail.find(boundary)
        if 0 <= at < len(tail) // 2:
            tail = tail[at + 1 :]
            break
    return f"{prompts.EARLIER_OMITTED[lang]}\n{tail.lstrip()}", True


# ---------------------------------------------------------------------------------------------
# the strategy
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentWriteStrategy:
    """LongWriter's AgentWrite (Bai et al., 2024): plan the piece, then write it section by section.

    1. plan: the model breaks the instruction into 2..16 sections, each with a main point and a
       word budget (LongWriter's "Paragraph 1 - Main Point: ... - Word Count: 400 words" format),
       parsed by `parse_plan`. If the reply cannot be parsed, the model is re-asked once
       ("plan-retry", with its own reply in the conversation; `plan_retries: 0` skips it, for a
       model known not to follow the format); if that fails too, an even split
       from the required length with generic main points is used, and the result's metadata says
       so (`plan_source: "fallback"`, `fallback_reason`). Small models often cannot follow the plan
       format; the fallback is how agentwrite still gets long answers out of them.
    2. sections: each section is one call showing the instruction, the whole plan, the text
       written so far and "now write section i: <main point>, about W words". Its max_tokens is
       ceil(W * 1.5) + 32 for English prompts and ceil(W * 1.2) + 32 for Chinese ones (W counts
       characters there), capped by `decoding.max_tokens`. An empty section is recorded in
       `empty_sections` and skipped; only an answer with no text at all fails.
    3. the sections are joined with blank lines. finish_reason is "length" when any section hit
       its token cap (`sections_hit_length`), else the last section's.

    Every call carries the generator's system prompt and decoding; the plan calls' max_tokens is
    `plan_max_tokens` (1024), capped by `decoding.max_tokens`.

    Where this departs from LongWriter's original:
    - budgets are normalised: when the plan's total is more than 10% off the target (the
      instruction's `required_length`, else `default_length` words), they are rescaled to it;
      plans beyond `max_sections` are merged into neighbouring groups, not cut;
    - the plan prompt states the target length and a suggested section count, and the plan shown
      to the writer is re-rendered from the parsed plan, not the model's raw reply;
    - the text written so far is cut from the front to `context_chars` characters (16,000 for
      English prompts, about 4k tokens; 6,000 for Chinese, where a character is about one token or
      more) so prompts fit small context windows; LongWriter passed the whole text to a 128k model;
    - each section's max_tokens follows its budget instead of one fixed limit;
    - a re-ask and an even-split fallback replace LongWriter's manual filtering of bad plans.
    All prompts are this project's own wording (`tasks.generation.prompts`).

    Changing a default here changes answers: bump `version`.
    """

    name: str = "agentwrite"
    version: int = 1
    min_sections: int = 2
    max_sections: int = 16
    default_length: int = 800  # words, when the instruction has no required_length
    fallback_section_words: int = 400
    rescale_tolerance: float = 0.1
    plan_max_tokens: int = 1024
    plan_retries: int = 1  # re-asks of an unparsable plan before the even-split fallback (0 or 1)
    tokens_per_word: tuple[tuple[str, float], ...] = (("en", 1.5), ("zh", 1.2))
    token_margin: int = 32
    context_chars: tuple[tuple[str, int], ...] = (("en", 16_000), ("zh", 6_000))

    def __post_init__(self) -> None:
        if not 1 <= self.min_sections <= self.max_sections:
            raise ValueError(
                f"min_sections ({self.min_sections}) must be at least 1 and at most max_sections "
                f"({self.max_sections})"
            )
        if self.plan_retries not in (0, 1):
            raise ValueError(f"plan_retries must be 0 or 1, got {self.plan_retries}")

    def plan_prompt(self, instruction: Instruction, lang: Lang, target: int) -> str:
        """The plan call's user message (the cost forecast prices the same text)."""
        n_sections = section_count(target, section_words=self.fallback_section_words,
                                   min_sections=self.min_sections, max_sections=self.max_sections)  # fmt: skip
        return prompts.PLAN[lang].format(
            prompt=instruction.prompt,
            target_words=target,
            n_sections=n_sections,
            min_sections=self.min_sections,
            max_sections=self.max_sections,
        )

    def section_max_tokens(self, words: int, lang: Lang, cap: int) -> int:
        return min(cap, math.ceil(words * dict(self.tokens_per_word)[lang]) + self.token_margin)

    async def generate(
        self,
        client: LLMClient,
        instruction: Instruction,
        generator: GeneratorConfig,
        *,
        sample_index: int = 0,
    ) -> StrategyResult:
        lang = prompt_language(instruction)
        target = instruction.required_length or self.default_length
        decoding = generator.decoding
        steps: list[StrategyStep] = []
        meta: dict[str, Any] = {"language": lang, "target_words": target}

        def failed(step: str, error: str | None) -> StrategyResult:
            message = f"agentwrite {step} failed: {error or 'no text'}"
            logger.warning("%s (instruction %s)", message, instruction.id)
            return StrategyResult(_combine(steps, text=None, error=message), tuple(steps), meta)

        # -- 1. plan, one re-ask, then the fallback ------------------------------------------
        plan_messages = _base_messages(generator, self.plan_prompt(instruction, lang, target))
        plan_params = _params(decoding, sample_index, self.plan_max_tokens)
        sections: list[PlanSection] | None = None
        for attempt, step_name in enumerate(("plan", "plan-retry")[: 1 + self.plan_retries], start=1):
            if attempt == 2:
                plan_messages = [
                    *plan_messages,
                    {"role": "assistant", "content": steps[-1].completion.text or ""},
                    {
                        "role": "user",
                        "content": prompts.PLAN_RETRY[lang].format(min_sections=self.min_sections),
                    },
                ]
            step = await _call(client, step_name, plan_messages, plan_params, sample_index)
            steps.append(step)
            if not step.completion.ok:
                return failed(step_name, step.completion.error)
            sections = parse_plan(step.completion.text or "", min_sections=self.min_sections)
            meta["plan_attempts"] = attempt
            if sections is not None:
                break

        if sections is None:
            sections = fallback_plan(
                target,
                lang,
                section_words=self.fallback_section_words,
                min_sections=self.min_sections,
                max_sections=self.max_sections,
            )
            meta |= {
                "plan_source": "fallback",
                "fallback_reason": f"no parsable plan in {meta['plan_attempts']} replies",
                "plan_words_model": None,
                "plan_rescaled": False,
                "plan_merged_from": None,
            }
            logger.warning(
                "agentwrite: plan for instruction %s could not be parsed after a re-ask; "
                "using an even split into %d sections",
                instruction.id,
                len(sections),
            )
        else:
            parsed_count = len(sections)
            model_words = sum(s.words for s in sections)
            sections, rescaled = _rescale(
                _merge_to(sections, self.max_sections), target, self.rescale_tolerance
            )
            meta |= {
                "plan_source": "model",
                "fallback_reason": None,
                "plan_words_model": model_words,
                "plan_rescaled": rescaled,
                "plan_merged_from": parsed_count if parsed_count > self.max_sections else None,
            }

        caps = [self.section_max_tokens(s.words, lang, decoding.max_tokens) for s in sections]
        meta["plan"] = [
            {"index": i, "main_point": s.main_point, "words": s.words, "max_tokens": cap}
            for i, (s, cap) in enumerate(zip(sections, caps, strict=True), start=1)
        ]

        # -- 2. write each section in turn ---------------------------------------------------
        plan_text = render_plan(sections, lang)
        context_chars = dict(self.context_chars)[lang]
        written: list[str] = []
        truncated: list[int] = []
        hit_length: list[int] = []
        empty: list[int] = []
        total = len(sections)
        for i, (section, cap) in enumerate(zip(sections, caps, strict=True), start=1):
            so_far, cut = tail_text("\n\n".join(written), context_chars, lang)
            if cut:
                truncated.append(i)
            user = prompts.SECTION[lang].format(
                prompt=instruction.prompt,
                target_words=target,
                plan=plan_text,
                written=so_far or prompts.NOTHING_WRITTEN[lang],
                index=i,
                total=total,
                main_point=section.main_point,
                words=section.words,
            )
            step = await _call(
                client,
                f"section-{i}",
                _base_messages(generator, user),
                _params(decoding, sample_index, cap),
                sample_index,
            )
            steps.append(step)
            if not step.completion.ok:
                meta["sections_written"] = i - 1
                return failed(f"section {i}/{total}", step.completion.error)
            text = (step.completion.text or "").strip()
            if step.completion.finish_reason == "length":
                hit_length.append(i)
            if not text:
                empty.append(i)  # an empty section is recorded, not fatal; an empty whole is
            else:
                written.append(text)

        meta |= {
            "sections_written": total,
            "section_words": [count_words(s.completion.text or "") for s in steps[-total:]],
            "sections_truncated_context": truncated,
            "sections_hit_length": hit_length,
            "empty_sections": empty,
        }
        if not written:
            return failed(f"writing ({total} sections)", "every section came back empty")
        # "length" when any section was cut by its token cap: the stage counts truncations.
        finish = "length" if hit_length else steps[-1].completion.finish_reason
        return StrategyResult(
            _combine(steps, text="\n\n".join(written), finish_reason=finish), tuple(steps), meta
        )
