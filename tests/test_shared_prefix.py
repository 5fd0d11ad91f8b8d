"""Judge probes that share a prompt prefix compute it once, and give the values a plain padded
batch gives (tasks/llm/shared_prefix.py); the CPU share with a busy local server (cpu_share.py)."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
import torch

from configs.schema import TransformersBackend
from tasks.llm import cpu_share
from tasks.llm import transformers_backend as tb
from tasks.llm.shared_prefix import MIN_SHARED_TOKENS, PrefixStore, padded_logits, plan_groups, probe_rows
from tasks.llm.transformers_backend import TransformersClient

SHARED = "You judge writing. " * 40  # well over MIN_SHARED_TOKENS tokens


def _rows(loaded, texts: list[str]) -> list[list[int]]:
    tokenizer = loaded.tokenizer
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False
        )
        for t in texts
    ]
    return tokenizer(prompts, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir, tmp_path_factory):
    return tb._load_shared(str(tiny_model_dir), tmp_path_factory.mktemp("models"), "cpu", "float32")


class TokenCounter:
    """Counts the input positions the model's forward passes computed (padding included)."""

    def __init__(self, model) -> None:
        self.tokens = 0
        self._handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        self.tokens += kwargs["input_ids"].numel()

    def close(self) -> None:
        self._handle.remove()


def test_groups_are_rows_sharing_enough_tokens_and_a_prefix_never_covers_a_last_token():
    long = list(range(100))
    rows = [[*long, 1, 2], [7, 7, 7], [*long, 3], [*long[:50], *[9] * 10], long]
    groups = plan_groups(rows, min_shared=32)
    shared = {frozenset(members): length for length, members in groups}
    # rows 0, 2, 3 and 4 share 50 tokens, but 0, 2 and 4 share 99 (all of row 4 but its last
    # token): 2 x 99 saved beats 3 x 50, so row 3 goes alone; row 1 shares nothing
    assert shared == {frozenset({0, 2, 4}): 99, frozenset({3}): 0, frozenset({1}): 0}
    fifty = [[*long[:50], i, i] for i in range(4)]  # no stronger subgroup: one group of four
    assert plan_groups(fifty, min_shared=32) == [(50, [0, 1, 2, 3])]
    assert plan_groups([long, long], min_shared=32) == [(99, [0, 1])]  # identical rows: all but the last
    assert plan_groups([[1] * 10, [1] * 10], min_shared=32) == [(0, [0]), (0, [1])]  # too short to share


def test_shared_prefix_probes_match_a_padded_batch_and_compute_far_fewer_tokens(loaded):
    texts = [SHARED + f"Criterion {i}: {'detail ' * i}grade it." for i in range(6)] + ["Unrelated.", "Hi"]
    rows = _rows(loaded, texts)
    model = loaded.model
    with torch.inference_mode():
        expected = padded_logits(model, rows, loaded.pad_id, "cpu")
        counter = TokenCounter(model)
        try:
            got = probe_rows(model, rows, pad_id=loaded.pad_id, device="cpu", store=None)
        finally:
            counter.close()
    assert got.shape == expected.shape
    torch.testing.assert_close(torch.log_softmax(got, -1), torch.log_softmax(expected, -1), atol=1e-4, rtol=0)
    padded = len(rows) * max(len(r) for r in rows)
    shared = len(rows[0]) - 12  # about the shared part
    assert shared > 4 * MIN_SHARED_TOKENS
    assert counter.tokens < padded / 3, (counter.tokens, padded)


def test_a_stored_prefix_serves_later_batches_and_lone_rows_and_the_budget_evicts(loaded):
    rows = _rows(loaded, [SHARED + f"Criterion {i}." for i in range(5)])
    store = PrefixStore(max_tokens=4096)
    model = loaded.model
    with torch.inference_mode():
        expected = padded_logits(model, rows, loaded.pad_id, "cpu")
        first = probe_rows(model, rows[:3], pad_id=loaded.pad_id, device="cpu", store=store)
        assert len(store) == 1
        counter = TokenCounter(model)
        try:  # a later batch with one row of the family: only its own tokens are computed
            lone = probe_rows(model, rows[3:4], pad_id=loaded.pad_id, device="cpu", store=store)
        finally:
            counter.close()
        (prefix,) = store._entries.values()
        assert counter.tokens == len(rows[3]) - len(prefix.tokens) < 10
    torch.testing.assert_close(first, expected[:3], atol=1e-4, rtol=0)
    torch.testing.assert_close(lone, expected[3:4], atol=1e-4, rtol=0)

    # A new batch whose rows share less with each other than one of them shares with the stored
    # prefix: the group's prefix is the shorter one, and the values still match.
    base = list(range(100, 200))
    family = [[*base, 7, 8, i] for i in range(3)]  # stores base + [7, 8]
    mixed = [[*base, 7, 8, 9], [*base[:60], *[999] * 20, 3]]  # share 60; the first sorts first
    with torch.inference_mode():
        probe_rows(model, family, pad_id=loaded.pad_id, device="cpu", store=store)
        expected_mixed = padded_logits(model, mixed, loaded.pad_id, "cpu")
        got_mixed = probe_rows(model, mixed, pad_id=loaded.pad_id, device="cpu", store=store)
    torch.testing.assert_close(got_mixed, expected_mixed, atol=1e-4, rtol=0)

    small = PrefixStore(max_tokens=len(prefix.tokens) + 5)
    other = _rows(loaded, ["Another family of prompts. " * 30 + f"Item {i}." for i in range(2)])
    with torch.inference_mode():
        probe_rows(model, rows[:2], pad_id=loaded.pad_id, device="cpu", store=small)
        probe_rows(model, other, pad_id=loaded.pad_id, device="cpu", store=small)
    assert len(small) == 1 and small.longest(rows[0]) is None  # the older family was dropped


def test_the_client_probe_gives_the_same_values_with_and_without_sharing(tiny_model_dir, tmp_path):
    messages = [({"role": "user", "content": SHARED + f"Grade criterion {i}."},) for i in range(4)]

    async def probe(config: dict) -> list[dict[str, float]]:
        backend = TransformersBackend(kind="transformers", device="cpu", dtype="float32", **config)
        client = TransformersClient("local", backend, str(tiny_model_dir), tmp_path / "models")
        try:
            return await asyncio.gather(*(client.next_token_logprobs(m, ("1", "2", "3")) for m in messages))
        finally:
            await client.aclose()

    shared = asyncio.run(probe({"max_batch_size": 4}))
    alone = asyncio.run(probe({"max_batch_size": 1, "prefix_cache_tokens": 0}))  # one row per batch
    for a, b in zip(shared, alone, strict=True):
        assert a.keys() == b.keys()
        assert all(abs(a[k] - b[k]) < 1e-4 for k in a), (a, b)


def test_in_process_models_leave_a_running_local_server_its_cores(loaded):
    from configs.schema import Decoding

    server = object()
    full = cpu_share.in_process_threads()
    cpu_share.reserve(server, threads=1)
    try:
        assert cpu_share.reserved_threads() == 1
        during = cpu_share.in_process_threads()
        seen: list[int] = []

        def compute() -> None:  # the backend sets the count in the thread that computes
            tb._next_token_batch(loaded, [(({"role": "user", "content": "Hi"},), ("A",))])
            seen.append(torch.get_num_threads())

        worker = threading.Thread(target=compute)
        worker.start()
        worker.join()
    finally:
        cpu_share.release(server)
    assert cpu_share.reserved_threads() == 0 and cpu_share.in_process_threads() == full
    assert during == max(1, min(full, len(os.sched_getaffinity(0)) - 1))
    assert seen == [during]

    # A generation that started before the server did follows it at its next decoding step.
    steps: list[int] = []

    def watch(*args, **kwargs):  # seen from inside generate(), after each step's forward pass
        steps.append(torch.get_num_threads())
        if len(steps) == 2:
            cpu_share.reserve(server, threads=1)

    handle = loaded.model.register_forward_hook(watch)
    try:
        tb._generate_batch(
            loaded, [({"role": "user", "content": "Hi"},)], Decoding(temperature=0, max_tokens=6)
        )
    finally:
        handle.remove()
        cpu_share.release(server)
    assert steps[0] == full and steps[-1] == during
