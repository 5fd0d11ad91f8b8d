"""In-process offline generation with vLLM (`vllm.LLM`): the fast path on a CUDA machine.

vLLM is an optional GPU extra (`pip install 'writing-rl[vllm]'` on a CUDA machine). Importing this
module never imports vllm; constructing a client where it is not installed raises
`VLLMUnavailableError` (a `ValueError`) that says so.

`VLLMClient.chat` looks like any other backend: one request in, one Completion out. Behind it, one
worker task per client collects the requests that arrive while a batch is running and hands them
to one `LLM.chat(conversations, [SamplingParams, ...])` call in a worker thread; vLLM schedules
them itself. Unlike the transformers backend, every request keeps its own decoding parameters,
its seed included: vLLM seeds each request separately, so a seeded sample does not depend on the
batch it lands in.

Engines load lazily on first use, once per process per (resolved path, tensor_parallel_size,
gpu_memory_utilization, max_model_len, dtype), and are shared by every client with those settings.
`vllm.LLM` is not thread-safe: calls into one engine are serialised.

Sampling: temperature, top_p, max_tokens, stop, seed and logprobs come from `Decoding`; top_k,
min_p and repetition_penalty come from the checkpoint's generation config, as vLLM's own server
and `transformers.generate` (the transformers backend) apply them. Reported logprobs are vLLM's
default `raw_logprobs`: the model's own distribution, before temperature, penalties and top_p, as
OpenAI-style APIs and the transformers backend report them.

`next_token_logprobs` (local judges) asks for one greedy token with the top 20 logprobs (vLLM's
default `max_logprobs` cap) and reads the candidates from them. Candidates outside the top 20 are
then scored exactly with `prompt_logprobs`: the candidate's first token is appended to the prompt
and vLLM reports that prompt token's logprob. That second pass costs a prefill per missing token,
so the common case (score or verdict tokens among the top 20) stays one cheap request.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import logging
import math
import threading
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from configs.schema import Decoding, VLLMBackend
from tasks.llm.base import BackendUnavailableError, Completion, Message, TokenLogprob
from tasks.llm.batching import Job, MicroBatcher, first_token_id, resolve
from tasks.llm.embedded import resolve_model_path_once

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'writing-rl[vllm]'"
# vLLM's default engine cap on logprobs per position (ModelConfig.max_logprobs); the recipe has
# no knob for it, so this is the most a request may ask for.
PROBE_TOP_LOGPROBS = 20
# Settings copied from the checkpoint's generation config (via LLM.get_default_sampling_params)
# into every request; everything else comes from `Decoding`.
_CHECKPOINT_SAMPLING_FIELDS = ("top_k", "min_p", "repetition_penalty")


class VLLMUnavailableError(BackendUnavailableError):
    """A recipe uses a `vllm` backend where vllm is not installed (it is an optional GPU extra)."""


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def _import_vllm() -> Any:
    return importlib.import_module("vllm")


# ---------------------------------------------------------------------------------------------
# Shared engines: one vllm.LLM per (resolved path, settings) per process
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineKey:
    path: str
    tensor_parallel_size: int
    gpu_memory_utilization: float
    max_model_len: int | None
    dtype: str
    hf_overrides: str = "{}"  # JSON (a key must hash): changes to the model's config, e.g. rope scaling


@dataclass(eq=False)
class Engine:
    key: EngineKey
    llm: Any  # vllm.LLM
    sampling_defaults: dict[str, Any]  # the checkpoint's top_k / min_p / repetition_penalty
    lock: threading.Lock = field(default_factory=threading.Lock)  # LLM is not thread-safe


_ENGINES: dict[EngineKey, Engine] = {}
_ENGINES_LOCK = threading.Lock()
_KEY_LOCKS: dict[EngineKey, threading.Lock] = {}


def _engine_key(model: str, model_cache: Path, config: VLLMBackend) -> EngineKey:
    path = resolve_model_path_once(model, model_cache)
    return EngineKey(
        path=path,
        tensor_parallel_size=config.tensor_parallel_size,
        gpu_memory_utilization=config.gpu_memory_utilization,
        max_model_len=config.max_model_len,
        dtype=config.dtype,
        hf_overrides=json.dumps(config.hf_overrides, sort_keys=True),
    )


def _load_shared(model: str, model_cache: Path, config: VLLMBackend) -> Engine:
    """Return the process-wide engine for these settings, loading it (blocking, minutes) if needed."""
    key = _engine_key(model, model_cache, config)
    with _ENGINES_LOCK:
        if key in _ENGINES:
            return _ENGINES[key]
        key_lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with key_lock:  # two clients asking at once: one loads, the other waits for it
        with _ENGINES_LOCK:
            if key in _ENGINES:
                return _ENGINES[key]
        engine = _load(key)
        with _ENGINES_LOCK:
            _ENGINES[key] = engine
    return engine


def release_engines() -> int:
    """Shut down and forget every engine of this process: the trainer started next owns the GPUs.
    vLLM's V1 engine core runs in a process of its own (shut down here); the weights and KV cache
    in this process go with the last reference. Not run on a GPU yet (no vLLM on the CPU stack)."""
    import gc

    with _ENGINES_LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for engine in engines:
        shutdown = getattr(getattr(engine.llm, "llm_engine", None), "engine_core", None)
        if shutdown is not None and hasattr(shutdown, "shutdown"):
            try:
                shutdown.shutdown()
            except Exception as exc:  # a half-dead engine must not stop the release of the others
                logger.warning("vllm: shutting down %s's engine: %s", engine.key.path, exc)
    released = len(engines)
    del engines
    gc.collect()
    try:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
    except ImportError:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return released


def _load(key: EngineKey) -> Engine:
    vllm = _import_vllm()
    started = time.perf_counter()
    kwargs: dict[str, Any] = {
        "model": key.path,
        "tensor_parallel_size": key.tensor_parallel_size,
        "gpu_memory_utilization": key.gpu_memory_utilization,
        "dtype": key.dtype,
    }
    if key.max_model_len is not None:  # None: vLLM derives it from the model config
        kwargs["max_model_len"] = key.max_model_len
    if json.loads(key.hf_overrides):
        kwargs["hf_overrides"] = json.loads(key.hf_overrides)
    llm = vllm.LLM(**kwargs)
    defaults: dict[str, Any] = {}
    try:
        checkpoint = llm.get_default_sampling_params()
        defaults = {f: getattr(checkpoint, f) for f in _CHECKPOINT_SAMPLING_FIELDS if hasattr(checkpoint, f)}
    except Exception as exc:  # an older/newer vLLM without it: vLLM's neutral defaults then
        logger.warning("vllm: could not read %s's generation defaults: %s", key.path, exc)
    logger.info(
        "vllm: loaded %s (tp=%d, dtype=%s, gpu_memory_utilization=%.2f) in %.1f s; checkpoint sampling %s",
        key.path,
        key.tensor_parallel_size,
        key.dtype,
        key.gpu_memory_utilization,
        time.perf_counter() - started,
        defaults,
    )
    return Engine(key=key, llm=llm, sampling_defaults=defaults)


# ---------------------------------------------------------------------------------------------
# Batched computations (run in a worker thread)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Generated:
    text: str
    finish_reason: str | None
    input_tokens: int
    output_tokens: int
    logprobs: tuple[TokenLogprob, ...] | None


def to_sampling_params(vllm: Any, engine: Engine, params: Decoding) -> Any:
    """`Decoding` -> `vllm.SamplingParams` (n=1: chat_many sends n requests, each with its own seed)."""
    return vllm.SamplingParams(
        **engine.sampling_defaults,
        n=1,
        temperature=params.temperature,  # 0 = greedy (vLLM then ignores top_p/top_k/min_p)
        top_p=params.top_p,
        max_tokens=params.max_tokens,
        stop=list(params.stop) or None,
        seed=params.seed,
        logprobs=params.logprobs,
    )


def _conversations(batch: Sequence[Sequence[Message]]) -> list[list[dict[str, str]]]:
    # LLM.chat tells one conversation from many by "a list of lists": tuples would be misread.
    return [[dict(m) for m in messages] for messages in batch]


def _generate_batch(
    engine: Engine, conversations: Sequence[Sequence[Message]], params: Sequence[Decoding]
) -> list[_Generated]:
    vllm = _import_vllm()
    with engine.lock:
        outputs = engine.llm.chat(
            _conversations(conversations),
            sampling_params=[to_sampling_params(vllm, engine, p) for p in params],
            use_tqdm=False,
        )
        tokenizer = engine.llm.get_tokenizer()
    if len(outputs) != len(conversations):  # never pair a result with the wrong request
        raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(conversations)} requests")
    return [_generated(tokenizer, out, p.logprobs) for out, p in zip(outputs, params, strict=True)]


def _generated(tokenizer: Any, output: Any, top_n: int | None) -> _Generated:
    completion = output.outputs[0]  # RequestOutput.outputs: one CompletionOutput per sample (n=1)
    token_ids = list(completion.token_ids)
    logprobs = None
    if top_n is not None:
        logprobs = _token_logprobs(tokenizer, token_ids, completion.logprobs or [], top_n)
    return _Generated(
        text=completion.text,
        finish_reason=completion.finish_reason,  # "stop" (EOS or a stop string) | "length" | "abort"
        input_tokens=len(output.prompt_token_ids or ()),
        output_tokens=len(token_ids),
        logprobs=logprobs,
    )


def _decode(tokenizer: Any, token_id: int) -> str:
    # Decoded by us, not vLLM's `decoded_token`, so token strings match the transformers backend's.
    return tokenizer.decode([token_id])


def _token_logprobs(
    tokenizer: Any, token_ids: list[int], steps: Sequence[dict[int, Any]], top_n: int
) -> tuple[TokenLogprob, ...]:
    """vLLM's per-position {token_id: Logprob} (the sampled token plus the top `top_n`) -> ours."""
    out = []
    for token_id, step in zip(token_ids, steps, strict=False):
        step = step or {}
        chosen = step.get(token_id)  # vLLM always includes the sampled token
        ranked = sorted(step.items(), key=lambda item: item[1].logprob, reverse=True)[:top_n]
        top: dict[str, float] = {}
        for other_id, other in ranked:  # distinct ids can decode alike: keep the best
            top.setdefault(_decode(tokenizer, other_id), float(other.logprob))
        out.append(
            TokenLogprob(
                token=_decode(tokenizer, token_id),
                logprob=float(chosen.logprob) if chosen is not None else -math.inf,
                top=top,
            )
        )
    return tuple(out)


def _next_token_batch(
    engine: Engine, items: Sequence[tuple[Sequence[Message], Sequence[str]]]
) -> list[dict[str, float]]:
    vllm = _import_vllm()
    with engine.lock:
        tokenizer = engine.llm.get_tokenizer()
        wanted = [{c: first_token_id(tokenizer, c) for c in candidates} for _, candidates in items]
        # Pass 1: one greedy token with the top logprobs; most candidates are found here.
        probe = vllm.SamplingParams(n=1, temperature=0.0, max_tokens=1, logprobs=PROBE_TOP_LOGPROBS)
        outputs = engine.llm.chat(
            _conversations([m for m, _ in items]), sampling_params=probe, use_tqdm=False
        )
        if len(outputs) != len(items):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(items)} requests")
        found: list[dict[int, float]] = []
        missing: list[tuple[int, int, list[int]]] = []  # (item, token id, prompt token ids)
        for index, (output, ids) in enumerate(zip(outputs, wanted, strict=True)):
            steps = output.outputs[0].logprobs or []
            first = steps[0] if len(steps) else {}
            found.append({t: float(first[t].logprob) for t in set(ids.values()) if t in first})
            prompt_ids = list(output.prompt_token_ids)
            missing += [(index, t, prompt_ids) for t in sorted(set(ids.values()) - found[index].keys())]
        # Pass 2: tokens outside the top logprobs, scored as the last token of the prompt (exact).
        if missing:
            scorer = vllm.SamplingParams(n=1, temperature=0.0, max_tokens=1, prompt_logprobs=1)
            prompts = [{"prompt_token_ids": [*prompt_ids, t]} for _, t, prompt_ids in missing]
            scored = engine.llm.generate(prompts, sampling_params=scorer, use_tqdm=False)
            if len(scored) != len(missing):
                raise RuntimeError(f"vLLM returned {len(scored)} outputs for {len(missing)} scoring prompts")
            for (index, token_id, _), output in zip(missing, scored, strict=True):
                positions = output.prompt_logprobs  # one {token_id: Logprob} per prompt token (first: None)
                found[index][token_id] = float(positions[len(positions) - 1][token_id].logprob)
    return [{c: found[i][t] for c, t in ids.items()} for i, ids in enumerate(wanted)]


# ---------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------


def _kind_group(job: Job) -> Hashable:
    # Decoding parameters may differ within a batch (one SamplingParams per request): only the
    # kind of work splits batches.
    return job.kind


class VLLMClient:
    """An `LLMClient` generating in this process with offline vLLM. Safe to call concurrently."""

    def __init__(self, backend_name: str, config: VLLMBackend, model: str, model_cache: Path) -> None:
        if not vllm_installed():
            raise VLLMUnavailableError(
                f"backend '{backend_name}' has kind 'vllm', but vllm is not installed. vLLM is an "
                f"optional GPU extra: install it on a CUDA machine with `{INSTALL_HINT}`. Without a GPU, "
                "use a 'transformers' backend, or `wrl serve` with an 'openai-compatible' backend."
            )
        self.backend_name = backend_name
        self.model = model
        self.config = config
        self.model_cache = Path(model_cache)
        self._engine: Engine | None = None
        self._batcher = MicroBatcher(
            repr(self), max_batch=config.max_concurrency, group_of=_kind_group, execute=self._execute
        )

    def identity(self) -> dict[str, Any]:
        # "auto" is a stable identity: vLLM derives it from the checkpoint's own config.
        return {"backend": "vllm", "model": self.model, "dtype": self.config.dtype}

    def __repr__(self) -> str:
        return f"VLLMClient({self.backend_name!r}, {self.model!r}, tp={self.config.tensor_parallel_size})"

    async def load(self) -> Engine:
        """Load (or join) the shared engine now; chat() does this on first use anyway."""
        if self._engine is None:
            self._engine = await asyncio.to_thread(_load_shared, self.model, self.model_cache, self.config)
        return self._engine

    async def chat(
        self, messages: Sequence[Message], params: Decoding, *, sample_index: int = 0
    ) -> Completion:
        """One completion; several samples of a prompt are several requests, told apart by
        `sample_index`.

        Never raises: a failed request comes back as a failed Completion.
        """
        started = time.perf_counter()
        try:
            return await self._batcher.submit("generate", messages, params=params)
        except Exception as exc:  # a closed client or a worker bug: a Completion comes back regardless
            return Completion.failure(f"{type(exc).__name__}: {exc}", latency_s=time.perf_counter() - started)

    async def next_token_logprobs(
        self, messages: Sequence[Message], candidates: Sequence[str]
    ) -> dict[str, float]:
        """Log-probability of each candidate as the first token of the assistant's reply.

        Like the transformers backend, a multi-token candidate is scored by its first token only
        ("10" scores as "1" with the SmolLM2 tokenizer). Exact for every candidate: the top-20
        probe, then `prompt_logprobs` for the rest (see the module docstring). Raises on failure
        (unlike chat): a judge decides what a failure means.
        """
        if not candidates:
            return {}
        return await self._batcher.submit("next_token", messages, candidates=tuple(candidates))

    async def aclose(self) -> None:
        """Stop the batching worker: the batch in flight finishes, queued requests fail.

        The engine stays loaded: other clients may share it (vLLM frees it at process exit).
        """
        await self._batcher.aclose()

    # -- batching -----------------------------------------------------------------------------

    async def _execute(self, batch: list[Job]) -> None:
        try:
            engine = await self.load()
        except Exception as exc:
            logger.warning("%r: loading %s failed: %s: %s", self, self.model, type(exc).__name__, exc)
            for job in batch:
                resolve(job, error=exc)
            return
        try:
            results = await asyncio.to_thread(_run_batch, engine, batch)
        except Exception as exc:
            if len(batch) == 1:
                logger.warning("%r: a request failed: %s: %s", self, type(exc).__name__, exc)
                resolve(batch[0], error=exc)
                return
            # vLLM validates a whole call at once (e.g. one prompt over max_model_len): retry one by
            # one so a single bad request does not fail its neighbours.
            logger.warning(
                "%r: a batch of %d failed (%s: %s); retrying one by one",
                self,
                len(batch),
                type(exc).__name__,
                exc,
            )
            for job in batch:
                await self._execute([job])
            return
        for job, result in zip(batch, results, strict=True):
            resolve(job, result=result)


def _run_batch(engine: Engine, batch: list[Job]) -> list[Any]:
    if batch[0].kind == "generate":
        return _generate_batch(engine, [job.messages for job in batch], [job.params for job in batch])
    return _next_token_batch(engine, [(job.messages, job.candidates) for job in batch])
