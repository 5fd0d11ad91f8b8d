"""What training reads: the ladders of stage 4, joined with the instructions, as plain Python.

`TrainingItem` holds one instruction's prompt, criteria, required length and its reference rungs
(rung 0 the policy's own initial response, then references by ascending score). The TRL dataset
built from them carries only the prompt and the instruction id: the reference a rollout is judged
against is looked up by the reward at judging time, from the curriculum's current rung, so it is
never frozen into the dataloader (which TRL builds once).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from configs.schema import GeneratorConfig
from tasks.generation import STRATEGIES
from tasks.instructions import Criterion, Instruction, instructions_from_arrow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rung:
    generator: str
    score: float | None
    text: str


@dataclass(frozen=True)
class TrainingItem:
    instruction_id: str
    prompt: str
    criteria: tuple[Criterion, ...]
    required_length: int | None
    rungs: tuple[Rung, ...]

    @property
    def n_rungs(self) -> int:
        return len(self.rungs)


def training_items(ladders: pa.Table, instructions: pa.Table) -> dict[str, TrainingItem]:
    """instruction id -> its item, in ladder order. Every ladder must have rung 0 and its instruction."""
    by_id = {ins.id: ins for ins in instructions_from_arrow(instructions)}
    items: dict[str, TrainingItem] = {}
    for row in ladders.select(["instruction_id", "prompt", "criteria_json", "rungs"]).to_pylist():
        iid = row["instruction_id"]
        if iid not in by_id:
            raise ValueError(f"ladders: instruction '{iid}' is not in the instructions table")
        if not row["rungs"]:
            raise ValueError(f"ladders: instruction '{iid}' has no rungs")
        items[iid] = TrainingItem(
            instruction_id=iid,
            prompt=row["prompt"],
            criteria=tuple(Criterion(**c) for c in json.loads(row["criteria_json"] or "[]")),
            required_length=by_id[iid].required_length,
            rungs=tuple(Rung(r["generator"], r["score"], r["text"]) for r in row["rungs"]),
        )
    return items


def prompt_tokens(messages: list[dict[str, str]], tokenizer: Any) -> int:
    """The prompt's length as the policy reads it: its chat template with the generation prompt."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def left_truncated(
    messages: list[dict[str, str]], tokenizer: Any, max_prompt_tokens: int, instruction_id: str = "?"
) -> tuple[list[dict[str, str]], int]:
    """The prompt within `max_prompt_tokens` (`training.max_prompt_tokens`): tokens cut from the start
    of the last message, the request's end kept, as the official loader truncates on the left. The
    cut is made in the instruction, not in the templated ids, so the chat template's role markers
    stay. Returns (messages, tokens cut)."""
    over = prompt_tokens(messages, tokenizer) - max_prompt_tokens
    if over <= 0:
        return messages, 0
    *head, last = messages
    content = tokenizer(last["content"], add_special_tokens=False)["input_ids"]
    cut = over
    while cut < len(content):
        kept = [*head, {**last, "content": tokenizer.decode(content[cut:])}]
        # Decoding and re-encoding at the cut can differ by a token: cut again until it fits.
        if (excess := prompt_tokens(kept, tokenizer) - max_prompt_tokens) <= 0:
            return kept, cut
        cut += excess
    raise ValueError(
        f"training.max_prompt_tokens: {max_prompt_tokens} leaves no room for instruction '{instruction_id}' "
        f"(its chat template and system prompt alone take {prompt_tokens([*head, {**last, 'content': ''}], tokenizer)}"
        " tokens)"
    )


def train_dataset(
    items: dict[str, TrainingItem],
    policy: GeneratorConfig,
    tokenizer: Any = None,
    max_prompt_tokens: int | None = None,
):
    """The TRL training set: per row, the instruction id and the prompt exactly as the policy's
    strategy sends it (its system prompt; the think-then-write format instruction), so the policy is
    trained in the format its rung-0 response was written in. Only single-call strategies can be
    trained: AgentWrite writes one response in several calls. With a tokenizer, prompts longer than
    `max_prompt_tokens` are truncated on the left (`left_truncated`); TRL itself truncates none."""
    import datasets

    strategy = STRATEGIES[policy.strategy]
    if not hasattr(strategy, "messages"):
        raise ValueError(
            f"generator '{policy.name}': strategy '{policy.strategy}' writes a response in several calls "
            "and cannot be the policy of RL training; use direct or think-then-write"
        )
    rows, truncated = [], 0
    for iid, item in items.items():
        instruction = Instruction(id=iid, prompt=item.prompt, source="ladders", criteria=item.criteria,
                                  required_length=item.required_length)  # fmt: skip
        messages = strategy.messages(instruction, policy)
        if tokenizer is not None and max_prompt_tokens is not None:
            messages, cut = left_truncated(messages, tokenizer, max_prompt_tokens, iid)
            truncated += cut > 0
        rows.append({"prompt": messages, "instruction_id": iid})
    if truncated:
        logger.warning(
            "train: %d of %d prompts were longer than training.max_prompt_tokens=%d and were cut on the left",
            truncated, len(rows), max_prompt_tokens,
        )  # fmt: skip
    return datasets.Dataset.from_list(rows)
