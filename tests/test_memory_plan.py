"""The per-GPU memory estimate (`wrl config plan`): the paper recipes fit on 8 x 80 GB and are
refused on 1 x 80 GB, with the arithmetic shown and the largest term named. They build no
reference model (kl_coef 0, as the official run)."""

from __future__ import annotations

import pytest

from configs.schema import LoraConfig
from tasks.training.memory_plan import GIB, KNOWN_ARCHITECTURES, architecture_of, plan_training
from tests.support.cli import wrl
from tests.support.paths import PROJECT_ROOT
from tests.support.recipes import shipped_recipe as _recipe

PAPER = ["paper-qwen2.5-7b.yaml", "paper-llama3.1-8b.yaml"]


def test_the_parameter_count_is_the_models():
    # Published sizes: Qwen2.5-7B 7.62B, Llama-3.1-8B 8.03B parameters.
    assert round(KNOWN_ARCHITECTURES["Qwen/Qwen2.5-7B-Instruct"].params / 1e9, 2) == 7.62
    assert round(KNOWN_ARCHITECTURES["meta-llama/Llama-3.1-8B-Instruct"].params / 1e9, 2) == 8.03


def test_a_local_models_config_gives_its_exact_parameter_count(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert architecture_of(str(tiny_model_dir)).params == sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="no architecture known for 'org/unknown'"):
        architecture_of("org/unknown")


@pytest.mark.parametrize("name", PAPER)
def test_the_paper_recipes_fit_on_8_gpus_and_not_on_1(name):
    recipe = _recipe(name)
    arch = architecture_of(recipe.policy.model)
    eight = plan_training(recipe.training, arch, gpus=8, gpu_memory_gib=80)
    assert eight.fits and eight.problems() == []
    assert eight.training_total <= 80 * GIB * (1 - recipe.training.vllm_gpu_memory_utilization)
    one = plan_training(recipe.training, arch, gpus=1, gpu_memory_gib=80)
    assert not one.fits
    (problem,) = one.problems()
    assert "the largest term is optimizer state" in problem and "zero3 or fsdp2" in problem
    # Sharding divides the model states by the GPUs; the activations and logits do not change.
    terms = {t.name: t.bytes for t in eight.terms}
    assert terms["weights"] == pytest.approx(arch.params * 2 / 8)
    assert terms["optimizer state"] == pytest.approx(arch.params * 12 / 8)
    # No KL term, no reference model: what it would add is one more copy of the bf16 weights.
    assert "reference model" not in terms
    with_kl = plan_training(
        recipe.training.model_copy(update={"kl_coef": 0.001}), arch, gpus=8, gpu_memory_gib=80
    )
    assert with_kl.training_total - eight.training_total == pytest.approx(arch.params * 2 / 8)
    # Two updates per step share the step's micro-batches: the same micro-batch, the same estimate.
    one_update = recipe.training.model_copy(update={"updates_per_step": 1})
    assert plan_training(one_update, arch, gpus=8, gpu_memory_gib=80).training_total == eight.training_total


@pytest.mark.parametrize(
    "name,gpus,total_gib",
    [("paper-qwen2.5-7b.yaml", 8, 32.3), ("paper-qwen2.5-7b.yaml", 1, 205.1),
     ("paper-llama3.1-8b.yaml", 8, 31.9), ("paper-llama3.1-8b.yaml", 1, 207.7)],
)  # fmt: skip
def test_the_paper_plans_are_the_documented_numbers(name, gpus, total_gib):
    """docs/training.md quotes these totals (`wrl config plan`); a change here changes the docs."""
    recipe = _recipe(name)
    plan = plan_training(recipe.training, architecture_of(recipe.policy.model), gpus=gpus, gpu_memory_gib=80)
    assert round(plan.training_total / GIB, 1) == total_gib


def test_the_batch_term_and_its_remedy():
    training = _recipe(PAPER[0]).training.model_copy(update={"gradient_accumulation_steps": 1})
    plan = plan_training(training, architecture_of("Qwen/Qwen2.5-7B-Instruct"), gpus=8, gpu_memory_gib=80)
    (problem,) = plan.problems()
    assert "largest term is logits" in problem and "raise gradient_accumulation_steps" in problem
    assert "16 sequence(s) of 14096 tokens per GPU" in problem


def test_lora_no_reference_and_offload_shrink_the_estimate():
    base = _recipe(PAPER[0]).training.model_copy(update={"gpus": 1, "kl_coef": 0.001})
    arch = architecture_of("Qwen/Qwen2.5-7B-Instruct")
    full = {t.name: t.bytes for t in plan_training(base, arch, 1, 80).terms}
    lora = LoraConfig(r=16, alpha=32, target_modules=("q_proj", "v_proj"))
    lean = base.model_copy(update={"kl_coef": 0.0, "cpu_offload": True, "lora": lora})
    small = {t.name: t.bytes for t in plan_training(lean, arch, 1, 80).terms}
    assert "reference model" in full and "reference model" not in small
    assert small["optimizer state"] == 0 and small["gradients"] < full["gradients"] / 100


def test_the_command_prints_the_arithmetic_and_fails_when_it_does_not_fit():
    config = str(PROJECT_ROOT / "configs" / PAPER[0])
    fits = wrl("config", "plan", "--config", config)
    assert fits.returncode == 0, fits.stderr
    assert "7.62B params x 2 B / 8 GPU(s) (zero3)" in fits.stdout and fits.stdout.rstrip().endswith("fits")
    refused = wrl("config", "plan", "--config", config, "--gpus", "1")
    assert (
        refused.returncode == 1 and "DOES NOT FIT" in refused.stdout and "optimizer state" in refused.stdout
    )
    demo = wrl("config", "plan", "--config", str(PROJECT_ROOT / "configs" / "demo.yaml"))
    assert (
        demo.returncode == 2 and "no architecture known for 'embedded:smollm2-135m-instruct'" in demo.stderr
    )
    assert "demo.yaml: generators[0].model:" in " ".join(demo.stderr.split())


def test_validate_checks_memory_and_says_when_it_cannot(tmp_path):
    paper = PROJECT_ROOT / "configs" / PAPER[0]
    own = tmp_path / "own-model.yaml"  # a GPU recipe whose policy's architecture nobody can read here
    own.write_text(
        paper.read_text().replace("model: AQuarterMile/Writing-Model-Qwen-7B", "model: org/own-7b", 1)
    )
    one_gpu = tmp_path / "one-gpu.yaml"
    one_gpu.write_text(paper.read_text().replace("  gpus: 8\n", "  gpus: 1\n"))
    result = wrl("config", "validate", str(paper), str(own), str(one_gpu))
    assert result.returncode == 2, result.stdout + result.stderr  # one invalid file, the others checked
    out = " ".join((result.stdout + result.stderr).split())  # rich wraps long lines
    assert "its memory on 8 x 80 GiB" in out
    assert "memory not estimated (generators[0].model: no architecture known for 'org/own-7b'" in out
    assert "one-gpu.yaml" in out and "the largest term is optimizer state" in out


def test_the_gpu_check_runs_its_training_path_on_the_cpu_at_a_toy_size(tmp_path):
    """benchmarks/gpu_check.py is for a GPU that may be lent for minutes: its whole path (the random
    model at the recipe's shape, the word-level tokenizer, TRL's GRPO, the report) runs here first."""
    import json
    import subprocess
    import sys

    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--smoke", "--steps", "2", "--out", str(out)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["steps"] == 2 and len(report["step_s"]) == 2  # one update per timed step
    assert report["completion_mean_length"] == [8.0, 8.0]  # generated to max_response_tokens
    assert set(report["planned_terms_gib"]) >= {"weights", "optimizer state", "activations", "logits"}
