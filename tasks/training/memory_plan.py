"""Per-GPU memory of a training recipe, estimated before a GPU is rented (`wrl config plan`).

Pure arithmetic on the policy's architecture and the `training` block; every term is printed
with its arithmetic. The model (mixed precision, as ZeRO's paper counts it):

- weights: parameters x 2 bytes (bf16) or 4 (fp32), divided by the GPUs under `fsdp2` / `zero3`;
- gradients: trainable parameters x the same bytes, sharded the same way;
- optimizer state: trainable parameters x 12 bytes in bf16 (fp32 master copy, Adam's m and v)
  or 8 in fp32 (m and v), sharded the same way; on the CPU with `cpu_offload`;
- reference model (only when `kl_coef` > 0; the paper recipes, as the official run, have none):
  parameters x the same bytes, sharded the same way;
- activations of one micro-batch (`batch_size x num_generations / (gpus x
  gradient_accumulation_steps)` sequences of `max_prompt_tokens + max_response_tokens`; the
  same whatever `updates_per_step`, which shares the step's micro-batches among its updates), in
  16-bit, flash attention (no s^2 term), per layer s*b*(15h + 6i) bytes (attention 11h, norms 4h,
  SwiGLU 2i for gate and up and 4i for the product and its input of the down projection);
  with gradient checkpointing, every layer's input (2*s*b*h bytes) plus one layer recomputed;
- logits: TRL computes them for the completion only, `b x max_response_tokens x vocab`, in 16-bit,
  twice (the tensor and its gradient), plus one row in fp32 for the log-softmax. The entropy bonus
  (`entropy_coef`) adds no term: on a GPU TRL computes log-probabilities and entropies in one
  fused kernel whose backward writes one gradient of the logits;
- a fixed 2 GiB for the CUDA context and communication buffers (an allowance, not measured);
- colocated vLLM (`vllm_mode: colocate`) takes `vllm_gpu_memory_utilization` of the GPU: it must
  hold the bf16 weights and the KV cache of one full-length sequence; training gets the rest.

Under `engine: verl` (verl's FSDP workers, tasks/training/verl_config.py):
- micro-batches are token-bounded: the activations and logits of `verl.max_token_len_per_gpu`
  tokens (at least one full-length sequence), whatever the batch. verl computes logits over every
  token of the packed micro-batch, once: flash-attn's cross entropy writes their gradient in place
  (`verl.utils.torch_functional.logprobs_from_logits`; flash-attn comes with verl's fsdp extra),
  and the entropy bonus (`entropy_coef` > 0) a softmax of the same size;
- the rollout engine takes `verl.rollout_gpu_memory_utilization` of the GPU, holding its share of
  the bf16 weights (tensor parallel over `verl.rollout_tensor_parallel` GPUs) and the KV cache of
  one full-length sequence; training gets the rest;
- ppo adds the critic, a value model of the policy's shape: its weights, gradients and optimizer
  state count beside the actor's, except with `cpu_offload` (verl's param and optimizer offload),
  where each model is on the CPU while the other trains. Its own phase (its states and the
  activations of verl's critic token bound, 32,768 per GPU) is then checked separately.

It is an estimate (allocator fragmentation and framework buffers are not modelled): a recipe
near the limit should be measured (benchmarks/gpu_check.sh).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from configs.schema import TrainingConfig

GIB = 1024**3
OVERHEAD_BYTES = 2 * GIB
SHARDED = ("fsdp2", "zero3")


@dataclass(frozen=True)
class Architecture:
    """A decoder-only transformer's shape (the fields of its Hugging Face config.json)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer, by its usual module name."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, self.intermediate), "up_proj": (h, self.intermediate),
                "down_proj": (self.intermediate, h)}  # fmt: skip

    @property
    def params(self) -> int:
        per_layer = sum(i * o for i, o in self.module_shapes().values()) + 2 * self.hidden  # + 2 norms
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * per_layer + embeddings + self.hidden

    def lora_params(self, r: int, target_modules: tuple[str, ...]) -> int:
        shapes = self.module_shapes()
        return self.layers * sum(r * (shapes[m][0] + shapes[m][1]) for m in target_modules if m in shapes)

    @classmethod
    def from_config(cls, config: dict) -> Architecture:
        return cls(
            hidden=config["hidden_size"], layers=config["num_hidden_layers"],
            heads=config["num_attention_heads"],
            kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
            intermediate=config["intermediate_size"], vocab=config["vocab_size"],
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        )  # fmt: skip


# The paper's policies, from their published config.json (no hub on the machines that plan).
KNOWN_ARCHITECTURES = {
    "Qwen/Qwen2.5-7B-Instruct": Architecture(3584, 28, 28, 4, 18944, 152064),
    # WritingBench's SFT writer: Qwen2.5-7B-Instruct fine-tuned, the same shapes.
    "AQuarterMile/Writing-Model-Qwen-7B": Architecture(3584, 28, 28, 4, 18944, 152064),
    "meta-llama/Llama-3.1-8B-Instruct": Architecture(4096, 32, 32, 8, 14336, 128256),
}


def architecture_of(model: str) -> Architecture:
    """A known model id, or a local folder (or config.json) with the model's config."""
    if model in KNOWN_ARCHITECTURES:
        return KNOWN_ARCHITECTURES[model]
    path = Path(model).expanduser()
    config = path / "config.json" if path.is_dir() else path
    if config.is_file() and config.suffix == ".json":
        return Architecture.from_config(json.loads(config.read_text()))
    raise ValueError(
        f"no architecture known for '{model}': give a local model folder (its config.json), or one of "
        f"{', '.join(sorted(KNOWN_ARCHITECTURES))}"
    )


@dataclass(frozen=True)
class Term:
    name: str
    bytes: float
    arithmetic: str
    change: str  # what to change when this term is the one that does not fit


@dataclass
class Plan:
    gpus: int
    gpu_memory_gib: float
    training_budget: float
    terms: list[Term]
    vllm_share: float = 0.0
    vllm_terms: list[Term] = field(default_factory=list)
    # A phase that runs while `terms` are offloaded (verl's critic with cpu_offload): its own terms.
    other_phase: tuple[str, list[Term]] | None = None
    verl: bool = False

    @property
    def training_total(self) -> float:
        return sum(t.bytes for t in self.terms)

    @property
    def vllm_total(self) -> float:
        return sum(t.bytes for t in self.vllm_terms)

    @property
    def fits(self) -> bool:
        return not self.problems()

    def problems(self) -> list[str]:
        out = []
        if self.training_total > self.training_budget:
            largest = max(self.terms, key=lambda t: t.bytes)
            out.append(
                f"training needs {_gib(self.training_total)} per GPU, {_gib(self.training_budget)} available "
                f"on {self.gpus} x {self.gpu_memory_gib:g} GiB; the largest term is {largest.name} "
                f"({_gib(largest.bytes)}): {largest.change}"
            )
        if self.other_phase is not None:
            name, terms = self.other_phase
            total = sum(t.bytes for t in terms)
            if total > self.training_budget:
                largest = max(terms, key=lambda t: t.bytes)
                out.append(f"{name} needs {_gib(total)} per GPU, {_gib(self.training_budget)} available; the "
                           f"largest term is {largest.name} ({_gib(largest.bytes)}): {largest.change}")  # fmt: skip
        if self.vllm_total > self.vllm_share:
            out.append(
                f"colocated vLLM needs {_gib(self.vllm_total)} (weights and one full-length sequence's KV "
                f"cache), its share is {_gib(self.vllm_share)}: raise training.vllm_gpu_memory_utilization, "
                "or generate on other GPUs (vllm_mode: server)"
            )
        return out

    def render(self) -> str:
        lines = [f"per GPU, {self.gpus} x {self.gpu_memory_gib:g} GiB:"]
        phase_terms = self.other_phase[1] if self.other_phase else []
        width = max(len(t.name) for t in [*self.terms, *self.vllm_terms, *phase_terms])
        for term in self.terms:
            lines.append(f"  {term.name:<{width}}  {_gib(term.bytes):>10}  {term.arithmetic}")
        lines.append(f"  {'training, total':<{width}}  {_gib(self.training_total):>10}  "
                     f"of {_gib(self.training_budget)} available")  # fmt: skip
        if self.other_phase is not None:
            name, terms = self.other_phase
            lines.append(f"  {name} (the states above offloaded meanwhile):")
            for term in terms:
                lines.append(f"  {term.name:<{width}}  {_gib(term.bytes):>10}  {term.arithmetic}")
            lines.append(f"  {name + ', total':<{width}}  {_gib(sum(t.bytes for t in terms)):>10}")
        if self.vllm_terms:
            lines.append("  rollout engine:" if self.verl else "  colocated vLLM:")
            for term in self.vllm_terms:
                lines.append(f"  {term.name:<{width}}  {_gib(term.bytes):>10}  {term.arithmetic}")
            lines.append(
                f"  {'vLLM, total':<{width}}  {_gib(self.vllm_total):>10}  of its {_gib(self.vllm_share)}"
            )
        lines += [f"DOES NOT FIT: {p}" for p in self.problems()] or ["fits"]
        return "\n".join(lines)


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


CRITIC_TOKENS_PER_GPU = 32768  # verl's critic.ppo_max_token_len_per_gpu default (the official run's)


def plan_training(training: TrainingConfig, arch: Architecture, gpus: int, gpu_memory_gib: float) -> Plan:
    """The per-GPU estimate of `training` on `gpus` GPUs of `gpu_memory_gib` each."""
    shard = gpus if training.distributed in SHARDED else 1
    over = (
        f" / {shard} GPU(s) ({training.distributed})"
        if training.distributed in SHARDED
        else " (ddp: replicated)"
    )
    width = 2 if training.bf16 else 4
    p = arch.params
    lora = training.lora
    trainable = arch.lora_params(lora.r, lora.target_modules) if lora else p
    what = f"LoRA r={lora.r}: {trainable / 1e6:.1f}M" if lora else f"{p / 1e9:.2f}B"
    terms = _model_states("", p, trainable, what, width, shard, over, training)
    if training.kl_coef > 0:
        terms.append(Term("reference model", p * width / shard, f"{p / 1e9:.2f}B params x {width} B{over}",
                          "kl_coef: 0 builds no reference model, or shard it over more GPUs"))  # fmt: skip

    verl = training.engine == "verl"
    s, s_c, h = (
        training.max_prompt_tokens + training.max_response_tokens,
        training.max_response_tokens,
        arch.hidden,
    )
    if verl:
        bound = training.verl_settings.max_token_len_per_gpu
        tokens = max(bound, s)
        change = (f"lower training.verl.max_token_len_per_gpu (now {bound}; a micro-batch holds at least one "
                  f"{s}-token sequence)")  # fmt: skip
        terms += _activations(arch, tokens, f"{tokens} tokens", training.gradient_checkpointing, change)
        # flash-attn's cross entropy writes the gradient into the logits (verl's logprobs_from_logits,
        # inplace_backward): one copy; the entropy bonus takes a softmax of the same size
        # (entropy_from_logits).
        entropy = training.entropy_coef > 0
        terms.append(Term("logits", tokens * arch.vocab * 2 * (2 if entropy else 1),
                          f"{tokens} tokens x {arch.vocab} vocab x 2 B (gradient in place)"
                          + (" x 2 (the entropy's softmax)" if entropy else ""), change))  # fmt: skip
    else:
        completions = training.batch_size * training.num_generations
        micro = max(1, completions // (gpus * training.gradient_accumulation_steps))
        batch_change = (f"raise gradient_accumulation_steps (micro-batch now {micro} sequence(s) of {s} tokens per GPU: "
                        f"{completions} completions / ({gpus} GPUs x {training.gradient_accumulation_steps}))")  # fmt: skip
        terms += _activations(
            arch, s * micro, f"{s} tokens x {micro} seq", training.gradient_checkpointing, batch_change
        )
        terms.append(Term("logits", micro * s_c * arch.vocab * 2 * 2 + s_c * arch.vocab * 4,
                          f"{micro} seq x {s_c} completion tokens x {arch.vocab} vocab x 2 B x 2 (and grad) + one row in fp32",
                          batch_change))  # fmt: skip
    overhead = Term("CUDA context, buffers", OVERHEAD_BYTES, "fixed allowance", "use GPUs with more memory")
    terms.append(overhead)

    gpu_bytes = gpu_memory_gib * GIB
    plan = Plan(gpus, gpu_memory_gib, gpu_bytes, terms, verl=verl)
    if training.algorithm == "ppo":  # the critic: a value model of the policy's shape (no LM head)
        value = p - (0 if arch.tied_embeddings else arch.vocab * h) + h
        critic = _model_states("critic ", value, value, f"{value / 1e9:.2f}B", width, shard, over, training)
        if training.cpu_offload:
            phase = [*critic, *_activations(arch, max(CRITIC_TOKENS_PER_GPU, s), f"{max(CRITIC_TOKENS_PER_GPU, s)} tokens",
                                            training.gradient_checkpointing, "gradient_checkpointing: true"), overhead]  # fmt: skip
            plan.other_phase = ("critic phase", phase)
        else:
            terms[-1:-1] = critic
    kv_per_token = 2 * arch.layers * arch.kv_heads * arch.head_dim * 2
    if verl:
        v = training.verl_settings
        tp = v.rollout_tensor_parallel
        plan.vllm_share = v.rollout_gpu_memory_utilization * gpu_bytes
        plan.training_budget = gpu_bytes - plan.vllm_share
        plan.vllm_terms = [
            Term("rollout weights", p * 2 / tp, f"{p / 1e9:.2f}B params x 2 B / {tp} (tensor parallel)", ""),
            Term("rollout KV cache", kv_per_token * s / tp,
                 f"{s} tokens x 2 (K, V) x {arch.layers} layers x {arch.kv_heads} KV heads x {arch.head_dim} x 2 B / {tp}", ""),
        ]  # fmt: skip
    elif training.use_vllm and training.vllm_mode == "colocate":
        plan.vllm_share = training.vllm_gpu_memory_utilization * gpu_bytes
        plan.training_budget = gpu_bytes - plan.vllm_share
        plan.vllm_terms = [
            Term("vLLM weights", p * 2, f"{p / 1e9:.2f}B params x 2 B (bf16, tensor parallel 1)", ""),
            Term("vLLM KV cache", kv_per_token * s,
                 f"{s} tokens x 2 (K, V) x {arch.layers} layers x {arch.kv_heads} KV heads x {arch.head_dim} x 2 B", ""),
        ]  # fmt: skip
    return plan


def _model_states(prefix: str, params: int, trainable: int, what: str, width: int, shard: int, over: str,
                  training: TrainingConfig) -> list[Term]:  # fmt: skip
    """Weights, gradients and optimizer state of one trained model (the policy, or verl's critic)."""
    sharded_change = "shard it (distributed: zero3 or fsdp2) over more GPUs, or train LoRA"
    terms = [
        Term(f"{prefix}weights", params * width / shard, f"{params / 1e9:.2f}B params x {width} B{over}", sharded_change),
        Term(f"{prefix}gradients", trainable * width / shard, f"{what} trainable x {width} B{over}", sharded_change),
    ]  # fmt: skip
    optimizer_bytes = 12 if training.bf16 else 8
    if training.cpu_offload:
        terms.append(
            Term(f"{prefix}optimizer state", 0, "offloaded to the CPU (cpu_offload)", sharded_change)
        )
    else:
        terms.append(Term(f"{prefix}optimizer state", trainable * optimizer_bytes / shard,
                          f"{what} trainable x {optimizer_bytes} B (fp32 master, Adam m, v){over}" if training.bf16
                          else f"{what} trainable x 8 B (Adam m, v){over}",
                          f"{sharded_change}, or cpu_offload: true"))  # fmt: skip
    return terms


def _activations(arch: Architecture, tokens: int, shape: str, checkpointing: bool, change: str) -> list[Term]:
    """The activations of one micro-batch of `tokens` tokens (flash attention, 16-bit)."""
    h, i = arch.hidden, arch.intermediate
    one_layer = tokens * (15 * h + 6 * i)
    if checkpointing:
        return [Term("activations", arch.layers * 2 * tokens * h + one_layer,
                     f"{arch.layers} layers x 2 x {shape} x {h} + one layer {shape} x (15 x {h} + 6 x {i}) B "
                     "(gradient checkpointing)", change)]  # fmt: skip
    return [Term("activations", arch.layers * one_layer, f"{arch.layers} layers x {shape} x (15 x {h} + 6 x {i}) B",
                 f"gradient_checkpointing: true, or {change}")]  # fmt: skip
