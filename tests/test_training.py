"""Stage 5 on the tiny model: TRL GRPO really trains against the ladders, with the pairwise judge
reward and the curriculum in storage; the trained policy is registered and loads back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from configs.loading import load_recipe
from flows.train import train_policy
from storage import DatasetRef, open_storage
from tests.support.accelerate_files import assert_accelerate_reads
from tests.support.paths import PROJECT_ROOT
from tests.support.recipes import train_recipe


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
    from tests.support.chat import ask

    with LocalModelServer(model["path"], device="cpu") as server:
        reply = asyncio.run(ask(server.base_url, server.model_name))
    assert reply.choices[0].message.content is not None and reply.usage.completion_tokens > 0

    # `wrl models` lists it; `wrl serve model:<id>` resolves it (an unknown id is a clear error).
    from tests.support.cli import wrl

    listed = wrl("models", "--config", recipe_path)
    assert listed.returncode == 0 and train["model_id"] in listed.stdout.replace("\n", "")
    unknown = wrl("serve", "model:nope", "--config", recipe_path)
    assert unknown.returncode != 0 and "no trained model 'nope'" in unknown.stdout + unknown.stderr

    # Same config, same ladders: the train stage is a cache hit.
    again = _stages(train_policy(recipe_path=recipe_path))
    assert again["train"]["cached"]


def test_periodic_validation_on_held_out_ladders_is_logged_and_never_enters_the_curriculum(
    prefect_harness, tiny_model_dir, tmp_path
):
    """Also RLOO with full fine-tuning: one training run for both (each launches a process tree)."""
    import torch
    from transformers import AutoModelForCausalLM

    recipe_path = train_recipe(
        tmp_path, tiny_model_dir, max_steps=2, limit=4, ordering="{validation_size: 1, seed: 3}",
        training_extra="  eval_steps: 1\n  eval_batch_size: 2\n",
    )  # fmt: skip
    overrides = {"training": {"algorithm": "rloo", "lora": None, "save_steps": 1}}
    stages = _stages(train_policy(recipe_path=recipe_path, overrides=overrides))
    storage = open_storage(load_recipe(recipe_path).storage)

    # RLOO, full fine-tuning: one judgment per rollout (2 steps x 2 prompts x 2 rollouts), and every
    # layer type trained (LoRA touches only the attention projections).
    train = stages["train"]["summary"]
    assert train["judgments"] == 2 * 2 * 2
    trained = AutoModelForCausalLM.from_pretrained(train["model_path"])
    base = dict(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).named_parameters())
    assert any("mlp" in n and not torch.equal(p, base[n]) for n, p in trained.named_parameters())

    def read(stage, name):
        return storage.datasets.read(DatasetRef.parse(stages[stage]["outputs"][name])).to_pylist()

    ladders = read("order", "ladders")
    held_out = {lad["instruction_id"] for lad in ladders if lad["split"] == "validation"}
    training_ids = {lad["instruction_id"] for lad in ladders if lad["split"] == "train"}
    assert len(held_out) == 1 and len(training_ids) == 3
    # Validated at every step, on every rung of the held-out ladder, through the real trainer.
    metrics = {
        (m["step"], m["name"]): m["value"] for m in read("train", "train_metrics") if m["source"] == "trainer"
    }
    for step in (1, 2):
        assert 0.0 <= metrics[(step, "eval_validation/reward")] <= 1.0
        assert (step, "eval_validation/reward_vs_initial") in metrics and (
            step,
            "eval_validation/reward_vs_top",
        ) in metrics
    # The curriculum never held, judged or promoted the held-out instruction.
    history = read("train", "curriculum_history")
    assert history and {h["instruction_id"] for h in history} <= training_ids
    assert {j["instruction_id"] for j in read("train", "train_judgments")} <= training_ids
    summary = stages["train"]["summary"]
    curriculum_id = storage.training.model(summary["model_id"])["train_run_id"]
    assert set(storage.curriculum.state(curriculum_id)) == training_ids
    assert summary["steps"] == 2 and summary["validation_ladders"] == 1
    assert summary["validation"]["step"] == 2


def test_retire_stops_sampling_an_instruction_once_it_beats_its_top_rung(
    prefect_harness, tiny_model_dir, tmp_path
):
    """TRL's own generation batches, through the trainer's retire hook: a judge that always prefers
    the rollout (position-disadvantage: [[B]]) promotes whatever a step samples, so the two
    instructions climb their 3-rung ladders; once one beats its top rung, every later batch trains
    on the other, until both are retired (then nothing is left to draw, and the batch is kept)."""
    from tests.support.fault_server import FaultServer

    with FaultServer(reply_text=lambda body: "The second is better.\n[[B]]") as server:
        recipe_path = train_recipe(
            tmp_path, tiny_model_dir, limit=2, batch_size=1, num_generations=2, max_steps=6,
            backends_extra=f"  api: {{kind: openai-compatible, base_url: '{server.openai_base_url}'}}\n",
            curriculum="schedule: dynamic, promotion: any-win, top: retire",
            reward="{kind: pairwise, position: position-disadvantage, judge: {backend: api, model: j, mode: json}}",
        )  # fmt: skip
        summary = train_policy(recipe_path=recipe_path)
    outputs = _stages(summary)["train"]["outputs"]
    storage = open_storage(load_recipe(recipe_path).storage)
    history = storage.datasets.read(DatasetRef.parse(outputs["curriculum_history"])).to_pylist()
    judged = storage.datasets.read(DatasetRef.parse(outputs["train_judgments"])).to_pylist()
    assert {h["rung_after"] for h in history} <= {0, 1, 2}  # 3-rung ladders
    reached = sorted((h["step"], h["instruction_id"]) for h in history if h["reached_top"])
    assert len(reached) == 2 and reached[0][0] < reached[1][0], history
    (first_step, first), (second_step, second) = reached
    assert first != second
    between = {j["instruction_id"] for j in judged if first_step < j["step"] <= second_step}
    assert between == {second}  # the retired one was not sampled again while another was in play
    report = summary["report"]["training"]
    assert [(r["step"], r["instruction_id"]) for r in report["reached_top"]] == reached
    assert [s["topped"] for s in report["steps"]][-1] == 2.0


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
    from tests.support.paths import PROJECT_ROOT

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
        # The official optimisation: 405 steps of 2 updates, each 16 prompts x 4 rollouts over 8
        # ranks x 8 micro-batches of one sequence; constant lr after warmup over 0.4 x 810 updates
        # = 162 steps (verl: int(0.4 x 405)); no KL, so no reference model.
        assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (1, 8)
        assert (args.max_steps, args.save_steps, args.logging_steps) == (810, 100, 2)
        assert (
            args.lr_scheduler_type == "constant_with_warmup" and args.get_warmup_steps(args.max_steps) == 324
        )
        assert (args.weight_decay, args.beta, args.entropy_coef, args.delta) == (0.01, 0.0, 0.001, 3.0)
        assert (args.epsilon, args.max_grad_norm, args.num_iterations) == (
            0.2,
            1.0,
            1,
        )  # verl's clip 0.2, grad clip 1
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

    from tasks.training.launch import accelerate_config

    training = load_recipe(PROJECT_ROOT / "configs" / "paper-qwen2.5-7b.yaml").training.model_copy(
        update=override
    )
    config = accelerate_config(training, port=29511)
    assert_accelerate_reads(config, expected, tmp_path, port=29511)


def test_sharded_strategies_on_cpu_ranks_are_refused():
    from tasks.training.launch import accelerate_config

    training = load_recipe(PROJECT_ROOT / "configs" / "paper-qwen2.5-7b.yaml").training.model_copy(
        update={"device": "cpu", "bf16": False, "processes": 2}
    )
    with pytest.raises(ValueError, match="zero3 needs GPUs; on the CPU the ranks run DDP over gloo"):
        accelerate_config(training, port=0)


# Instruments the trainer's rank (WRL_TRAINER_PLUGINS imports it first): one JSON line per reward
# call (TRL's optimizer step when it came, the rollouts it got), per optimizer step (the learning
# rate it used) and per curriculum update (the step it applied).
_UPDATES_PROBE = """
import json, os
from torch.optim.optimizer import register_optimizer_step_post_hook
from tasks.training.rank_reward import RankReward

def _write(**record):
    with open(os.environ["WRL_PROBE_FILE"], "a") as handle:
        handle.write(json.dumps(record) + "\\n")

register_optimizer_step_post_hook(lambda opt, args, kwargs: _write(
    event="update", lr=opt.param_groups[0]["lr"], weight_decay=max(g["weight_decay"] for g in opt.param_groups)))
_as_trl_reward, _finish_step = RankReward.as_trl_reward, RankReward.finish_step

def as_trl_reward(self, updates_per_step=1):
    reward = _as_trl_reward(self, updates_per_step)

    async def writing_rl(prompts, completions, instruction_id, trainer_state=None, **kwargs):
        _write(event="reward", global_step=trainer_state.global_step, rollouts=len(completions))
        return await reward(prompts, completions, instruction_id, trainer_state=trainer_state, **kwargs)

    return writing_rl

def finish_step(self, step):
    _write(event="curriculum", step=step)
    return _finish_step(self, step)

RankReward.as_trl_reward, RankReward.finish_step = as_trl_reward, finish_step
"""


def test_two_updates_per_step_judge_once_update_twice_and_resume_on_a_step(
    prefect_harness, tiny_model_dir, tmp_path, monkeypatch
):
    """updates_per_step: 2 (the official run's 32 prompts in mini-batches of 16): each RL step's
    rollouts are generated and judged once, the curriculum moves once, and the batch trains in two
    optimizer updates; steps, checkpoints and logs count RL steps, and a run resumed from a
    checkpoint starts the next RL step with the curriculum as it was there, as the killed run did."""
    import shutil

    from tests.support.train_worker import weights_digest

    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "wrl_updates_probe.py").write_text(_UPDATES_PROBE)
    probe = tmp_path / "probe.jsonl"
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path / "plugin"), os.environ.get("PYTHONPATH")]))
    )
    monkeypatch.setenv("WRL_TRAINER_PLUGINS", "wrl_updates_probe")
    monkeypatch.setenv("WRL_PROBE_FILE", str(probe))
    # 2 prompts x 2 rollouts per step in 2 micro-batches, one per update; 3 steps, a checkpoint at 2.
    recipe_path = train_recipe(
        tmp_path, tiny_model_dir, max_steps=3,
        training_extra="  updates_per_step: 2\n  gradient_accumulation_steps: 2\n"
                       "  lr_scheduler: constant_with_warmup\n  warmup_ratio: 0.5\n  weight_decay: 0.01\n"
                       "  entropy_coef: 0.001\n  clip_ratio_c: 3.0\n",
    )  # fmt: skip
    summary = train_policy(recipe_path)
    train = _stages(summary)["train"]
    assert train["summary"]["steps"] == 3 and train["summary"]["judgments"] == 3 * 2 * 2

    events = [json.loads(line) for line in probe.read_text().splitlines()]
    # One reward call per step with the whole batch, at the step's start; two updates; one
    # curriculum update after them.
    kinds = [(e["event"], e.get("global_step", e.get("step"))) for e in events]
    assert kinds == [("reward", 0), ("update", None), ("update", None), ("curriculum", 1),
                     ("reward", 2), ("update", None), ("update", None), ("curriculum", 2),
                     ("reward", 4), ("update", None), ("update", None), ("curriculum", 3)]  # fmt: skip
    assert {e["rollouts"] for e in events if e["event"] == "reward"} == {4}
    # Warmup over half of the 6 updates (ceil(0.5 x 6) = 3), then constant; AdamW's weight decay.
    updates = [e for e in events if e["event"] == "update"]
    assert [round(e["lr"] / 1e-3, 4) for e in updates] == [0.0, 0.3333, 0.6667, 1.0, 1.0, 1.0]
    assert {e["weight_decay"] for e in updates} == {0.01}

    storage = open_storage(load_recipe(recipe_path).storage)
    judgments = storage.datasets.read(DatasetRef.parse(train["outputs"]["train_judgments"])).to_pylist()
    assert sorted((j["step"], j["sample_index"]) for j in judgments) == [
        (s, i) for s in (1, 2, 3) for i in range(4)
    ]
    metrics = storage.datasets.read(DatasetRef.parse(train["outputs"]["train_metrics"])).to_pylist()
    assert {m["step"] for m in metrics if m["source"] == "trainer"} == {1, 2, 3}
    (work,) = (storage.root / "training").glob("*")
    logged = [json.loads(line) for line in (work / "trainer_log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["optimizer_step"]) for r in logged if "loss" in r] == [(1, 2), (2, 4), (3, 6)]
    # TRL names checkpoints by optimizer step; their lineage and everything else by RL step.
    assert sorted(p.name for p in work.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    assert json.loads((work / "checkpoint-4" / "wrl_lineage.json").read_text())["step"] == 2
    from tasks.training.checkpoints import checkpoints

    assert [step for step, _ in checkpoints(work)] == [2, 3]

    # As if killed before its final checkpoint: the same run again resumes from RL step 2.
    with storage.catalog.connect() as con:
        snapshot = dict(
            con.execute("SELECT instruction_id, rung FROM curriculum_snapshots WHERE step = 2").fetchall()
        )
        first_step3 = con.execute(
            "SELECT instruction_id, rung_before, rung_after, wins, ties, losses FROM curriculum_history "
            "WHERE step = 3 ORDER BY instruction_id"
        ).fetchall()
    first_judgments = sorted((j["step"], j["sample_index"], j["instruction_id"], j["rung"], j["reward"])
                             for j in judgments)  # fmt: skip
    first_weights = weights_digest(train["summary"]["model_path"])
    shutil.rmtree(work / "checkpoint-6")
    probe.unlink()
    again = _stages(train_policy(recipe_path, refresh=["train"]))["train"]
    assert again["summary"]["resumed_from"] == 2 and again["summary"]["steps"] == 3
    events = [json.loads(line) for line in probe.read_text().splitlines()]
    assert [(e["event"], e.get("global_step", e.get("step"))) for e in events] == [
        ("reward", 4), ("update", None), ("update", None), ("curriculum", 3)
    ]  # fmt: skip
    assert [round(e["lr"] / 1e-3, 4) for e in events if e["event"] == "update"] == [1.0, 1.0]
    with storage.catalog.connect() as con:
        resumed_step3 = con.execute(
            "SELECT instruction_id, rung_before, rung_after, wins, ties, losses FROM curriculum_history "
            "WHERE step = 3 ORDER BY instruction_id"
        ).fetchall()
    # Step 3 started from step 2's snapshot and, on the same rollouts, judged and moved as before.
    assert resumed_step3 and all(before == snapshot[iid] for iid, before, *_ in resumed_step3)
    assert resumed_step3 == first_step3
    rejudged = storage.datasets.read(DatasetRef.parse(again["outputs"]["train_judgments"])).to_pylist()
    assert sorted((j["step"], j["sample_index"], j["instruction_id"], j["rung"], j["reward"])
                  for j in rejudged) == first_judgments  # fmt: skip
    # ... and ended with the weights of the run it continued, bit for bit.
    assert weights_digest(again["summary"]["model_path"]) == first_weights
