"""Judge calibration: how far to trust the reward judge, measured before a training budget is spent.

The reward judge compares two responses. Each pair (x, y) is judged in both orders (x shown as
Response A, then y as A), each order `calibration.repeats` times in json mode (independent samples
at the judge's own decoding; a logprob probe reads one forward pass, the same every time, so it
is asked once). From the verdicts:

- flip rate: pairs whose preferred response (x, y or a tie) changes when the order is swapped,
  among pairs judged in both orders (first sample of each);
- first-position rate: of the decisive verdicts (A or B), the share that chose Response A. 0.5 is
  no position bias; above it the judge favours the first position, as the paper assumes;
- tie rate: verdicts that are a tie;
- self-consistency: how often a repeated sample gives the first sample's verdict (json mode);
- length bias: of the pairs where both orders agree on a winner and the lengths differ, how often
  the longer response wins. On real pairs length can go with quality, so 0.5 is not the only
  honest value; a labelled file with balanced lengths isolates it;
- cost: calls, tokens and (priced models) USD per judgment;
- agreement: with a labelled file, how often the judge's both-orders verdict (the orders agree:
  that response; they disagree: a tie) is the label, and how often one order's verdict alone is.

`recommend` turns these into a `reward.position` with its reason (docs/training.md, "Calibrating
the judge").

Labelled pairs (JSONL, one pair per line; docs/training.md): `instruction` and `response_a`,
`response_b` (required, non-empty text), `id` (optional; default `pair-<line>`), `label`
(optional: "A", "B" or "tie", which response a person preferred), `criteria` (optional: a list
of {name, description}). An example this project wrote itself: tasks/rewards/labelled_pairs_example.jsonl.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from configs.schema import JudgeConfig, RewardConfig
from tasks.instructions import InstructionDataError
from tasks.instructions.loaders import RowProblem
from tasks.instructions.schema import Criterion
from tasks.judging.judgment import Judge, Judgment
from tasks.llm.base import LLMClient, gather_or_stop
from tasks.plotting import drawn_before, png_figure
from tasks.rewards.pairwise import PAIRWISE_PROMPTS, LogprobVerdict, VerdictForm
from tasks.text import count_words

LABELS = ("A", "B", "tie")
ORDERS = ("xy", "yx")  # xy: x shown as Response A; yx: y shown as Response A

CALIBRATION_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("instruction_id", pa.string()),  # the ladder's instruction, or the file's pair id
        ("x_source", pa.string()),  # the generator behind x (ladders) or "response_a" (a file)
        ("y_source", pa.string()),
        ("x_words", pa.int64()),
        ("y_words", pa.int64()),
        ("label", pa.string()),  # the file's label (x = response_a): "x", "y", "tie"; null: none
        ("order", pa.string()),  # "xy" or "yx"
        ("sample", pa.int32()),
        ("letter", pa.string()),  # the verdict: A, B or C (tie); null when the call failed
        ("preferred", pa.string()),  # the verdict in the pair's terms: "x", "y" or "tie"; null: failed
        ("p_a", pa.float64()),  # logprob mode: the renormalised probabilities
        ("p_b", pa.float64()),
        ("p_c", pa.float64()),
        ("calls", pa.int32()),  # LLM calls this judgment took (re-asks included)
        ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("error", pa.string()),
    ]
)


@dataclass(frozen=True)
class CalibrationPair:
    pair_id: str
    instruction_id: str
    instruction: str
    x: str
    y: str
    x_source: str
    y_source: str
    criteria: tuple[Criterion, ...] = ()
    label: str | None = None  # "x", "y" or "tie" (a file's "A", "B", "tie")


# ---------------------------------------------------------------------------------------------
# Pairs: from the recipe's ladders, or from a labelled file
# ---------------------------------------------------------------------------------------------


def pairs_from_ladders(ladders: Sequence[Mapping[str, Any]], count: int, seed: int) -> list[CalibrationPair]:
    """Up to `count` pairs of different rungs of one ladder, spread over the instructions: a seeded
    draw takes one pair per ladder per round, so every instruction is used before any twice."""
    rng = random.Random(seed)
    per_ladder: list[list[CalibrationPair]] = []
    for ladder in sorted(ladders, key=lambda row: row["instruction_id"]):
        rungs = [r for r in ladder["rungs"] if r.get("text")]
        criteria = tuple(Criterion(**c) for c in json.loads(ladder.get("criteria_json") or "[]"))
        combos = [(i, j) for i in range(len(rungs)) for j in range(i + 1, len(rungs))]
        rng.shuffle(combos)
        per_ladder.append([
            CalibrationPair(
                pair_id=f"{ladder['instruction_id']}:{rungs[i]['generator']}~{rungs[j]['generator']}",
                instruction_id=ladder["instruction_id"], instruction=ladder["prompt"], x=rungs[i]["text"],
                y=rungs[j]["text"], x_source=rungs[i]["generator"], y_source=rungs[j]["generator"],
                criteria=criteria,
            )
            for i, j in combos
        ])  # fmt: skip
    rng.shuffle(per_ladder)
    chosen: list[CalibrationPair] = []
    for round_ in range(max((len(p) for p in per_ladder), default=0)):
        chosen += [p[round_] for p in per_ladder if round_ < len(p)]
    return chosen[:count]


def load_labelled_pairs(path: Path, count: int | None = None) -> list[CalibrationPair]:
    """The file's pairs (its first `count`), every problem reported together with its line and field."""
    problems: list[RowProblem] = []
    pairs: list[CalibrationPair] = []
    seen: set[str] = set()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InstructionDataError(
            str(path), [RowProblem(str(path), "file", f"cannot be read: {exc}")]
        ) from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(RowProblem(where, "line", f"not JSON: {exc.msg}"))
            continue
        if not isinstance(row, dict):
            problems.append(RowProblem(where, "line", "must be a JSON object"))
            continue
        bad = len(problems)
        for field in ("instruction", "response_a", "response_b"):
            if not isinstance(row.get(field), str) or not row[field].strip():
                problems.append(RowProblem(where, field, "required: a non-empty string"))
        unknown = sorted(set(row) - {"id", "instruction", "response_a", "response_b", "label", "criteria"})
        if unknown:
            problems.append(RowProblem(where, unknown[0], f"unknown field(s) {unknown}"))
        label = row.get("label")
        if label is not None and label not in LABELS:
            problems.append(RowProblem(where, "label", f"{label!r} is not one of A, B, tie"))
        pair_id = str(row.get("id") or f"pair-{number}")
        if pair_id in seen:
            problems.append(RowProblem(where, "id", f"{pair_id!r} appears twice"))
        seen.add(pair_id)
        try:
            criteria = tuple(Criterion(**c) for c in row.get("criteria") or ())
        except (TypeError, ValueError) as exc:
            problems.append(RowProblem(where, "criteria", f"a list of {{name, description}}: {exc}"))
            criteria = ()
        if len(problems) > bad:
            continue
        pairs.append(CalibrationPair(
            pair_id=pair_id, instruction_id=pair_id, instruction=row["instruction"], x=row["response_a"],
            y=row["response_b"], x_source="response_a", y_source="response_b", criteria=criteria,
            label=None if label is None else {"A": "x", "B": "y", "tie": "tie"}[label],
        ))  # fmt: skip
    if problems:
        raise InstructionDataError(str(path), problems)
    if not pairs:
        raise InstructionDataError(str(path), [RowProblem(str(path), "file", "has no pairs")])
    return pairs[:count] if count else pairs


# ---------------------------------------------------------------------------------------------
# Judging
# ---------------------------------------------------------------------------------------------


def _preferred(letter: str | None, order: str) -> str | None:
    if letter is None:
        return None
    if letter == "C":
        return "tie"
    first, second = ("x", "y") if order == "xy" else ("y", "x")
    return first if letter == "A" else second


def _row(pair: CalibrationPair, order: str, sample: int, judgment: Judgment[Any]) -> dict[str, Any]:
    value = judgment.value
    probabilities = value.probabilities if isinstance(value, LogprobVerdict) else {}
    letter = value.letter if isinstance(value, LogprobVerdict) else value
    return {
        "pair_id": pair.pair_id, "instruction_id": pair.instruction_id,
        "x_source": pair.x_source, "y_source": pair.y_source,
        "x_words": count_words(pair.x), "y_words": count_words(pair.y), "label": pair.label,
        "order": order, "sample": sample, "letter": letter if judgment.ok else None,
        "preferred": _preferred(letter, order) if judgment.ok else None,
        "p_a": probabilities.get("A"), "p_b": probabilities.get("B"), "p_c": probabilities.get("C"),
        "calls": judgment.calls, "input_tokens": judgment.input_tokens,
        "output_tokens": judgment.output_tokens, "error": judgment.error,
    }  # fmt: skip


async def judge_pairs(
    client: LLMClient, judge: JudgeConfig, reward: RewardConfig, pairs: Sequence[CalibrationPair],
    repeats: int, concurrency: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """Every pair in both orders, `repeats` samples each (json mode; one probe in logprob mode):
    one row per judgment (`CALIBRATION_SCHEMA`), failures included with their error."""
    prompt, judge_ = PAIRWISE_PROMPTS[judge.prompt_version], Judge(client, judge)
    samples = repeats if judge.mode == "json" else 1
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(pair: CalibrationPair, order: str, sample: int) -> dict[str, Any]:
        a, b = (pair.x, pair.y) if order == "xy" else (pair.y, pair.x)
        form = VerdictForm(prompt, pair.instruction, a, b, pair.criteria, reward.tie_margin)
        (question,) = judge_.questions(form)
        async with gate:
            return _row(pair, order, sample, await judge_.run(question, sample_index=sample))

    return await gather_or_stop(
        one(pair, order, sample) for pair in pairs for order in ORDERS for sample in range(samples)
    )


# ---------------------------------------------------------------------------------------------
# Metrics and the recommendation
# ---------------------------------------------------------------------------------------------


def _rate(hits: int, total: int) -> float | None:
    return hits / total if total else None


def calibration_metrics(rows: Sequence[Mapping[str, Any]], mode: str) -> dict[str, Any]:
    """The measured bias and reliability of the judge, from `judge_pairs`' rows."""
    ok = [r for r in rows if r["letter"] is not None]
    first = {(r["pair_id"], r["order"]): r for r in ok if r["sample"] == 0}
    pair_ids = sorted({r["pair_id"] for r in rows})
    both = [
        (first[(p, "xy")], first[(p, "yx")]) for p in pair_ids if (p, "xy") in first and (p, "yx") in first
    ]
    decisive = [r for r in ok if r["letter"] in ("A", "B")]
    agreed = [xy for xy, yx in both if xy["preferred"] == yx["preferred"] and xy["preferred"] != "tie"]
    by_length = [r for r in agreed if r["x_words"] != r["y_words"]]
    longer_won = sum((r["x_words"] > r["y_words"]) == (r["preferred"] == "x") for r in by_length)
    repeated = [r for r in ok if r["sample"] > 0 and (r["pair_id"], r["order"]) in first]
    same = sum(r["letter"] == first[(r["pair_id"], r["order"])]["letter"] for r in repeated)
    labelled = [(xy, yx) for xy, yx in both if xy["label"] is not None]
    consistent = [
        (xy["preferred"] if xy["preferred"] == yx["preferred"] else "tie", xy["label"]) for xy, yx in labelled
    ]
    judgments = len(rows)
    return {
        "mode": mode,
        "pairs": len(pair_ids),
        "judgments": judgments,
        "failed": judgments - len(ok),
        "pairs_in_both_orders": len(both),
        "flip_rate": _rate(sum(xy["preferred"] != yx["preferred"] for xy, yx in both), len(both)),
        "first_position_rate": _rate(sum(r["letter"] == "A" for r in decisive), len(decisive)),
        "decisive_verdicts": len(decisive),
        "tie_rate": _rate(sum(r["letter"] == "C" for r in ok), len(ok)),
        "self_consistency": _rate(same, len(repeated)) if mode == "json" else None,
        "repeated_samples": len(repeated),
        "longer_wins_rate": _rate(longer_won, len(by_length)),
        "consistent_pairs_by_length": len(by_length),
        # logprob mode: the renormalised probability on Response A, whoever is shown there.
        "mean_p_first": _rate(sum(r["p_a"] for r in ok), len(ok)) if mode == "logprob" and ok else None,
        "calls_per_judgment": _rate(sum(r["calls"] for r in rows), judgments),
        # A probe reports no token usage: n/a rather than a cost of 0 tokens.
        "input_tokens_per_judgment": _rate(sum(r["input_tokens"] for r in rows), judgments)
        if mode == "json"
        else None,
        "output_tokens_per_judgment": _rate(sum(r["output_tokens"] for r in rows), judgments)
        if mode == "json"
        else None,
        "labelled_pairs": len(labelled),
        "agreement": _rate(sum(v == label for v, label in consistent), len(consistent)),
        # One call per comparison, as the single-order modes pay: the first order's verdict alone.
        "agreement_one_order": _rate(
            sum(xy["preferred"] == xy["label"] for xy, _ in labelled), len(labelled)
        ),
    }


# The flip rate below which one order is trusted: GPT-4's pairwise verdicts flip on 12.9% of
# swapped pairs (Zheng et al., MT-Bench); a judge well under that gains little from a second call.
LOW_FLIP_RATE = 0.05
# Above this the verdict follows the position more than the responses: debiasing keeps the reward
# from being position, but little signal is left (docs/training.md on the 135M judge).
POSITION_DOMINATED = 0.5


def recommend(metrics: Mapping[str, Any]) -> tuple[str | None, str]:
    """(a `reward.position` mode, why), from the measured flip rate and position preference."""
    flips, first = metrics.get("flip_rate"), metrics.get("first_position_rate")
    if flips is None or first is None:
        return None, "no pair was judged in both orders: nothing measured to recommend from"
    favoured = "first" if first > 0.5 else "second"
    if flips <= LOW_FLIP_RATE:
        return "position-disadvantage", (
            f"the judge changes its preference on {flips:.0%} of swapped pairs (at most {LOW_FLIP_RATE:.0%}): "
            f"one call per comparison in the paper's order loses little to position bias"
        )
    if flips > POSITION_DOMINATED:
        why = (f"the verdict follows the position more than the responses ({flips:.0%} of pairs flip; "
               f"Response A chosen in {first:.0%} of decisive verdicts): swap cancels the bias, so the "
               f"reward is at least not the position; consider a stronger judge")  # fmt: skip
        return "swap", why + (" (with logprob_reward: expected for a logprob judge)"
                              if metrics.get("mode") == "logprob" else "")  # fmt: skip
    if favoured == "first":
        return "recheck", (
            f"the judge favours the first position (Response A in {first:.0%} of decisive verdicts) and "
            f"flips on {flips:.0%} of pairs: recheck re-judges only the comparisons the bias could have "
            f"decided (a loss or a tie from the second position), which debiases as swap does at "
            f"1 + P(not a win) calls instead of 2"
        )
    return "swap", (
        f"the judge favours the second position (Response A in only {first:.0%} of decisive verdicts), "
        f"where the paper's order puts the policy, and flips on {flips:.0%} of pairs: recheck assumes the "
        f"first is favoured, so both orders are needed"
    )


# ---------------------------------------------------------------------------------------------
# The report: a table and a figure
# ---------------------------------------------------------------------------------------------

# (metric, label, what it means), in the report's order.
REPORTED = (
    ("flip_rate", "flip rate", "pairs whose preference changes when the order is swapped"),
    (
        "first_position_rate",
        "first-position rate",
        "decisive verdicts for Response A (0.5: no position bias)",
    ),
    ("tie_rate", "tie rate", "verdicts that are a tie"),
    ("mean_p_first", "mean P(A)", "logprob judges: the probability on Response A, whoever is there"),
    ("self_consistency", "self-consistency", "repeated samples that repeat the first verdict"),
    ("longer_wins_rate", "longer wins", "consistent verdicts won by the longer response"),
    ("agreement", "agreement (both orders)", "labelled pairs where the both-orders verdict is the label"),
    ("agreement_one_order", "agreement (one order)", "labelled pairs where one order's verdict is the label"),
)


def _shown(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def calibration_rows(metrics: Mapping[str, Any]) -> list[dict[str, str]]:
    """The report's table: metric, value, meaning; then the cost lines."""
    rows = [{"metric": label, "value": _shown(metrics.get(key)), "meaning": meaning}
            for key, label, meaning in REPORTED]  # fmt: skip
    cost, tokens_in = metrics.get("cost_usd_per_judgment"), metrics.get("input_tokens_per_judgment")
    rows += [
        {"metric": "calls per judgment", "value": _shown(metrics.get("calls_per_judgment")),
         "meaning": "LLM calls, re-asks of unparsable replies included"},
        {"metric": "tokens per judgment", "value": "n/a" if tokens_in is None else
         f"{tokens_in:.0f} in, {metrics.get('output_tokens_per_judgment') or 0:.0f} out",
         "meaning": "what each judgment sends (a logprob probe reports no usage)"},
        {"metric": "cost per judgment", "value": "unpriced" if cost is None else f"${cost:.6f}",
         "meaning": "from the recipe's `prices` (free: a local model)"},
    ]  # fmt: skip
    return rows


def calibration_markdown(metrics: Mapping[str, Any], judge: str) -> str:
    mode, why = metrics.get("recommended_position"), metrics.get("recommendation", "")
    lines = [
        f"## Judge calibration: {judge}",
        "",
        f"{metrics['pairs']} pairs, {metrics['judgments']} judgments ({metrics['failed']} failed), "
        f"{metrics['pairs_in_both_orders']} pairs judged in both orders.",
        "",
        "| metric | value | meaning |",
        "|---|---|---|",
        *(f"| {r['metric']} | {r['value']} | {r['meaning']} |" for r in calibration_rows(metrics)),
        "",
        f"**Recommended `reward.position`: {mode or 'none'}**: {why}.",
    ]
    return "\n".join(lines)


def plot_calibration(metrics: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], path: Path,
                     figures: Path | None = None) -> Path:  # fmt: skip
    """Left: the measured rates against 0.5; right: the verdicts of each order."""
    counts = {order: {letter: sum(r["order"] == order and r["letter"] == letter for r in rows)
                      for letter in ("A", "B", "C")} for order in ORDERS}  # fmt: skip
    rates = {label: metrics.get(key) for key, label, _ in REPORTED}
    before = drawn_before(figures, plot_calibration, rates, counts)
    if before is not None and before.copy_to(path):
        return path
    with png_figure(path, 2, (11, 4.2), before) as (left, right):
        names = [n for n, v in rates.items() if v is not None]
        left.barh(names, [rates[n] for n in names], color="tab:blue")
        left.axvline(0.5, color="black", linewidth=0.8, linestyle="--")
        left.set_xlim(0, 1)
        left.invert_yaxis()
        left.set_title(f"Measured on {metrics['pairs']} pairs (dashed: 0.5)")
        bottom = [0, 0]
        for letter, color in (("A", "tab:orange"), ("B", "tab:green"), ("C", "tab:gray")):
            values = [counts[o][letter] for o in ORDERS]
            right.bar(["x as A", "y as A"], values, bottom=bottom, color=color, label=f"[[{letter}]]")
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        right.legend()
        right.set_title("Verdicts in each order")
        right.set_ylabel("judgments")
    return path
