"""Judge probes with and without shared prefixes: time, tokens computed and the largest difference
in any probe value, on the embedded model, for the probe families the demo sends.

Each family is probed in micro-batches of 8 (the demo judge's `max_batch_size`), in the order a
stage submits them, two ways:
- plain: one left-padded batch per micro-batch (what the backend did before);
- shared: `tasks.llm.shared_prefix.probe_rows` with a `PrefixStore` (what it does now).
The values compared are the log-probabilities of every candidate token the judge reads (digits,
A/B/C). WritingBench is also probed with the official layout (criteria before the query), the
layout the logprob probe used before it moved the criteria last.

    .venv/bin/python benchmarks/judge_prefix_sharing.py            # ~3 minutes on 2 CPU cores
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

import typer

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
BENCHMARKS = PROJECT_ROOT.parent / "shared" / "benchmarks"
RESPONSE = (
    "The lighthouse keeper climbed the stairs at dusk, counting each step as his father had. "
    "Below, the sea worked at the rocks with the patience of something that had all the time "
    "in the world."
)  # ~40 tokens, about what the demo's 64-token answers come to


class TokenCounter:
    """Input positions the model's forward passes computed (padding included)."""

    def __init__(self, model) -> None:
        self.tokens = 0
        self._handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs) -> None:
        self.tokens += kwargs["input_ids"].numel()

    def close(self) -> None:
        self._handle.remove()


def families() -> dict[str, list[tuple[list[dict[str, str]], tuple[str, ...]]]]:
    """name -> [(messages, candidate tokens)], in the order a stage submits them."""
    from configs.schema import BenchmarkConfig, DataConfig, RewardConfig
    from tasks.evaluation import creative_writing_v3 as cw3
    from tasks.evaluation import longbench_write as lbw
    from tasks.evaluation import writingbench as wb
    from tasks.evaluation.creative_writing_v3 import cw3_criterion_messages
    from tasks.evaluation.longbench_write import lbw_dimension_messages
    from tasks.evaluation.registry import SUITES
    from tasks.evaluation.writingbench import WB_DIGIT_ANSWER, wb_logprob_messages
    from tasks.instructions.loaders import load_builtin
    from tasks.judging.pointwise import LOGPROB_DIGITS, POINTWISE_PROMPTS
    from tasks.rewards.pairwise import PAIRWISE_PROMPTS, POLICY_POSITIONS, VERDICT_LETTERS

    config = BenchmarkConfig(path=BENCHMARKS / "writingbench" / "length_subset.jsonl", ids=["wb-140"])
    (item,) = [
        i for i in SUITES["writingbench"].load(config.model_copy(update={"ids": None})) if i.id == "wb-140"
    ]

    def wb_official_layout(criterion):  # the logprob probe before it moved the criteria last
        messages = wb.critic_messages(item.prompt, RESPONSE, criterion)
        json_format = wb.OUTPUT_FORMAT.format()
        head, _ = messages[1]["content"].rsplit(json_format, 1)
        user = head.replace(json_format, WB_DIGIT_ANSWER, 1) + WB_DIGIT_ANSWER
        return [messages[0], {"role": "user", "content": user}]

    instructions = [i for i in load_builtin(DataConfig(format="builtin")) if i.criteria][:2]
    pointwise = POINTWISE_PROMPTS["v1"]
    reward = RewardConfig(position="swap")
    pairwise = PAIRWISE_PROMPTS["v1"]
    rollouts = [f"{RESPONSE} Variation {k}: the keeper wrote it down." for k in range(4)]
    reference = RESPONSE.replace("lighthouse keeper", "old keeper")
    instruction = instructions[0]
    judge_pairs = []
    for position in POLICY_POSITIONS[reward.position]:
        for rollout in rollouts:  # one training step: 4 rollouts x both orders
            a, b = (rollout, reference) if position == "A" else (reference, rollout)
            judge_pairs.append(
                (
                    pairwise.messages(instruction.prompt, a, b, instruction.criteria, "logprob"),
                    VERDICT_LETTERS,
                )
            )
    return {
        "WritingBench, 5 criteria of one response": [
            (wb_logprob_messages(item.prompt, RESPONSE, c), LOGPROB_DIGITS) for c in item.data["criteria"]
        ],
        "WritingBench, official layout (criteria first)": [
            (wb_official_layout(c), LOGPROB_DIGITS) for c in item.data["criteria"]
        ],
        "Creative Writing v3, 22 criteria of one piece": [
            (cw3_criterion_messages("Write a story set in a lighthouse. <SEED>", RESPONSE, c), LOGPROB_DIGITS)
            for c in cw3.CRITERIA
        ],
        "LongBench-Write, 6 dimensions": [
            (lbw_dimension_messages("Write 800 words about a lighthouse.", RESPONSE, d), tuple("12345"))
            for d in lbw.DIMENSIONS
        ],
        "score stage, 5 criteria x 2 responses": [
            (pointwise.messages(ins, RESPONSE + f" ({n})", c, "logprob"), LOGPROB_DIGITS)
            for n, ins in enumerate(instructions)
            for c in ins.criteria
        ],
        "training reward, 4 rollouts x 2 orders": judge_pairs,
    }


def probe(loaded, items, compute: Callable[[Sequence[Sequence[int]]], object], batch: int):
    """(seconds, tokens computed, [logprobs per item]) with `compute(rows) -> logits`."""
    import torch

    from tasks.llm.batching import first_token_id

    tokenizer = loaded.tokenizer
    texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m, _ in items]
    rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    counter = TokenCounter(loaded.model)
    values = []
    started = time.perf_counter()
    try:
        with torch.inference_mode():
            for lo in range(0, len(rows), batch):
                logprobs = torch.log_softmax(compute(rows[lo : lo + batch]).float(), dim=-1)
                for k, (_, candidates) in enumerate(items[lo : lo + batch]):
                    values.append([float(logprobs[k, first_token_id(tokenizer, c)]) for c in candidates])
    finally:
        counter.close()
    return time.perf_counter() - started, counter.tokens, values, sum(len(r) for r in rows)


def main(
    model_cache: Annotated[Path, typer.Option(help="Where the embedded model is (converted if missing).")] = (
        PROJECT_ROOT / ".wrl" / "models"
    ),
    batch: Annotated[int, typer.Option(help="Probes per micro-batch (the demo judge's max_batch_size).")] = 8,
) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tasks.llm.embedded import ensure_embedded_model
    from tasks.llm.shared_prefix import PrefixStore, padded_logits, probe_rows
    from tasks.llm.transformers_backend import _load_shared

    folder = ensure_embedded_model("smollm2-135m-instruct", model_cache)
    loaded = _load_shared(str(folder), model_cache, "cpu", "float32")
    pad, device = loaded.pad_id, "cpu"
    probe(
        loaded,
        families()["LongBench-Write, 6 dimensions"],
        lambda r: padded_logits(loaded.model, r, pad, device),
        batch,
    )  # warm-up
    print(f"SmolLM2-135M-Instruct, fp32, {os.cpu_count()} CPU cores, micro-batches of {batch}")
    print(
        "| probes | n | prompt tokens | plain: s | plain: tokens computed | shared: s | shared: tokens computed | max abs diff (logprob) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, items in families().items():
        plain_s, plain_tokens, plain_values, prompt_tokens = probe(
            loaded, items, lambda r: padded_logits(loaded.model, r, pad, device), batch
        )
        store = PrefixStore(4096)
        shared_s, shared_tokens, shared_values, _ = probe(
            loaded,
            items,
            lambda r, s=store: probe_rows(loaded.model, r, pad_id=pad, device=device, store=s),
            batch,
        )
        diff = max(
            abs(a - b)
            for xs, ys in zip(plain_values, shared_values, strict=True)
            for a, b in zip(xs, ys, strict=True)
        )
        print(f"| {name} | {len(items)} | {prompt_tokens:,} | {plain_s:.1f} | {plain_tokens:,} | {shared_s:.1f} | "
              f"{shared_tokens:,} | {diff:.1e} |")  # fmt: skip


if __name__ == "__main__":
    typer.run(main)
