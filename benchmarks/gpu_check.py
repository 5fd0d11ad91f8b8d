"""GPU check: a few GRPO steps in bf16 on CUDA at a paper recipe's layer width and sequence lengths,
with the peak memory compared with `wrl config plan`'s estimate for the same shape.

The model is the recipe's policy architecture (Qwen2.5-7B: hidden 3584, 28 heads, 4 KV heads,
intermediate 18944, vocabulary 152064) with only `--layers` decoder layers, randomly initialised,
so that it fits one GPU with full fine-tuning and Adam (and a KL reference model when the recipe's
`kl_coef` is above 0; the paper recipes, as the official run, have none). The tokenizer is a
word-level one over the model's whole vocabulary ("t0" ... "t152063"), so any generated id decodes.
Prompts are `max_prompt_tokens` long and generation runs to `max_response_tokens` (a random model
rarely stops early): the recipe's longest sequences. One prompt x `num_generations` rollouts per
step, accumulated one sequence at a time (the paper recipe's micro-batch on each of its 8 GPUs), in
one optimizer update per step, so each timed step is one generation and one update.
The reward is a stand-in (distinct words, plus a hash so that rollouts always differ and every step
has a gradient): this checks memory and the training path, not a judge.

Needs torch with CUDA, transformers, trl, peft, accelerate, datasets (benchmarks/gpu_check.sh
brings what is missing as wheels). Writes a JSON report and prints a table.

    python benchmarks/gpu_check.py --layers 2 --steps 2 --out gpu_check.json
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs.loading import load_recipe
from tasks.training.args import trainer_args
from tasks.training.memory_plan import GIB, architecture_of, plan_training

PAPER_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "paper-qwen2.5-7b.yaml"


def _model_folder(arch, layers: int, folder: Path, device: str) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

    config = Qwen2Config(
        hidden_size=arch.hidden, num_hidden_layers=layers, num_attention_heads=arch.heads,
        num_key_value_heads=arch.kv_heads, intermediate_size=arch.intermediate, vocab_size=arch.vocab,
        tie_word_embeddings=arch.tied_embeddings, max_position_embeddings=32768,
        bos_token_id=0, eos_token_id=1, pad_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            config, dtype=torch.bfloat16 if device == "cuda" else torch.float32
        )
    model.save_pretrained(folder)
    del model
    vocab = {f"t{i}": i for i in range(arch.vocab)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="t3"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece()  # joins the words with spaces again
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="t0", eos_token="t1", pad_token="t2",
                                   unk_token="t3")  # fmt: skip
    fast.save_pretrained(folder)
    if device == "cuda":
        torch.cuda.empty_cache()
    return folder


def main(
    layers: int, steps: int, recipe: Path, out: Path, dry_run: bool = False, smoke: bool = False
) -> None:
    """`smoke`: the same path on the CPU at a toy width and length (the CI's check of this script)."""
    import torch
    from datasets import Dataset
    from trl import GRPOTrainer

    loaded = load_recipe(recipe)
    full = architecture_of(loaded.policy.model)
    arch = dataclasses.replace(full, layers=layers)
    if smoke:
        arch = dataclasses.replace(arch, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=1000)
    generations = loaded.training.num_generations
    training = loaded.training.model_copy(update={
        "batch_size": 1, "gradient_accumulation_steps": generations, "max_steps": steps, "save_steps": 10_000,
        "use_vllm": False, "gpus": 1, "distributed": "ddp", "lora": None, "device": "cuda",
        "updates_per_step": 1, "eval_steps": None,
    })  # fmt: skip
    if smoke:
        training = training.model_copy(update={"device": "cpu", "bf16": False, "gradient_checkpointing": False,
                                               "max_prompt_tokens": 16, "max_response_tokens": 8})  # fmt: skip
    if dry_run:  # what would run, on any machine: the plan and TRL's checks of the arguments
        trainer_args(training, Path("unused"), hardware_checks=False)
        print(plan_training(training, arch, gpus=1, gpu_memory_gib=80).render())
        return
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device")
    cuda = not smoke
    gpu_gib = torch.cuda.get_device_properties(0).total_memory / GIB if cuda else 80.0
    plan = plan_training(training, arch, gpus=1, gpu_memory_gib=gpu_gib)

    with tempfile.TemporaryDirectory() as tmp:
        folder = _model_folder(arch, layers, Path(tmp) / "model", "cuda" if cuda else "cpu")
        rng = random.Random(0)
        prompts = [" ".join(f"t{rng.randrange(4, arch.vocab)}" for _ in range(training.max_prompt_tokens))
                   for _ in range(steps)]  # fmt: skip

        def distinct_words(completions, **_):  # differs between rollouts: every step has a gradient
            return [float(len(set(c.split()))) + zlib.crc32(c.encode()) % 7 / 7 for c in completions]

        step_times: list[float] = []
        from transformers import TrainerCallback

        class Clock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                self.started = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                step_times.append(time.perf_counter() - self.started)

        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer = GRPOTrainer(
            model=str(folder), reward_funcs=[distinct_words],
            args=trainer_args(training, Path(tmp) / "run"), train_dataset=Dataset.from_dict({"prompt": prompts}),
            callbacks=[Clock()],
        )  # fmt: skip
        trainer.train()
        peak = torch.cuda.max_memory_allocated() if cuda else 0
        reserved = torch.cuda.max_memory_reserved() if cuda else 0
        lengths = [
            m.get("completions/mean_length")
            for m in trainer.state.log_history
            if "completions/mean_length" in m
        ]

    report = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu (smoke)", "gpu_memory_gib": round(gpu_gib, 1),
        "torch": torch.__version__, "recipe": str(recipe), "layers": layers, "steps": steps,
        "params": arch.params, "sequence_tokens": training.max_prompt_tokens + training.max_response_tokens,
        "completion_mean_length": lengths, "step_s": [round(t, 1) for t in step_times],
        "peak_allocated_gib": round(peak / GIB, 2), "peak_reserved_gib": round(reserved / GIB, 2),
        "planned_gib": round(plan.training_total / GIB, 2),
        "planned_terms_gib": {t.name: round(t.bytes / GIB, 2) for t in plan.terms},
        "measured_over_planned": round(peak / plan.training_total, 3),
    }  # fmt: skip
    out.write_text(json.dumps(report, indent=2))
    print(plan.render())
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=2, help="decoder layers (the width is the recipe's)")
    parser.add_argument("--steps", type=int, default=2, help="GRPO steps to run")
    parser.add_argument("--recipe", type=Path, default=PAPER_RECIPE, help="sequence lengths and width")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON report")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and check the arguments only")
    parser.add_argument(
        "--smoke", action="store_true", help="the same path on the CPU at a toy width and length"
    )
    options = parser.parse_args()
    main(options.layers, options.steps, options.recipe, options.out, options.dry_run, options.smoke)
