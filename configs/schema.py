"""Typed recipe models: one YAML file under configs/ validates into one `Recipe`.

Pure pydantic; this package imports nothing else from the project. Every model is frozen and
forbids unknown keys, so a typo fails at load time instead of silently falling back to a default.
Registries in `tasks/` (loaders, strategies, backends, benchmark suites) must list exactly the names
allowed here: `tasks.registry.Registry` refuses any other name, and tests/test_instruction_loaders.py,
tests/test_strategies.py, tests/test_transformers_backend.py and tests/test_evaluation_suites.py keep
the two in step.

Secrets never appear in a recipe: a remote backend names the environment variable that holds its
key (`api_key_env`), and the key is read from the environment at call time only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

# Names used across the pipeline; the registries in tasks/ are checked against these.
DATA_FORMATS = ("builtin", "jsonl", "parquet", "hf", "writingbench", "longbench_write", "creative_writing_v3")
STRATEGIES = ("direct", "agentwrite", "think-then-write")
# The built-in benchmarks, in the comparison table's order. Not a closed list: a recipe may name
# any suite registered in tasks/evaluation/registry.py, which the evaluate stage checks.
BENCHMARKS = (
    "writingbench",
    "longbench_write",
    "creative_writing_v3",
    "longbench_v2",
    "creative_writing_v3_elo",
)
# What each benchmark's official harness asks of the evaluated model: new tokens per call, and the
# prompt budget where the harness truncates prompts to one (LongBench v2's model2maxlen). The
# suites use these defaults (tests/test_evaluation_suites.py holds them to it), and the recipe
# check below refuses an engine they cannot fit in.
HARNESS_OUTPUT_TOKENS = {"writingbench": 16000, "longbench_write": 32768, "creative_writing_v3": 4000,
                         "longbench_v2": 128, "creative_writing_v3_elo": 4000}  # fmt: skip
HARNESS_INPUT_TOKENS = {"longbench_v2": 120_000}
LOCAL_ENGINES = ("transformers", "vllm")
EMBEDDED_MODEL_PREFIX = "embedded:"

_SLUG = r"^[a-z0-9][a-z0-9_.\-]*$"
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_SECRET_LOOKING_KEYS = {"api_key", "apikey", "key", "token", "secret", "password", "authorization"}


class StrictModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _refuse_inline_secrets(cls, data: Any) -> Any:
        # A key pasted into a recipe would end up in DuckDB, Prefect parameters and git.
        if isinstance(data, dict):
            for key in data:
                if isinstance(key, str) and key.lower() in _SECRET_LOOKING_KEYS:
                    raise ValueError(
                        f"'{key}' looks like an inline secret; recipes never hold secrets. Put the value "
                        "in an environment variable and name it with `api_key_env: NAME`."
                    )
        return data


# ---------------------------------------------------------------------------------------------
# Storage and data
# ---------------------------------------------------------------------------------------------


class StorageConfig(StrictModel):
    root: Path = Field(
        Path(".wrl/store"),
        description="Folder holding the DuckDB catalog (catalog.duckdb) and the Delta tables (datasets/). "
        "Relative paths resolve against the working directory.",
    )
    model_cache: Path = Field(
        Path(".wrl/models"), description="Where converted local models (the embedded model) are cached."
    )
    lock_timeout_s: float = Field(
        300.0,
        gt=0,
        description="How long a writer waits for another process's catalog lock before failing clearly.",
    )


class DataConfig(StrictModel):
    format: Literal[DATA_FORMATS] = Field("builtin", description="Which loader reads the instructions.")  # type: ignore[valid-type]
    path: Path | None = Field(None, description="File or folder to load; not used by the built-in sample.")
    limit: int | None = Field(None, ge=1, description="Keep only the first N instructions (after loading).")
    prompt_field: str = Field("prompt", description="jsonl/parquet/hf: the column holding the instruction.")
    id_field: str | None = Field(
        "id", description="jsonl/parquet/hf: the column holding a stable id; content hash when absent."
    )
    split: str = Field("train", description="hf: which split of a DatasetDict to read.")

    @model_validator(mode="after")
    def _path_required(self) -> DataConfig:
        if self.format != "builtin" and self.path is None:
            raise ValueError(f"data.path: required for format '{self.format}' (only 'builtin' needs none)")
        return self


# ---------------------------------------------------------------------------------------------
# LLM backends: where calls go, and the limits that protect a judge budget
# ---------------------------------------------------------------------------------------------


class _BackendBase(StrictModel):
    max_concurrency: int = Field(8, ge=1, description="Requests in flight at once.")

    # Operational knobs change how fast calls run, never what they return: they stay out of cache keys.
    OPERATIONAL_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {
            "max_concurrency",
            "requests_per_minute",
            "tokens_per_minute",
            "max_retries",
            "timeout_s",
            "max_consecutive_failures",
            "max_batch_size",
            "prefix_cache_tokens",
            "batch",
            "batch_poll_interval_s",
            "batch_max_wait_s",
            "batch_collect_s",
        }
    )

    def identity(self) -> dict[str, Any]:
        """The fields that can change a completion (for cache keys)."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in self.OPERATIONAL_FIELDS}


class _APIBackendBase(_BackendBase):
    """The limits of a backend reached over HTTP (tasks/llm/limits.py, remote.py). In-process
    backends have none of these: a recipe that sets one there is refused rather than ignored."""

    requests_per_minute: int | None = Field(
        None, ge=1, description="Requests per minute; no limit when unset."
    )
    tokens_per_minute: int | None = Field(
        None, ge=1, description="Estimated tokens per minute; no limit when unset."
    )
    max_retries: int = Field(6, ge=0, description="Retries of a 429/5xx/timeout before the call fails.")
    timeout_s: float = Field(600.0, gt=0, description="Per-request timeout in seconds.")
    max_consecutive_failures: int = Field(
        25, ge=1, description="Stop the stage after this many failed calls in a row (the endpoint is down)."
    )
    # The provider's batch API (tasks/llm/batch.py): half price, answers within 24 hours. Only the
    # stages that can wait use it (generate, score, evaluate); training's judge always calls live.
    batch: bool = Field(
        False,
        description="Generate, score and evaluate send their calls through the provider's batch API "
        "(OpenAI Batch, Anthropic Message Batches: about half price, results within 24 h). Training "
        "calls live. The results are the same rows under the same cache keys as live calls.",
    )
    batch_poll_interval_s: float = Field(
        60.0, gt=0, description="Batch mode: seconds between two status checks of a batch in flight."
    )
    batch_max_wait_s: float = Field(
        86_400.0,
        gt=0,
        description="Batch mode: how long a stage waits for its batches. Past it, their items fail for "
        "this run and the batch stays recorded: the next run resumes waiting for it.",
    )
    batch_collect_s: float = Field(
        1.0,
        gt=0,
        description="Batch mode: a batch is submitted once no new call has arrived for this long "
        "(the calls a stage issues together go in one batch, within the provider's size limits).",
    )


def _check_env_name(value: str) -> str:
    if not _ENV_NAME.match(value):
        raise ValueError(
            "not an environment variable name (expected e.g. DASHSCOPE_API_KEY); give the "
            "variable's name, never the key itself"
        )
    return value


EnvVarName = Annotated[str, AfterValidator(_check_env_name)]


class LocalServer(StrictModel):
    """`transformers serve` started by the pipeline itself for an openai-compatible backend."""

    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="The server's `--device`: cpu, cuda, or auto (the GPU when there is one)."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="The server's `--dtype`: the weights' precision; auto lets transformers choose."
    )
    startup_timeout_s: float = Field(
        300.0, gt=0, description="Seconds the server may take to load the model and answer."
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads of the server process (OMP_NUM_THREADS); its default when unset. While "
        "it answers, in-process models on the CPU leave it these cores.",
    )
    continuous_batching: bool = Field(
        True,
        description="Concurrent requests join one running batch (`transformers serve "
        "--continuous-batching`); off, the server answers one request at a time.",
    )
    cache_tokens: int = Field(
        8192,
        ge=256,
        description="Continuous batching: tokens of KV cache for the requests in flight (prompts and "
        "answers). Unbounded, transformers sizes it from free memory: 10 GB on a 24 GB CPU machine.",
    )

    OPERATIONAL_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"startup_timeout_s", "threads", "continuous_batching", "cache_tokens"}
    )


class OpenAICompatibleBackend(_APIBackendBase):
    kind: Literal["openai-compatible"] = Field(
        description="An OpenAI-style chat completions endpoint (OpenAI, DashScope, vLLM or `wrl serve`)."
    )
    base_url: str | None = Field(None, description="e.g. https://api.openai.com/v1 or a vLLM server.")
    api_key_env: EnvVarName | None = Field(None, description="Environment variable holding the API key.")
    serve_locally: LocalServer | None = Field(
        None,
        description="Serve each model of this backend (embedded:<name> or a local folder) with "
        "`transformers serve` on 127.0.0.1, started on first use and stopped when the process "
        "exits; requests then go over HTTP to it. Leave base_url unset.",
    )

    @model_validator(mode="after")
    def _one_endpoint(self) -> OpenAICompatibleBackend:
        if self.serve_locally is not None and self.base_url is not None:
            raise ValueError(
                "serve_locally: set either base_url (a running server) or serve_locally, not both"
            )
        if self.serve_locally is not None and self.batch:
            raise ValueError(
                "batch: a server started with serve_locally (`transformers serve`) has no batch API; "
                "batch mode needs a provider's (OpenAI's Batch API, or a server that implements it)"
            )
        return self

    def identity(self) -> dict[str, Any]:
        identity = super().identity()
        if self.serve_locally is not None:
            identity["serve_locally"] = {
                k: v for k, v in identity["serve_locally"].items() if k not in LocalServer.OPERATIONAL_FIELDS
            }
        return identity


class AnthropicBackend(_APIBackendBase):
    kind: Literal["anthropic"] = Field(description="Anthropic's Messages API (Claude).")
    base_url: str | None = Field(
        None, description="Another Messages API endpoint; api.anthropic.com when unset."
    )
    api_key_env: EnvVarName = Field(
        "ANTHROPIC_API_KEY", description="Environment variable holding the API key."
    )


class TransformersBackend(_BackendBase):
    kind: Literal["transformers"] = Field(
        description="In-process generation with transformers, one shared model per process (CPU or GPU)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the model runs: cpu, cuda, or auto (cuda when available)."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Weights' precision; auto: bfloat16 (float16 without bf16 support) on a GPU, float32 "
        "on the CPU.",
    )
    max_batch_size: int = Field(8, ge=1, description="Requests generated together in one forward batch.")
    max_concurrency: int = Field(
        64, ge=1, description="Requests a stage keeps in flight; they queue for the batches."
    )
    prefix_cache_tokens: int = Field(
        4096,
        ge=0,
        description="Judge probes (next-token logprobs) that share a prompt prefix compute it once; this "
        "many tokens of recent prefixes are also kept for later batches (0: within a batch only). "
        "Values agree with unshared probes to float tolerance.",
    )
    max_model_len: int | None = Field(
        None,
        ge=64,
        description="Context limit (prompt + max_tokens): a request past it fails, as vLLM refuses it, "
        "and the evaluation check refuses a benchmark that cannot fit. Unset: no limit is enforced.",
    )
    # A request past the limit fails and is never cached: the limit does not change any completion.
    OPERATIONAL_FIELDS: ClassVar[frozenset[str]] = _BackendBase.OPERATIONAL_FIELDS | {"max_model_len"}


class VLLMBackend(_BackendBase):
    kind: Literal["vllm"] = Field(
        description="In-process offline vLLM (`vllm.LLM`) on CUDA GPUs; the optional `vllm` extra."
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine shards the model over.")
    gpu_memory_utilization: float = Field(
        0.85, gt=0, le=1, description="Share of each GPU's memory the engine takes (weights and KV cache)."
    )
    max_model_len: int | None = Field(
        None, ge=256, description="Context length (prompt + output tokens); the model's own when unset."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights' precision; auto: vLLM's choice from the checkpoint."
    )
    max_concurrency: int = Field(
        256, ge=1, description="Requests in flight, and the most that go to the engine in one call."
    )
    hf_overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed to vLLM as `hf_overrides`: changes to the model's config, e.g. Qwen2.5's YaRN "
        "rope scaling for a context past its native 32,768 tokens ({rope_scaling: {rope_type: yarn, "
        "factor: 4.0, original_max_position_embeddings: 32768}}). Part of the backend's identity.",
    )

    def identity(self) -> dict[str, Any]:
        identity = super().identity()
        if not identity["hf_overrides"]:  # added later: unset, the identities paid for before still match
            del identity["hf_overrides"]
        return identity


Backend = Annotated[
    OpenAICompatibleBackend | AnthropicBackend | TransformersBackend | VLLMBackend,
    Field(discriminator="kind"),
]


class Decoding(StrictModel):
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: the probability mass sampled from.")
    max_tokens: int = Field(1024, ge=1, le=200_000, description="Cap on the tokens one call generates.")
    stop: tuple[str, ...] = Field((), description="Strings that end the generation where they appear.")
    seed: int | None = Field(0, description="Sampling seed; part of every cache key.")
    logprobs: int | None = Field(None, ge=0, le=20, description="Top logprobs per token, where supported.")

    # Decoding had a field `n` (samples per prompt) that nothing read: several samples of a prompt
    # are several requests, told apart by `sample_index`. It was in every dump, so in every cache
    # key (responses and stages) as 1; the dump keeps `"n": 1` so those keys, and the responses
    # and stage results paid for under them, still match. A dump that carries it loads; another
    # value is refused, since no stage would honour it.
    @model_validator(mode="before")
    @classmethod
    def _removed_n(cls, data: Any) -> Any:
        if isinstance(data, dict) and "n" in data:
            if data["n"] != 1:
                raise ValueError(
                    "n: samples per prompt are not a decoding setting (several samples are several "
                    "requests, told apart by sample_index); remove it"
                )
            data = {k: v for k, v in data.items() if k != "n"}
        return data

    @model_serializer(mode="wrap")
    def _dump_with_n(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {**handler(self), "n": 1}


class GeneratorConfig(StrictModel):
    name: str = Field(pattern=_SLUG, description="Stable name; appears in every generation row.")
    role: Literal["policy", "competitor"] = Field(
        "competitor",
        description="policy: the model RL trains (exactly one generator); its own response is s_policy in "
        "selection and a rung of every ladder. competitor: writes reference responses.",
    )
    backend: str = Field(description="A key of `backends`.")
    model: str = Field(description=f"Model name, local folder, or '{EMBEDDED_MODEL_PREFIX}<name>'.")
    strategy: Literal[STRATEGIES] = Field(  # type: ignore[valid-type]
        "direct",
        description="How it writes (tasks/generation/): direct (one call), agentwrite (a plan, "
        "then section by section) or think-then-write. The policy needs a one-call strategy to be trained.",
    )
    strategy_options: dict[str, int | float | str] = Field(
        default_factory=dict,
        description="The strategy's settings that differ from its defaults, e.g. agentwrite's "
        "max_sections or fallback_section_words (tasks/generation/agentwrite.py lists them). Part of "
        "the generation cache key.",
    )
    system_prompt: str | None = Field(
        None,
        description="System message of its requests; the policy's is also in its RL training prompts and the "
        "verl export. None: no system message.",
    )
    decoding: Decoding = Field(Decoding(), description="Sampling settings of its generation calls.")


class JudgeConfig(StrictModel):
    backend: str = Field(description="A key of `backends`.")
    model: str = Field(description=f"Judge model name, local folder, or '{EMBEDDED_MODEL_PREFIX}<name>'.")
    mode: Literal["json", "logprob"] = Field(
        "json",
        description="json: strict JSON replies (API judges); logprob: expected score over score tokens.",
    )
    prompt_version: str = Field(
        "v1",
        description="Which registered judge prompt to use: tasks/judging/pointwise.py (scoring) and "
        "tasks/rewards/pairwise.py (the reward: v1, or official, the official code's template); part "
        "of cache keys.",
    )
    decoding: Decoding = Field(
        Decoding(temperature=0.0, max_tokens=1024),
        description="Sampling settings of the judge's replies (json mode); greedy by default. A benchmark "
        "harness may use its own.",
    )
    max_parse_retries: int = Field(2, ge=0, description="Re-asks after an unparsable reply, then a failure.")

    @property
    def label(self) -> str:
        return judge_label(self.backend, self.model, self.mode, self.prompt_version)


def judge_label(backend: str, model: str, mode: str, prompt_version: str) -> str:
    """The one way a judge is named in results, artifacts and lineage: `backend/model/mode/prompt`."""
    return f"{backend}/{model}/{mode}/{prompt_version}"


class CriteriaWriterConfig(StrictModel):
    backend: str = Field(description="A key of `backends`.")
    model: str = Field(description=f"Model name, local folder, or '{EMBEDDED_MODEL_PREFIX}<name>'.")
    num_criteria: int = Field(
        5, ge=1, le=10, description="Criteria written per instruction (WritingBench writes 5)."
    )
    decoding: Decoding = Field(
        Decoding(temperature=0.0, max_tokens=1024),
        description="Sampling settings of its calls; greedy by default.",
    )


# ---------------------------------------------------------------------------------------------
# Selection, reward, curriculum, training
# ---------------------------------------------------------------------------------------------


class SelectionConfig(StrictModel):
    strategy: Literal["margin", "difficulty", "random", "full"] = Field(
        "margin",
        description="How instructions are ranked before the cut: margin (the paper's learning potential, "
        "max_j s_j - s_policy, highest first), difficulty (lowest s_policy first), random (seeded), or "
        "full (keep every instruction).",
    )
    competitor_floor: float = Field(
        0.0, ge=0, le=10, description="Drop an instruction when every competitor scores below this."
    )
    top_k: int | None = Field(
        None, ge=1, description="Keep the first k ranked instructions (the paper: 1,500 per source)."
    )
    top_fraction: float | None = Field(
        None, gt=0, le=1, description="Keep this share of the ranked instructions (rounded half up)."
    )
    per_source: bool = Field(
        False,
        description="Apply top_k / top_fraction within each data source (the instructions' `source`: the "
        "loader and file) instead of over the whole pool, as the paper takes its top 1.5k from each of "
        "LongWriter and WritingBench (section 4.1).",
    )
    tie_break: Literal["shuffle", "instruction_id"] = Field(
        "shuffle",
        description="Order of equal margins (or equal policy scores under difficulty) at the cut: a "
        "permutation seeded by `seed` (recorded per instruction), or instruction id ascending, which is "
        "lexicographic and biased for ids like wb-<index>. Integer judge scores make large tie blocks.",
    )
    seed: int = Field(0, description="Seeds the random strategy's permutation and the shuffle tie-break.")

    @model_validator(mode="after")
    def _one_size(self) -> SelectionConfig:
        if self.top_k is not None and self.top_fraction is not None:
            raise ValueError("selection: set top_k or top_fraction, not both")
        if self.strategy != "full" and self.top_k is None and self.top_fraction is None:
            raise ValueError(f"selection: strategy '{self.strategy}' needs top_k or top_fraction")
        if self.per_source and self.strategy == "full":
            raise ValueError("selection.per_source: strategy 'full' keeps every instruction; there is no cut")
        return self


class OrderingConfig(StrictModel):
    """How stage 4 builds each instruction's reference ladder (docs/curation.md)."""

    drop_below_policy: bool = Field(
        False,
        description="Leave out references that scored below the policy's own response (beating them "
        "teaches nothing). Off by default: the paper keeps every reference, ascending.",
    )
    min_rungs: int = Field(
        2,
        ge=1,
        description="Drop an instruction whose ladder would have fewer rungs (the policy's included).",
    )
    validation_size: int = Field(
        0,
        ge=0,
        description="Hold this many ladders out of training, drawn with `seed`: the validation split the "
        "trainer evaluates every `training.eval_steps` and the verl export's test.parquet. 0: none.",
    )
    seed: int = Field(0, description="Seeds the draw of the validation split.")
    policy_rung: Literal["by-score", "first"] = Field(
        "by-score",
        description="by-score (the paper): the policy's own response is sorted among the references by "
        "score, so every ladder ascends and training starts on its weakest response. first: the policy's "
        "response is always rung 0 and the references ascend above it, so the first comparison is always "
        "against itself, even when a reference scored lower (docs/curation.md).",
    )


class RewardConfig(StrictModel):
    kind: Literal["pairwise", "pointwise"] = Field(
        "pairwise",
        description="pairwise (the paper): the judge compares the rollout with the instruction's current "
        "reference, 1 win / 0.5 tie / 0 loss. pointwise (ablation): the rollout's own score s_j / 10, no "
        "reference.",
    )
    position: Literal["position-disadvantage", "position-advantage", "swap", "recheck"] = Field(
        "position-disadvantage",
        description="pairwise: where the rollout sits in the judge's prompt. position-disadvantage (the "
        "paper): second, the reference first; position-advantage: first; swap: both orders, the mean "
        "(twice the calls); recheck (ours): second, and only a verdict that is not a win is judged again "
        "with the rollout first, the mean of the orders judged (swap's debiasing for a judge that favours "
        "the first position, at 1 + P(not a win) calls; docs/benchmarks.md).",
    )
    judge: JudgeConfig | None = Field(None, description="Defaults to the top-level judge.")
    tie_margin: float = Field(
        0.05, ge=0, le=1, description="logprob verdicts: |P(A)-P(B)| below this is a tie."
    )
    logprob_reward: Literal["verdict", "expected"] = Field(
        "verdict",
        description="logprob verdicts: 'verdict' rewards the most probable verdict (1 / 0.5 / 0, with "
        "tie_margin); 'expected' rewards P(policy wins) + 0.5 P(tie), a continuous reward for small local "
        "judges whose verdict hardly moves (use with position: swap to cancel their position bias).",
    )
    length_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of the length reward (LongBench-Write's S_l against the instruction's required "
        "length), folded in as (judge + sum w_i c_i) / (1 + sum w_i); 0: off (the paper).",
    )
    format_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of the format reward (repetition; with think-then-write, a well-formed think "
        "block), folded in as length_weight is; 0: off (the paper).",
    )


class CalibrationConfig(StrictModel):
    """`wrl judge calibrate`: the reward judge measured on pairs before training (docs/training.md)."""

    pairs_file: Path | None = Field(
        None,
        description="A labelled pairs file (JSONL: instruction, response_a, response_b, optional label "
        "A/B/tie, id, criteria). None: pairs of rungs from the recipe's own ladders.",
    )
    pairs: int = Field(
        50, ge=1, description="How many pairs: a seeded draw from the ladders, or the file's first."
    )
    repeats: int = Field(
        3,
        ge=1,
        le=20,
        description="Samples of each order, for self-consistency (json mode; a logprob probe is asked once).",
    )
    seed: int = Field(0, description="The draw of pairs from the ladders.")


class CurriculumConfig(StrictModel):
    schedule: Literal["dynamic", "static", "staged", "random"] = Field(
        "dynamic",
        description="dynamic: each instruction moves up a rung when the policy beats it (the paper's method). "
        "static: one fixed reference (`static_rung` or `static_generator`). staged: every instruction moves "
        "up one rung at each of `stage_steps` (the paper's static-curriculum ablation, section 6.4). "
        "random: a reference drawn per rollout.",
    )
    promotion: Literal["any-win", "majority", "mean-threshold"] = Field(
        "any-win",
        description="dynamic: when a step's rollouts promote an instruction to its next rung. any-win: one "
        "of them beat the reference; majority: over half of the judged ones won; mean-threshold: their "
        "mean reward >= `threshold`. Judge failures never count.",
    )
    threshold: float = Field(0.5, ge=0, le=1, description="mean-threshold: promote when mean reward >= this.")
    static_rung: Literal["self", "best"] | int = Field(
        "self",
        description="static: 'self' (the policy's own response, wherever it sits in the ladder), 'best' "
        "(the top rung) or a rung index counted from the bottom (0 = the lowest).",
    )
    static_generator: str | None = Field(
        None,
        description="static: the reference written by this generator, in every ladder (the paper's "
        "single-LLM static references, section 6.3); overrides `static_rung`. Every ladder must hold it.",
    )
    stage_steps: tuple[int, ...] = Field(
        (),
        description="staged: the training steps at which every instruction moves up one rung (ascending). "
        "Before the first boundary all are on rung 0; after k boundaries on rung k, or their top rung.",
    )
    top: Literal["stay", "retire", "group"] = Field(
        "stay",
        description="dynamic: an instruction whose rollouts beat its top rung (its strongest reference). "
        "stay (the paper): it keeps being judged against that rung. retire: it is no longer sampled; its "
        "place in a batch goes to another instruction, so its judge calls go elsewhere. group: each of its "
        "rollouts is judged against another rollout of the same group (pairwise GRPO, as BRPO in "
        "Writing-Zero). Every mode records when each instruction reached the top.",
    )

    @model_validator(mode="after")
    def _schedule_settings(self) -> CurriculumConfig:
        if self.top != "stay" and self.schedule != "dynamic":
            raise ValueError(
                f"curriculum.top: '{self.top}' acts when the dynamic schedule's instruction beats its top rung; "
                f"schedule '{self.schedule}' has no such moment"
            )
        steps = self.stage_steps
        if self.schedule == "staged" and not steps:
            raise ValueError("curriculum.stage_steps: the staged schedule needs at least one boundary step")
        if self.schedule != "staged" and steps:
            raise ValueError(f"curriculum.stage_steps: only used by schedule 'staged', not '{self.schedule}'")
        if any(s < 1 for s in steps) or list(steps) != sorted(set(steps)):
            raise ValueError(
                f"curriculum.stage_steps: must be strictly ascending steps >= 1, got {list(steps)}"
            )
        if self.static_generator is not None and self.schedule != "static":
            raise ValueError(
                f"curriculum.static_generator: only used by schedule 'static', not '{self.schedule}'"
            )
        return self


class LoraConfig(StrictModel):
    r: int = Field(16, ge=1, description="LoRA rank (peft's r).")
    alpha: int = Field(32, ge=1, description="LoRA scaling (peft's lora_alpha): updates scale by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA inputs (peft's lora_dropout).")
    target_modules: tuple[str, ...] = Field(
        ("q_proj", "k_proj", "v_proj", "o_proj"),
        description="Names of the modules that get adapters (peft's target_modules): by default the "
        "attention projections of Llama/Qwen-style models.",
    )


# Where a trainer runs, not what it learns: a run killed on 8 GPUs resumes on 4 (or a CPU run on 1
# rank on 2), so the train and sft stages leave these out of their cache keys. The engine
# (`distributed`, `cpu_offload`) stays in: its checkpoints are not each other's.
LAYOUT_FIELDS = frozenset({"gpus", "processes", "gpu_memory_gib"})


class ProcessLayout(StrictModel):
    """Where a trainer runs (the RL trainer's and the SFT trainer's process tree alike:
    tasks/training/launch.py): its ranks and how they share the model. `gpus` and `processes` change
    where it runs, not what it learns, so they stay out of the stages' cache keys (LAYOUT_FIELDS)."""

    gpus: int = Field(1, ge=1, description="GPUs the trainer runs on: one rank each (device cuda/auto).")
    processes: int | None = Field(
        None,
        ge=1,
        description="Trainer ranks to launch; default `gpus` on a GPU, 1 on the CPU (several CPU ranks "
        "run DDP over gloo).",
    )
    distributed: Literal["ddp", "fsdp2", "zero3"] = Field(
        "ddp",
        description="ddp replicates weights, gradients and optimizer state; fsdp2 and zero3 shard them (a "
        "full 7-8B fine-tune needs one of them).",
    )
    cpu_offload: bool = Field(
        False,
        description="zero3: the optimizer state on the CPU; fsdp2: FSDP's CPU offload (parameters, gradients "
        "and optimizer state).",
    )


class VerlConfig(StrictModel):
    """verl's own settings (`training.engine: verl`), beyond those every engine shares. The defaults
    are the official launch script's (Tongyi-Zhiwen/Writing-RL `scripts/train_writing_rl.sh`);
    tasks/training/verl_config.py turns the recipe into verl's configuration."""

    environment: Path = Field(
        Path(".verl-venv"),
        description="The Python environment verl runs in (`make verl` builds it from locks/verl-*.txt): "
        "verl pins its own torch, transformers and vLLM, which this project's environment cannot hold.",
    )
    rollout: Literal["vllm", "sglang"] = Field("vllm", description="verl's rollout engine (rollout.name).")
    rollout_tensor_parallel: int = Field(
        2, ge=1, description="GPUs per rollout engine (rollout.tensor_model_parallel_size; 2 officially)."
    )
    rollout_gpu_memory_utilization: float = Field(
        0.7, gt=0, le=1, description="The rollout engine's share of each GPU (0.7 officially)."
    )
    rollout_max_num_batched_tokens: int = Field(
        16384, ge=1, description="The rollout engine's tokens per forward pass (16,384 officially)."
    )
    max_token_len_per_gpu: int = Field(
        16500,
        ge=1,
        description="Token-bounded micro-batches (use_dynamic_bsz): tokens per GPU per forward pass of the "
        "actor's update and of the log-probability passes (PPO_MAX_TOKEN_LEN_PER_GPU, 16,500 officially).",
    )
    critic_learning_rate: float = Field(1e-5, gt=0, description="ppo: the critic's learning rate (1e-5).")
    critic_warmup_ratio: float = Field(
        0.05, ge=0, lt=1, description="ppo: the critic's learning-rate warmup share (0.05 officially)."
    )
    nodes: int = Field(1, ge=1, description="Machines (trainer.nnodes), each with `training.gpus` GPUs.")
    reward_workers: int = Field(
        8,
        ge=1,
        description="verl's reward workers (reward.num_workers): they call the one reward actor, which "
        "holds the judge's rate and token limits for all of them.",
    )


ENGINES = ("trl", "verl")


class TrainingConfig(ProcessLayout):
    """The trainer's settings. Steps are RL steps: one batch of `batch_size` prompts rolled out
    (`num_generations` each), judged once, the curriculum updated once; it is trained in
    `updates_per_step` optimizer updates (TRL's optimizer steps are RL steps x updates_per_step,
    tasks/training/args.py). docs/training.md compares each setting with the official run's."""

    engine: Literal[ENGINES] = Field(  # type: ignore[valid-type]
        "trl",
        description="The training engine: trl (in this project's environment, launched with accelerate) or "
        "verl (the official code's engine, in its own environment: `training.verl`; docs/training.md).",
    )
    algorithm: Literal["grpo", "rloo", "ppo"] = Field(
        "grpo",
        description="trl: grpo (GRPOTrainer, the critic-free stand-in for the official run's PPO, "
        "docs/training.md) or rloo (RLOOTrainer). verl: ppo (the paper's: a GAE critic, one rollout per "
        "prompt) or grpo.",
    )
    verl: VerlConfig | None = Field(
        None, description="engine verl: its own settings (defaults: the official launch script's)."
    )
    learning_rate: float = Field(
        1e-6, gt=0, description="AdamW's peak learning rate (1e-6 in the official run)."
    )
    lr_scheduler: Literal["linear", "constant", "constant_with_warmup", "cosine"] = Field(
        "linear",
        description="The learning rate over the optimizer updates (transformers' lr_scheduler_type): linear "
        "decays to 0 at the last update; constant_with_warmup is the official run's (verl's constant "
        "warmup_style).",
    )
    warmup_ratio: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of the run's updates over which the learning rate rises linearly from 0 (verl's "
        "lr_warmup_steps_ratio; 0.4 in the official run). Not with lr_scheduler constant.",
    )
    weight_decay: float = Field(
        0.0,
        ge=0,
        description="AdamW's weight decay (verl's actor default 0.01); biases and norms are exempt.",
    )
    kl_coef: float = Field(
        0.0,
        ge=0,
        description="KL penalty coefficient (TRL's beta); 0, as the official run (verl's use_kl_loss and "
        "use_kl_in_reward are off), builds no reference model.",
    )
    entropy_coef: float = Field(
        0.0,
        ge=0,
        description="grpo: entropy bonus on the mean per-token entropy (TRL's entropy_coef; verl's actor "
        "entropy_coeff, 0.001 in the official run).",
    )
    clip_ratio_c: float | None = Field(
        None,
        description="grpo: dual-clip PPO, the policy ratio capped at this for negative advantages (TRL's "
        "delta; verl's clip_ratio_c, 3.0 in the official run). None: plain clipping.",
    )
    batch_size: int = Field(32, ge=1, description="Prompts per RL step (verl's train_batch_size).")
    num_generations: int = Field(
        4,
        ge=1,
        description="Rollouts per prompt (GRPO's group size, at least 2; ppo: 1 in the official run).",
    )
    updates_per_step: int = Field(
        1,
        ge=1,
        description="Optimizer updates per RL step: its rollouts are split into this many mini-batches, "
        "each one update (verl's train_batch_size / ppo_mini_batch_size; 2 in the official run).",
    )
    max_prompt_tokens: int = Field(
        2048,
        ge=16,
        description="Prompt tokens (chat template included); longer prompts are cut on the left, as the "
        "official loader does (4,096 in the official run).",
    )
    max_response_tokens: int = Field(
        10_000,
        ge=1,
        description="Cap on each rollout's tokens (TRL's max_completion_length; 10,000 officially).",
    )
    max_steps: int = Field(405, ge=1, description="RL steps.")
    save_steps: int = Field(50, ge=1, description="Checkpoint every this many RL steps (and at the last).")
    eval_steps: int | None = Field(
        None,
        ge=1,
        description="Validate every this many RL steps (the official run: 50) on the ladders held out by "
        "`ordering.validation_size`: one rollout per held-out instruction, judged against every rung of "
        "its ladder, logged as eval metrics. Never reads or writes the curriculum. None: no validation.",
    )
    eval_batch_size: int = Field(
        8, ge=1, description="Validation prompts generated together on each rank (verl's val_batch_size: 8)."
    )
    save_total_limit: int | None = Field(
        3, ge=1, description="Checkpoints kept (the newest); None keeps all."
    )
    gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        description="Micro-batches each rank cuts one RL step's rollouts into (a micro-batch is batch_size x "
        "num_generations / (ranks x this) sequences); a multiple of updates_per_step, each update "
        "accumulating this / updates_per_step of them.",
    )
    temperature: float = Field(
        1.0, gt=0, le=2, description="Rollout sampling temperature (1.0 in the official run)."
    )
    seed: int = Field(
        0,
        description="TRL's seed (data order, initialisation) and the seed of the curriculum's random draws.",
    )
    lora: LoraConfig | None = Field(
        None,
        description="Train a LoRA adapter with these settings; None: full fine-tuning (the official run).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="Where the trainer runs: cpu, cuda, or auto (cuda when available). On the CPU it trains "
        "in float32, without bf16 or gradient checkpointing.",
    )
    use_vllm: bool = Field(
        False, description="Generate the rollouts with vLLM (TRL's use_vllm) instead of transformers."
    )
    vllm_mode: Literal["server", "colocate"] = Field(
        "colocate",
        description="use_vllm: colocate runs vLLM inside the trainer's processes, on their GPUs; server "
        "calls a separate `trl vllm-serve` (vllm_server_base_url).",
    )
    vllm_server_base_url: str | None = Field(None, description="server mode: the `trl vllm-serve` URL.")
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="colocate mode: vLLM's share.")
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass to save memory (on a GPU only; on in the "
        "official run).",
    )
    bf16: bool = Field(False, description="bf16 weights and autocast on a GPU; always float32 on the CPU.")
    # Also the process tree's layout (ProcessLayout) and what `wrl config plan` / `wrl config validate`
    # size it for (tasks/training/memory_plan.py):
    gpu_memory_gib: float = Field(80.0, gt=0, description="Memory of each of those GPUs.")

    @model_validator(mode="after")
    def _engine_settings(self) -> TrainingConfig:
        # Paths relative to `training`: the recipe's error puts them under it (configs/loading.py).
        if self.engine == "trl":
            if self.algorithm == "ppo":
                raise ValueError("algorithm: TRL 1.16 has no PPO trainer; PPO runs on `engine: verl`")
            if self.verl is not None:
                raise ValueError("verl: only used by `engine: verl`")
        else:
            if self.algorithm == "rloo":
                raise ValueError("algorithm: engine verl runs ppo or grpo, not rloo")
            refused = {
                "lora": self.lora is not None,
                "use_vllm": self.use_vllm,  # verl always rolls out on its own engine (training.verl.rollout)
                "distributed": self.distributed != "fsdp2",
                "lr_scheduler": self.lr_scheduler not in ("constant", "constant_with_warmup", "cosine"),
                "clip_ratio_c": self.clip_ratio_c is None,
                "gradient_accumulation_steps": self.gradient_accumulation_steps != 1,
            }
            why = {
                "lora": "not mapped to verl's LoRA yet",
                "use_vllm": "verl rolls out on its own engine (training.verl.rollout); leave it false",
                "distributed": "verl trains with FSDP: set fsdp2 (cpu_offload: true is the official layout)",
                "lr_scheduler": "verl has constant (with warmup_ratio) and cosine",
                "clip_ratio_c": "verl always clips dual (its default 3.0, the official run's): set it",
                "gradient_accumulation_steps": "verl bounds micro-batches by tokens "
                "(training.verl.max_token_len_per_gpu): leave it 1",
            }
            for name, bad in refused.items():
                if bad:
                    raise ValueError(f"{name}: with engine verl, {why[name]}")
        if self.algorithm in ("grpo", "rloo") and self.num_generations < 2:
            raise ValueError(f"num_generations: {self.algorithm} compares rollouts within a group; "
                             "it needs at least 2")  # fmt: skip
        return self

    @property
    def verl_settings(self) -> VerlConfig:
        """`verl`, or its defaults (the official script's) when the block is left out."""
        return self.verl if self.verl is not None else VerlConfig()

    @model_validator(mode="after")
    def _optimisation_settings(self) -> TrainingConfig:
        if self.engine == "trl" and self.gradient_accumulation_steps % self.updates_per_step:
            raise ValueError(
                f"training.gradient_accumulation_steps ({self.gradient_accumulation_steps}) must be a multiple "
                f"of updates_per_step ({self.updates_per_step}): each update takes an equal share of the "
                "step's micro-batches"
            )
        if self.lr_scheduler == "constant" and self.warmup_ratio > 0:
            raise ValueError("training.warmup_ratio: lr_scheduler 'constant' has no warmup; use "
                             "'constant_with_warmup'")  # fmt: skip
        if self.algorithm == "rloo":
            for name in ("entropy_coef", "clip_ratio_c"):
                if getattr(self, name) not in (None, 0.0):
                    raise ValueError(f"training.{name}: TRL's {self.algorithm} trainer has no such setting "
                                     "(grpo only)")  # fmt: skip
        if self.clip_ratio_c is not None and self.clip_ratio_c <= 1.2:
            raise ValueError(
                f"training.clip_ratio_c ({self.clip_ratio_c}) must exceed 1 + the clip range (TRL's epsilon, "
                "0.2), as dual-clip PPO's bound does"
            )
        return self


# ---------------------------------------------------------------------------------------------
# Supervised fine-tuning: the SFT starting point and the Reference-SFT baseline (docs/training.md)
# ---------------------------------------------------------------------------------------------

SFT_DATA_FORMATS = ("jsonl", "parquet", "hf")


class SFTDataConfig(StrictModel):
    """(prompt, response) pairs in a generic table: one JSON object a line, Parquet, or a `datasets`
    folder (save_to_disk)."""

    format: Literal[SFT_DATA_FORMATS] = Field("jsonl", description="How the pairs are stored.")  # type: ignore[valid-type]
    path: Path = Field(
        description="A file, or a folder of *.jsonl / *.parquet files; hf: a save_to_disk folder."
    )
    prompt_field: str = Field("prompt", description="The column holding the instruction.")
    response_field: str = Field("response", description="The column holding the response to learn.")
    split: str = Field("train", description="hf: which split of a DatasetDict to read.")
    limit: int | None = Field(None, ge=1, description="Keep only the first N pairs.")


class SFTWriterConfig(StrictModel):
    """Mode 1: fine-tune the policy generator's model on `data`. The result replaces it: it writes the
    policy's generations (rung 0, s_policy) and RL training starts from it."""

    data: SFTDataConfig = Field(
        description="The (prompt, response) pairs to fine-tune on (the paper's writers: WritingBench's SFT "
        "data)."
    )


class SFTReferenceConfig(StrictModel):
    """Mode 2, the Reference-SFT baseline: the starting policy (the SFT writer when configured, else the
    policy generator's model) fine-tuned on the top rung of every training-split ladder whose top rung
    is not the policy's own response. Registered as a model; an evaluation candidate with
    `from_sft: reference`."""

    enabled: bool = Field(True, description="Run the sft_reference stage; false skips it (the block stays).")


class SFTConfig(ProcessLayout):
    """The `sft` stages' trainer (TRL's SFTTrainer, loss on the response only), shared by both modes."""

    writer: SFTWriterConfig | None = Field(
        None, description="Mode 1: fine-tune the policy's model before generate; RL starts from the result."
    )
    reference: SFTReferenceConfig | None = Field(
        None, description="Mode 2: the Reference-SFT baseline, trained on the ladders' top rungs."
    )
    learning_rate: float = Field(1e-5, gt=0, description="AdamW's peak learning rate.")
    lr_scheduler: Literal["linear", "constant", "constant_with_warmup", "cosine"] = Field(
        "linear",
        description="The learning rate over the updates (transformers' lr_scheduler_type): linear decays "
        "to 0 at the last update.",
    )
    warmup_ratio: float = Field(
        0.0, ge=0, lt=1, description="Share of the updates the learning rate warms up over."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW's weight decay.")
    epochs: float = Field(1.0, gt=0, description="Passes over the pairs (unless `max_steps` is set).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer updates; overrides `epochs`.")
    batch_size: int = Field(
        8,
        ge=1,
        description="Pairs per forward pass over all ranks (each rank takes batch_size / ranks of them), so "
        "an update is batch_size x gradient_accumulation_steps pairs whatever the layout.",
    )
    gradient_accumulation_steps: int = Field(1, ge=1, description="Forward passes per optimizer update.")
    max_seq_tokens: int = Field(
        4096,
        ge=16,
        description="Prompt + response tokens per pair (chat template included); longer pairs are "
        "cut at the end.",
    )
    lora: LoraConfig | None = Field(
        None,
        description="Train a LoRA adapter with these settings (merged when saved); None: full fine-tuning.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where it trains: cpu, cuda, or auto (cuda when available)."
    )
    bf16: bool = Field(False, description="bf16 weights and autocast on a GPU; always float32 on the CPU.")
    gradient_checkpointing: bool = Field(False, description="On a GPU only (on the CPU it only costs time).")
    seed: int = Field(0, description="TRL's seed: data order and initialisation.")
    save_steps: int = Field(
        100, ge=1, description="Checkpoint every this many updates (a killed run resumes there)."
    )
    save_total_limit: int | None = Field(
        2, ge=1, description="Checkpoints kept (the newest); None keeps all."
    )

    @model_validator(mode="after")
    def _a_mode(self) -> SFTConfig:
        if self.writer is None and (self.reference is None or not self.reference.enabled):
            raise ValueError("sft: set `writer` (fine-tune the policy's model) and/or `reference: {enabled: true}` "
                             "(the Reference-SFT baseline); neither does nothing")  # fmt: skip
        if self.lr_scheduler == "constant" and self.warmup_ratio > 0:
            raise ValueError(
                "sft.warmup_ratio: lr_scheduler 'constant' has no warmup; use 'constant_with_warmup'"
            )
        # The ranks tasks/training/launch.py starts (device auto counts as a GPU here).
        ranks = self.processes or (1 if self.device == "cpu" else self.gpus)
        if self.batch_size % ranks:
            raise ValueError(
                f"sft.batch_size ({self.batch_size}) must divide evenly over {ranks} rank(s): it counts the "
                "pairs of one forward pass over all of them"
            )
        return self


# ---------------------------------------------------------------------------------------------
# Evaluation (stage 6)
# ---------------------------------------------------------------------------------------------


class BenchmarkConfig(StrictModel):
    """One benchmark of an evaluation: where its data is and how much of it to use."""

    path: Path = Field(description="The benchmark file (or its folder). Point it at your full copy.")
    limit: int | None = Field(
        None, ge=1, description="Use only the first N items (Creative Writing v3: the first N prompts)."
    )
    ids: tuple[str, ...] | None = Field(
        None,
        min_length=1,
        description="Use only these items (ids as in eval_items, e.g. wb-23), in file order; "
        "applied before `limit`.",
    )
    iterations: int = Field(
        1, ge=1, le=32, description="creative_writing_v3: iterations per prompt (the leaderboard runs 3)."
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Cap on the candidate's output tokens; the harness's own value when unset."
    )
    max_input_tokens: int | None = Field(
        None,
        ge=64,
        description="longbench_v2: truncate the prompt's middle to this many tokens "
        "(the candidate's tokenizer); the harness's 120000 when unset.",
    )
    judge: JudgeConfig | None = Field(
        None,
        description="This benchmark's own judge (e.g. GPT-4o for LongBench-Write, as its harness); "
        "else `evaluation.judge`, else the top-level judge.",
    )
    backend: str | None = Field(
        None,
        description="The backend that serves this recipe's local candidates (its policies, model folders, "
        "registered models) on this benchmark, e.g. a long-context vLLM configuration for LongBench v2; "
        "API candidates keep their own. Unset: each candidate's backend.",
    )
    requirement_criteria: Path | None = Field(
        None,
        description="writingbench: a requirement subset's `_C` file (style_subset_C.jsonl, "
        "format_subset_C_v1.jsonl, length_subset_C.jsonl): each query's requirement criterion, judged as "
        "well and reported as the leaderboard's requirement dimension (R: the subset's score, C: that "
        "criterion's), outside the headline. `path` is then the matching subset file.",
    )
    opponents: Path | None = Field(
        None,
        description="creative_writing_v3_elo: the opponents' pieces, a JSONL file (model, prompt_id, iteration, "
        "response per row) or the harness's creative_bench_runs.json; the two anchors must be among them.",
    )
    opponent_models: tuple[str, ...] | None = Field(
        None,
        min_length=2,
        description="creative_writing_v3_elo: the opponents to use from that file; unset: all.",
    )
    anchors: dict[str, float] | None = Field(
        None,
        description="creative_writing_v3_elo: the normalisation's two anchors, model -> Elo; unset: the "
        "harness's (deepseek/deepseek-r1 1500, meta-llama/llama-3.2-1b-instruct 200).",
    )


class CandidateConfig(StrictModel):
    """A model to evaluate: a named model on a backend, or a policy of this recipe's training run."""

    name: str = Field(pattern=_SLUG, description="The row label in the comparison table.")
    backend: str | None = Field(None, description="A key of `backends`; the policy's backend when unset.")
    model: str | None = Field(
        None, description="Model name, local folder, 'embedded:<name>', or 'model:<id>' (a registered model)."
    )
    from_training: Literal["base", "final", "latest", "all"] | None = Field(
        None,
        description="This recipe's training run: base = the policy before training (step 0; with "
        "`sft.writer`, the SFT model it starts from), final = the registered trained model, latest = the "
        "newest checkpoint, all = every checkpoint kept.",
    )
    from_sft: Literal["writer", "reference"] | None = Field(
        None,
        description="This recipe's SFT models: writer = the policy's SFT starting point (`sft.writer`), "
        "reference = the Reference-SFT baseline (`sft.reference`); the newest run of that stage.",
    )
    strategy: Literal[STRATEGIES] = Field(
        "direct", description="How the candidate writes (writing benchmarks)."
    )  # type: ignore[valid-type]
    system_prompt: str | None = Field(
        None, description="System message of the candidate's requests; None: no system message."
    )
    tokenizer: str | None = Field(
        None,
        description="longbench_v2 with an API model: a local tokenizer folder or hub name to count "
        "tokens with for truncation (local candidates use their own).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> CandidateConfig:
        sources = [s for s in (self.model, self.from_training, self.from_sft) if s is not None]
        if len(sources) != 1:
            raise ValueError(
                f"candidate '{self.name}': set exactly one of `model`, `from_training` or `from_sft`"
            )
        return self


class NightlySchedule(StrictModel):
    """When the nightly evaluation deployment runs (`wrl up` registers it with this schedule)."""

    cron: str = Field("0 2 * * *", description="Cron expression (minute hour day month weekday).")
    timezone: str = Field("UTC", description="IANA time zone the cron expression is read in.")
    candidates: tuple[str, ...] | None = Field(
        None, description="Names of `evaluation.candidates` to run nightly; all of them when unset."
    )

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        from datetime import datetime

        from cronsim import CronSim, CronSimError

        try:
            CronSim(value, datetime(2000, 1, 1))
        except CronSimError as exc:
            raise ValueError(f"not a valid cron expression: {exc}") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone '{value}' (use an IANA name such as Europe/Berlin)"
            ) from None
        return value


class BootstrapConfig(StrictModel):
    """The percentile bootstrap over items behind every benchmark score's interval
    (tasks/evaluation/bootstrap.py): the suite's own aggregate, recomputed on resampled items."""

    resamples: int = Field(1000, ge=100, le=100_000, description="Bootstrap resamples of the items.")
    level: float = Field(0.95, gt=0.5, lt=1.0, description="The interval's confidence level.")
    seed: int = Field(0, description="Seed of the resampling: the same results give the same interval.")


class EvaluationConfig(StrictModel):
    judge: JudgeConfig | None = Field(
        None, description="The benchmarks' judge; the top-level judge when unset."
    )
    candidates: tuple[CandidateConfig, ...] = Field(
        min_length=1,
        description="The models to evaluate, one row each in the comparison table (unique names).",
    )
    benchmarks: dict[Annotated[str, Field(pattern=_SLUG)], BenchmarkConfig] = Field(
        min_length=1,
        description="The benchmarks every candidate runs, by name (the built-in writingbench, "
        "longbench_write, creative_writing_v3, longbench_v2, or any registered suite), each with "
        "its data file and settings.",
    )
    seed: int | None = Field(0, description="Sampling seed of every candidate's generations.")
    bootstrap: BootstrapConfig = Field(
        BootstrapConfig(),
        description="How each score's confidence interval is computed (docs/evaluation.md).",
    )
    nightly: NightlySchedule | None = Field(
        None, description="Register a nightly evaluation deployment with this schedule (docs/operations.md)."
    )
    training_run: str | None = Field(
        None,
        pattern=r"^train-[0-9a-f]{16}$",
        description="The training run `from_training` candidates come from (its id, as `wrl models` "
        "shows it); this recipe's most recent training run when unset.",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> EvaluationConfig:
        names = [c.name for c in self.candidates]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ValueError(f"evaluation.candidates: name(s) {', '.join(dups)} used more than once")
        unknown = sorted(set(self.nightly.candidates or ()) - set(names)) if self.nightly else []
        if unknown:
            raise ValueError(f"evaluation.nightly.candidates: {unknown} are not in evaluation.candidates")
        return self


class Price(StrictModel):
    input_per_mtok: float = Field(ge=0, description="USD per million input tokens.")
    output_per_mtok: float = Field(ge=0, description="USD per million output tokens.")
    batch_discount: float = Field(
        0.5,
        gt=0,
        le=1,
        description="A call through the provider's batch API costs this fraction of the price above "
        "(OpenAI Batch and Anthropic Message Batches: 0.5).",
    )

    def cost(self, input_tokens: float, output_tokens: float, *, batched: bool = False) -> float:
        """USD for these tokens, at the batch price when they went through a provider batch: the
        one pricing rule the usage meter, the budget and the forecast share."""
        cost = (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6
        return cost * self.batch_discount if batched else cost


BUDGETED_STAGES = ("generate", "score", "train", "evaluate")  # the stages that call LLMs


class BudgetLimit(StrictModel):
    """At most this much, in cost (USD, from `prices`) and/or tokens (input + output of the calls
    that reach a backend; response-cache hits are free)."""

    cost_usd: float | None = Field(None, gt=0, description="USD, priced from the recipe's `prices`.")
    tokens: int | None = Field(None, ge=1, description="Input plus output tokens of the calls paid for.")

    @model_validator(mode="after")
    def _something(self) -> BudgetLimit:
        if self.cost_usd is None and self.tokens is None:
            raise ValueError("set cost_usd, tokens or both")
        return self


class BudgetConfig(StrictModel):
    """What a run, and each stage, may spend on LLM calls (tasks/llm/budget.py). A stage stops
    taking new calls before one would cross a limit, finishes the calls in flight, records what it
    paid, and ends `stopped_at_budget` (not cached); training checkpoints its last finished step.
    Spending counts every attempt of the same work, so a rerun continues where the budget
    stopped it only when the budget is raised."""

    run: BudgetLimit | None = Field(
        None, description="The whole flow run: every stage it runs, cached ones counted at what they cost."
    )
    stages: dict[str, BudgetLimit] = Field(
        default_factory=dict,
        description="Per stage (generate, score, train, evaluate; evaluate: each candidate x benchmark pair).",
    )

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, value: dict[str, BudgetLimit]) -> dict[str, BudgetLimit]:
        unknown = sorted(set(value) - set(BUDGETED_STAGES))
        if unknown:
            raise ValueError(
                f"budget.stages: {', '.join(unknown)} make no LLM calls or are not stages; "
                f"budgets apply to {', '.join(BUDGETED_STAGES)}"
            )
        return value

    def limits_for(self, stage: str) -> dict[str, BudgetLimit]:
        """The limits over `stage`: {"budget.stages.<stage>": ..., "budget.run": ...}, those set."""
        limits = {f"budget.stages.{stage}": self.stages.get(stage), "budget.run": self.run}
        return {where: limit for where, limit in limits.items() if limit is not None}


# ---------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------


class Recipe(StrictModel):
    name: str = Field(
        pattern=_SLUG,
        description="The recipe's name: recorded with its runs and models, and in deployment names and tags.",
    )
    description: str = Field("", description="Free text for readers; no stage reads it.")
    storage: StorageConfig = Field(
        StorageConfig(), description="Where the catalog, datasets and models live."
    )
    data: DataConfig = Field(DataConfig(), description="The instructions the ingest stage loads.")
    backends: dict[str, Backend] = Field(
        description="Named LLM endpoints (API or in-process); generators, judges and candidates name a key."
    )
    generators: tuple[GeneratorConfig, ...] = Field(
        description="The models that write responses: exactly one policy, and the competitors whose "
        "responses become the references."
    )
    judge: JudgeConfig | None = Field(
        None,
        description="The score stage's judge; also the reward's and the benchmarks' when theirs are unset. "
        "Without it the flows stop after generate.",
    )
    criteria_writer: CriteriaWriterConfig | None = Field(
        None,
        description="Writes criteria for instructions whose data has none; unset, they get one holistic "
        "criterion.",
    )
    selection: SelectionConfig = Field(
        SelectionConfig(strategy="full"),
        description="The select stage (margin-aware data selection); keeps every instruction when unset.",
    )
    ordering: OrderingConfig = Field(
        OrderingConfig(), description="How the order stage builds the reference ladders."
    )
    reward: RewardConfig = Field(RewardConfig(), description="The RL reward: how a rollout is judged.")
    calibration: CalibrationConfig = Field(
        CalibrationConfig(), description="`wrl judge calibrate`: measuring the reward judge before training."
    )
    curriculum: CurriculumConfig = Field(
        CurriculumConfig(), description="Reference scheduling: which rung each rollout is judged against."
    )
    training: TrainingConfig | None = Field(None, description="The RL trainer; the train stage needs it.")
    sft: SFTConfig | None = Field(
        None,
        description="Supervised fine-tuning: the policy's SFT starting point and/or the Reference-SFT baseline.",
    )
    evaluation: EvaluationConfig | None = Field(
        None, description="Candidates x benchmarks for the evaluate flow; the evaluate stage needs it."
    )
    prices: dict[str, Price] = Field(default_factory=dict, description="Per-model token prices, for cost.")
    budget: BudgetConfig | None = Field(
        None, description="Spending limits per run and per stage; a stage stops cleanly before crossing one."
    )

    @field_validator("backends")
    @classmethod
    def _backend_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not re.match(_SLUG, name):
                raise ValueError(f"backend name '{name}' must match {_SLUG}")
        return value

    @model_validator(mode="after")
    def _cross_references(self) -> Recipe:
        problems: list[str] = []
        defined = sorted(self.backends)

        def check_backend(path: str, name: str) -> None:
            if name not in self.backends:
                problems.append(f"{path}: '{name}' is not a defined backend; defined: {', '.join(defined)}")

        names = [g.name for g in self.generators]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            problems.append(f"generators: name '{dup}' is used more than once")
        policies = [i for i, g in enumerate(self.generators) if g.role == "policy"]
        if len(policies) != 1:
            problems.append(
                f"generators: exactly one generator must have role 'policy' (found {len(policies)}); "
                "the policy's own response is a rung of every reference ladder"
            )
        for i, g in enumerate(self.generators):
            check_backend(f"generators[{i}].backend", g.backend)
        writer = self.sft.writer if self.sft is not None else None
        if writer is not None and len(policies) == 1:  # the SFT model is a local folder
            policy = self.generators[policies[0]]
            kind = self.backends.get(policy.backend)
            local = kind is not None and (
                kind.kind in ("transformers", "vllm")
                or (kind.kind == "openai-compatible" and kind.serve_locally is not None)
            )
            if kind is not None and not local:
                problems.append(
                    f"sft.writer: the policy '{policy.name}' runs on backend '{policy.backend}' ({kind.kind}), "
                    "which cannot load the SFT model's folder; use a transformers or vllm backend, or "
                    "openai-compatible with serve_locally"
                )
        if (
            self.training is not None
            and self.training.eval_steps is not None
            and self.ordering.validation_size == 0
        ):
            problems.append(
                "training.eval_steps: validation needs held-out ladders; set ordering.validation_size"
            )
        static_generator = self.curriculum.static_generator
        if static_generator is not None and static_generator not in names:
            problems.append(
                f"curriculum.static_generator: '{static_generator}' is not a generator; defined: "
                f"{', '.join(names)}"
            )
        if self.judge is not None:
            check_backend("judge.backend", self.judge.backend)
        if self.reward.judge is not None:
            check_backend("reward.judge.backend", self.reward.judge.backend)
        if self.criteria_writer is not None:
            check_backend("criteria_writer.backend", self.criteria_writer.backend)
        if self.evaluation is not None:
            if self.evaluation.judge is not None:
                check_backend("evaluation.judge.backend", self.evaluation.judge.backend)
            for name, bench in self.evaluation.benchmarks.items():
                if bench.judge is not None:
                    check_backend(f"evaluation.benchmarks.{name}.judge.backend", bench.judge.backend)
                if bench.backend is not None:
                    check_backend(f"evaluation.benchmarks.{name}.backend", bench.backend)
                    if (
                        bench.backend in self.backends
                        and self.backends[bench.backend].kind not in LOCAL_ENGINES
                    ):
                        problems.append(
                            f"evaluation.benchmarks.{name}.backend: '{bench.backend}' is "
                            f"{self.backends[bench.backend].kind}; it serves local candidates, so it must be "
                            f"an in-process engine ({' or '.join(LOCAL_ENGINES)})"
                        )
            for i, c in enumerate(self.evaluation.candidates):
                if c.backend is not None:
                    check_backend(f"evaluation.candidates[{i}].backend", c.backend)
        judges = {"judge": self.judge, "reward.judge": self.reward.judge,
                  "evaluation.judge": self.evaluation.judge if self.evaluation else None}  # fmt: skip
        for name, bench in self.evaluation.benchmarks.items() if self.evaluation else ():
            judges[f"evaluation.benchmarks.{name}.judge"] = bench.judge
        for path, judge in judges.items():
            kind = None if judge is None else self.backends.get(judge.backend)
            if (
                judge is not None
                and judge.mode == "logprob"
                and kind is not None
                and kind.kind not in ("transformers", "vllm")
            ):
                problems.append(
                    f"{path}.mode: 'logprob' needs an in-process backend (transformers or vllm); "
                    f"'{judge.backend}' is {kind.kind}. Use mode: json for API judges."
                )
        problems += self._unpriced_under_a_cost_budget()
        if not problems:
            problems += self._evaluation_outside_its_engines()
        if problems:
            raise ValueError("\n".join(problems))  # one problem a line; the loader locates each
        return self

    def local_eval_backend(self, benchmark: str, candidate_backend: str) -> str:
        """The backend a candidate is evaluated on for `benchmark`: the benchmark's own `backend` for a
        candidate served by a local engine, else the candidate's."""
        assert self.evaluation is not None
        own = self.evaluation.benchmarks[benchmark].backend
        local = self.backends[candidate_backend].kind in LOCAL_ENGINES
        return own if own is not None and local else candidate_backend

    def _evaluation_outside_its_engines(self) -> list[str]:
        """A benchmark whose harness needs more context than the engine serving a local candidate
        has: prompt budget (LongBench v2's truncation target) + new tokens > `max_model_len`. Such
        calls would fail, and count as failed or wrong items, far from the paper's numbers."""
        if self.evaluation is None:
            return []
        problems = []
        backends = {c.backend or self.policy.backend for c in self.evaluation.candidates}
        for name, bench in self.evaluation.benchmarks.items():
            output = bench.max_tokens or HARNESS_OUTPUT_TOKENS.get(name)
            prompt = (
                (bench.max_input_tokens or HARNESS_INPUT_TOKENS[name]) if name in HARNESS_INPUT_TOKENS else 0
            )
            for backend in sorted({self.local_eval_backend(name, b) for b in backends}):
                limit = getattr(self.backends[backend], "max_model_len", None)
                if output is None or limit is None or prompt + output <= limit:
                    continue
                where = "its prompts truncated to " + f"{prompt:,} tokens + " if prompt else "prompts + "
                problems.append(
                    f"evaluation.benchmarks.{name}: needs {where}{output:,} new tokens = at least "
                    f"{prompt + output:,} tokens of context, but backend '{backend}' has max_model_len "
                    f"{limit:,}. Give the benchmark a long-context engine (evaluation.benchmarks.{name}.backend: "
                    f"a vllm backend with max_model_len >= {prompt + output:,}), or lower its budgets "
                    f"(max_tokens{', max_input_tokens' if prompt else ''}), which departs from the harness"
                )
        return problems

    def _unpriced_under_a_cost_budget(self) -> list[str]:
        """A cost budget cannot count a paid model without a price: refuse rather than let its
        calls through uncounted. In-process and locally served models cost nothing."""
        budget = self.budget
        if budget is None or not any(
            limit.cost_usd is not None for limit in [budget.run, *budget.stages.values()] if limit is not None
        ):
            return []
        problems = []
        for use in self.models():
            if use.backend in self.backends and self.is_paid(use.backend) and use.model not in self.prices:
                problems.append(
                    f"budget: {use.where} calls '{use.model}' on '{use.backend}', which has no entry in "
                    "`prices`; a cost budget cannot count its calls. Add its price, or budget tokens instead"
                )
        return problems

    def is_paid(self, backend_name: str) -> bool:
        """Whether calls on the backend are paid for: an API (anthropic, openai-compatible at a
        base URL). In-process and locally served models cost nothing; budgets do not count them."""
        backend = self.backends[backend_name]
        return backend.kind == "anthropic" or (
            backend.kind == "openai-compatible" and backend.serve_locally is None
        )

    @property
    def policy(self) -> GeneratorConfig:
        return next(g for g in self.generators if g.role == "policy")

    def backend_identity(self, name: str) -> dict[str, Any]:
        return {"name": name, **self.backends[name].identity()}

    def call_identity(self, block: JudgeConfig | CriteriaWriterConfig | None) -> dict[str, Any] | None:
        """A judge's or the criteria writer's settings with its backend's identity, as stage
        config slices (cache keys) hold them; None for None."""
        if block is None:
            return None
        return {**block.model_dump(mode="json"), "backend": self.backend_identity(block.backend)}

    def judge_for(self, use: str) -> JudgeConfig | None:
        """Which judge applies, the one answer every stage and the CLI ask for:

        - "score" (curation's pointwise judge): the top-level `judge`;
        - "reward" (training): `reward.judge`, else the top-level `judge`;
        - a benchmark name: `evaluation.benchmarks.<name>.judge`, else `evaluation.judge`, else the
          top-level `judge` (whether the benchmark calls a judge at all is its suite's business).
        None when none is configured."""
        if use == "score":
            return self.judge
        if use == "reward":
            return self.reward.judge or self.judge
        evaluation = self.evaluation
        if evaluation is None or use not in evaluation.benchmarks:
            known = ", ".join(["score", "reward", *(evaluation.benchmarks if evaluation else ())])
            raise KeyError(
                f"judge_for: '{use}' is neither a judge use nor a benchmark of this recipe ({known})"
            )
        return evaluation.benchmarks[use].judge or evaluation.judge or self.judge

    def models(self) -> tuple[ModelUse, ...]:
        """Every model this recipe calls, and where: generators, the criteria writer, the judges of
        scoring, reward and each benchmark, and the evaluation candidates named by `model`.
        Candidates from training or SFT are the policy's own checkpoints, not listed."""
        uses = [ModelUse(f"generators.{g.name}", g.backend, g.model) for g in self.generators]
        if self.criteria_writer is not None:
            uses.append(ModelUse("criteria_writer", self.criteria_writer.backend, self.criteria_writer.model))
        judges = {"judge": self.judge_for("score")}
        if self.training is not None:
            judges["reward.judge"] = self.judge_for("reward")
        if self.evaluation is not None:
            judges |= {
                f"evaluation.benchmarks.{b}.judge": self.judge_for(b) for b in self.evaluation.benchmarks
            }
            for c in self.evaluation.candidates:
                if c.model is not None:
                    uses.append(ModelUse(f"evaluation.candidates.{c.name}", c.backend or self.policy.backend,
                                         c.model))  # fmt: skip
        uses += [ModelUse(where, j.backend, j.model) for where, j in judges.items() if j is not None]
        return tuple(uses)


class ModelUse(NamedTuple):
    """One place a recipe calls a model (`Recipe.models`)."""

    where: str  # the recipe path, e.g. "generators.policy" or "evaluation.benchmarks.writingbench.judge"
    backend: str
    model: str
