"""What training reads: the ladders of stage 4, joined with the instructions, as plain Python.

`TrainingItem` holds one instruction's prompt, criteria, required length and its reference rungs
(all of its responses by ascending score, the policy's own initial one at `policy_rung`). The TRL dataset
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
from tasks.curriculum import LadderShape
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
    policy_rung: int = 0  # the rung holding the policy's own response

    @property
    def n_rungs(self) -> int:
        return len(self.rungs)

    @property
    def shape(self) -> LadderShape:
        return LadderShape(self.n_rungs, self.policy_rung, tuple(r.generator for r in self.rungs))


def training_items(
    ladders: pa.Table, instructions: pa.Table, split: str = "train"
) -> dict[str, TrainingItem]:
    """instruction id -> its item, for the ladders of `split` ("train" or "validation"), in ladder
    order. Every ladder must have rungs and its instruction. Ladders written before `policy_rung`
    and `split` existed had the policy's response on rung 0 and were all for training."""
    by_id = {ins.id: ins for ins in instructions_from_arrow(instructions)}
    items: dict[str, TrainingItem] = {}
    columns = ["instruction_id", "prompt", "criteria_json", "rungs"]
    columns += [c for c in ("policy_rung", "split") if c in ladders.column_names]
    for row in ladders.select(columns).to_pylist():
        if row.get("split", "train") != split:
            continue
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
            policy_rung=row.get("policy_rung") or 0,
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
    *,
    validation: bool = False,
):
    """The TRL training set: per row, the instruction id and the prompt exactly as the policy's
    strategy sends it (its system prompt; the think-then-write format instruction), so the policy is
    trained in the format its ladder response was written in. Only single-call strategies can be
    trained: AgentWrite writes one response in several calls. With a tokenizer, prompts longer than
    `max_prompt_tokens` are truncated on the left (`left_truncated`); TRL itself truncates none.
    `validation=True` builds the eval set of the held-out ladders: each row also carries
    `validation: True`, which TRL hands the reward function, so it judges them as validation."""
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
        rows.append(
            {"prompt": messages, "instruction_id": iid} | ({"validation": True} if validation else {})
        )
    if truncated:
        logger.warning(
            "train: %d of %d prompts were longer than training.max_prompt_tokens=%d and were cut on the left",
            truncated, len(rows), max_prompt_tokens,
        )  # fmt: skip
    return datasets.Dataset.from_list(rows)
