"""Every recipe the tests and the drills build, in one place.

Two forms, because tests use recipes in two ways:

- In memory: `policy_recipe(backends, model, ...)` is a validated `Recipe` whose one generator is
  the policy on one of `backends`; any other block (storage, prices, ...) is a keyword override.
  Most unit tests need no more: a client from the registry, a toy stage run.
- On disk, for the flow tests, which run a recipe from its path and some of which then edit it as
  text (a rival appended to the generators list, a backend's lines replaced, `training:` cut off).
  `write_recipe` is the block-style recipe of one policy on a local model, with `extra` appended
  verbatim; `tiny_pipeline_yaml` is stages 1-4 on one local model in flow style, the head of
  `curation_recipe` and `train_recipe`; `evaluation_recipe` adds the four benchmarks to
  `write_recipe`. Arguments named `*_extra` (and `ordering`, `reward`, `curriculum`, `selection`)
  are YAML text spliced in where their name says.

The text these write is byte for byte what the tests were tuned on (sizes, token budgets, batch
sizes: many are slow real-model tests); change it only with the tests that depend on it.
`MINIMAL_YAML` is the smallest valid recipe, for the config-loading tests that edit it as text.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support.paths import PROJECT_ROOT

if TYPE_CHECKING:
    from configs.schema import Recipe

# -- in memory -------------------------------------------------------------------------------------


def policy_recipe(
    backends: dict[str, dict[str, Any]],
    model: str | Path = "m",
    *,
    policy_backend: str | None = None,
    decoding: dict[str, Any] | None = None,
    name: str = "t",
    **blocks: Any,
) -> Recipe:
    """A recipe whose one generator, "policy", runs `model` on `policy_backend` (default: the first
    of `backends`). `decoding` and each of `blocks` appear only when given (absent, the schema's
    defaults apply: no `storage` means the default root under the cwd)."""
    from configs.schema import Recipe

    policy: dict[str, Any] = {
        "name": "policy",
        "role": "policy",
        "backend": policy_backend or next(iter(backends)),
        "model": str(model),
    }
    if decoding is not None:
        policy["decoding"] = decoding
    return Recipe.model_validate({"name": name, **blocks, "backends": backends, "generators": [policy]})


def shipped_recipe(name: str) -> Recipe:
    """One of the recipes in configs/, by file name."""
    from configs.loading import load_recipe

    return load_recipe(PROJECT_ROOT / "configs" / name)


# -- on disk ---------------------------------------------------------------------------------------

MINIMAL_YAML = """\
name: t
backends:
  local:
    kind: transformers
generators:
  - name: policy
    role: policy
    backend: local
    model: embedded:smollm2-135m-instruct
"""


def write_yaml(tmp_path: Path, text: str) -> Path:
    """`text` (dedented) as tmp_path/recipe.yaml."""
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def write_recipe(
    path: Path,
    *,
    store: Path,
    model: str,
    limit: int = 4,
    max_tokens: int = 8,
    max_batch_size: int = 4,
    extra: str = "",
) -> Path:
    """A small recipe on a local model folder, for flow tests. The generators list comes last
    before `extra`, so an extra can go on with it (`  - {name: rival, ...}`)."""
    path.write_text(
        f"""\
name: test
storage:
  root: {store}
  model_cache: {store.parent / "models"}
data:
  format: builtin
  limit: {limit}
backends:
  local:
    kind: transformers
    device: cpu
    dtype: float32
    max_batch_size: {max_batch_size}
generators:
  - name: policy
    role: policy
    backend: local
    model: {model}
    decoding: {{temperature: 0.0, max_tokens: {max_tokens}, seed: 0}}
{extra}"""
    )
    return path


def tiny_pipeline_yaml(
    tmp_path: Path,
    model: str | Path,
    *,
    name: str,
    limit: int = 4,
    rivals: tuple[tuple[str, float, int], ...] = (("rival", 0.0, 16),),
    backends_extra: str = "",
    judge_extra: str = "",
    selection: str = "strategy: full",
) -> str:
    """Stages 1-4 on one local model (store and model cache under tmp_path): the policy (greedy, 8
    tokens), each rival as (name, temperature, max_tokens), the logprob judge, `selection`."""
    rival_lines = "".join(
        f"  - {{name: {rival}, backend: local, model: {model}, decoding: {{temperature: {temperature}, "
        f"max_tokens: {max_tokens}}}}}\n"
        for rival, temperature, max_tokens in rivals
    )
    return f"""\
name: {name}
storage: {{root: {tmp_path / "store"}, model_cache: {tmp_path / "models"}}}
data: {{format: builtin, limit: {limit}}}
backends:
  local: {{kind: transformers, device: cpu, dtype: float32, max_batch_size: 8}}
{backends_extra}generators:
  - {{name: policy, role: policy, backend: local, model: {model}, decoding: {{temperature: 0.0, max_tokens: 8}}}}
{rival_lines}judge: {{backend: local, model: {model}, mode: logprob{judge_extra}}}
selection: {{{selection}}}
"""


def curation_recipe(tmp_path: Path, model: str | Path, *, judge_extra="", selection="strategy: full") -> str:
    """Stages 1-4 on 4 instructions, the policy and one rival: tmp_path/curation.yaml."""
    path = tmp_path / "curation.yaml"
    path.write_text(
        tiny_pipeline_yaml(
            tmp_path, model, name="curation-test", judge_extra=judge_extra, selection=selection
        )
    )
    return str(path)


# The expected logprob reward is continuous, so a group's rollouts never all tie and every step
# has a gradient: the training tests' weight-change assertions cannot pass or fail by luck.
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
    ordering="{}",
    limit=3,
) -> str:
    """Stages 1-5 on the tiny model: two rivals, LoRA GRPO on CPU, a checkpoint every 2 steps
    (`training:` is the last block: `training_extra` lines go on with it): tmp_path/train.yaml."""
    path = tmp_path / "train.yaml"
    rivals = (("rival", 0.7, 16), ("rival2", 1.0, 12))
    head = tiny_pipeline_yaml(
        tmp_path, model, name="train-test", limit=limit, rivals=rivals, backends_extra=backends_extra
    )
    path.write_text(f"""\
{head}ordering: {ordering}
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


BENCH_FILES = {
    "writingbench": "writingbench/length_subset.jsonl",
    "longbench_write": "longbench_write/longbench_write.jsonl",
    "creative_writing_v3": "creative_writing_v3",
    "longbench_v2": "longbench_v2/sample.json",
}


def evaluation_recipe(
    tmp_path: Path, model: Path, benchmarks: Path, candidates: str, training: str = ""
) -> Path:
    """`write_recipe` with the logprob judge and an evaluation of `candidates` (YAML list items, see
    `eval_candidates`) on a slice of each of the four benchmarks under `benchmarks`."""
    slices = {"writingbench": "limit: 1", "longbench_write": "limit: 2",
              "creative_writing_v3": "limit: 1, iterations: 1", "longbench_v2": "limit: 2, max_input_tokens: 256"}  # fmt: skip
    bench = "".join(
        f"    {name}: {{path: {benchmarks / rel}, {slices[name]}, max_tokens: 6}}\n"
        for name, rel in BENCH_FILES.items()
    )
    extra = (
        f"judge: {{backend: local, model: {model}, mode: logprob}}\n{training}"
        f"evaluation:\n  candidates:\n{candidates}  benchmarks:\n{bench}"
    )
    return write_recipe(tmp_path / "r.yaml", store=tmp_path / "store", model=str(model), extra=extra)


def eval_candidates(model: Path, *names: str) -> str:
    """Evaluation candidates on `model`, one per name, each with its own system prompt."""
    return "".join(f"    - {{name: {n}, model: {model}, system_prompt: 'You are {n}.'}}\n" for n in names)
