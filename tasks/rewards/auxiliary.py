"""LongWriter-Zero style auxiliary rewards: response length and output format.

The main reward comes from an LLM judge. A judge alone can be gamed in ways that are cheap to
detect without one: an answer far shorter or longer than the instruction asks for, a policy that
collapses into repeating itself, or (with the think-then-write format) a reply that skips or
breaks the think block. LongWriter-Zero (Wu et al., 2025, arXiv:2506.18841) adds a length reward
and a format reward next to its writing reward for these reasons; this module provides both as
optional components (`reward.length_weight`, `reward.format_weight`), pure Python and
deterministic, plus the rule that folds them into the main reward (`combine`). Each component is
returned separately so the trainer can log it.

**Length** (`length_reward`) is the LongBench-Write length score S_l (LongWriter, Bai et al., 2024,
arXiv:2408.07055; THUDM/LongWriter `evaluation/eval_length.py::score`). With required length l and
output length l':

    S_l = 100 * max(0, 1 - (l'/l - 1) / 3)   if l' > l
    S_l = 100 * max(0, 1 - (l/l' - 1) / 2)   otherwise

divided by 100 here, so it lies in [0, 1]: 1 at the exact length, 0 at 4x too long or 3x too
short. Length is counted the way this project counts `Instruction.required_length`
(`tasks.text.count_words`: whitespace-separated words, each CJK character one word).

**Format** (`format_reward`) is LongWriter-Zero's Format RM idea (structure plus a repetition
penalty) with the exact definition given in `format_reward`'s docstring.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

# `count_words` and `split_think` are the project's single definitions of "a word" and "a valid
# think block"; the rewards must agree with the instructions' lengths and the generation strategy.
from tasks.text import CJK_RANGES, count_words, split_think

LENGTH = "length"
FORMAT = "format"

NGRAM = 4  # word 4-grams: long enough that ordinary prose rarely repeats one by chance
MIN_ANSWER_TOKENS = 5  # fewer tokens than this is a near-empty answer
MIN_LINE_TOKENS = 5  # shorter lines (headings, table rows, "---") may legitimately repeat

# A token is one CJK character (the ranges `count_words` uses) or a run of other word characters;
# punctuation and markup are not tokens, so "word." and "word" match and a repeated "---" or "**"
# is not repetition.
_TOKEN = re.compile(rf"[{CJK_RANGES}]|[^\W{CJK_RANGES}]+")
_THINK_TAG = re.compile(r"</?think>", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# Length
# ---------------------------------------------------------------------------------------------


def length_score(output_length: int, required_length: int) -> float:
    """LongBench-Write S_l / 100 for word counts; 0 for an empty output (the official formula
    divides by the output length)."""
    if required_length <= 0:
        raise ValueError(f"required_length must be positive, got {required_length}")
    if output_length <= 0:
        return 0.0
    ratio = output_length / required_length
    if ratio > 1:
        return max(0.0, 1.0 - (ratio - 1.0) / 3.0)
    return max(0.0, 1.0 - (1.0 / ratio - 1.0) / 2.0)


def length_reward(answer: str, required_length: int | None) -> float | None:
    """`length_score` of the visible answer; None when the instruction asks for no length."""
    if required_length is None:
        return None
    return length_score(count_words(answer), required_length)


# ---------------------------------------------------------------------------------------------
# Format
# ---------------------------------------------------------------------------------------------


def _tokens(text: str) -> list[str]:
    return [t.lower() for t in _TOKEN.findall(text)]


def distinct_ngram_ratio(tokens: list[str], n: int = NGRAM) -> float:
    """Distinct n-grams / all n-grams; 1.0 when the text has fewer than n tokens."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def unique_line_ratio(text: str) -> float:
    """1 - (tokens in lines that repeat an earlier line) / (all tokens).

    Lines are compared by their lower-cased tokens, so punctuation and markdown do not hide a
    repeat; lines under MIN_LINE_TOKENS tokens are never counted as repeats. Weighting by tokens
    makes a repeated paragraph cost more than a repeated short line.
    """
    seen: set[tuple[str, ...]] = set()
    total = repeated = 0
    for line in text.splitlines():
        key = tuple(_tokens(line))
        total += len(key)
        if len(key) < MIN_LINE_TOKENS:
            continue
        if key in seen:
            repeated += len(key)
        seen.add(key)
    return 1.0 - repeated / total if total else 1.0


def answer_quality(answer: str) -> float:
    """The repetition part of `format_reward`, for an answer with no think block."""
    tokens = _tokens(answer)
    if len(tokens) < MIN_ANSWER_TOKENS:
        return 0.0
    return min(distinct_ngram_ratio(tokens), unique_line_ratio(answer))


def think_answer(reply: str) -> str | None:
    """The visible answer of a well-formed think-then-write reply, or None when malformed.

    Well-formed: optional leading whitespace, then exactly one `<think>...</think>` block with
    non-empty content, then the answer (`split_think` removes an `<answer>` wrapper). As in
    `split_think`, a reply with only the closing `</think>` counts (chat templates that put
    `<think>` in the prompt). Malformed: no tags, a block never closed, text before `<think>`, a
    second block or stray tag, an empty think block.
    """
    parts = split_think(reply)
    if not parts.format_ok or not parts.closed or not parts.think:
        return None
    # split_think keeps everything between the first <think> and the last </think>: any tag left
    # inside means two blocks or a stray tag.
    if _THINK_TAG.search(parts.think):
        return None
    opened = re.search(r"<think>", reply, re.IGNORECASE)
    if opened and reply[: opened.start()].strip():
        return None
    return parts.visible


def format_reward(text: str, *, think_format: bool = False) -> float:
    """Output format score in [0, 1].

    Tokens are lower-cased runs of word characters, with each CJK character its own token
    (punctuation is not a token). For the answer A:

        0                                         if A has fewer than MIN_ANSWER_TOKENS (5) tokens
        min(distinct_4gram(A), unique_lines(A))   otherwise

    distinct_4gram = distinct token 4-grams / all token 4-grams (1.0 under 4 tokens);
    unique_lines = 1 - tokens in lines of >= 5 tokens that repeat an earlier line (same tokens)
    / all tokens. Ordinary prose scores about 1; a sentence repeated k times scores about 1/k.
    Legitimate refrains (song choruses, repeated verses) are penalised like any repetition.

    With `think_format`, A is the answer after the think block (`think_answer`) and a malformed
    structure scores 0; the think text itself is not checked for repetition (the reader never
    sees it). Without it, A is the whole text.
    """
    answer = think_answer(text) if think_format else text
    if answer is None:
        return 0.0
    return answer_quality(answer)


# ---------------------------------------------------------------------------------------------
# Per-response components and the combination
# ---------------------------------------------------------------------------------------------


def auxiliary_rewards(
    text: str,
    *,
    required_length: int | None,
    think_format: bool,
    length_weight: float,
    format_weight: float,
) -> dict[str, float | None]:
    """Each auxiliary component of one response, for `combine` and for logging.

    A component with weight 0 is not computed and its key is absent; a computed component may be
    None (not applicable: length with no required length). With `think_format`, length counts
    the visible answer (`split_think`, as the generation strategy returns it), not the thinking.
    """
    for name, weight in ((LENGTH, length_weight), (FORMAT, format_weight)):
        if not weight >= 0:  # also rejects NaN
            raise ValueError(f"{name} weight must be >= 0, got {weight}")
    out: dict[str, float | None] = {}
    if length_weight > 0:
        answer = split_think(text).visible if think_format else text
        out[LENGTH] = length_reward(answer, required_length)
    if format_weight > 0:
        out[FORMAT] = format_reward(text, think_format=think_format)
    return out


def _check_unit(name: str, value: float) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} reward must be in [0, 1], got {value}")


def combine(
    main: float | None, components: Mapping[str, float | None], weights: Mapping[str, float]
) -> float | None:
    """The main (judge) reward with the auxiliary components folded in, in [0, 1].

        (main + sum_i w_i * c_i) / (1 + sum_i w_i)   over the components with c_i not None

    - main None -> None: a judge failure stays a failure, never a score made of auxiliaries.
    - a None component (not applicable) contributes nothing and its weight is not counted, so an
      instruction without a required length is scored on the same scale as one with it.
    - weights for names absent from `components` are ignored (a weight-0 component is absent);
      a present component without a weight is an error, as is a negative weight or a value
      outside [0, 1] (the result would leave [0, 1]).
    """
    if main is None:
        return None
    _check_unit("main", main)
    total, norm = main, 1.0
    for name, value in components.items():
        if value is None:
            continue
        if name not in weights:
            raise KeyError(f"no weight for reward component {name!r}")
        weight = weights[name]
        if not weight >= 0:
            raise ValueError(f"{name} weight must be >= 0, got {weight}")
        _check_unit(name, value)
        total += weight * value
        norm += weight
    return total / norm
