"""Next-token probes that share a prompt prefix compute it once.

An in-process judge probes many prompts that differ only towards their end: the 22 criteria of one
Creative Writing piece, the six dimensions of one LongBench-Write answer, the criteria of one
response in the score stage, the rollouts of one training step judged against the same reference.
Up to where they differ the tokens are the same, and so are their keys and values. `probe_rows`
runs that shared prefix once (batch 1), then runs only each row's own remaining tokens on top of
it; a small LRU (`PrefixStore`, a token budget per loaded model) keeps recent prefixes, so probes
that a micro-batch split apart reuse them (the training reward empties it each step: see its score()).

What makes the values the same as a plain padded batch: every token sees the same tokens at the
same positions. The suffixes of a group are left-padded after the prefix, and the pads are masked
out of attention (mask 0) and skipped in the positions (`position_ids` count real tokens only), as
`generate` does for left padding. Only the order of float summation differs, so probe values agree
to float tolerance (tests/test_shared_prefix.py checks this on the real and the tiny model).

Rows are grouped by sorting them: rows that share a prefix sort next to each other. `plan_groups`
splits the sorted rows where that saves the most tokens (a short prefix shared by all, such as the
system prompt, loses to the long ones shared within each response's criteria). A group is worth
its own prefix pass when it shares at least `MIN_SHARED_TOKENS`; the rest go through one plain
padded batch. A prefix never covers a row's last token: its logits are what the probe reads.
"""

from __future__ import annotations

import inspect
import itertools
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MIN_SHARED_TOKENS = 32  # below this, a separate prefix pass costs more than it saves


@dataclass(frozen=True, eq=False)
class Prefix:
    """The keys and values of one token prefix, batch 1, one (keys, values) pair per layer."""

    tokens: tuple[int, ...]
    layers: tuple[tuple[Any, Any], ...]


class PrefixStore:
    """Recently used prefixes of one loaded model, least recently used dropped first, within a
    budget of `max_tokens` cached tokens in all (0 turns caching across batches off)."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._entries: OrderedDict[tuple[int, ...], Prefix] = OrderedDict()
        self._lock = threading.Lock()

    def longest(self, tokens: Sequence[int]) -> Prefix | None:
        """The longest stored prefix of `tokens`, or None."""
        tokens = tuple(tokens)
        with self._lock:
            found = max(
                (p for key, p in self._entries.items() if tokens[: len(key)] == key),
                key=lambda p: len(p.tokens),
                default=None,
            )
            if found is not None:
                self._entries.move_to_end(found.tokens)
            return found

    def put(self, prefix: Prefix) -> None:
        if len(prefix.tokens) > self.max_tokens:
            return
        with self._lock:
            self._entries[prefix.tokens] = prefix
            self._entries.move_to_end(prefix.tokens)
            while sum(len(key) for key in self._entries) > self.max_tokens:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def plan_groups(
    rows: Sequence[Sequence[int]], min_shared: int = MIN_SHARED_TOKENS
) -> list[tuple[int, list[int]]]:
    """[(shared prefix length, row indices)]: the rows split into groups whose shared prefix saves
    the most tokens, (0, [i]) for a row that shares fewer than `min_shared` with the others.

    Sorted rows make a group of any run of neighbours; the prefix a run shares is the smallest
    common length of neighbouring pairs inside it. A run is kept whole when (rows - 1) x shared
    saves more than its best split at its weakest neighbouring pair, else split there: the 5
    criteria of two responses share the system prompt with each other (41 tokens) but the
    response with their own criteria (hundreds), so they make two groups, not one. A prefix stops
    before the last token of the group's shortest row."""
    order = sorted(range(len(rows)), key=lambda i: tuple(rows[i]))
    links = [_common_length(rows[a], rows[b]) for a, b in itertools.pairwise(order)]  # neighbours in order

    def shared_of(lo: int, hi: int) -> int:  # the run order[lo:hi], hi - lo >= 2
        shared = min(links[lo : hi - 1])
        return min(shared, *(len(rows[i]) - 1 for i in order[lo:hi]))

    def best(lo: int, hi: int) -> tuple[int, list[tuple[int, list[int]]]]:
        if hi - lo == 1:
            return 0, [(0, [order[lo]])]
        shared = shared_of(lo, hi)
        whole = (hi - lo - 1) * shared if shared >= min_shared else 0
        cut = lo + 1 + min(range(hi - lo - 1), key=lambda k: links[lo + k])  # after the weakest link
        left, right = best(lo, cut), best(cut, hi)
        if left[0] + right[0] > whole:
            return left[0] + right[0], left[1] + right[1]
        return whole, [(shared if whole else 0, order[lo:hi])]

    groups = best(0, len(order))[1] if order else []
    # A group that saves nothing is its rows one by one (they go through the plain padded batch).
    return [
        g
        for shared, members in groups
        for g in ([(shared, members)] if shared else [(0, [i]) for i in members])
    ]


def _cache_argument(model: Any) -> str:
    # transformers renamed `past_key_values` to `cache` (5.2x); older 5.x releases know only the first.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _dynamic_cache(layers: Sequence[tuple[Any, Any]], batch: int) -> Any:
    from transformers.cache_utils import DynamicCache

    # expand() is a view: the cache's first update concatenates into new tensors, so the stored
    # prefix is never written to.
    return DynamicCache(
        ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in layers]
    )


def _layers_of(cache: Any) -> tuple[tuple[Any, Any], ...]:
    return tuple((layer.keys, layer.values) for layer in cache.layers)


def extend_prefix(model: Any, base: Prefix | None, tokens: Sequence[int], device: str) -> Prefix:
    """The prefix `tokens`, computed on top of `base` (a stored prefix of it) when given."""
    import torch

    tokens = tuple(tokens)
    start = 0 if base is None else len(base.tokens)
    if base is not None and start == len(tokens):
        return base
    ids = torch.tensor([tokens[start:]], device=device)
    kwargs: dict[str, Any] = {"use_cache": True, "logits_to_keep": 1}
    if base is not None:
        kwargs[_cache_argument(model)] = _dynamic_cache(base.layers, 1)
        kwargs["position_ids"] = torch.arange(start, len(tokens), device=device)[None]
    out = model(input_ids=ids, **kwargs)
    cache = getattr(out, "past_key_values", None)
    cache = cache if cache is not None else out.cache
    return Prefix(tokens, _layers_of(cache))


def suffix_logits(
    model: Any, prefix: Prefix, suffixes: Sequence[Sequence[int]], pad_id: int, device: str
) -> Any:
    """The last position's logits of each row `prefix + suffix` (suffixes non-empty), [rows, vocab]."""
    import torch

    n, width, shared = len(suffixes), max(len(s) for s in suffixes), len(prefix.tokens)
    ids = torch.full((n, width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((n, width), dtype=torch.long, device=device)
    for row, suffix in enumerate(suffixes):  # left padding: every row's last token is at the end
        ids[row, width - len(suffix) :] = torch.tensor(suffix, device=device)
        mask[row, width - len(suffix) :] = 1
    positions = shared + (mask.cumsum(-1) - 1).clamp(min=0)
    full_mask = torch.cat([torch.ones((n, shared), dtype=torch.long, device=device), mask], dim=1)
    out = model(
        input_ids=ids,
        attention_mask=full_mask,
        position_ids=positions,
        logits_to_keep=1,
        use_cache=True,
        **{_cache_argument(model): _dynamic_cache(prefix.layers, n)},
    )
    return out.logits[:, -1, :]


def padded_logits(model: Any, rows: Sequence[Sequence[int]], pad_id: int, device: str) -> Any:
    """The last position's logits of each row in one left-padded batch, [rows, vocab]."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, device=device)
        mask[i, width - len(row) :] = 1
    # A plain forward pass does not derive positions from the mask as generate() does: without
    # this, left-padded rows would see shifted positions.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits[
        :, -1, :
    ]


def probe_rows(
    model: Any, rows: Sequence[Sequence[int]], *, pad_id: int, device: str, store: PrefixStore | None
) -> Any:
    """The last position's logits of every row, [rows, vocab], in row order; shared prefixes (within
    the batch, or stored from earlier batches) computed once."""
    import torch

    logits: list[Any] = [None] * len(rows)
    plain: list[int] = []
    for shared, members in plan_groups(rows):
        stored = None
        if store is not None:
            # A group's own prefix may extend a stored one; a lone row (a probe that its micro-batch
            # split off) may sit on one. Never past the group's prefix or the row's last token.
            first = rows[members[0]]
            stored = store.longest(first[:shared] if shared else first[: len(first) - 1])
            if stored is not None and len(stored.tokens) < MIN_SHARED_TOKENS:
                stored = None
        if shared == 0 and (stored is None or len(members) > 1):
            plain += members
            continue
        if shared == 0:  # a lone row on a stored prefix
            prefix = stored
        else:
            prefix = extend_prefix(model, stored, rows[members[0]][:shared], device)
            if store is not None:
                store.put(prefix)
        assert prefix is not None
        cut = len(prefix.tokens)
        out = suffix_logits(model, prefix, [rows[i][cut:] for i in members], pad_id, device)
        for k, i in enumerate(members):
            logits[i] = out[k]
    if plain:
        out = padded_logits(model, [rows[i] for i in plain], pad_id, device)
        for k, i in enumerate(plain):
            logits[i] = out[k]
    return torch.stack(logits)
