"""The verl engine's configuration (issue 22, first part): the schema's engine and algorithm, the paper's
PPO recipes (which extend the GRPO ones), verl's configuration generated from a recipe and checked
against the official launch script, the memory plan with the critic, and the environment's locks.

verl's own config composition runs in verl's environment; those tests run where it exists
(`make verl-cpu`, or WRL_VERL_PYTHON naming its python) and are skipped elsewhere."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from configs.loading import ConfigError, load_recipe
from configs.schema import TrainingConfig
from tasks.training import verl_config
from tasks.training.memory_plan import GIB, architecture_of, plan_training
from tasks.training.verl_config import VerlRun, epochs_for, hydra_value, override_args, overrides
from tests.support.paths import PROJECT_ROOT
from tests.support.verl_env import needs_verl, verl_python

PPO = ["paper-qwen2.5-7b-ppo.yaml", "paper-llama3.1-8b-ppo.yaml"]


def ppo_recipe(name: str = PPO[0]):
    return load_recipe(PROJECT_ROOT / "configs" / name)


def run_paths(tmp: Path = Path("/data"), model: str = "/models/writer", rows: int = 5000) -> VerlRun:
    return VerlRun(
        model=model, train_files=tmp / "train.parquet", val_files=tmp / "test.parquet", train_rows=rows,
        checkpoints=tmp / "ckpt", reward_function=tmp / "reward.py", experiment="paper-ppo",
        reward_kwargs={"actor": "wrl-reward"},
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The schema and the recipes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PPO)
def test_the_ppo_recipes_extend_the_paper_recipes_and_change_only_the_trainer(name):
    ppo = ppo_recipe(name)
    grpo = load_recipe(PROJECT_ROOT / "configs" / name.replace("-ppo", ""))
    assert ppo.name == grpo.name + "-ppo"
    assert ppo.model_dump(exclude={"name", "training"}) == grpo.model_dump(exclude={"name", "training"})
    t = ppo.training
    assert (t.engine, t.algorithm, t.num_generations, t.distributed, t.cpu_offload) == (
        "verl",
        "ppo",
        1,
        "fsdp2",
        True,
    )
    # the shared settings stay the GRPO recipe's, which mirror the same launch script
    same = ("learning_rate", "warmup_ratio", "batch_size", "updates_per_step", "max_steps", "entropy_coef")
    assert {k: getattr(t, k) for k in same} == {k: getattr(grpo.training, k) for k in same}


VERL = {"engine": "verl", "distributed": "fsdp2", "clip_ratio_c": 3.0, "lr_scheduler": "constant"}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"algorithm": "ppo"}, "TRL 1.16 has no PPO trainer"),
        ({"verl": {}}, "verl: only used by `engine: verl`"),
        (VERL | {"algorithm": "rloo"}, "engine verl runs ppo or grpo"),
        (VERL | {"distributed": "zero3"}, "verl trains with FSDP"),
        (VERL | {"clip_ratio_c": None}, "verl always clips dual"),
        (VERL | {"lr_scheduler": "linear"}, "verl has constant (with warmup_ratio) and cosine"),
        (VERL | {"use_vllm": True}, "its own engine"),
        (VERL | {"gradient_accumulation_steps": 2}, "bounds micro-batches by tokens"),
        ({"num_generations": 1}, "grpo compares rollouts within a group"),
    ],
)
def test_engine_settings_that_cannot_run_are_refused(settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainingConfig(**settings)
    assert TrainingConfig(**VERL).engine == "verl"  # the same settings, minus the one refused


def test_a_recipe_names_the_refused_engine_setting_once_at_its_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text((PROJECT_ROOT / "configs" / "demo.yaml").read_text().split("\ntraining:")[0]
                    + "\ntraining:\n  engine: verl\n  distributed: fsdp2\n  lr_scheduler: linear\n")  # fmt: skip
    with pytest.raises(ConfigError) as refused:
        load_recipe(path)
    lines = str(refused.value).splitlines()
    at = next(i for i, line in enumerate(path.read_text().splitlines(), 1) if "lr_scheduler" in line)
    assert f"r.yaml:{at}: training.lr_scheduler: with engine verl" in str(refused.value), lines
    assert "training.training" not in str(refused.value)


def test_extends_merges_mappings_and_reports_each_problem_in_the_file_that_sets_it(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text((PROJECT_ROOT / "configs" / "demo.yaml").read_text())
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nname: child\njudge: {mode: json}\n")
    recipe = load_recipe(child)
    demo = load_recipe(base)
    assert recipe.name == "child" and recipe.judge.mode == "json" and recipe.judge.model == demo.judge.model
    # a bad value set in the base is reported at the base's line
    base.write_text(base.read_text().replace("name: demo", "name: demo\nnonsense_key: 1", 1))
    with pytest.raises(ConfigError, match=re.escape(f"{base}:")) as err:
        load_recipe(child)
    assert "nonsense_key" in str(err.value)
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="a cycle"):
        load_recipe(loop)
    missing = tmp_path / "orphan.yaml"
    missing.write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere.yaml: recipe file not found \(extended by"):
        load_recipe(missing)


# ---------------------------------------------------------------------------------------------
# verl's configuration
# ---------------------------------------------------------------------------------------------

# scripts/train_writing_rl.sh of Tongyi-Zhiwen/Writing-RL: each setting it passes that this project
# maps, with its value (what its fork's defaults supplied is in the module docstring).
OFFICIAL = {
    "data.train_batch_size": 32,
    "data.max_prompt_length": 4096,
    "data.max_response_length": 10000,
    "algorithm.adv_estimator": "gae",
    "actor_rollout_ref.actor.optim.lr": 1e-6,
    "actor_rollout_ref.model.enable_gradient_checkpointing": True,
    "actor_rollout_ref.model.use_remove_padding": True,
    "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio": 0.4,
    "actor_rollout_ref.actor.ppo_mini_batch_size": 16,
    "actor_rollout_ref.actor.use_dynamic_bsz": True,
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": 16500,
    "actor_rollout_ref.actor.fsdp_config.param_offload": True,
    "actor_rollout_ref.actor.fsdp_config.optimizer_offload": True,
    "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz": True,
    "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu": 16500,
    "actor_rollout_ref.rollout.tensor_model_parallel_size": 2,
    "actor_rollout_ref.rollout.name": "vllm",
    "actor_rollout_ref.rollout.max_num_batched_tokens": 16384,
    "actor_rollout_ref.rollout.gpu_memory_utilization": 0.7,
    "actor_rollout_ref.ref.log_prob_use_dynamic_bsz": True,
    "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu": 16500,
    "actor_rollout_ref.ref.fsdp_config.param_offload": True,
    "actor_rollout_ref.rollout.n": 1,
    "actor_rollout_ref.rollout.temperature": 1.0,
    "critic.optim.lr": 1e-5,
    "critic.model.use_remove_padding": True,
    "critic.optim.lr_warmup_steps_ratio": 0.05,
    "critic.model.enable_gradient_checkpointing": True,
    "critic.ppo_micro_batch_size_per_gpu": 2,
    "trainer.critic_warmup": 0,
    "trainer.val_before_train": False,
    "trainer.n_gpus_per_node": 8,
    "trainer.nnodes": 1,
    "trainer.save_freq": 50,
    "trainer.test_freq": 50,
    "trainer.total_training_steps": 405,
}


@pytest.mark.parametrize("name", PPO)
def test_the_generated_configuration_is_the_official_launch_scripts(name):
    recipe = ppo_recipe(name)
    settings = overrides(recipe.training, run_paths(model=recipe.policy.model))
    assert {k: settings[k] for k in OFFICIAL} == OFFICIAL
    # KL off, as the official run; the critic offloaded as the actor; the reward is this project's
    assert (
        settings["algorithm.use_kl_in_reward"] is False
        and settings["actor_rollout_ref.actor.use_kl_loss"] is False
    )
    assert settings["critic.fsdp.param_offload"] and settings["critic.fsdp.optimizer_offload"]
    assert (
        settings["actor_rollout_ref.actor.entropy_coeff"] == 0.001
        and settings["actor_rollout_ref.actor.clip_ratio_c"] == 3.0
    )
    assert settings["reward.custom_reward_function.name"] == "compute_score"
    assert settings["+reward.custom_reward_function.reward_kwargs.actor"] == "wrl-reward"
    assert settings["actor_rollout_ref.model.path"] == settings["critic.model.path"] == recipe.policy.model
    # 5,000 ladders make 156 batches of 32 an epoch: 405 steps need 3 epochs
    assert settings["trainer.total_epochs"] == 3


def test_grpo_on_verl_has_no_critic_and_a_group():
    training = ppo_recipe().training.model_copy(update={"algorithm": "grpo", "num_generations": 4})
    settings = overrides(training, run_paths())
    assert settings["algorithm.adv_estimator"] == "grpo" and settings["actor_rollout_ref.rollout.n"] == 4
    assert not any(k.startswith("critic.") for k in settings)


def test_epochs_cover_the_steps_and_too_few_ladders_are_refused():
    training = ppo_recipe().training
    assert epochs_for(training, 32 * 405) == 1 and epochs_for(training, 32 * 405 - 1) == 2
    with pytest.raises(ConfigError, match="exceeds the 31 training ladders"):
        epochs_for(training, 31)


def test_values_are_written_in_hydras_override_grammar():
    assert [hydra_value(v) for v in (True, None, 3, 1e-06, ["console"], "/a/b-c.parquet")] == [
        "true", "null", "3", "1e-06", "[console]", "/a/b-c.parquet",
    ]  # fmt: skip
    assert hydra_value("/runs/my run's/x") == "'/runs/my run\\'s/x'"
    assert override_args({"a.b": False, "c": "x y"}) == ["a.b=false", "c='x y'"]


# ---------------------------------------------------------------------------------------------
# Memory: the critic, the token-bounded micro-batches, the rollout engine's share
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "gpus", "actor_gib", "critic_gib", "fits"),
    [(PPO[0], 8, 20.6, 16.5, True), (PPO[0], 4, 24.1, 19.8, False), (PPO[1], 8, 19.9, 18.0, True)],
)
def test_the_ppo_plans_are_the_documented_numbers(name, gpus, actor_gib, critic_gib, fits):
    """docs/training.md quotes these (`wrl config plan`); a change here changes the docs."""
    recipe = ppo_recipe(name)
    plan = plan_training(recipe.training, architecture_of(recipe.policy.model), gpus=gpus, gpu_memory_gib=80)
    phase_name, phase = plan.other_phase
    assert phase_name == "critic phase" and round(sum(t.bytes for t in phase) / GIB, 1) == critic_gib
    assert round(plan.training_total / GIB, 1) == actor_gib and plan.fits is fits
    assert round(plan.training_budget / GIB, 1) == 24.0  # the rollout engine keeps 0.7 of 80 GiB


def test_without_offload_the_critic_is_resident_beside_the_actor():
    recipe = ppo_recipe()
    arch = architecture_of(recipe.policy.model)
    offloaded = plan_training(recipe.training, arch, 8, 80)
    resident = plan_training(recipe.training.model_copy(update={"cpu_offload": False}), arch, 8, 80)
    terms = {t.name: t.bytes for t in resident.terms}
    assert resident.other_phase is None and terms["critic optimizer state"] > 0
    value_params = arch.params - arch.vocab * arch.hidden + arch.hidden  # no LM head, a value head
    assert terms["critic weights"] == pytest.approx(value_params * 2 / 8)
    assert resident.training_total > offloaded.training_total


def test_wrl_config_validate_checks_the_ppo_recipes_and_their_memory(tmp_path):
    from tests.support.cli import wrl

    four = tmp_path / "four-gpus.yaml"  # extends the recipe from another folder: the path is relative
    four.write_text(f"extends: {PROJECT_ROOT / 'configs' / PPO[0]}\nname: four\ntraining: {{gpus: 4}}\n")
    result = wrl("config", "validate", *(str(PROJECT_ROOT / "configs" / n) for n in PPO), str(four))
    out = " ".join((result.stdout + result.stderr).split())  # rich wraps long lines
    assert result.returncode == 2 and out.count("verl's configuration generated") == 2, out
    assert "four-gpus.yaml" in out and "24.1 GiB per GPU, 24.0 GiB available on 4 x 80 GiB" in out


# ---------------------------------------------------------------------------------------------
# The environment's locks
# ---------------------------------------------------------------------------------------------


def test_the_verl_environment_pins_this_projects_libraries_as_pyproject_does():
    declared = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    specs = {re.split(r"[<>=!~\[]", d, maxsplit=1)[0].lower(): d for d in declared}
    lines = [line.strip() for line in (PROJECT_ROOT / "locks" / "verl-common.in").read_text().splitlines()]
    common = [line for line in lines if line and not line.startswith("#")]
    for requirement in common:
        name = re.split(r"[<>=!~\[]", requirement, maxsplit=1)[0].lower()
        if name != "ray":  # Ray is verl's, not this project's
            assert specs[name] == requirement, (
                f"locks/verl-common.in {requirement!r} != pyproject {specs[name]!r}"
            )
    # and the store's file formats are the main environment's: the same DuckDB, Delta and Arrow
    main = (PROJECT_ROOT / "locks" / "cpu-linux-x86_64-py311.txt").read_text()
    for lock in ("verl-gpu-linux-x86_64-py311.txt", "verl-cpu-linux-x86_64-py311.txt"):
        text = (PROJECT_ROOT / "locks" / lock).read_text()
        for package in ("duckdb", "deltalake", "pyarrow"):
            pin = re.search(rf"^{package}==\S+$", main, re.M).group(0)
            assert re.search(rf"^{re.escape(pin)}$", text, re.M), f"{lock} does not pin {pin}"


# ---------------------------------------------------------------------------------------------
# verl's own composition (in verl's environment)
# ---------------------------------------------------------------------------------------------


def compose(settings: dict) -> dict:
    return verl_config.compose_with_verl(settings, verl_python())


@needs_verl
@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_verl_composes_and_validates_the_generated_configuration(algorithm, tiny_model_dir, tmp_path):
    recipe = ppo_recipe()
    training = recipe.training
    if algorithm == "grpo":
        training = training.model_copy(update={"algorithm": "grpo", "num_generations": 4})
    composed = compose(overrides(training, run_paths(tmp_path, model=str(tiny_model_dir))))
    assert "error" not in composed, composed.get("error")
    assert composed["critic"] is (algorithm == "ppo") and composed["reference"] is False  # KL off
    # the only unset key is the disabled reward model's rollout engine
    assert composed["missing"] == ["reward.reward_model.rollout.name"]
    config = composed["config"]
    actor = config["actor_rollout_ref"]["actor"]
    assert (actor["ppo_mini_batch_size"], actor["ppo_max_token_len_per_gpu"], actor["strategy"]) == (
        16,
        16500,
        "fsdp2",
    )
    assert config["reward"]["custom_reward_function"] == {
        "path": str(tmp_path / "reward.py"), "name": "compute_score", "reward_kwargs": {"actor": "wrl-reward"},
    }  # fmt: skip


@needs_verl
def test_verl_refuses_what_it_cannot_run(tiny_model_dir, tmp_path):
    settings = overrides(ppo_recipe().training, run_paths(tmp_path, model=str(tiny_model_dir)))
    settings["actor_rollout_ref.actor.use_dynamic_bsz"] = False  # then a micro-batch size is needed
    assert "micro_batch_size" in compose(settings)["error"]
    settings = overrides(ppo_recipe().training, run_paths(tmp_path, model=str(tiny_model_dir)))
    settings["trainer.n_gpu_per_node"] = 8  # a key verl does not have
    assert "n_gpu_per_node" in compose(settings)["error"]


@needs_verl
def test_wrl_config_verl_prints_the_command_and_has_verl_check_it(tiny_model_dir):
    from tests.support.cli import wrl

    recipe = str(PROJECT_ROOT / "configs" / PPO[0])
    shown = wrl("config", "verl", "--config", recipe)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("# verl's configuration for this recipe. `wrl run train` runs it through")
    assert "\npython -m verl.trainer.main_ppo \\\n" in shown.stdout
    assert "    algorithm.adv_estimator=gae \\\n" in shown.stdout
    assert "train.parquet" in shown.stdout and "<order stage run>" in shown.stdout
    checked = wrl("config", "verl", "--config", recipe, "--check", "--model", str(tiny_model_dir),
                  "--set", f"training.verl.environment={verl_python().parents[1]}")  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert "verl composed and validated it (critic: True, reference model: False)" in checked.stdout


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.skipif(
    os.environ.get("WRL_BUILD_VERL_ENV") != "1",
    reason="builds verl's 2.3 GB environment (112 s here): WRL_BUILD_VERL_ENV=1 runs it. CI covers the reward "
    "actor under Ray in the main environment (tests/test_reward_actor.py)",
)
def test_the_verl_environment_builds_from_its_lock_and_runs_the_reward_path(tmp_path, tiny_model_dir):
    venv = tmp_path / "verl-venv"
    done = subprocess.run(["make", "verl-cpu", f"VERL_VENV={venv}"], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=1100)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    python = venv / "bin" / "python"
    # this project's reward path imports there (no torch, TRL or Prefect needed), beside verl and Ray
    probe = (
        "import verl, ray, tasks.training.reward_service, tasks.training.verl_reward; print(verl.__version__)"
    )
    imported = subprocess.run([str(python), "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert imported.returncode == 0 and imported.stdout.strip() == "0.9.1", imported.stderr[-3000:]
    composed = verl_config.compose_with_verl(
        overrides(ppo_recipe().training, run_paths(tmp_path, model=str(tiny_model_dir))), python
    )
    assert "error" not in composed and composed["critic"] is True


ENTRY_CHECK = """
from verl.trainer.ppo.v1 import get_trainer_cls, trainer_base
from tasks.training import verl_entry
from tasks.training.verl_hooks import CurriculumHooks, JudgeFailureMasking

sync = get_trainer_cls("sync")
trainer = verl_entry.writing_rl_trainer(sync)
assert trainer.__mro__[1:4] == (CurriculumHooks, JudgeFailureMasking, sync), trainer.__mro__
for hook in ("_load_checkpoint", "on_step_begin", "_save_checkpoint", "on_step_end", "_compute_metrics"):
    assert getattr(trainer, hook) is getattr(CurriculumHooks, hook), hook
    assert hasattr(sync, hook), f"verl's trainer has no {hook}: the mixin would never run"
assert trainer._compute_advantage is CurriculumHooks._compute_advantage  # the stop check, then the masking
runner = verl_entry._task_runner()
assert hasattr(runner, "remote") and trainer_base.TRAINER_REGISTRY["sync"] is sync  # swapped in the actor only
print("ok")
"""


@needs_verl
def test_the_driver_trains_with_verls_own_sync_trainer_under_the_writing_rl_mixins():
    """verl 0.9.1's v1 sync trainer has every method the mixins extend, and the TaskRunner subclass
    builds (verl's actor class cannot be subclassed directly)."""
    done = subprocess.run([str(verl_python()), "-c", ENTRY_CHECK], capture_output=True, text=True, cwd=PROJECT_ROOT,
                          env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, timeout=300)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_a_missing_verl_environment_is_refused_by_name(tmp_path):
    from tasks.training.verl_launch import verl_python

    with pytest.raises(
        ConfigError, match=r"training\.verl\.environment: .*nope/bin/python does not exist.*make verl"
    ):
        verl_python(tmp_path / "nope")
    (tmp_path / "env" / "bin").mkdir(parents=True)
    (tmp_path / "env" / "bin" / "python").write_text("")
    assert verl_python(tmp_path / "env") == tmp_path / "env" / "bin" / "python"
