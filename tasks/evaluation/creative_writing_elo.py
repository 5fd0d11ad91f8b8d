"""EQ-Bench Creative Writing v3's leaderboard metric, as an option: a normalised Elo from pairwise
matches against opponents whose pieces the user supplies (two anchors among them).

The paper's Table 1 reports the rubric score (0-100; `creative_writing_v3`), and so does this
project's writing average. The eqbench.com leaderboard ranks by this Elo instead. It is a separate
benchmark, `creative_writing_v3_elo`, so that the rubric stays the paper's number.

Official harness: EQ-bench/creative-writing-bench @ e7ab009, read from the repository itself:
`core/elo.py` (`do_pairwise_judge_cw`, `_judge_item_iteration_pairs_in_parallel_cw`,
`normalize_elo_scores_cw`, `run_elo_analysis_creative`), `core/elo_helpers_cw.py`,
`core/trueskill_solver_cw.py`, `core/elo_config_cw.py` and `data/pairwise_prompt.txt`.

What the official harness does
------------------------------
1. Pieces: a model's piece for a prompt is its `model_response`, stripped. Prompts 5, 16, 20, 21,
   26, 28 and 30 are left out of the Elo (`IGNORE_PROMPTS_FOR_ELO`).
2. A match: the pairwise prompt (`data/pairwise_prompt.txt`, filled with `str.replace`: the
   unexpanded writing prompt, then writer A0493's text, then writer A0488's, each cut to its first
   4,000 characters) is judged at temperature 0 with max_tokens 16000, in BOTH orders. The reply's
   text from its first `{` to its last `}` is read as JSON.
3. Plus counts (`interpret_pairwise_result_cw`): for every key of the reply but
   improvement_suggestions, theory_of_mind and _item_order_idx, a value containing "A0493" adds its
   number of `+` signs to A; otherwise one containing "A0488" adds them to B. For the keys
   avoids_poetic_overload, coherence and avoids_verbosity the same count is also subtracted from
   the other writer. The loop visits every key, `chain_of_thought_reasoning` included: a `+` in the
   reasoning's text counts when the text names a writer. Kept as it is.
4. A match's fraction (`_fraction_from_plus_cw`, `compute_fraction_for_test_cw`): the plus counts
   of both orders are summed per model; the outcome is 1, 0.5 or 0 by which sum is larger, and the
   fraction for the first model is 0.5 + |diff| / 45 / 2 for a win, its complement for a loss,
   0.5 for a tie (`custom_blend_cw` is the identity).
5. Ratings (`solve_with_trueskill_cw`): the `trueskill` package, mu 1200, sigma 400, beta 200,
   tau 4, draw probability 0. Each match becomes pseudo-games (`bin_fraction_trueskill`, bin size
   4): a tie is one drawn game; a win by fraction f is ceil((f - 0.5) / (0.5 / 4)) games (1 to 4)
   won in a row; updates run one match after another, every model starting at 1200. An update the
   library refuses is skipped. A second solve with bin size 3 gives each model's sigma; the
   interval is mu +- 1.96 sigma.
6. Normalisation (`normalize_elo_scores_cw`): the linear map that sends the first two anchors to
   their targets (deepseek/deepseek-r1 -> 1500, meta-llama/llama-3.2-1b-instruct -> 200), applied
   to every rating and to the interval's ends. The leaderboard's number is the test model's
   `elo_norm`.

The repository's README still describes Glicko-2 and the anchor mistralai/ministral-3b; its code,
which this module follows, uses TrueSkill with the anchors above.

What this project does differently, and why
-------------------------------------------
- The pool. The leaderboard solves one ladder of every model it ever rated (its
  `elo_results.json`, with their historical comparisons) and picks the new model's opponents by an
  adaptive, rank-driven sampling schedule. Here the pool is the candidate plus the opponents you
  supply (`opponents`, with the anchors among them): the candidate meets every opponent on every
  prompt, and every two opponents meet once per prompt, so the anchors are placed by direct matches.
  Each candidate is solved on its own pool, so candidates do not move each other's numbers. The
  number is the leaderboard's method on your pool; it equals the leaderboard's value only on its pool.
- Opponent pieces. The harness pairs each test iteration with the opponent's earliest iteration
  (of its two best by rubric score) that has the prompt. Here the opponent's piece for a prompt is
  the one of its earliest iteration in the file: supply the iterations you want compared.
- Order. TrueSkill updates are sequential, so the ratings depend on the order of the matches. The
  harness's order is that of its results file and of its threads' completion; here it is fixed:
  items in file order, and within an item the candidate's matches in opponent order, then the
  opponents' matches.
- Strict parsing (departure): a reply must name a writer, A0493 or A0488, for each of the nine
  criteria of the prompt, and every value must be a string; otherwise it is re-asked, then a
  failure. The harness counts whatever keys come back (a reply without any is a tie), and a
  non-string value makes its comparison an error.
- A failed match is a failure, as everywhere in this project (the harness records it as an error
  and leaves it out of the solve, too). An item with a failed match has no score and is retried by
  the next run; the matches that succeeded are cached and still count.
- The rank window (16 ladder positions) is not applied: no pool here is that large.
- Judge mode: json only. There is no logprob form of a both-orders, nine-criteria comparison.

Each item's own score is the candidate's mean share against the opponents, x100 (its "win share"
on that item: a match's fraction clipped to [0, 1]); the headline is the candidate's normalised
Elo, which is not on 0-100.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configs.loading import ConfigError
from configs.schema import BenchmarkConfig, Decoding, JudgeConfig
from tasks.evaluation.base import BenchItem, BenchmarkResult, ItemScore
from tasks.evaluation.common import check_aligned, harness_judge_decoding, suite_judge
from tasks.evaluation.creative_writing_v3 import CreativeWritingV3Suite, strip_reasoning
from tasks.instructions.loaders import InstructionDataError, RowProblem
from tasks.judging.judgment import Ask, Judgment, ParseFailure
from tasks.llm.base import LLMClient, Message

# data/pairwise_prompt.txt (2,107 bytes, no final newline), filled with str.replace (pairwise_prompt).
PAIRWISE_PROMPT_TEMPLATE = """\
You are an expert in assessing creative writing. Your task is to *critically* examine two pieces of writing produced in response to a writing prompt, and decide on which is better (and by how much) on several criteria.

[WRITING PROMPT]
{writing_prompt}
[/WRITING PROMPT]

[WRITER A0493]
{model_a_analysis}
[/WRITER A0493]

[WRITER A0488]
{model_b_analysis}
[/WRITER A0488]

Compare the relative ability of each writer on these criteria:

- Character authenticity and insight
- Interesting and original
- Writing quality
- Coherence in plot, character choices, metaphor
- Instruction following (followed the prompt)
- World and atmosphere
- Avoids cliches in characters, dialogue & plot
- Avoids flowery verbosity & show-offy vocab maxxing
- Avoids gratuitous metaphor or poetic overload

Judging notes:
- Be aware that these abilities may be independent, i.e. a model may be strong in one and weak in another.
- Outputs will sometimes be truncated to ensure length consistency. Don't penalise this, just judge what is there on its merit.
- You must always pick a winner for each criteria (no draws)

The response will use a + / ++ / +++ / ++++ / +++++ format to denote the stronger response and relative ability difference for each criteria. Examples:

"character_authenticity_insight": "A0293++"
"interesting_original": "A0618+++++"
"writing_quality": "A0255++++"
"coherence": "A0582+++"
"instruction_following": "A0138+"

Respond in valid json without additional commentary (remembering to escape any string quotes), in this format:

{
"chain_of_thought_reasoning": "detailed chain of thought reasoning about the coming scoring decisions",
"character_authenticity_insight": "winner & disparity rating",
"interesting_original": "winner & disparity rating",
"writing_quality": "winner & disparity rating",
"coherence": "winner & disparity rating",
"instruction_following": "winner & disparity rating",
"world_and_atmosphere": "winner & disparity rating",
"avoids_cliches": "winner & disparity rating",
"avoids_verbosity": "winner & disparity rating",
"avoids_poetic_overload": "winner & disparity rating"
}"""

# core/elo_config_cw.py and core/elo.py
LENGTH_TRUNCATION_CHARS = 4000
IGNORE_PROMPTS_FOR_ELO = ("5", "16", "20", "21", "26", "28", "30")
JUDGE_TEMPERATURE = 0.0
JUDGE_MAX_TOKENS = 16000
WRITER_A, WRITER_B = "A0493", "A0488"  # the prompt's first and second writer
PAIRWISE_CRITERIA = (  # the reply's keys the prompt asks for, in its order
    "character_authenticity_insight",
    "interesting_original",
    "writing_quality",
    "coherence",
    "instruction_following",
    "world_and_atmosphere",
    "avoids_cliches",
    "avoids_verbosity",
    "avoids_poetic_overload",
)
PENALISING_KEYS = (
    "avoids_poetic_overload",
    "coherence",
    "avoids_verbosity",
)  # also subtracted from the other
SKIPPED_KEYS = ("improvement_suggestions", "theory_of_mind", "_item_order_idx")
PLUS_DIFF_SCALE = 45.0
DEFAULT_ELO = 1200.0
TS_SIGMA = DEFAULT_ELO / 3
TS_BETA = TS_SIGMA / 2
TS_TAU = TS_SIGMA / 100
BIN_SIZE_RATING = 4  # TRUESKILL_BIN_SIZE_FOR_WIN_EXPANSION
BIN_SIZE_INTERVAL = 3  # TRUESKILL_BIN_SIZE_FOR_CI_CALCULATION
INTERVAL_Z = 1.96
ANCHORS: dict[str, float] = {"deepseek/deepseek-r1": 1500.0, "meta-llama/llama-3.2-1b-instruct": 200.0}

CANDIDATE = "<candidate>"  # the evaluated model's name in the pool (an opponent's name cannot start with "<")
OPPONENTS_FIELD = "evaluation.benchmarks.creative_writing_v3_elo.opponents"


# ---------------------------------------------------------------------------------------------
# One match
# ---------------------------------------------------------------------------------------------


def pairwise_prompt(writing_prompt: str, text_a: str, text_b: str) -> str:
    """The pairwise prompt, filled as `do_pairwise_judge_cw` fills it (str.replace, in this order),
    each text cut to its first `LENGTH_TRUNCATION_CHARS` characters as its caller cuts it."""
    prompt = PAIRWISE_PROMPT_TEMPLATE.replace("{writing_prompt}", writing_prompt)
    prompt = prompt.replace("{model_a_analysis}", text_a[:LENGTH_TRUNCATION_CHARS])
    return prompt.replace("{model_b_analysis}", text_b[:LENGTH_TRUNCATION_CHARS])


def parse_pairwise_reply(text: str) -> dict[str, str] | ParseFailure:
    """The reply's JSON object (first `{` to last `}`, after the reasoning block is dropped as
    `utils/api.py` drops it), refused unless each criterion names one writer (a departure: see the
    module docstring)."""
    text = strip_reasoning(text)
    start, end = text.find("{"), text.rfind("}")
    if start == -1 or end <= start:
        return ParseFailure("no JSON object in the reply")
    try:
        reply = json.loads(text[start : end + 1])
    except json.JSONDecodeError as exc:
        return ParseFailure(f"the reply's JSON does not parse ({exc})")
    if not isinstance(reply, dict):
        return ParseFailure("the reply's JSON is not an object")
    problems = [f"{key!r} is not a string" for key, value in reply.items() if not isinstance(value, str)]
    for key in PAIRWISE_CRITERIA:
        value = reply.get(key)
        if key not in reply:
            problems.append(f"{key!r} is missing")
        elif isinstance(value, str) and (WRITER_A in value) == (WRITER_B in value):
            problems.append(f"{key!r} names neither or both writers ({value!r})")
    if problems:
        return ParseFailure("; ".join(problems))
    return reply


def plus_counts(reply: Mapping[str, str]) -> tuple[int, int]:
    """(plus for A, plus for B): `interpret_pairwise_result_cw`, quirks included (every key but the
    skipped ones counts; three keys also subtract from the other writer)."""
    a = b = 0
    for key, value in reply.items():
        if key in SKIPPED_KEYS:
            continue
        if WRITER_A in value:
            a += value.count("+")
            if key in PENALISING_KEYS:
                b -= value.count("+")
        elif WRITER_B in value:
            b += value.count("+")
            if key in PENALISING_KEYS:
                a -= value.count("+")
    return a, b


def fraction_for_first(plus_first: int, plus_second: int) -> float:
    """`compute_fraction_for_test_cw` on the outcome the plus counts give: 0.5 +- |diff| / 45 / 2."""
    if plus_first == plus_second:
        return 0.5
    margin = (abs(plus_first - plus_second) / PLUS_DIFF_SCALE) / 2.0 + 0.5
    return margin if plus_first > plus_second else 1.0 - margin


@dataclass(frozen=True)
class Match:
    """Two models' pieces on one prompt, judged in both orders: the plus counts of each order as
    (first model's, second model's), and the fraction for the first model."""

    first: str
    second: str
    forward: tuple[int, int]  # first model as writer A0493
    reverse: tuple[int, int]  # first model as writer A0488 (counts still first's, second's)

    @property
    def fraction(self) -> float:
        """`_fraction_from_plus_cw`: both orders' plus counts summed per model. Not clipped, as
        officially: two orders' sums can pass 45 (`pseudo_games` clips)."""
        return fraction_for_first(self.forward[0] + self.reverse[0], self.forward[1] + self.reverse[1])

    @property
    def share(self) -> float:
        """The first model's share of the match: the fraction clipped to [0, 1]."""
        return max(0.0, min(1.0, self.fraction))

    def as_json(self) -> dict[str, Any]:
        return {"first": self.first, "second": self.second, "forward": list(self.forward),
                "reverse": list(self.reverse), "fraction": self.fraction}  # fmt: skip

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> Match:
        return cls(row["first"], row["second"], tuple(row["forward"]), tuple(row["reverse"]))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Ratings
# ---------------------------------------------------------------------------------------------


def pseudo_games(fraction: float, bin_size: int) -> tuple[int, int]:
    """`bin_fraction_trueskill`: (games the first model wins, games the second wins); (1, 1) is a
    draw."""
    fraction = max(0.0, min(1.0, fraction))
    if abs(fraction - 0.5) < 1e-9:
        return 1, 1
    step = 0.5 / bin_size
    games = max(1, min(bin_size, math.ceil(abs(fraction - 0.5) / step)))
    return (games, 0) if fraction > 0.5 else (0, games)


def solve(models: Sequence[str], matches: Sequence[Match], bin_size: int) -> dict[str, tuple[float, float]]:
    """model -> (mu, sigma) after the matches' pseudo-games, in order (`solve_with_trueskill_cw`
    with every model starting at DEFAULT_ELO)."""
    import trueskill  # the harness's rating library; imported here so the rest imports without it

    env = trueskill.TrueSkill(mu=DEFAULT_ELO, sigma=TS_SIGMA, beta=TS_BETA, tau=TS_TAU, draw_probability=0.0)
    ratings = {m: env.create_rating(mu=DEFAULT_ELO, sigma=TS_SIGMA) for m in models}
    for match in matches:
        one, two = match.first, match.second
        wins_one, wins_two = pseudo_games(match.fraction, bin_size)
        try:
            if (wins_one, wins_two) == (1, 1):
                ratings[one], ratings[two] = env.rate_1vs1(ratings[one], ratings[two], drawn=True)
                continue
            for _ in range(wins_one):
                ratings[one], ratings[two] = env.rate_1vs1(ratings[one], ratings[two])
            for _ in range(wins_two):
                ratings[two], ratings[one] = env.rate_1vs1(ratings[two], ratings[one])
        except (ValueError, ArithmeticError):  # the harness logs and skips an update the library refuses
            continue
    return {m: (r.mu, r.sigma) for m, r in ratings.items()}


def normaliser(raw: Mapping[str, float], anchors: Mapping[str, float]) -> tuple[float, float] | None:
    """(scale, shift) sending the first two anchors found in `raw` to their targets
    (`normalize_elo_scores_cw`); None with fewer than two."""
    found = [(raw[m], target) for m, target in anchors.items() if m in raw][:2]
    if len(found) < 2:
        return None
    (raw_a, target_a), (raw_b, target_b) = found
    if abs(raw_a - raw_b) < 1e-6:  # as the harness: scale 1, shifted onto the first anchor
        return 1.0, target_a - raw_a
    scale = (target_a - target_b) / (raw_a - raw_b)
    return scale, target_a - scale * raw_a


@dataclass(frozen=True)
class Ratings:
    """The pool's solve: raw mu per model, the interval sigma, and the anchors' linear map."""

    mu: Mapping[str, float]
    sigma: Mapping[str, float]
    scale: float
    shift: float

    def norm(self, value: float) -> float:
        return value * self.scale + self.shift

    def elo_norm(self, model: str) -> float:
        return self.norm(self.mu[model])

    def interval_norm(self, model: str) -> tuple[float, float]:
        low, high = (self.mu[model] + s * INTERVAL_Z * self.sigma[model] for s in (-1, 1))
        return tuple(sorted((self.norm(low), self.norm(high))))  # type: ignore[return-value]


def pool(matches: Sequence[Match]) -> list[str]:
    return list(dict.fromkeys(m for match in matches for m in (match.first, match.second)))


def rate(matches: Sequence[Match], anchors: Mapping[str, float], interval: bool = True) -> Ratings | None:
    """The final solve of `run_elo_analysis_creative`: mu with bin size 4, sigma from a second solve
    with bin size 3 (skipped with `interval=False`), normalised by the anchors; None when two
    anchors are not in the pool."""
    models = pool(matches)
    rated = solve(models, matches, BIN_SIZE_RATING)
    mu = {m: r[0] for m, r in rated.items()}
    fitted = normaliser(mu, anchors)
    if fitted is None:
        return None
    sigma = {m: r[1] for m, r in solve(models, matches, BIN_SIZE_INTERVAL).items()} if interval else {}
    return Ratings(mu, sigma, *fitted)


# ---------------------------------------------------------------------------------------------
# The opponents' pieces
# ---------------------------------------------------------------------------------------------


def load_opponents(path: Path, models: Sequence[str] | None = None) -> dict[str, dict[str, str]]:
    """model -> prompt id -> piece (stripped), the piece of the model's earliest iteration of each
    prompt, from either a JSONL file (one row per piece: `model`, `prompt_id`, `iteration`,
    `response`) or the harness's own runs file (`creative_bench_runs.json`: every run's completed
    tasks). `models` keeps only those (in that order). Every problem is reported with its place."""
    if not path.is_file():
        raise ConfigError(f"{OPPONENTS_FIELD}: {path} does not exist")
    rows = list(_official_runs(path) if path.suffix == ".json" else _jsonl_pieces(path))
    problems = [p for p in rows if isinstance(p, RowProblem)]
    if problems:
        raise InstructionDataError(str(path), problems)
    earliest: dict[str, dict[str, tuple[int, str]]] = {}
    for model, prompt_id, iteration, text in rows:  # type: ignore[misc]
        current = earliest.setdefault(model, {}).get(prompt_id)
        if current is None or iteration < current[0]:
            earliest[model][prompt_id] = (iteration, text)
    wanted = list(models) if models is not None else list(earliest)
    missing = [m for m in wanted if m not in earliest]
    if missing:
        raise ConfigError(
            f"{OPPONENTS_FIELD}: {path} has no pieces of {missing} (it has {', '.join(earliest) or 'none'})"
        )
    return {m: {p: text for p, (_, text) in earliest[m].items()} for m in wanted}


Piece = tuple[str, str, int, str]  # model, prompt id, iteration, text


def _jsonl_pieces(path: Path) -> Iterator[Piece | RowProblem]:
    fields = {"model": str, "prompt_id": (str, int), "iteration": int, "response": str}
    seen: set[tuple[str, str, int]] = set()
    for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line.decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            yield RowProblem(where, "line", f"not a JSON line ({exc})")
            continue
        if not isinstance(row, dict):
            yield RowProblem(where, "line", "not a JSON object")
            continue
        bad = [RowProblem(where, k, f"must be {t.__name__ if isinstance(t, type) else 'a string or an integer'}")
               for k, t in fields.items() if not isinstance(row.get(k), t) or isinstance(row.get(k), bool)]  # fmt: skip
        bad += [RowProblem(where, k, "is not a field of an opponent piece") for k in row if k not in fields]
        if bad:
            yield from bad
            continue
        model, prompt_id, iteration, text = (
            row["model"],
            str(row["prompt_id"]),
            row["iteration"],
            row["response"],
        )
        if not model or model.startswith("<"):
            yield RowProblem(where, "model", "must be a name that does not start with '<'")
        elif not text.strip():
            yield RowProblem(where, "response", "is empty")
        elif (model, prompt_id, iteration) in seen:
            yield RowProblem(
                where,
                "iteration",
                f"{model} already has a piece for prompt {prompt_id}, iteration {iteration}",
            )
        else:
            seen.add((model, prompt_id, iteration))
            yield model, prompt_id, iteration, text.strip()


def _official_runs(path: Path) -> Iterator[Piece | RowProblem]:
    """The harness's runs file, as `run_elo_analysis_creative` reads it: run -> creative_tasks ->
    iteration -> prompt id -> task; a task whose status is completed or judged gives its model's
    piece, the stripped responses of its modifiers joined by newlines."""
    try:
        runs = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        yield RowProblem(str(path), "file", f"not JSON ({exc})")
        return
    if not isinstance(runs, dict):
        yield RowProblem(str(path), "file", "not a runs file (an object of runs)")
        return
    for run_key, run in runs.items():
        tasks = run.get("creative_tasks") if isinstance(run, dict) else None
        if not isinstance(tasks, dict):
            continue  # a run without tasks (or the file's metadata) has no pieces
        for iteration, by_prompt in tasks.items():
            if not str(iteration).isdigit() or not isinstance(by_prompt, dict):
                yield RowProblem(
                    f"{path}:{run_key}", f"creative_tasks.{iteration}", "not an iteration's tasks"
                )
                continue
            for prompt_id, task in by_prompt.items():
                if not isinstance(task, dict) or task.get("status") not in ("completed", "judged"):
                    continue
                where = f"{path}:{run_key}"
                model = task.get("test_model")
                blocks = task.get("results_by_modifier")
                if not isinstance(model, str) or not model or not isinstance(blocks, dict):
                    yield RowProblem(
                        where,
                        f"creative_tasks.{iteration}.{prompt_id}",
                        "needs test_model and results_by_modifier",
                    )
                    continue
                text = "\n".join(
                    b["model_response"].strip()
                    for b in blocks.values()
                    if isinstance(b, dict)
                    and isinstance(b.get("model_response"), str)
                    and b["model_response"].strip()
                ).strip()
                if text:
                    yield model, str(prompt_id), int(iteration), text


# ---------------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------------

PAIRWISE_REASK = (
    "Your reply could not be used: {error}. Reply again with only the JSON object in the format "
    "given above, naming the stronger writer (A0493 or A0488) with its + to +++++ for every criterion."
)


@dataclass(frozen=True)
class MatchAsk(Ask[dict[str, str]]):
    """One order of one match: `first` is writer A0493 when `order` is forward, else A0488."""

    first: str = ""
    second: str = ""
    order: str = "forward"


def match_asks(writing_prompt: str, first: str, second: str, pieces: Mapping[str, str],
               decoding: Decoding) -> list[MatchAsk]:  # fmt: skip
    """Both orders of one match, the harness's forward (first as A0493) then reverse."""

    def one(a: str, b: str, order: str) -> MatchAsk:
        messages: list[Message] = [
            {"role": "user", "content": pairwise_prompt(writing_prompt, pieces[a], pieces[b])}
        ]
        return MatchAsk(messages, parse_pairwise_reply, PAIRWISE_REASK.format, decoding,
                        first=first, second=second, order=order)  # fmt: skip

    return [one(first, second, "forward"), one(second, first, "reverse")]


@dataclass(frozen=True)
class EloForm:
    """The matches of one item: the candidate against each opponent, then every two opponents (the
    same on each item of a prompt: one judgment, asked once and then read from the cache)."""

    questions: tuple[MatchAsk, ...]

    def asks(self) -> list[MatchAsk]:
        return list(self.questions)

    def probes(self) -> list[Any]:
        raise ConfigError("creative_writing_v3_elo needs a judge in json mode: it has no logprob form")


def matches_of(
    asks: Sequence[MatchAsk], judgments: Sequence[Judgment[dict[str, str]]]
) -> tuple[list[Match], list[str]]:
    """The matches whose two orders were both judged, and the errors of the others."""
    matches, errors = [], []
    for i in range(0, len(asks), 2):
        forward, reverse = judgments[i], judgments[i + 1]
        ask = asks[i]
        failed = [j.error for j in (forward, reverse) if not j.ok]
        if failed:
            errors.append(f"{ask.first} vs {ask.second}: {'; '.join(str(e) for e in failed)}")
            continue
        a_fwd, b_fwd = plus_counts(forward.value)  # type: ignore[arg-type]
        a_rev, b_rev = plus_counts(reverse.value)  # type: ignore[arg-type]
        matches.append(Match(ask.first, ask.second, (a_fwd, b_fwd), (b_rev, a_rev)))
    return matches, errors


class CreativeWritingV3EloSuite:
    """Creative Writing v3's pairwise Elo against user-supplied opponents (see the module docstring).

    Items: Creative Writing v3's (same ids, prompts and generation decoding, so the candidate's
    pieces are the rubric run's, from the response cache), without the prompts the harness leaves
    out of its Elo; data adds `opponents` (name -> the opponent's piece for the prompt) and
    `anchors`.
    """

    name = "creative_writing_v3_elo"
    version = 1
    needs_judge = True
    judge_modes = ("json",)
    truncates_input = False
    uses_writing_strategy = True

    def __init__(self) -> None:
        self._rubric = CreativeWritingV3Suite()

    def data_files(self, config: BenchmarkConfig) -> list[Path]:
        return [*self._rubric.data_files(config), *([Path(config.opponents)] if config.opponents else [])]

    def anchors(self, config: BenchmarkConfig) -> dict[str, float]:
        return dict(config.anchors) if config.anchors is not None else dict(ANCHORS)

    def load(self, config: BenchmarkConfig) -> list[BenchItem]:
        if config.opponents is None:
            raise ConfigError(f"{OPPONENTS_FIELD}: the opponents' pieces are needed (a JSONL file or the "
                              "harness's creative_bench_runs.json); see docs/evaluation.md")  # fmt: skip
        anchors = self.anchors(config)
        if len(anchors) < 2:
            raise ConfigError("evaluation.benchmarks.creative_writing_v3_elo.anchors: two anchors are needed")
        path = Path(config.opponents)
        opponents = load_opponents(path, config.opponent_models)
        absent = [a for a in list(anchors)[:2] if a not in opponents]
        if absent:
            raise ConfigError(f"{OPPONENTS_FIELD}: the anchors {absent} are not among the opponents "
                              f"({', '.join(opponents)}): normalisation needs both")  # fmt: skip
        items = []
        for item in self._rubric.load(config):
            prompt_id = str(item.data["prompt_id"])
            if prompt_id in IGNORE_PROMPTS_FOR_ELO:
                continue
            lacking = [m for m, pieces in opponents.items() if prompt_id not in pieces]
            if lacking:
                raise ConfigError(
                    f"{OPPONENTS_FIELD}: {path} has no piece of {lacking} for prompt {prompt_id}"
                )
            data = {**item.data, "opponents": {m: pieces[prompt_id] for m, pieces in opponents.items()},
                    "anchors": anchors}  # fmt: skip
            items.append(BenchItem(item.id, item.prompt, item.labels, data, item.required_length))
        return items

    def generation_decoding(self, config: BenchmarkConfig, seed: int | None) -> Decoding:
        return self._rubric.generation_decoding(config, seed)

    def judge_decoding(self, judge: JudgeConfig) -> Decoding:
        return harness_judge_decoding(JUDGE_TEMPERATURE, JUDGE_MAX_TOKENS, judge)

    def judge_form(self, item: BenchItem, response: str | None, judge: JudgeConfig) -> EloForm:
        """The candidate's matches (none when its generation failed), then the opponents' own."""
        opponents: dict[str, str] = dict(item.data["opponents"])
        pieces = dict(opponents)
        names = list(opponents)
        pairs: list[tuple[str, str]] = []
        if response is not None:
            pieces[CANDIDATE] = strip_reasoning(response).strip()  # the harness's model_response.strip()
            pairs += [(CANDIDATE, o) for o in names]
        pairs += [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
        decoding = self.judge_decoding(judge)
        writing_prompt = str(item.data["writing_prompt"])
        return EloForm(tuple(q for a, b in pairs for q in match_asks(writing_prompt, a, b, pieces, decoding)))

    async def score(
        self, item: BenchItem, response: str | None, judge_client: LLMClient | None, judge: JudgeConfig | None
    ) -> ItemScore:
        judged_by = suite_judge(self.name, judge_client, judge)
        asks = self.judge_form(item, response, judged_by.config).asks()
        judgments = await judged_by.judge_all(asks)
        matches, errors = matches_of(asks, judgments)
        calls = sum(j.calls for j in judgments)
        details: dict[str, Any] = {"matches": [m.as_json() for m in matches]}
        if response is None:
            return ItemScore(None, details={**details, "generation_failed": True}, llm_calls=calls,
                             error="generation failed" + (f"; {'; '.join(errors)}" if errors else ""),
                             retryable=any(j.retryable for j in judgments))  # fmt: skip
        if errors:
            retryable = any(j.retryable for j in judgments)
            return ItemScore(None, details=details, error=f"judgment failed: {'; '.join(errors)}",
                             retryable=retryable, llm_calls=calls)  # fmt: skip
        mine = [m.share for m in matches if m.first == CANDIDATE]
        return ItemScore(100 * sum(mine) / len(mine), details=details, llm_calls=calls)

    def _matches(self, items: Sequence[BenchItem], scores: Sequence[ItemScore]) -> list[Match]:
        """Every match of the candidate, and the opponents' own once per prompt (each item of a
        prompt carries them: they are one judgment, a cache hit after the first)."""
        out, seen = [], set()
        for item, score in zip(items, scores, strict=True):
            for row in score.details.get("matches", ()):
                match = Match.from_json(row)
                if match.first != CANDIDATE:
                    key = (str(item.data["prompt_id"]), match.first, match.second)
                    if key in seen:
                        continue
                    seen.add(key)
                out.append(match)
        return out

    def headline(self, items: Sequence[BenchItem], scores: Sequence[ItemScore]) -> float | None:
        """`aggregate(...).score` without the interval's second solve: what the bootstrap resamples."""
        matches = self._matches(items, scores)
        if not any(m.first == CANDIDATE for m in matches):
            return None
        ratings = rate(matches, _anchors_of(items), interval=False)
        return None if ratings is None else ratings.elo_norm(CANDIDATE)

    def aggregate(self, items: Sequence[BenchItem], scores: Sequence[ItemScore]) -> BenchmarkResult:
        check_aligned(items, scores)
        anchors = _anchors_of(items)
        matches = self._matches(items, scores)
        mine = [m for m in matches if m.first == CANDIDATE]
        scored = [s.score for s in scores if s.score is not None]
        metrics: dict[str, float | None] = {
            "win_share": sum(scored) / len(scored) if scored else None,
            "matches": float(len(matches)),
            "scored": float(len(scored)),
            "failed": float(len(scores) - len(scored)),
        }
        ratings = rate(matches, anchors) if mine else None
        score = None
        if ratings is not None:
            score = ratings.elo_norm(CANDIDATE)
            low, high = ratings.interval_norm(CANDIDATE)
            metrics |= {"elo_raw": ratings.mu[CANDIDATE], "sigma": ratings.sigma[CANDIDATE],
                        "trueskill_ci/low": low, "trueskill_ci/high": high}  # fmt: skip
            metrics |= {f"elo/{m}": ratings.elo_norm(m) for m in ratings.mu if m != CANDIDATE}
        for opponent in dict.fromkeys(m.second for m in mine):
            shares = [m.share for m in mine if m.second == opponent]
            metrics[f"win_share/{opponent}"] = 100 * sum(shares) / len(shares)
        return BenchmarkResult(score=score, metrics=metrics, n_items=len(items),
                               n_failed=sum(1 for s in scores if s.score is None))  # fmt: skip


def _anchors_of(items: Sequence[BenchItem]) -> dict[str, float]:
    """The anchors the items were loaded with (each item carries them, so aggregate needs no config)."""
    return dict(items[0].data["anchors"]) if items else dict(ANCHORS)
