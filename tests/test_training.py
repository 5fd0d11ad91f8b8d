"""Stage 5 on the tiny model: TRL GRPO really trains against the ladders, with the pairwise judge
reward and the curriculum in storage; the trained policy is registered and loads back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from configs.loading import load_recipe
from flows.train import train_policy
from storage import DatasetRef, open_storage
from tests.conftest import PROJECT_ROOT


# The expected logprob reward is continuous, so a group's rollouts never all tie and every step
# has a gradient: the weight-change assertions below cannot pass or fail by luck.
def train_recipe(
    tmp_path,
    model,
    *,
    training_extra="",
    curriculum="schedule: dynamic, promotion: any-win",
    max_steps=3,
    batch_size=2,
    num_generations=2,
    backends_extra="",
    reward="{kind: pairwise, position: position-disadvantage, logprob_reward: expected}",
) -> str:
    path = tmp_path / "train.yaml"
    path.write_text(f"""\
name: train-test
storage: {{root: {tmp_path / "store"}, model_cache: {tmp_path / "models"}}}
data: {{format: builtin, limit: 3}}
backends:
  local: {{kind: transformers, device: cpu, dtype: float32, max_batch_size: 8}}
{backends_extra}generators:
  - {{name: policy, role: policy, backend: local, model: {model}, decoding: {{temperature: 0.0, max_tokens: 8}}}}
  - {{name: rival, backend: local, model: {model}, decoding: {{temperature: 0.7, max_tokens: 16}}}}
  - {{name: rival2, backend: local, model: {model}, decoding: {{temperature: 1.0, max_tokens: 12}}}}
judge: {{backend: local, model: {model}, mode: logprob}}
selection: {{strategy: full}}
reward: {reward}
curriculum: {{{curriculum}}}
training:
  learning_rate: 1.0e-3
  batch_size: {batch_size}
  num_generations: {num_generations}
  max_response_tokens: 8
  max_steps: {max_steps}
  save_steps: 2
  device: cpu
  lora: {{r: 4, alpha: 8}}
{training_extra}""")
    return str(path)


def _stages(summary):
    return {s["stage"]: s for s in summary["stages"]}


def test_training_updates_the_policy_and_records_steps_and_curriculum(
    prefect_harness, tiny_model_dir, tmp_path, capfd, caplog
):
    import torch
    from transformers import AutoModelForCausalLM

    recipe_path = train_recipe(tmp_path, tiny_model_dir)
    caplog.set_level("INFO")
    summary = train_policy(recipe_path=recipe_path)
    stages = _stages(summary)
    assert list(stages) == ["ingest", "generate", "score", "select", "order", "train"]
    train = stages["train"]["summary"]
    assert train["steps"] == 3 and train["resumed_from"] is None

    storage = open_storage(load_recipe(recipe_path).storage)
    metrics = storage.datasets.read(DatasetRef.parse(stages["train"]["outputs"]["train_metrics"])).to_pylist()
    by_step = {}
    for m in metrics:
        by_step.setdefault(m["step"], {})[(m["source"], m["name"])] = m["value"]
    assert sorted(by_step) == [1, 2, 3]
    for step in (1, 2, 3):
        assert ("reward", "curriculum/mean_rung") in by_step[step] and ("trainer", "loss") in by_step[step]

    judgments = storage.datasets.read(
        DatasetRef.parse(stages["train"]["outputs"]["train_judgments"])
    ).to_pylist()
    assert len(judgments) == 3 * 2 * 2  # steps x prompts x generations
    assert {j["step"] for j in judgments} == {1, 2, 3}
    for j in judgments:  # a reward is a verdict's value, or None with the failure recorded
        assert (j["reward"] is None) == (j["verdict"] is None) == (j["error"] is not None)
        assert j["reward"] is None or 0.0 <= j["reward"] <= 1.0  # expected: P(win) + 0.5 P(tie)
    history = storage.datasets.read(
        DatasetRef.parse(stages["train"]["outputs"]["curriculum_history"])
    ).to_pylist()
    assert history and {h["step"] for h in history} <= {1, 2, 3}
    for h in history:
        assert h["rung_after"] == h["rung_before"] + int(h["promoted"])

    # The curriculum's progress per step is over ALL instructions (not the step's batch): replay
    # the history from every instruction on rung 0 and compare the mean and the counts per rung.
    ladders = storage.datasets.read(DatasetRef.parse(stages["order"]["outputs"]["ladders"])).to_pylist()
    rungs = dict.fromkeys((lad["instruction_id"] for lad in ladders), 0)
    assert len(rungs) > 2  # more instructions than the 2 prompts a step judges
    for step in (1, 2, 3):
        rungs |= {h["instruction_id"]: h["rung_after"] for h in history if h["step"] == step}
        assert by_step[step][("reward", "curriculum/mean_rung")] == pytest.approx(
            sum(rungs.values()) / len(rungs)
        )
        counts = {int(name.rsplit("/", 1)[1]): v for (source, name), v in by_step[step].items()
                  if name.startswith("curriculum/instructions_at_rung/")}  # fmt: skip
        assert counts == {r: float(list(rungs.values()).count(r)) for r in range(max(rungs.values()) + 1)}
    # The terminal shows our line per step; TRL's metric dicts go to the trainer log file.
    printed = "".join(capfd.readouterr())
    assert "train: step 3/3 (" in caplog.text and "curriculum: mean rung" in caplog.text
    assert "'grad_norm'" not in printed + caplog.text and "'loss'" not in printed + caplog.text
    (trainer_log,) = (storage.root / "training").glob("*/trainer_log.jsonl")
    logged = [json.loads(line) for line in trainer_log.read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3] and "grad_norm" in logged[0]

    # Each checkpoint says what it was trained on.
    (checkpoint,) = (storage.root / "training").glob("*/checkpoint-2")
    lineage = json.loads((checkpoint / "wrl_lineage.json").read_text())
    assert lineage["step"] == 2 and lineage["ladders"] == stages["order"]["outputs"]["ladders"]

    # The trained policy: registered, a plain model folder, with weights that moved.
    model = storage.training.model(train["model_id"])
    assert model is not None and model["step"] == 3
    trained = AutoModelForCausalLM.from_pretrained(model["path"])
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    changed = [
        name for name, p in trained.named_parameters()
        if not torch.equal(p, dict(base.named_parameters())[name])
    ]  # fmt: skip
    assert any("q_proj" in n or "v_proj" in n for n in changed), changed[:5]

    # The run report has the training curves and its plot, published as Prefect artifacts.
    report = summary["report"]["training"]
    assert [s["step"] for s in report["steps"]] == [1, 2, 3] and report["plot"].endswith("training.png")
    assert {"train-test-training-steps", "train-test-training-plot"} <= set(summary["report"]["artifacts"])

    # The registered folder is servable: `transformers serve` answers a chat request from it.
    import asyncio

    from tasks.llm.serving import LocalModelServer
    from tests.test_local_server import ask

    with LocalModelServer(model["path"], device="cpu") as server:
        reply = asyncio.run(ask(server.base_url, server.model_name))
    assert reply.choices[0].message.content is not None and reply.usage.completion_tokens > 0

    # `wrl models` lists it; `wrl serve model:<id>` resolves it (an unknown id is a clear error).
    from tests.test_cli import wrl

    listed = wrl("models", "--config", recipe_path)
    assert listed.returncode == 0 and train["model_id"] in listed.stdout.replace("\n", "")
    unknown = wrl("serve", "model:nope", "--config", recipe_path)
    assert unknown.returncode != 0 and "no trained model 'nope'" in unknown.stdout + unknown.stderr

    # Same config, same ladders: the train stage is a cache hit.
    again = _stages(train_policy(recipe_path=recipe_path))
    assert again["train"]["cached"]


def test_a_recipe_without_training_cannot_run_the_train_stage(prefect_harness, tiny_model_dir, tmp_path):
    from configs.loading import ConfigError

    path = Path(train_recipe(tmp_path, tiny_model_dir))
    text = path.read_text()
    path.write_text(text[: text.index("training:")])
    with pytest.raises(ConfigError, match="training"):
        train_policy(recipe_path=str(path))


@pytest.mark.parametrize("recipe", ["paper-qwen2.5-7b.yaml", "paper-llama3.1-8b.yaml", "demo.yaml"])
def test_the_shipped_training_blocks_pass_trls_own_checks(recipe):
    from tasks.training.args import policy_dtype, trainer_args, validate_training
    from tests.conftest import PROJECT_ROOT

    training = load_recipe(PROJECT_ROOT / "configs" / recipe).training
    devices = 1 if training.device == "cpu" else 8
    assert validate_training(training, world_sizes=(1, 2, 4, 8)[: 1 if devices == 1 else 4]) == []
    args = trainer_args(training, Path("unused"), world_size=devices, hardware_checks=False)
    assert args.beta == training.kl_coef and args.learning_rate == training.learning_rate
    assert args.per_device_train_batch_size * devices * training.gradient_accumulation_steps == (
        training.batch_size * training.num_generations
    )
    if recipe.startswith("paper"):  # the GPU recipe: vLLM rollouts, bf16
        assert args.use_vllm and args.vllm_mode == training.vllm_mode and training.bf16
        # vLLM's context is the prompt budget plus the response budget, not the model's whole context
        assert args.vllm_max_model_length == training.max_prompt_tokens + training.max_response_tokens
        # On the GPU (transformers refuses bf16 here) the policy loads in bf16, not TRL's float32
        assert policy_dtype(training, on_cpu=False) == "bfloat16"
    else:
        assert args.model_init_kwargs == {"dtype": "float32"}


def test_a_batch_that_cannot_be_split_over_the_devices_is_refused():
    from configs.schema import TrainingConfig
    from tasks.training.args import validate_training

    bad = TrainingConfig(batch_size=3, num_generations=4, gradient_accumulation_steps=5)
    problems = validate_training(bad, world_sizes=(1, 2))
    assert len(problems) == 2 and "12 completions per step" in problems[0]


def test_rloo_full_fine_tuning_trains_too(prefect_harness, tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    recipe_path = train_recipe(tmp_path, tiny_model_dir, max_steps=1)
    overrides = {"training": {"algorithm": "rloo", "lora": None, "save_steps": 1}}
    train = _stages(train_policy(recipe_path=recipe_path, overrides=overrides))["train"]["summary"]
    assert train["steps"] == 1 and train["judgments"] == 4
    trained = AutoModelForCausalLM.from_pretrained(train["model_path"])
    base = dict(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).named_parameters())
    # Full fine-tuning touches every layer type (LoRA only the attention projections).
    assert any("mlp" in n and not torch.equal(p, base[n]) for n, p in trained.named_parameters())


def test_a_flow_launched_per_rank_fails_clearly_before_writing_anything(
    tiny_model_dir, tmp_path, monkeypatch
):
    """`accelerate launch wrl ...` would run the whole flow per rank, each rank's train stage waiting
    on the others' claim (the stage launches its ranks itself). The stage refuses instead."""
    from configs.loading import ConfigError
    from tasks.stages import train
    from tasks.stages.runner import run_stage

    recipe = load_recipe(train_recipe(tmp_path, tiny_model_dir))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"WORLD_SIZE=2\); run `wrl` as one process"):
        run_stage(train.SPEC, train.compute, recipe,
                  {"ladders": DatasetRef("ladders", 0), "instructions": DatasetRef("instructions", 0)})  # fmt: skip
    storage = open_storage(recipe.storage)
    with storage.catalog.connect() as con:
        assert con.execute("SELECT count(*) FROM curricula").fetchone() == (0,)
        assert con.execute("SELECT status FROM stage_runs").fetchall() == [("failed",)]
    assert not (storage.root / "training").exists()


def test_the_training_report_shows_every_instructions_rung_per_step_and_at_the_end(tmp_path):
    import pyarrow as pa

    from tasks.training.report import plot_training_report, training_report

    def metric(step, name, value, source="reward"):
        return {"step": step, "source": source, "name": name, "value": value}

    rows = [metric(1, "reward/mean", 0.5), metric(1, "curriculum/mean_rung", 0.25),
            metric(1, "curriculum/instructions_at_rung/0", 3.0), metric(1, "curriculum/instructions_at_rung/1", 1.0),
            metric(2, "reward/mean", 0.6), metric(2, "curriculum/mean_rung", 0.75),
            metric(2, "curriculum/instructions_at_rung/0", 2.0), metric(2, "curriculum/instructions_at_rung/1", 1.0),
            metric(2, "curriculum/instructions_at_rung/2", 1.0), metric(2, "loss", 0.1, source="trainer")]  # fmt: skip
    history = pa.Table.from_pylist(
        [
            {"step": 1, "instruction_id": "a", "rung_after": 1, "promoted": True},
            {"step": 2, "instruction_id": "a", "rung_after": 2, "promoted": True},
        ]
    )
    report = training_report(pa.Table.from_pylist(rows), history)
    assert [(s["step"], s["mean_rung"], s["rungs"]) for s in report["steps"]] == [
        (1, 0.25, "0:3 1:1"), (2, 0.75, "0:2 1:1 2:1")
    ]  # fmt: skip
    # All four instructions at the end, not only the one the history names.
    assert report["final_rungs"] == {0: 2, 1: 1, 2: 1} and report["promotions"] == 2
    path = plot_training_report(report, tmp_path / "training.png")
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"
    # A run recorded before the per-rung counts: the end distribution comes from the history.
    old = training_report(pa.Table.from_pylist(rows[:2]), history)
    assert old["final_rungs"] == {2: 1} and old["steps"][0]["rungs"] is None


@pytest.mark.parametrize(
    "override,expected",
    [
        ({}, {"distributed_type": "DEEPSPEED", "num_processes": 8, "mixed_precision": "bf16",
              "deepspeed_config.zero_stage": 3, "deepspeed_config.offload_optimizer_device": "none",
              "deepspeed_config.zero3_save_16bit_model": True}),
        ({"cpu_offload": True}, {"deepspeed_config.offload_optimizer_device": "cpu"}),
        ({"distributed": "fsdp2", "cpu_offload": True},
         {"distributed_type": "FSDP", "fsdp_config.fsdp_version": 2, "fsdp_config.fsdp_offload_params": True,
          "fsdp_config.fsdp_state_dict_type": "FULL_STATE_DICT"}),
        ({"distributed": "ddp", "gpus": 4}, {"distributed_type": "MULTI_GPU", "num_processes": 4}),
        ({"gpus": 1}, {"distributed_type": "NO", "num_processes": 1, "use_cpu": False}),
        # CPU ranks: accelerate's torchrun launcher; each rank's TrainingArguments picks gloo.
        ({"device": "cpu", "bf16": False, "distributed": "ddp", "processes": 2},
         {"distributed_type": "MULTI_GPU", "num_processes": 2, "mixed_precision": "no", "use_cpu": False}),
        ({"device": "cpu", "bf16": False}, {"distributed_type": "NO", "num_processes": 1, "use_cpu": True}),
    ],
)  # fmt: skip
def test_the_accelerate_configuration_follows_the_recipe_and_accelerate_reads_it(
    override, expected, tmp_path
):
    import yaml
    from accelerate.commands.config.config_args import load_config_from_file

    from tasks.training.launch import accelerate_config

    training = load_recipe(PROJECT_ROOT / "configs" / "paper-qwen2.5-7b.yaml").training.model_copy(
        update=override
    )
    config = accelerate_config(training, port=29511)
    for dotted, value in expected.items():
        node = config
        for key in dotted.split("."):
            node = node[key]
        assert node == value, dotted
    path = tmp_path / "accelerate.yaml"
    path.write_text(yaml.safe_dump(config))
    parsed = load_config_from_file(str(path))  # accelerate's own reader refuses unknown keys
    assert parsed.num_processes == config["num_processes"] and parsed.main_process_port == 29511


def test_sharded_strategies_on_cpu_ranks_are_refused():
    from tasks.training.launch import accelerate_config

    training = load_recipe(PROJECT_ROOT / "configs" / "paper-qwen2.5-7b.yaml").training.model_copy(
        update={"device": "cpu", "bf16": False, "processes": 2}
    )
    with pytest.raises(ValueError, match="zero3 needs GPUs; on the CPU the ranks run DDP over gloo"):
        accelerate_config(training, port=0)
