"""The project's text rules: what a word is, which language a text is in, what a think block is.

One definition of each, shared by the instruction loaders, the generation strategies, the
auxiliary rewards and the training reward, so an instruction's `required_length`, the length
reward and the strategies' section budgets all count the same words. Pure: no LLM, no torch.
(The benchmark modules of `tasks/evaluation/` keep the official harnesses' own formulas, which
differ on purpose.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # only for annotations: the loaders import this module, so no runtime import back
    from tasks.instructions.schema import Instruction

Lang = Literal["en", "zh"]

# ---------------------------------------------------------------------------------------------
# Scripts: the one set of character ranges behind every word count and language rule
# ---------------------------------------------------------------------------------------------

_HAN = "\u4e00-\u9fff"  # CJK Unified Ideographs: the common Chinese characters
# Kana, CJK ideographs (Extension A, the Unified block, Compatibility), Hangul syllables.
CJK_RANGES = f"\u3040-\u30ff\u3400-\u4dbf{_HAN}\uf900-\ufaff\uac00-\ud7af"

_CJK = re.compile(f"[{CJK_RANGES}]")
_LATIN_WORD = re.compile(rf"[^\s{CJK_RANGES}]+")
# `detect_language`'s narrower pair: Han characters only, and ASCII-letter words.
_HAN_CHAR = re.compile(f"[{_HAN}]")
_ASCII_WORD = re.compile(r"[A-Za-z]+")


def count_words(text: str) -> int:
    """Words as `Instruction.required_length` counts them: each CJK character is one word."""
    return len(_CJK.findall(text)) + len(_LATIN_WORD.findall(text))


# ---------------------------------------------------------------------------------------------
# Language
#
# Two rules, each kept exactly as it was because its output is cached data: `detect_language`
# fills `Instruction.language` at ingest (the instructions dataset), `prompt_language` picks the
# strategies' prompt language (generation messages, so the response cache). They disagree on some
# texts: a Korean or kana-only prompt is 'en' to the first and 'zh' to the second, and a prompt
# mixing Chinese with English words can fall on either side of each one's threshold.
# ---------------------------------------------------------------------------------------------


def detect_language(text: str) -> Lang:
    """'zh' when CJK characters outnumber Latin words (each counts one, as in length scoring), else 'en'.

    A plain "any CJK character" test misfiles English prompts that quote a few Chinese names and
    Chinese requests for an English essay; the majority rule gets both right.
    """
    return "zh" if len(_HAN_CHAR.findall(text)) > len(_ASCII_WORD.findall(text)) else "en"


def prompt_language(instruction: Instruction) -> Lang:
    """Chinese prompts for Chinese instructions, English for everything else.

    Uses `instruction.language` when set; otherwise a prompt that is at least 20% CJK characters
    counts as Chinese.
    """
    if instruction.language:
        return "zh" if instruction.language.lower().startswith("zh") else "en"
    visible = [ch for ch in instruction.prompt if not ch.isspace()]
    cjk = sum(1 for ch in visible if _CJK.match(ch))
    return "zh" if visible and cjk / len(visible) >= 0.2 else "en"


# ---------------------------------------------------------------------------------------------
# Think blocks (LongWriter-Zero's format)
# ---------------------------------------------------------------------------------------------

_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)
_ANSWER_TAGS = re.compile(r"^\s*<answer>\s*(.*?)\s*(?:</answer>\s*)?$", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class ThinkResult:
    visible: str
    think: str | None
    format_ok: bool
    closed: bool  # False: a <think> was opened and never closed


def split_think(reply: str) -> ThinkResult:
    """Split a LongWriter-Zero style reply into its think block and the visible answer.

    The visible text is what follows the last `</think>`, with an `<answer>...</answer>` wrapper
    removed (LongWriter-Zero's own format). A `</think>` without an opening tag still counts (some
    chat templates put `<think>` in the prompt). No tags at all: the whole reply is visible and
    `format_ok` is False. A `<think>` with no `</think>` after it: `closed` is False.
    """
    closes = list(_THINK_CLOSE.finditer(reply))
    opens = list(_THINK_OPEN.finditer(reply))
    if not closes:
        if opens:
            return ThinkResult("", reply[opens[0].end() :].strip(), format_ok=True, closed=False)
        return ThinkResult(_unwrap_answer(reply), None, format_ok=False, closed=True)
    last_close = closes[-1]
    if opens and opens[-1].start() > last_close.start():  # a second think block left open
        return ThinkResult("", reply[opens[0].end() :].strip(), format_ok=True, closed=False)
    think_start = opens[0].end() if opens else 0
    think = reply[think_start : last_close.start()].strip()
    return ThinkResult(_unwrap_answer(reply[last_close.end() :]), think, format_ok=True, closed=True)


def _unwrap_answer(text: str) -> str:
    found = _ANSWER_TAGS.match(text)
    return (found.group(1) if found else text).strip()
