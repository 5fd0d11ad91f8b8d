"""LongBench v2: the official prompts, middle truncation, answer extraction and accuracy splits, and
the suite: its items from the data file, the verdict on one reply (no judge), and the aggregate.

Official harness: `THUDM/LongBench` (the LongBench v2 code at the repository root), read at
- `pred.py` @c5ea10b: the templates it loads, `query_llm` (truncation, decoding, retries),
  `extract_answer`, `get_pred` (how an item becomes a prompt, a prediction and a judgement);
- `prompts/0shot.txt`, `prompts/0shot_no_context.txt` @072a5a7, `prompts/0shot_cot.txt`,
  `prompts/0shot_cot_ans.txt` @c5ea10b (no trailing newline in any of them);
- `result.py` @5214a55: the accuracy table Overall / Easy / Hard / Short / Medium / Long. (An
  older `result.py` @072a5a7 tested `length == "short"` twice, so "medium" items fell into
  "long" and the Medium column divided by zero; the later commit fixed it.)
The data (`THUDM/LongBench-v2` on the Hugging Face hub, 503 items) has the fields `_id, domain,
sub_domain, difficulty (easy/hard), length (short/medium/long), question, choice_A..choice_D,
answer (A-D), context`.

What the official harness does
------------------------------
1. Prompt (`get_pred`): the template's `$DOC$` is replaced by `context.strip()`, then `$Q$`,
   `$C_A$`..`$C_D$` by the stripped question and choices, one `str.replace` after another. With
   `--cot`, the first reply (stripped) goes into `0shot_cot_ans.txt` as `$COT$` (that template says
   "The text is too long and omitted here." instead of the document) and a second call answers.
2. Truncation (`query_llm`): the whole prompt is tokenized; if it has more than `max_len` tokens
   (`config/model2maxlen.json`: 120000 for most models) it becomes
   `ids[:max_len//2] + ids[-max_len//2:]` and is decoded back (`skip_special_tokens=True` for HF
   tokenizers; tiktoken for GPT models).
3. Call: one user message, temperature 0.1, max_tokens 128 (1024 for the CoT call), 5 tries;
   after the 5th failure `query_llm` returns '' and `get_pred` skips the item (`continue`): it is
   never written to the results file, so it is in no denominator.
4. Extraction (`extract_answer`): delete every `*`, then the first match of
   `The correct answer is \\(([A-D])\\)`, else the first of `The correct answer is ([A-D])`,
   else None. Case-sensitive; no word boundary after the letter. `judge = pred == answer`, so None
   is wrong.
5. Accuracy (`result.py`): `acc = int(judge)`, or 0.25 when `compensated` (default False) and pred
   is None; Overall = sum / number of written items; Easy/Hard split on `difficulty == "easy"`
   (anything else counts as hard); Short/Medium/Long on `length` (anything else counts as long);
   printed as `round(100 * acc, 1)`.

Departures from the official harness (scoring)
----------------------------------------------
- A failed call is counted as WRONG and reported separately (`failed_calls`, `failed_ids`);
  the official code drops the item, which silently raises the accuracy of a flaky endpoint. A row's
  response is `None` for a failed call; an empty string is a reply that answered nothing (counted
  in `unextracted`), whereas officially '' is indistinguishable from a failure. With
  `compensated=True` the 0.25 credit goes to unextracted replies only, never to failed calls.
- `build_prompt` substitutes all placeholders in one pass, so a `$Q$` or `$C_A$` that happens to
  occur inside the document (or the question) is left as it is; the official chain of
  `str.replace` would substitute it too. Identical output whenever no field contains a placeholder.
- `truncate_middle` refuses `max_tokens < 1`; officially `max_len = 0` keeps everything
  (`ids[-0:]` is the whole list).
- `aggregate` refuses a difficulty or length outside the official values, a duplicate `_id`, or a
  gold answer outside A-D, instead of lumping the unknown value into hard/long; it reports
  unrounded percentages, and `None` for an empty split instead of dividing by zero.

Departures of the suite
-----------------------
- Only the 0-shot prompt without chain of thought. The middle truncation to `max_input_tokens`
  (the candidate's tokenizer, `truncate_middle`) is the stage's job.
- A failed generation scores 0 and counts in `failed_calls` (the first departure above).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from configs.schema import BenchmarkConfig, Decoding, JudgeConfig
from tasks.evaluation.base import BenchItem, BenchmarkResult, ItemScore
from tasks.evaluation.common import GENERATION_FAILED, check_aligned, resolve_path, single_file
from tasks.instructions.loaders import InstructionDataError, RowProblem, load_json_document
from tasks.llm.base import LLMClient, Message

# prompts/0shot.txt
TEMPLATE_0SHOT = (
    "Please read the following text and answer the question below.\n\n<text>\n$DOC$\n</text>\n\n"
    "What is the correct answer to this question: $Q$\nChoices:\n(A) $C_A$\n(B) $C_B$\n(C) $C_C$\n"
    '(D) $C_D$\n\nFormat your response as follows: "The correct answer is (insert answer here)".'
)
# prompts/0shot_cot.txt (note the typographic apostrophe in "Let’s", as in the file)
TEMPLATE_0SHOT_COT = (
    "Please read the following text and answer the questions below.\n\n<text>\n$DOC$\n</text>\n\n"
    "What is the correct answer to this question: $Q$\nChoices:\n(A) $C_A$\n(B) $C_B$\n(C) $C_C$\n"
    "(D) $C_D$\n\nLet’s think step by step:"
)
# prompts/0shot_cot_ans.txt
TEMPLATE_0SHOT_COT_ANS = (
    "Please read the following text and answer the questions below.\n\n"
    "The text is too long and omitted here.\n\n"
    "What is the correct answer to this question: $Q$\nChoices:\n(A) $C_A$\n(B) $C_B$\n(C) $C_C$\n"
    "(D) $C_D$\n\nLet’s think step by step: $COT$\n\n"
    "Based on the above, what is the single, most likely answer choice? "
    'Format your response as follows: "The correct answer is (insert answer here)".'
)
# prompts/0shot_no_context.txt
TEMPLATE_0SHOT_NO_CONTEXT = (
    "What is the correct answer to this question: $Q$\nChoices:\n(A) $C_A$\n(B) $C_B$\n(C) $C_C$\n"
    "(D) $C_D$\n\nWhat is the single, most likely answer choice? "
    'Format your response as follows: "The correct answer is (insert answer here)".'
)

# Decoding of the official harness (pred.py).
TEMPERATURE = 0.1
MAX_NEW_TOKENS = 128
COT_MAX_NEW_TOKENS = 1024
MAX_INPUT_TOKENS = 120_000  # config/model2maxlen.json, most models (claude-3.5-sonnet: 200000)
CALL_TRIES = 5

ANSWERS = ("A", "B", "C", "D")
DIFFICULTIES = ("easy", "hard")
LENGTHS = ("short", "medium", "long")
CHOICE_FIELDS = ("choice_A", "choice_B", "choice_C", "choice_D")

_PLACEHOLDER = re.compile(r"\$(?:DOC|Q|C_A|C_B|C_C|C_D|COT)\$")
_ANSWER_PAREN = re.compile(r"The correct answer is \(([A-D])\)")
_ANSWER_BARE = re.compile(r"The correct answer is ([A-D])")


def _fill(template: str, values: Mapping[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda match: values.get(match.group(0), match.group(0)), template)


def _item_values(item: Mapping[str, Any]) -> dict[str, str]:
    values = {"$Q$": str(item["question"]).strip()}
    for placeholder, field in zip(("$C_A$", "$C_B$", "$C_C$", "$C_D$"), CHOICE_FIELDS, strict=True):
        values[placeholder] = str(item[field]).strip()
    return values


def build_prompt(
    item: Mapping[str, Any], context: str | None = None, *, template: str = TEMPLATE_0SHOT
) -> str:
    """The official prompt for `item` (`pred.py::get_pred`): `$DOC$` <- `context.strip()` (the
    item's own `context` when None), `$Q$` and `$C_A$`..`$C_D$` <- the stripped fields.

    `template` is `TEMPLATE_0SHOT` (default), `TEMPLATE_0SHOT_COT` or `TEMPLATE_0SHOT_NO_CONTEXT`;
    for the CoT answer step use `build_cot_answer_prompt`. Truncation applies to the whole prompt,
    afterwards (`truncate_middle`).
    """
    if "$COT$" in template:
        raise ValueError("this template needs a chain of thought: use build_cot_answer_prompt")
    values = _item_values(item)
    if "$DOC$" in template:
        values["$DOC$"] = str(item["context"] if context is None else context).strip()
    return _fill(template, values)


def build_cot_answer_prompt(item: Mapping[str, Any], cot: str) -> str:
    """The second CoT call (`prompts/0shot_cot_ans.txt`): `$COT$` <- the first reply, stripped
    (`get_pred` stores `output.strip()`); the document is not repeated."""
    values = _item_values(item)
    values["$COT$"] = cot.strip()
    return _fill(TEMPLATE_0SHOT_COT_ANS, values)


def prompt_messages(prompt: str) -> list[Message]:
    """One user message and no system message, as `pred.py::query_llm` sends it."""
    return [{"role": "user", "content": prompt}]


def truncate_middle(token_ids: Sequence[int], max_tokens: int) -> list[int]:
    """`pred.py::query_llm`: a prompt longer than `max_tokens` keeps its first `max_tokens // 2`
    tokens and its last `ceil(max_tokens / 2)` (`ids[:m//2] + ids[-m//2:]`, where `-m//2` floors
    towards minus infinity), exactly `max_tokens` in all; a prompt that fits is returned whole."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    ids = list(token_ids)
    if len(ids) > max_tokens:
        ids = ids[: max_tokens // 2] + ids[-max_tokens // 2 :]
    return ids


def extract_answer(text: str) -> str | None:
    """`pred.py::extract_answer`: drop every `*`, then the first `The correct answer is (X)`, else
    the first `The correct answer is X`, with X in A-D (case-sensitive); None when neither matches."""
    text = text.replace("*", "")
    match = _ANSWER_PAREN.search(text) or _ANSWER_BARE.search(text)
    return match.group(1) if match else None


def _split(n: int, credit: float) -> dict[str, float | int | None]:
    return {"n": n, "correct": credit, "accuracy": 100.0 * credit / n if n else None}


def aggregate(rows: Iterable[Mapping[str, Any]], *, compensated: bool = False) -> dict[str, Any]:
    """Accuracy (percent, unrounded) overall, by difficulty and by length (`result.py`).

    Each row: `_id`, `difficulty` (easy/hard), `length` (short/medium/long), `answer` (gold, A-D)
    and `response`: the model's reply text, or None when the call failed. A failed call and a reply
    without an extractable answer are both wrong; they are also listed (`failed_ids`,
    `unextracted_ids`). With `compensated` (the `result.py` switch) an unextracted reply earns 0.25.

    Returns `{"n", "correct", "accuracy", "by_difficulty": {easy, hard}, "by_length": {short,
    medium, long}` (each `{"n", "correct", "accuracy"}`, accuracy None when n is 0)`, "failed_calls",
    "failed_ids", "unextracted", "unextracted_ids", "predictions": {_id: letter or None}}`.
    """
    seen: set[str] = set()
    by_difficulty = {d: [0, 0.0] for d in DIFFICULTIES}
    by_length = {k: [0, 0.0] for k in LENGTHS}
    failed: list[str] = []
    unextracted: list[str] = []
    predictions: dict[str, str | None] = {}
    total, credit_sum = 0, 0.0
    for row in rows:
        item_id = str(row["_id"])
        if item_id in seen:
            raise ValueError(f"duplicate _id {item_id!r}")
        seen.add(item_id)
        difficulty, length, gold = row["difficulty"], row["length"], row["answer"]
        if difficulty not in DIFFICULTIES:
            raise ValueError(f"{item_id}: difficulty {difficulty!r} is not one of {DIFFICULTIES}")
        if length not in LENGTHS:
            raise ValueError(f"{item_id}: length {length!r} is not one of {LENGTHS}")
        if gold not in ANSWERS:
            raise ValueError(f"{item_id}: gold answer {gold!r} is not one of {ANSWERS}")
        response = row["response"]
        if response is None:
            pred, credit = None, 0.0
            failed.append(item_id)
        else:
            pred = extract_answer(response)
            if pred is None:
                unextracted.append(item_id)
                credit = 0.25 if compensated else 0.0
            else:
                credit = 1.0 if pred == gold else 0.0
        predictions[item_id] = pred
        total += 1
        credit_sum += credit
        for bucket in (by_difficulty[difficulty], by_length[length]):
            bucket[0] += 1
            bucket[1] += credit
    return {
        **_split(total, credit_sum),
        "by_difficulty": {d: _split(n, c) for d, (n, c) in by_difficulty.items()},
        "by_length": {k: _split(n, c) for k, (n, c) in by_length.items()},
        "failed_calls": len(failed),
        "failed_ids": failed,
        "unextracted": len(unextracted),
        "unextracted_ids": unextracted,
        "predictions": predictions,
    }


# ---------------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------------

DATA_FILE = "data.json"  # the official file name (THUDM/LongBench-v2 on the hub)
_TEXT_FIELDS = ("question", *CHOICE_FIELDS, "context")
_CHOICES = {"difficulty": DIFFICULTIES, "length": LENGTHS, "answer": ANSWERS}


def _item_problems(location: str, row: Any) -> list[RowProblem]:
    if not isinstance(row, dict):
        return [RowProblem(location, "item", f"must be an object, got {type(row).__name__}")]
    problems = []
    item_id = row.get("_id")
    if not isinstance(item_id, str) or not item_id.strip():
        problems.append(RowProblem(location, "_id", f"must be a non-empty string, got {item_id!r}"))
    for field in _TEXT_FIELDS:
        if field not in row:
            problems.append(RowProblem(location, field, "missing"))
        elif not isinstance(row[field], str):
            problems.append(RowProblem(location, field, f"must be a string, got {type(row[field]).__name__}"))
    for field, allowed in _CHOICES.items():
        if row.get(field) not in allowed:
            problems.append(
                RowProblem(location, field, f"must be one of {', '.join(allowed)}, got {row.get(field)!r}")
            )
    for field in ("domain", "sub_domain"):
        if row.get(field) is not None and not isinstance(row[field], str):
            problems.append(RowProblem(location, field, f"must be a string, got {type(row[field]).__name__}"))
    return problems


class LongBenchV2Suite:
    """LongBench v2: multiple choice over a long context, 0-shot without CoT; headline accuracy %.

    BenchItem: id = `_id`, prompt = `build_prompt(item)`, UNTRUNCATED: the stage fits it with
    `truncate_middle` to `max_input_tokens(config)` tokens of the candidate's tokenizer.
    labels difficulty/length/domain/sub_domain, data = {answer, difficulty, length, domain,
    sub_domain}. A failed generation scores 0 (counted wrong, reported as `failed_calls`).
    """

    name = "longbench_v2"
    version = 1
    needs_judge = False
    judge_modes = ()
    truncates_input = True
    uses_writing_strategy = False

    def data_files(self, config: BenchmarkConfig) -> list[Path]:
        return [single_file(config, DATA_FILE, ".json")]

    def max_input_tokens(self, config: BenchmarkConfig) -> int:
        return config.max_input_tokens or MAX_INPUT_TOKENS

    def load(self, config: BenchmarkConfig) -> list[BenchItem]:
        (path,) = self.data_files(config)
        display = str(config.path) if path == resolve_path(config)[0] else str(Path(config.path) / path.name)
        doc = load_json_document(path.read_bytes(), display)
        if not isinstance(doc, list):
            raise InstructionDataError(
                display,
                [RowProblem(display, "json", f"expected a JSON array of items, got {type(doc).__name__}")],
            )
        problems: list[RowProblem] = []
        first_seen: dict[str, str] = {}
        items = []
        for i, row in enumerate(doc):
            location = f"{display}:item {i}"
            found = _item_problems(location, row)
            if not found:
                first = first_seen.setdefault(row["_id"], location)
                if first != location:
                    found.append(
                        RowProblem(location, "_id", f"duplicate _id {row['_id']!r}, first at {first}")
                    )
            problems += found
            if found:
                continue
            meta = {k: row.get(k) for k in ("difficulty", "length", "domain", "sub_domain")}
            items.append(
                BenchItem(
                    id=row["_id"],
                    prompt=build_prompt(row),
                    labels={k: v for k, v in meta.items() if isinstance(v, str) and v},
                    data={"answer": row["answer"], **meta},
                )
            )
        if problems:
            raise InstructionDataError(display, problems)
        return items[: config.limit]

    def generation_decoding(self, config: BenchmarkConfig, seed: int | None) -> Decoding:
        return Decoding(temperature=TEMPERATURE, max_tokens=config.max_tokens or MAX_NEW_TOKENS, seed=seed)

    def judge_form(self, item: BenchItem, response: str, judge: JudgeConfig) -> None:
        return None  # multiple choice: the answer is read, not judged

    async def score(
        self, item: BenchItem, response: str | None, judge_client: LLMClient | None, judge: JudgeConfig | None
    ) -> ItemScore:
        answer = item.data["answer"]
        if response is None:
            details = {"generation_failed": True, "pred": None, "answer": answer, "correct": False}
            return ItemScore(0.0, details=details, error=GENERATION_FAILED)
        pred = extract_answer(response)
        correct = pred == answer
        details = {"pred": pred, "answer": answer, "correct": correct, "extracted": pred is not None}
        return ItemScore(100.0 if correct else 0.0, details=details)

    def aggregate(self, items: Sequence[BenchItem], scores: Sequence[ItemScore]) -> BenchmarkResult:
        check_aligned(items, scores)
        rows = []
        for item, score in zip(items, scores, strict=True):
            if score.details.get("generation_failed"):
                response = None
            else:  # the reply as `extract_answer` reads it back: the aggregate re-extracts
                pred = score.details.get("pred")
                response = "" if pred is None else f"The correct answer is ({pred})"
            rows.append(
                {
                    "_id": item.id,
                    **{k: item.data[k] for k in ("difficulty", "length", "answer")},
                    "response": response,
                }
            )
        result = aggregate(rows)
        metrics: dict[str, float | None] = {
            "accuracy": result["accuracy"],
            "failed_calls": float(result["failed_calls"]),
            "unextracted": float(result["unextracted"]),
        }
        metrics |= {f"difficulty/{k}": v["accuracy"] for k, v in result["by_difficulty"].items()}
        metrics |= {f"length/{k}": v["accuracy"] for k, v in result["by_length"].items()}
        return BenchmarkResult(
            score=result["accuracy"], metrics=metrics, n_items=len(items), n_failed=result["failed_calls"]
        )
