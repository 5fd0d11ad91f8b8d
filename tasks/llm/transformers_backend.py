"""In-process generation with Hugging Face transformers, on CPU or GPU, with transparent micro-batching.

`TransformersClient.chat` looks like any other backend: one request in, one Completion out. Behind
it, one worker task per client collects requests that arrive while a batch is running and generates
up to `max_batch_size` of them together (left padding) in a worker thread, so the event loop stays
free. Requests are batched only with others that share their decoding parameters (the seed aside).

Weights load lazily on first use and are shared by every client in the process with the same
resolved path, device and dtype: a policy and a competitor on one model load it once.

`next_token_logprobs` serves local judges: the log-probability of each candidate's first token
right after the assistant turn opens (score tokens "1".."10", verdict tokens "A"/"B"/"C").
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configs.schema import Decoding, TransformersBackend
from tasks.llm import cpu_share
from tasks.llm.base import Completion, Message, TokenLogprob
from tasks.llm.batching import Job, MicroBatcher, first_token_id, resolve
from tasks.llm.embedded import resolve_model_path_once
from tasks.llm.shared_prefix import PrefixStore, probe_rows

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Shared weights: one copy per (resolved path, device, dtype) per process
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LoadedModel:
    path: str
    device: str
    dtype: str
    model: Any  # a transformers PreTrainedModel in eval mode
    tokenizer: Any  # left-padding tokenizer with a pad token
    eos_ids: frozenset[int]
    pad_id: int
    top_k: int  # the checkpoint's own top_k, or 0 (off): transformers' global default of 50 is not ours


_MODELS: dict[tuple[str, str, str], LoadedModel] = {}
_MODELS_LOCK = threading.Lock()
_KEY_LOCKS: dict[tuple[str, str, str], threading.Lock] = {}

# One forward computation at a time per process. Seeded sampling seeds torch's global RNG, so
# seeding and generating must not interleave with another batch; on a CPU the cores are shared
# anyway. (The fast GPU path is vLLM, not this backend.)
_COMPUTE_LOCK = threading.Lock()
# transformers' from_pretrained is not thread-safe: two different folders loading at once in two
# threads (an SFT policy next to a local competitor, each generator on its own thread) both came back
# with lm_head left on the meta device ("Cannot copy out of meta tensor"), for SmolLM2's tied
# embeddings, every time (transformers 5.19). Loads take turns; generation still runs concurrently.
_LOAD_LOCK = threading.Lock()


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _resolve_dtype(dtype: str, device: str) -> str:
    if dtype != "auto":
        return dtype
    if device == "cuda":
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"  # half precision on a CPU is slower, not faster


def _load_shared(model: str, model_cache: Path, device: str, dtype: str) -> LoadedModel:
    """Return the process-wide copy of `model`, loading it (blocking) if nobody has yet."""
    path = resolve_model_path_once(model, model_cache)
    key = (path, device, dtype)
    with _MODELS_LOCK:
        if key in _MODELS:
            return _MODELS[key]
        key_lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with key_lock:  # two clients asking at once: one loads, the other waits for it
        with _MODELS_LOCK:
            if key in _MODELS:
                return _MODELS[key]
        with _LOAD_LOCK:  # one load at a time, whatever the model (see _LOAD_LOCK)
            loaded = _load(path, device, dtype)
        with _MODELS_LOCK:
            _MODELS[key] = loaded
    return loaded


def loaded_paths() -> set[str]:
    """The model folders this process holds weights of."""
    with _MODELS_LOCK:
        return {key[0] for key in _MODELS}


def release_models(keep: Iterable[str] = ()) -> int:
    """Forget the process-wide copies of every model whose path is not in `keep`, so they can be
    freed once no client holds them (an evaluation walks through checkpoints one after another).
    Returns how many were dropped."""
    import gc

    with _MODELS_LOCK:
        dropped = [key for key in _MODELS if key[0] not in set(keep)]
        for key in dropped:
            del _MODELS[key]
    if dropped:
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return len(dropped)


def _load(path: str, device: str, dtype: str) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
    eos_ids = set(_as_ids(model.generation_config.eos_token_id)) | set(_as_ids(tokenizer.eos_token_id))
    if not eos_ids:
        raise ValueError(f"{path}: neither the generation config nor the tokenizer names an EOS token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.convert_ids_to_tokens(min(eos_ids))
    logger.info(
        "transformers: loaded %s on %s as %s in %.1f s", path, device, dtype, time.perf_counter() - started
    )
    return LoadedModel(
        path=path,
        device=device,
        dtype=dtype,
        model=model,
        tokenizer=tokenizer,
        eos_ids=frozenset(eos_ids),
        pad_id=int(tokenizer.pad_token_id),
        top_k=int(model.generation_config.top_k or 0),
    )


def _as_ids(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


# ---------------------------------------------------------------------------------------------
# Batched computations (run in a worker thread)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Generated:
    text: str
    finish_reason: str
    input_tokens: int
    output_tokens: int
    logprobs: tuple[TokenLogprob, ...] | None


def _encode(loaded: LoadedModel, conversations: Sequence[Sequence[Message]]) -> Any:
    tokenizer = loaded.tokenizer
    texts = [
        tokenizer.apply_chat_template([dict(m) for m in messages], add_generation_prompt=True, tokenize=False)
        for messages in conversations
    ]
    # The template already holds the special tokens (BOS, turn markers): add none twice.
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(loaded.device)


def _generate_batch(
    loaded: LoadedModel, conversations: Sequence[Sequence[Message]], params: Decoding
) -> list[_Generated]:
    import torch

    # The lock covers all tokenizer work too: a fast tokenizer keeps its padding settings as
    # state, and two threads sharing one (two clients on one model) corrupt each other's batches.
    with _COMPUTE_LOCK, torch.inference_mode():
        _share_cpu(loaded)
        return _generate_locked(loaded, conversations, params)


def _share_cpu(loaded: LoadedModel) -> None:
    if loaded.device == "cpu":  # leave a running local server its cores (tasks.llm.cpu_share)
        cpu_share.apply_in_process_threads()


def _follow_cpu_share() -> Any:
    """A stopping criterion that never stops: it re-applies the CPU share at every decoding step."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class FollowCpuShare(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            cpu_share.apply_in_process_threads()
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([FollowCpuShare()])


def _generate_locked(
    loaded: LoadedModel, conversations: Sequence[Sequence[Message]], params: Decoding
) -> list[_Generated]:
    import torch

    encoded = _encode(loaded, conversations)
    kwargs: dict[str, Any] = {
        "max_new_tokens": params.max_tokens,
        "eos_token_id": sorted(loaded.eos_ids),
        "pad_token_id": loaded.pad_id,
    }
    if params.temperature > 0:
        kwargs |= {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p}
        kwargs["top_k"] = loaded.top_k
    else:
        kwargs |= {"do_sample": False, "temperature": 1.0, "top_p": 1.0}
    if params.stop:
        kwargs |= {"stop_strings": list(params.stop), "tokenizer": loaded.tokenizer}
    if params.logprobs is not None:
        kwargs |= {"return_dict_in_generate": True, "output_logits": True}
    if loaded.device == "cpu":  # a local server may start or stop while this batch decodes
        kwargs["stopping_criteria"] = _follow_cpu_share()
    if params.seed is not None:
        # One seed for the whole batch, taken from its first request: the rows of a batch draw
        # from one RNG stream, so per-request seeds within a batch are not independent, and a
        # seeded sample can differ with the batch it happened to land in.
        torch.manual_seed(params.seed)
    output = loaded.model.generate(**encoded, **kwargs)

    sequences = output.sequences if params.logprobs is not None else output
    prompt_width = encoded["input_ids"].shape[1]
    results = []
    for row in range(len(conversations)):
        generated = sequences[row, prompt_width:].tolist()
        text, finish_reason, count = _finish(loaded, generated, params.stop)
        logprobs = None
        if params.logprobs is not None:
            logprobs = _token_logprobs(loaded, output.logits, row, generated[:count], params.logprobs)
        results.append(
            _Generated(
                text=text,
                finish_reason=finish_reason,
                input_tokens=int(encoded["attention_mask"][row].sum()),
                output_tokens=count,
                logprobs=logprobs,
            )
        )
    return results


def _finish(loaded: LoadedModel, generated: list[int], stop: Sequence[str]) -> tuple[str, str, int]:
    """(text, finish_reason, generated token count) of one row, padding after its end removed."""
    tokenizer = loaded.tokenizer
    end = next((i for i, token in enumerate(generated) if token in loaded.eos_ids), None)
    tokens = generated if end is None else generated[: end + 1]  # the EOS counts as generated
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut], "stop", _tokens_until_stop(tokenizer, tokens, stop)
    return text, "length" if end is None else "stop", len(tokens)


def _tokens_until_stop(tokenizer: Any, tokens: list[int], stop: Sequence[str]) -> int:
    # The shortest prefix whose text holds a stop string: generation halted right there (rows that
    # stopped early were padded afterwards). Containment only grows with the prefix: bisect.
    low, high = 1, len(tokens)
    while low < high:
        mid = (low + high) // 2
        text = tokenizer.decode(tokens[:mid], skip_special_tokens=True)
        if any(s in text for s in stop):
            high = mid
        else:
            low = mid + 1
    return high


def _token_logprobs(
    loaded: LoadedModel, logits: Sequence[Any], row: int, tokens: list[int], top_n: int
) -> tuple[TokenLogprob, ...]:
    import torch

    # Log-probabilities of the model's own distribution (raw logits), as OpenAI-style APIs report
    # them: temperature and top_p change what is sampled, not these numbers.
    decode = loaded.tokenizer.decode
    out = []
    for step, token in enumerate(tokens):
        logprobs = torch.log_softmax(logits[step][row].float(), dim=-1)
        top: dict[str, float] = {}
        if top_n:
            values, ids = torch.topk(logprobs, top_n)
            for value, token_id in zip(values.tolist(), ids.tolist(), strict=True):
                top.setdefault(decode([token_id]), value)  # distinct ids can decode alike: keep the best
        out.append(TokenLogprob(token=decode([token]), logprob=float(logprobs[token]), top=top))
    return tuple(out)


def _next_token_batch(
    loaded: LoadedModel,
    items: Sequence[tuple[Sequence[Message], Sequence[str]]],
    prefixes: PrefixStore | None = None,
) -> list[dict[str, float]]:
    import torch

    with _COMPUTE_LOCK, torch.inference_mode():
        _share_cpu(loaded)
        tokenizer = loaded.tokenizer
        texts = [
            tokenizer.apply_chat_template(
                [dict(m) for m in messages], add_generation_prompt=True, tokenize=False
            )
            for messages, _ in items
        ]
        rows = tokenizer(texts, add_special_tokens=False)["input_ids"]  # the template holds the specials
        logits = probe_rows(loaded.model, rows, pad_id=loaded.pad_id, device=loaded.device, store=prefixes)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        return [  # still under the lock: encoding candidates uses the shared tokenizer
            {c: float(logprobs[row, first_token_id(tokenizer, c)]) for c in candidates}
            for row, (_, candidates) in enumerate(items)
        ]


# ---------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------


def _generate_group(job: Job) -> Hashable:
    # Rows of one generate() call share every decoding parameter. The seed is not one of them
    # (one seed per batch, see _generate_batch), and n is handled by callers (chat_many).
    if job.kind == "generate" and job.params is not None:
        return ("generate", job.params.model_copy(update={"seed": None}))
    return (job.kind,)


class TransformersClient:
    """An `LLMClient` generating in this process with transformers. Safe to call concurrently."""

    def __init__(self, backend_name: str, config: TransformersBackend, model: str, model_cache: Path) -> None:
        self.backend_name = backend_name
        self.model = model
        self.config = config
        self.model_cache = Path(model_cache)
        self.device = _resolve_device(config.device)
        self.dtype = _resolve_dtype(config.dtype, self.device)
        self._loaded: LoadedModel | None = None
        self._prefixes = PrefixStore(config.prefix_cache_tokens) if config.prefix_cache_tokens else None
        self._batcher = MicroBatcher(
            repr(self), max_batch=config.max_batch_size, group_of=_generate_group, execute=self._execute
        )

    def identity(self) -> dict[str, Any]:
        return {"backend": "transformers", "model": self.model, "dtype": self.dtype}

    def forget_prefixes(self) -> None:
        """Empty the prefix store: later probes depend on their own batch alone (see the reward)."""
        if self._prefixes is not None:
            self._prefixes.clear()

    def __repr__(self) -> str:
        return f"TransformersClient({self.backend_name!r}, {self.model!r}, {self.device}/{self.dtype})"

    async def load(self) -> LoadedModel:
        """Load (or join) the shared weights now; chat() does this on first use anyway."""
        if self._loaded is None:
            self._loaded = await asyncio.to_thread(
                _load_shared, self.model, self.model_cache, self.device, self.dtype
            )
        return self._loaded

    async def chat(
        self, messages: Sequence[Message], params: Decoding, *, sample_index: int = 0
    ) -> Completion:
        """One completion; several samples of a prompt are several requests (`sample_index`).

        Never raises: a failed batch gives each of its requests a failed Completion.
        """
        started = time.perf_counter()
        try:
            if self.config.max_model_len is not None:
                refused = await self._over_the_context(messages, params)
                if refused is not None:
                    return Completion.failure(refused, latency_s=time.perf_counter() - started)
            return await self._batcher.submit("generate", messages, params=params)
        except Exception as exc:  # a closed client or a worker bug: a Completion comes back regardless
            return Completion.failure(f"{type(exc).__name__}: {exc}", latency_s=time.perf_counter() - started)

    async def _over_the_context(self, messages: Sequence[Message], params: Decoding) -> str | None:
        """Why the request cannot run within `max_model_len` (prompt + max_tokens), or None."""
        loaded = await self.load()
        tokenizer = loaded.tokenizer
        text = tokenizer.apply_chat_template(
            [dict(m) for m in messages], add_generation_prompt=True, tokenize=False
        )
        prompt = len(tokenizer(text, add_special_tokens=False)["input_ids"])  # as `_encode` counts it
        limit = self.config.max_model_len
        if limit is not None and prompt + params.max_tokens > limit:
            return (f"the prompt's {prompt} tokens + max_tokens {params.max_tokens} exceed max_model_len {limit} "
                    f"of backend '{self.backend_name}'")  # fmt: skip
        return None

    async def next_token_logprobs(
        self, messages: Sequence[Message], candidates: Sequence[str]
    ) -> dict[str, float]:
        """Log-probability of each candidate as the first token of the assistant's reply.

        A candidate that tokenizes to several tokens is scored by its first token only (with the
        SmolLM2 tokenizer "10" is "1" + "0", so it scores the same as "1"): pick candidates that
        are single tokens. Raises on failure (unlike chat): a judge decides what a failure means.
        """
        if not candidates:
            return {}
        return await self._batcher.submit("next_token", messages, candidates=tuple(candidates))

    async def aclose(self) -> None:
        """Stop the batching worker: the batch in flight finishes, queued requests fail.

        The weights stay loaded: other clients may share them.
        """
        await self._batcher.aclose()

    # -- batching -----------------------------------------------------------------------------

    async def _execute(self, batch: list[Job]) -> None:
        try:
            loaded = await self.load()
            if batch[0].kind == "generate":
                params = batch[0].params
                assert params is not None
                results: list[Any] = await asyncio.to_thread(
                    _generate_batch, loaded, [job.messages for job in batch], params
                )
            else:
                results = await asyncio.to_thread(
                    _next_token_batch,
                    loaded,
                    [(job.messages, job.candidates) for job in batch],
                    self._prefixes,
                )
        except Exception as exc:
            logger.warning("%r: a batch of %d failed: %s: %s", self, len(batch), type(exc).__name__, exc)
            for job in batch:
                resolve(job, error=exc)
            return
        for job, result in zip(batch, results, strict=True):
            resolve(job, result=result)
