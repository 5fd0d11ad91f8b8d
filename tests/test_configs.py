"""Recipes: the shipped ones validate; bad ones fail before any work with file, line and field."""

from __future__ import annotations

import pytest

from configs.loading import ConfigError, load_recipe, parse_set_option, stable_hash
from configs.schema import Recipe
from tests.support.paths import PROJECT_ROOT
from tests.support.recipes import MINIMAL_YAML as MINIMAL
from tests.support.recipes import write_yaml as _write

SHIPPED = sorted((PROJECT_ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    recipe = load_recipe(path)
    assert recipe.policy.role == "policy"


def test_demo_is_the_cpu_embedded_default():
    recipe = load_recipe(PROJECT_ROOT / "configs" / "demo.yaml")
    assert recipe.data.format == "builtin"
    assert recipe.policy.model == "embedded:smollm2-135m-instruct"
    assert recipe.backends[recipe.policy.backend].kind == "transformers"
    assert recipe.backends[recipe.policy.backend].device == "cpu"


def test_paper_recipe_mirrors_the_official_setup():
    recipe = load_recipe(PROJECT_ROOT / "configs" / "paper-qwen2.5-7b.yaml")
    # RL starts from the SFT writer, as the paper; the Instruct model is an evaluation row.
    assert recipe.policy.model == "AQuarterMile/Writing-Model-Qwen-7B"
    candidates = {c.name: c for c in recipe.evaluation.candidates}
    assert (
        candidates["instruct"].model == "Qwen/Qwen2.5-7B-Instruct"
        and candidates["base"].from_training == "base"
    )
    assert {g.model for g in recipe.generators if g.role == "competitor"} == {
        "qwen-plus",
        "gpt-4o",
        "claude-3-7-sonnet-20250219",
        "deepseek-reasoner",
    }
    assert recipe.judge.model == "qwen-plus"
    assert recipe.backends[recipe.judge.backend].kind == "openai-compatible"
    t = recipe.training
    assert (t.learning_rate, t.kl_coef, t.batch_size, t.max_response_tokens, t.max_steps) == (
        1e-6,
        0.0,  # the script's kl_coef 0.001 is inert: verl's use_kl_loss and use_kl_in_reward are off
        32,
        10_000,
        405,
    )
    for backend in recipe.backends.values():  # keys only by environment variable name
        assert not hasattr(backend, "api_key")


@pytest.mark.parametrize("name", ["paper-qwen2.5-7b.yaml", "paper-llama3.1-8b.yaml"])
def test_paper_recipes_carry_the_official_optimisation_settings(name):
    """scripts/train_writing_rl.sh and the verl defaults it leaves in place (docs/training.md,
    "Official settings and what TRL cannot match")."""
    t = load_recipe(PROJECT_ROOT / "configs" / name).training
    # actor.optim: lr 1e-6, warmup_style constant, lr_warmup_steps_ratio 0.4, weight_decay 0.01
    assert (t.learning_rate, t.lr_scheduler, t.warmup_ratio, t.weight_decay) == (
        1e-6, "constant_with_warmup", 0.4, 0.01
    )  # fmt: skip
    # actor: entropy_coeff 0.001, clip_ratio_c 3.0; train_batch_size 32 / ppo_mini_batch_size 16
    assert (t.entropy_coef, t.clip_ratio_c, t.batch_size, t.updates_per_step) == (0.001, 3.0, 32, 2)
    # data.max_prompt_length 4096, rollout.temperature 1, save_freq 50, total_training_steps 405
    assert (t.max_prompt_tokens, t.temperature, t.save_steps, t.max_steps) == (4096, 1.0, 50, 405)
    assert t.kl_coef == 0.0


def test_the_training_defaults_keep_the_previous_optimisation_but_no_kl():
    """New settings default to what the trainer did before they existed (transformers' linear decay
    without warmup or weight decay, one update per step); kl_coef defaults to the official run's 0."""
    from configs.schema import TrainingConfig

    t = TrainingConfig()
    assert (t.lr_scheduler, t.warmup_ratio, t.weight_decay, t.updates_per_step) == ("linear", 0.0, 0.0, 1)
    assert (t.kl_coef, t.entropy_coef, t.clip_ratio_c) == (0.0, 0.0, None)


@pytest.mark.parametrize(
    "training,message",
    [
        ("updates_per_step: 2\n  gradient_accumulation_steps: 3",
         "gradient_accumulation_steps (3) must be a multiple of updates_per_step (2)"),
        ("lr_scheduler: constant\n  warmup_ratio: 0.1", "lr_scheduler 'constant' has no warmup"),
        ("algorithm: rloo\n  entropy_coef: 0.001", "training.entropy_coef: TRL's rloo trainer has no such"),
        ("algorithm: rloo\n  clip_ratio_c: 3.0", "training.clip_ratio_c: TRL's rloo trainer has no such"),
        ("clip_ratio_c: 1.1", "must exceed 1 + the clip range"),
        ("warmup_ratio: 1.0", "warmup_ratio"),
    ],
)  # fmt: skip
def test_inconsistent_optimisation_settings_are_refused(tmp_path, training, message):
    path = _write(tmp_path, MINIMAL + f"training:\n  {training}\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert message in str(info.value)


def test_errors_name_file_line_field_and_what_is_allowed(tmp_path):
    path = _write(
        tmp_path,
        MINIMAL.replace("    model: embedded", "    strategy: shout\n    model: embedded")
        + "judge:\n  backend: local\n  model: m\n  mode: fuzzy\n  temprature: 0\n",
    )
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    message = str(info.value)
    assert (
        f"{path}:9: generators[0].strategy: Input should be 'direct', 'agentwrite' or 'think-then-write'"
        in message
    )
    assert f"{path}:14: judge.mode: Input should be 'json' or 'logprob' (got 'fuzzy')" in message
    assert f"{path}:15: judge.temprature: Extra inputs are not permitted; allowed here:" in message
    assert "decoding" in message.split("judge.temprature")[1]


def test_cross_field_errors_are_located(tmp_path):
    path = _write(tmp_path, MINIMAL.replace("backend: local\n    model", "backend: nowhere\n    model"))
    with pytest.raises(
        ConfigError,
        match=r"recipe.yaml:8: generators\[0\].backend: 'nowhere' is not a defined "
        r"backend; defined: local",
    ):
        load_recipe(path)


def test_exactly_one_policy(tmp_path):
    path = _write(tmp_path, MINIMAL.replace("role: policy", "role: competitor"))
    with pytest.raises(ConfigError, match="exactly one generator must have role 'policy' \\(found 0\\)"):
        load_recipe(path)


def test_inline_secrets_are_refused_and_never_echoed(tmp_path):
    path = tmp_path / "recipe.yaml"
    text = MINIMAL.replace(
        "    kind: transformers",
        "    kind: transformers\n  api:\n    kind: openai-compatible\n    api_key: sk-live-123456",
    )
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert "looks like an inline secret" in str(info.value) and "api_key_env" in str(info.value)
    assert "sk-live-123456" not in str(info.value)
    text = MINIMAL.replace(
        "    kind: transformers",
        "    kind: transformers\n  api:\n    kind: openai-compatible\n    api_key_env: sk-live-123456",
    )
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert "api_key_env: not an environment variable name" in str(info.value)
    assert "sk-live-123456" not in str(info.value)


def test_overrides_are_validated_like_the_file(tmp_path):
    path = _write(tmp_path, MINIMAL)
    recipe = load_recipe(
        path,
        {
            "generators": [
                {
                    "name": "policy",
                    "role": "policy",
                    "backend": "local",
                    "model": "x",
                    "decoding": {"max_tokens": 7},
                }
            ]
        },
    )
    assert recipe.policy.decoding.max_tokens == 7
    assert load_recipe(path, dict([parse_set_option("data.limit=3")])).data.limit == 3
    with pytest.raises(
        ConfigError, match=r"\(from an override\): data.limit: Input should be greater than or equal to 1"
    ):
        load_recipe(path, {"data.limit": 0})


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    path = _write(tmp_path, "name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"recipe.yaml:2: not valid YAML"):
        load_recipe(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="a recipe is a YAML mapping"):
        load_recipe(path)


def test_models_are_frozen_and_hash_stably(tmp_path):
    recipe = load_recipe(_write(tmp_path, MINIMAL))
    with pytest.raises(Exception, match="frozen"):
        recipe.name = "other"  # type: ignore[misc]
    again = Recipe.model_validate(recipe.model_dump())
    assert stable_hash(recipe) == stable_hash(again)
    assert stable_hash(recipe) != stable_hash(recipe.model_copy(update={"name": "u"}))


def test_operational_backend_limits_stay_out_of_identity(tmp_path):
    recipe = load_recipe(_write(tmp_path, MINIMAL))
    faster = load_recipe(
        _write(tmp_path, MINIMAL.replace("kind: transformers", "kind: transformers\n    max_batch_size: 32"))
    )
    assert recipe.backend_identity("local") == faster.backend_identity("local")
    other = load_recipe(
        _write(tmp_path, MINIMAL.replace("kind: transformers", "kind: transformers\n    dtype: bfloat16"))
    )
    assert recipe.backend_identity("local") != other.backend_identity("local")


def test_overrides_reach_into_lists_by_index(tmp_path):
    path = _write(tmp_path, MINIMAL)
    recipe = load_recipe(
        path, {"generators.0.decoding.max_tokens": 95, "generators.0.strategy": "agentwrite"}
    )
    assert (recipe.policy.decoding.max_tokens, recipe.policy.strategy) == (95, "agentwrite")
    with pytest.raises(
        ConfigError, match=r"override 'generators.3': '3' is not an index of a list with 1 items"
    ):
        load_recipe(path, {"generators.3.model": "x"})


@pytest.mark.parametrize(
    "extra, message",
    [
        ("training:\n  eval_steps: 10\n", "training.eval_steps: validation needs held-out ladders"),
        ("curriculum:\n  schedule: static\n  static_generator: gpt-4o\n",
         "curriculum.static_generator: 'gpt-4o' is not a generator; defined: policy"),
        ("curriculum:\n  schedule: staged\n", "the staged schedule needs at least one boundary step"),
        ("selection:\n  strategy: full\n  per_source: true\n", "strategy 'full' keeps every instruction"),
    ],
)  # fmt: skip
def test_fidelity_options_that_cannot_work_are_refused_at_load_time(tmp_path, extra, message):
    with pytest.raises(ConfigError) as info:
        load_recipe(_write(tmp_path, MINIMAL + extra))
    assert message in str(info.value)


@pytest.mark.parametrize("name", ["paper-qwen2.5-7b.yaml", "paper-llama3.1-8b.yaml"])
def test_paper_recipes_select_order_and_validate_as_the_paper(name):
    recipe = load_recipe(PROJECT_ROOT / "configs" / name)
    assert (recipe.selection.top_k, recipe.selection.per_source) == (1500, True)
    assert recipe.ordering.policy_rung == "by-score" and recipe.ordering.validation_size > 0
    assert recipe.training.eval_steps == 50 and recipe.training.max_prompt_tokens == 4096
    assert (
        recipe.reward.judge.prompt_version == "official" and recipe.reward.judge.decoding.temperature == 0.1
    )


def test_paper_recipes_start_rl_from_an_sft_writer_and_evaluate_the_papers_rows():
    qwen = load_recipe(PROJECT_ROOT / "configs" / "paper-qwen2.5-7b.yaml")
    llama = load_recipe(PROJECT_ROOT / "configs" / "paper-llama3.1-8b.yaml")
    # Qwen: the released WritingBench SFT writer is the policy; Llama: the sft_writer stage makes it.
    assert qwen.sft.writer is None and qwen.policy.model == "AQuarterMile/Writing-Model-Qwen-7B"
    assert llama.sft.writer is not None and llama.policy.model == "meta-llama/Llama-3.1-8B-Instruct"
    for recipe in (qwen, llama):
        assert recipe.sft.reference.enabled and (recipe.sft.gpus, recipe.sft.distributed) == (8, "zero3")
        rows = {c.name: (c.model, c.from_training, c.from_sft) for c in recipe.evaluation.candidates}
        assert rows["instruct"][0].endswith("Instruct") and rows["base"][1] == "base"
        assert rows["reference-sft"][2] == "reference" and rows["writing-rl"][1] == "final"


def test_every_field_of_every_recipe_model_says_what_it_is():
    """Each field of each model reachable from `Recipe` (through unions, Annotated, dicts and tuples)
    has a description, as TRL's dataclass fields have help strings."""
    import typing

    from pydantic import BaseModel

    models: dict[str, type[BaseModel]] = {}

    def walk(annotation: typing.Any) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation.__name__ not in models:
                models[annotation.__name__] = annotation
                for field in annotation.model_fields.values():
                    walk(field.annotation)
            return
        for arg in typing.get_args(annotation):  # X | Y, Annotated[X, ...], dict[K, V], tuple[X, ...]
            walk(arg)

    walk(Recipe)
    # The walk reaches the nested blocks (a walker that stopped early would pass vacuously).
    assert {"StorageConfig", "VLLMBackend", "LocalServer", "Decoding", "LoraConfig", "SFTDataConfig",
            "BenchmarkConfig", "NightlySchedule", "Price"} <= set(models)  # fmt: skip
    missing = [
        f"{name}.{field_name}"
        for name, model in sorted(models.items())
        for field_name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert not missing, f"fields without a description: {', '.join(missing)}"


def test_api_limits_on_an_in_process_backend_are_refused_not_ignored(tmp_path):
    # max_retries, timeouts and rate limits only mean something over HTTP (tasks/llm/remote.py).
    path = _write(
        tmp_path, MINIMAL.replace("    kind: transformers\n", "    kind: transformers\n    max_retries: 3\n")
    )
    with pytest.raises(ConfigError, match="max_retries"):
        load_recipe(path)


def test_decoding_n_is_gone_but_keys_paid_for_with_it_still_match():
    from configs.schema import Decoding

    with pytest.raises(ValueError, match="several samples are several requests"):
        Decoding(n=2)
    legacy = Decoding.model_validate({"temperature": 0.2, "n": 1})  # a dump written when n existed
    assert legacy == Decoding(temperature=0.2)
    # Cache keys hash the dump: it still holds n=1, as every key written before did.
    assert legacy.model_dump(mode="json")["n"] == 1
    assert stable_hash(Decoding()) == stable_hash(
        {
            "temperature": 0.7,
            "top_p": 1.0,
            "max_tokens": 1024,
            "stop": [],
            "seed": 0,
            "n": 1,
            "logprobs": None,
        }
    )
