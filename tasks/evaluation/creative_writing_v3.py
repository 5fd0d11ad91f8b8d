"""EQ-Bench Creative Writing v3: the official rubric, judging prompt and rubric score, and the suite:
its items from the prompts file (the project's `creative_writing_v3` loader, seeded per iteration
as officially), the judge calls for one piece, and the aggregate.

Official harness: `EQ-bench/creative-writing-bench` (github.com/EQ-bench/creative-writing-bench).
The code index this module was written from does not hold that repository itself, so its files were
read through verbatim copies, and wherever two copies could be compared they agree word for word:

- `core/scoring.py`, `core/conversation.py`, `core/benchmark.py`, `utils/api.py`: the vendored copy
  `thulanxc/ThinkingSpectrum@232ef1c:creative-writing-bench/...` (current code, with the `<= 20`
  check), and the fork `altryne/creative-writing-bench@3faaedd` (an older `core/scoring.py`
  without that check, otherwise the same);
- `data/creative_writing_criteria.txt` and `data/negative_criteria.txt`: the fork
  `rlrs/creative-writing-bench@17550d6` (a Danish translation that keeps the line order), checked
  against English copies of the same lists embedded in third-party harnesses;
- `data/creative_writing_judging_prompt.txt`: the same author's sibling
  `EQ-bench/open-writing-bench` (`data/creative_writing_judging_prompt_v1.txt` @a280bf9 and
  `data/creative_writing_judging_prompt.txt` @17354e1), with the order of the notes as in the
  Danish fork and in the English copies. Checked since against the official repository itself
  (EQ-bench/creative-writing-bench @ e7ab009): the template is byte-identical, with no final
  newline (suite version 2; version 1 had one), and so are the two criteria lists.

The prompts file (`data/creative_writing_prompts_v3.json`, 32 prompts with a `<SEED>` slot and 10
seed modifiers each, one with 11) is read by the project's loader `creative_writing_v3`
(`tasks/instructions/loaders.py`), which expands `<SEED>` into one instruction per
(prompt, seed modifier), ids `cw3-{prompt id}-s{n}`; it is not re-implemented here.

What the official harness does
------------------------------
1. Generation (`core/conversation.py::generate_creative_piece`): iteration i (1-based, default 3
   iterations on the leaderboard) of each prompt uses `seed_modifiers[(i-1) % len(seed_modifiers)]`
   (`core/benchmark.py`), so the official run is the loader's `s1`..`s3`
   (`official_seed_number`). One user message, temperature 0.7, min_p 0.1, max_tokens 4000; a
   response shorter than 500 characters (stripped) is retried, up to 3 attempts, then marked
   `generation_failed` and never judged.
2. Judging (`core/conversation.py::judge`): the template is filled with `str.format`:
   `writing_prompt` = the task's *base* prompt (with the literal `<SEED>` slot, NOT the expanded
   prompt the model saw), `test_model_response` = the response, `creative_writing_criteria` =
   `"\\n".join("- " + c for c in criteria)`, `lower_is_better_criteria` = `", ".join(negatives)`.
   One user message, temperature 0.0, max_tokens 1000. `utils/api.py` drops everything up to the
   first `</think>` (or `</reasoning>`) of every reply, test model and judge alike
   (`strip_reasoning`).
3. Parsing (`core/scoring.py::parse_judge_scores_creative`): `re.findall` over the WHOLE reply
   with `(.*?):\\s*(?:Score\\s+)?(-?\\d+(?:\\.\\d+)?)` and then `(.*?):\\s*\\[(-?\\d+(?:\\.\\d+)?)\\]`;
   every match becomes `scores[name.strip()] = float(value)` if `value <= 20` (later matches
   overwrite earlier ones). ANY "text: number" is kept: names that are not criteria, "10:30" in
   the analysis, negative numbers.
4. Piece score (`core/scoring.py::compute_creative_scores`): for each piece with a non-empty
   score dict, every value whose name is exactly a negative criterion is inverted as `20 - v`;
   values above 20 after inversion are dropped; the piece score is the mean of the rest (0-20). A
   piece with an empty dict (generation failed, judge error, nothing parsed) is skipped, not
   counted as 0; a piece with a single parsed number is scored on that one number.
5. Benchmark score (`compute_single_benchmark_score_creative`, called by
   `core/benchmark.py::compute_benchmark_results_creative`): the flat mean of the piece scores
   over every prompt and every iteration (no per-iteration averaging), `overall_score` (0-20),
   and `eqbench_creative_score = 5 * overall_score` (0-100), both rounded to 2 decimals; 0.0 when
   no piece has scores. (The leaderboard ranks by a separate pairwise Elo: the optional suite
   `creative_writing_v3_elo`, tasks/evaluation/creative_writing_elo.py.)

Departures from the official harness (scoring)
----------------------------------------------
- Parsing is restricted to the rubric. `parse_rubric_scores` reads the reply line by line and
  keeps only lines that are exactly `<criterion>: <number>` for a criterion of the rubric
  (`RubricParse` documents the accepted surface forms). A line naming anything else is ignored
  (`RubricParse.unknown`); a number outside 0-20 (negative, or above 20) is refused
  (`RubricParse.out_of_range`) and never overwrites an earlier valid score. The official parser
  keeps any "text: number" with a value <= 20, including negative values and non-criteria, and
  averages them into the piece score.
- Criterion names are matched ignoring case, whitespace, `*` emphasis, a leading list marker and
  curly apostrophes, and reported under their canonical name; the official code matches the exact
  text for inversion only, so "- Meandering: 4" there is averaged un-inverted.
- One criterion per line, number on the same line, nothing after it but an optional `/20`
  (the format the prompt demands). The official regex also accepts "Coherent: 15 (solid)", several
  scores on one line, and the number on the next line.
- A judge reply that yields fewer than `MIN_PARSED_CRITERIA` (11, half the rubric) criteria is a
  parse failure: the piece gets no score (`piece_score` raises `TooFewCriteria`) and must be
  reported as failed, never scored 0. The official code scores a piece from as little as one
  parsed number. Fewer than 22 but at least 11 is normal: the prompt tells the judge to leave out
  criteria that do not apply (e.g. dialogue criteria for a piece without dialogue), and the piece
  is scored on the criteria parsed, as officially. Pass `min_criteria=1` for the official rule.
- `benchmark_score` refuses an empty list (the official code returns 0.0) and does not round
  (the official code stores `round(x, 2)`); `benchmark_summary` also counts the failed pieces that
  the official code drops silently.
- `judge_prompt` fills the template with whatever writing prompt it is given. For parity with the
  official judge, pass the unexpanded base prompt (with `<SEED>`), not the expanded one.

Departures of the suite (the shared ones of every judged suite: `tasks.evaluation.common`)
---------------------------------------------------------------------------------------
- Generation: temperature 0.7, max_tokens 4000; min_p 0.1 is not in our `Decoding` (dropped).
- A piece shorter than 500 characters is not regenerated (a suite cannot call the candidate) but
  judged as is; its length is recorded (`piece_chars`, `short_piece`) and counted
  (`short_pieces`). A failed generation is a failed piece: no score, counted in `failed`.
- Logprob mode: 22 probes, one per criterion; the rubric list holds only that criterion and a
  closing line asks for a digit grade 0-9 (`CW3_CRITERION_ANSWER`), mapped linearly to 0-20
  (grade * 20 / 9).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configs.schema import BenchmarkConfig, DataConfig, Decoding, JudgeConfig
from tasks.evaluation.base import BenchItem, BenchmarkResult, ItemScore
from tasks.evaluation.common import (
    RubricAsk,
    RubricProbe,
    check_aligned,
    generation_failed,
    harness_judge_decoding,
    judge_form,
    resolve_path,
    suite_judge,
)
from tasks.instructions.loaders import CW3_FILE, load_creative_writing_v3
from tasks.judging.judgment import ParseFailure
from tasks.judging.pointwise import LOGPROB_DIGITS, expected_score
from tasks.llm.base import LLMClient, Message

SEED_SLOT = "<SEED>"
SCORE_MIN = 0.0
SCORE_MAX = 20.0
BENCHMARK_SCALE = 5.0  # 0-20 -> 0-100

# data/creative_writing_criteria.txt, in file order (22).
CRITERIA: tuple[str, ...] = (
    "Adherence to Instructions",
    "Believable Character Actions",
    "Nuanced Characters",
    "Consistent Voice/Tone of Writing",
    "Imagery and Descriptive Quality",
    "Elegant Prose",
    "Emotionally Engaging",
    "Emotionally Complex",
    "Coherent",
    "Meandering",
    "Weak Dialogue",
    "Tell-Don't-Show",
    "Unsurprising or Uncreative",
    "Amateurish",
    "Purple Prose",
    "Overwrought",
    "Incongruent Ending Positivity",
    "Unearned Transformations",
    "Well-earned Lightness or Darkness",
    "Sentences Flow Naturally",
    "Overall Reader Engagement",
    "Overall Impression",
)

# data/negative_criteria.txt ("lower is better"), in file order (9).
NEGATIVE_CRITERIA: tuple[str, ...] = (
    "Unearned Transformations",
    "Incongruent Ending Positivity",
    "Overwrought",
    "Purple Prose",
    "Amateurish",
    "Unsurprising or Uncreative",
    "Tell-Don't-Show",
    "Weak Dialogue",
    "Meandering",
)

# data/creative_writing_judging_prompt.txt, filled with str.format (see judge_prompt).
JUDGE_PROMPT_TEMPLATE = """\
You are an expert in assessing creative writing. Your task is to score the quality of the test model's response below, by several metrics, on a 0-20 scale.

[PROMPT START]

{writing_prompt}

[PROMPT END]

[TEST MODEL RESPONSE]

{test_model_response}

[TEST MODEL RESPONSE END]

[Task]

You are an expert in assessing creative writing. Your task is to score the quality of the test model's response below, by several metrics, on a 0-20 scale.

Scoring notes:

- A scores of 20 represents a masterpiece.

- If the criteria is not relevant to the piece (e.g. criteria relating to dialogue but the piece has none), exclude it from your assessment.

- Do not add any commentary or explanation to the scores section.

- Do not penalize NSFW output; that is the default for some models. Just assess it on its merits.

- Everything within the "TEST MODEL RESPONSE" section was written by the test model. Sometimes models like to write comments on the piece after the piece is concluded; if this happens you should ignore their comments.

- In the output, write the metric names exactly as below so they can be parsed.

- Do not use markdown in your response. Use the designated output format exactly.

- You are to write a comprehensive analysis of the piece, then give your scores.

- For these criteria, lower is better:
{lower_is_better_criteria}

- You are a critic, and your job is to be critical, especially of any failings or amateurish elements.

- Output format is:

[Analysis]

Write your detailed analysis.

[Scores]

Metric 1 name: [Score 0-20]

Metric 2 name: ...

---

Now, rate the supplied model output on the following criteria:

{creative_writing_criteria}"""

# Decoding of the official harness (core/conversation.py).
GENERATION_TEMPERATURE = 0.7
GENERATION_MIN_P = 0.1
GENERATION_MAX_TOKENS = 4000
MIN_PIECE_CHARS = 500  # shorter (stripped) responses are retried, then the piece fails
GENERATION_ATTEMPTS = 3
JUDGE_TEMPERATURE = 0.0
JUDGE_MAX_TOKENS = 1000
ITERATIONS = 3  # the leaderboard's --iterations

# Fewer parsed criteria than this makes the judge reply a parse failure (a departure; see above).
MIN_PARSED_CRITERIA = 11


def official_seed_number(iteration: int, n_seeds: int) -> int:
    """The 1-based seed modifier the official harness uses for 1-based `iteration` of a prompt with
    `n_seeds` seed modifiers (`seed_modifiers[(iteration - 1) % n_seeds]`): the loader's
    instruction `cw3-{id}-s{n}`."""
    if iteration < 1 or n_seeds < 1:
        raise ValueError(f"iteration and n_seeds must be >= 1, got {iteration}, {n_seeds}")
    return (iteration - 1) % n_seeds + 1


def strip_reasoning(text: str) -> str:
    """What `utils/api.py` does to every reply: if it holds both `<think>` and `</think>`, keep what
    follows the first `</think>`; then the same for `<reasoning>`/`</reasoning>`."""
    for open_tag, close_tag in (("<think>", "</think>"), ("<reasoning>", "</reasoning>")):
        if open_tag in text and close_tag in text:
            text = text[text.find(close_tag) + len(close_tag) :]
    return text


def judge_prompt(
    writing_prompt: str,
    response: str,
    *,
    criteria: Sequence[str] = CRITERIA,
    negative_criteria: Sequence[str] = NEGATIVE_CRITERIA,
) -> str:
    """The judge prompt, filled exactly as `core/conversation.py::judge` fills it.

    The official judge sees the base prompt with its `<SEED>` slot unexpanded; pass that for parity.
    """
    return JUDGE_PROMPT_TEMPLATE.format(
        writing_prompt=writing_prompt,
        test_model_response=response,
        creative_writing_criteria="\n".join("- " + c for c in criteria),
        lower_is_better_criteria=", ".join(negative_criteria),
    )


def judge_messages(
    writing_prompt: str,
    response: str,
    *,
    criteria: Sequence[str] = CRITERIA,
    negative_criteria: Sequence[str] = NEGATIVE_CRITERIA,
) -> list[Message]:
    """One user message and no system message, as `utils/api.py::generate` sends it."""
    text = judge_prompt(writing_prompt, response, criteria=criteria, negative_criteria=negative_criteria)
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------------------------------- parsing

_NUMBER = r"-?\d+(?:\.\d+)?"
_SCORE_LINE = re.compile(
    r"^\s*(?:[-•]\s+|\d{1,2}[.)]\s+)?"  # an optional list marker
    r"(?P<name>[^:\n]+?)\s*:\s*"  # the name, up to the first colon
    r"(?:score\s+)?"  # "Name: Score 15" (official pattern 1)
    rf"(?:\[\s*(?P<bracketed>{_NUMBER})\s*\]|(?P<plain>{_NUMBER}))"  # "[15]" (pattern 2) or "15"
    r"\s*(?:/\s*20(?:\.0+)?)?\s*$",  # an optional "/20", then nothing
    re.IGNORECASE,
)


def _key(name: str) -> str:
    return re.sub(r"\s+", "", name.replace("’", "'").replace("‘", "'")).casefold()


@dataclass(frozen=True)
class RubricParse:
    """The outcome of reading one judge reply.

    A line is read as a score when, after removing every `*` (markdown emphasis), it is
    `[list marker] <name> : [Score] <number> [/20]` with nothing else on it; the list marker is
    `-`, `•` or `1.`/`1)`; the number may be in square brackets (`Name: [15]`); `<number>` is
    `-?digits[.digits]`. Such a line then goes to exactly one place:

    - `scores`: the name is a rubric criterion (compared ignoring case, whitespace and curly
      apostrophes) and 0 <= number <= 20; stored under the canonical name. A criterion seen twice
      keeps its LAST valid value, as the official dict does.
    - `out_of_range`: a rubric criterion with a number below 0 or above 20: refused, and it does not
      replace an earlier valid value.
    - `unknown`: a name that is not a criterion of the rubric: ignored.

    Every other line (the analysis, headings, prose) is not a score line and is skipped silently.
    """

    scores: dict[str, float]
    unknown: tuple[str, ...] = ()
    out_of_range: tuple[tuple[str, float], ...] = ()

    def missing(self, criteria: Sequence[str] = CRITERIA) -> tuple[str, ...]:
        return tuple(c for c in criteria if c not in self.scores)


def parse_rubric_reply(text: str, criteria: Sequence[str] = CRITERIA) -> RubricParse:
    """Read a judge reply against `criteria`; see `RubricParse` for exactly what is kept."""
    canonical = {_key(c): c for c in criteria}
    if len(canonical) != len(criteria):
        raise ValueError("criteria must be distinct (ignoring case and whitespace)")
    scores: dict[str, float] = {}
    unknown: list[str] = []
    out_of_range: list[tuple[str, float]] = []
    for line in text.replace("*", "").splitlines():
        match = _SCORE_LINE.match(line)
        if match is None:
            continue
        name = match["name"].strip()
        value = float(match["bracketed"] or match["plain"])
        criterion = canonical.get(_key(name))
        if criterion is None:
            unknown.append(name)
        elif not SCORE_MIN <= value <= SCORE_MAX:
            out_of_range.append((criterion, value))
        else:
            scores[criterion] = value
    return RubricParse(scores=scores, unknown=tuple(unknown), out_of_range=tuple(out_of_range))


def parse_rubric_scores(text: str, criteria: Sequence[str] = CRITERIA) -> dict[str, float]:
    """criterion -> score (0-20) for the rubric criteria found in a judge reply; lines naming
    anything else, or with a number outside 0-20, are ignored (`parse_rubric_reply` lists them)."""
    return parse_rubric_reply(text, criteria).scores


# ---------------------------------------------------------------------------------------- scoring


class TooFewCriteria(ValueError):
    """The judge reply yielded too few criteria to score the piece: a parse failure, not a 0."""


def piece_score(
    scores: Mapping[str, float],
    *,
    criteria: Sequence[str] = CRITERIA,
    negative_criteria: Sequence[str] = NEGATIVE_CRITERIA,
    min_criteria: int = MIN_PARSED_CRITERIA,
) -> float:
    """The piece's rubric score (0-20): each negative criterion inverted as `20 - s`, then the mean
    over the criteria parsed (`core/scoring.py::compute_creative_scores`).

    Raises `TooFewCriteria` when fewer than `min_criteria` criteria were parsed (`min_criteria=1`
    is the official rule), and `ValueError` on a name outside `criteria` or a score outside 0-20
    (which `parse_rubric_scores` never returns).
    """
    if min_criteria < 1:
        raise ValueError(f"min_criteria must be >= 1, got {min_criteria}")
    known, negative = set(criteria), set(negative_criteria)
    if not negative <= known:
        raise ValueError(f"negative criteria outside the rubric: {sorted(negative - known)}")
    values: list[float] = []
    for name, value in scores.items():
        if name not in known:
            raise ValueError(f"'{name}' is not a criterion of the rubric")
        if not (isinstance(value, int | float) and SCORE_MIN <= value <= SCORE_MAX):
            raise ValueError(f"'{name}': score {value!r} is outside {SCORE_MIN:g}-{SCORE_MAX:g}")
        values.append(SCORE_MAX - value if name in negative else float(value))
    if len(values) < min_criteria:
        raise TooFewCriteria(f"{len(values)} criteria parsed, at least {min_criteria} needed")
    return sum(values) / len(values)


def benchmark_score(piece_scores: Iterable[float]) -> float:
    """The Creative Writing v3 rubric score (0-100): 5 x the flat mean of the piece scores over
    every prompt and iteration (`compute_single_benchmark_score_creative`), unrounded."""
    values = [float(s) for s in piece_scores]
    if not values:
        raise ValueError("no scored pieces: the benchmark score is undefined")
    for s in values:
        if not (math.isfinite(s) and SCORE_MIN <= s <= SCORE_MAX):
            raise ValueError(f"piece score {s!r} is outside {SCORE_MIN:g}-{SCORE_MAX:g}")
    return BENCHMARK_SCALE * sum(values) / len(values)


def benchmark_summary(piece_scores: Sequence[float | None]) -> dict[str, float | int | None]:
    """`benchmark_score` over the scored pieces, with the failures counted.

    `None` is a piece without a score (generation failed, judge call failed, `TooFewCriteria`); the
    official harness drops those silently. `score` is None when no piece was scored.
    """
    scored = [s for s in piece_scores if s is not None]
    return {
        "score": benchmark_score(scored) if scored else None,
        "score_0_20": sum(scored) / len(scored) if scored else None,
        "pieces": len(piece_scores),
        "scored": len(scored),
        "failed": len(piece_scores) - len(scored),
    }


# ---------------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------------

CW3_REASK = (
    "Your reply could not be used: {error}. Reply again in the output format given above: [Analysis], "
    "then [Scores] with one line per criterion, written exactly as `Criterion name: score` with a "
    "score from 0 to 20."
)
CW3_CRITERION_ANSWER = (  # two newlines: the probe's text is what it was before the template lost its last one
    "\n\nRate the piece on this one criterion only. Reply with only the grade, a single digit from 0 to 9 "
    "(0 = a score of 0, 9 = a score of 20 on the 0-20 scale), and nothing else."
)


def _cw3_grade(logprobs: dict[str, float]) -> tuple[float, float] | ParseFailure:
    """Digit grade 0-9 -> 0-20, linearly: `expected_score` gives 1 + E[grade]."""
    result = expected_score(logprobs)
    if isinstance(result, ParseFailure):
        return result
    score, mass = result
    return (score - 1) * SCORE_MAX / 9, mass


def cw3_criterion_messages(writing_prompt: str, response: str, criterion: str) -> list[Message]:
    """The official judge prompt rating only `criterion` (the lower-is-better list is kept whole),
    closed by a request for a digit grade 0-9."""
    messages = judge_messages(writing_prompt, response, criteria=(criterion,))
    return [{"role": "user", "content": messages[0]["content"] + CW3_CRITERION_ANSWER}]


def _parse_cw3(text: str) -> RubricParse | ParseFailure:
    """The rubric reply, refused when it names too few criteria to score the piece."""
    parsed = parse_rubric_reply(strip_reasoning(text))
    try:
        piece_score(parsed.scores)
    except TooFewCriteria as exc:
        return ParseFailure(f"{exc} (one line per criterion, `Criterion name: score`)")
    return parsed


@dataclass(frozen=True)
class PieceForm:
    """One piece on the rubric: one reply that rates every criterion it finds relevant (json: the
    official judge prompt, read into a `RubricParse`), or one probe per criterion (logprob: its
    expected score on 0-20)."""

    writing_prompt: str  # the UNEXPANDED template, as the official judge sees it
    piece: str
    decoding: Decoding  # the harness's judge decoding (json mode)

    def asks(self) -> list[RubricAsk[Any]]:
        messages = judge_messages(self.writing_prompt, self.piece)
        return [RubricAsk(messages, _parse_cw3, CW3_REASK.format, self.decoding, criteria=CRITERIA)]

    def probes(self) -> list[RubricProbe[Any]]:
        return [
            RubricProbe(
                cw3_criterion_messages(self.writing_prompt, self.piece, c),
                LOGPROB_DIGITS,
                _cw3_grade,
                criteria=(c,),
            )
            for c in CRITERIA
        ]


class CreativeWritingV3Suite:
    """EQ-Bench Creative Writing v3: each piece judged on the 22-criterion rubric (0-20), negative
    criteria inverted; headline 5 x the mean piece score (0-100).

    BenchItem: id `cw3-{prompt id}-i{iteration}`, prompt = the writing prompt with the official
    seed modifier of that iteration, labels category/iteration, data = {writing_prompt (the
    UNEXPANDED template the judge sees), prompt_id, iteration, seed_index, seed_modifier, title}.
    """

    name = "creative_writing_v3"
    version = 2  # 2: the judge template has no final newline and the piece is stripped (as officially)
    needs_judge = True
    judge_modes = ("json", "logprob")
    truncates_input = False
    uses_writing_strategy = True

    def data_files(self, config: BenchmarkConfig) -> list[Path]:
        path, display = resolve_path(config)
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
                seed_index = official_seed_number(iteration, len(expansions))
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
            temperature=GENERATION_TEMPERATURE,
            max_tokens=config.max_tokens or GENERATION_MAX_TOKENS,
            seed=seed,
        )

    def judge_decoding(self, judge: JudgeConfig) -> Decoding:
        return harness_judge_decoding(JUDGE_TEMPERATURE, JUDGE_MAX_TOKENS, judge)

    def judge_form(self, item: BenchItem, response: str, judge: JudgeConfig) -> PieceForm:
        """The judge sees the piece without its reasoning block and stripped (the official
        `model_response` is `response.strip()`, core/conversation.py), under the UNEXPANDED template."""
        piece = strip_reasoning(response).strip()
        return PieceForm(str(item.data["writing_prompt"]), piece, self.judge_decoding(judge))

    async def score(
        self, item: BenchItem, response: str | None, judge_client: LLMClient | None, judge: JudgeConfig | None
    ) -> ItemScore:
        judged_by = suite_judge(self.name, judge_client, judge)
        if response is None:
            return generation_failed()
        piece = strip_reasoning(response)
        chars = len(piece.strip())
        details: dict[str, Any] = {"piece_chars": chars, "short_piece": chars < MIN_PIECE_CHARS}
        form = self.judge_form(item, response, judged_by.config)
        rated = await judge_form(judged_by, form)
        criteria: dict[str, Any] = {}
        masses: dict[str, float | None] = {}
        read: RubricParse | None = None
        for r in rated:
            value = r.judgment.value
            if isinstance(value, RubricParse):  # one reply rated the rubric: the criteria it named
                read = value
                criteria |= value.scores
            elif len(r.criteria) == 1:  # a probe's score, or None when it failed
                criteria[r.criteria[0]] = value
            if r.probed:
                masses |= dict.fromkeys(r.criteria, r.judgment.mass)
        if criteria:
            details["criteria"] = criteria
        if read is not None:
            details["unknown"] = list(read.unknown)
            details["out_of_range"] = [[name, v] for name, v in read.out_of_range]
        if masses:
            details["candidate_mass"] = masses
        errors = [r.error for r in rated if r.error]
        calls = sum(r.judgment.calls for r in rated)
        if errors:
            details["piece_score"] = None
            error = f"judgment failed: {'; '.join(errors)}"
            retryable = any(r.judgment.retryable for r in rated)
            return ItemScore(None, details=details, error=error, retryable=retryable, llm_calls=calls)
        value = piece_score(criteria)
        details["piece_score"] = value
        return ItemScore(value * BENCHMARK_SCALE, details=details, llm_calls=calls)

    def aggregate(self, items: Sequence[BenchItem], scores: Sequence[ItemScore]) -> BenchmarkResult:
        check_aligned(items, scores)
        pieces = [s.details.get("piece_score") if s.score is not None else None for s in scores]
        summary = benchmark_summary(pieces)
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
            metrics[f"category/{category}"] = benchmark_summary(subset)["score"]
        return BenchmarkResult(
            score=summary["score"],
            metrics=metrics,
            n_items=len(items),
            n_failed=sum(1 for p in pieces if p is None),
        )
