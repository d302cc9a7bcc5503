"""Automatic prefix caching: finished prefills kept for later prompts that start alike.

When a sequence's prompt is prefilled, its prefill cache (a transformers
`DynamicCache`: K/V per attention layer, conv/recurrent state per recurrent layer)
is kept here under the exact tokens it covers, instead of being dropped. A later
sequence whose prompt starts with those tokens resumes from a copy and prefills only
the rest. Agents resend one long prefix (system prompt, tools, the conversation so
far) every turn, so most of each turn's prompt is a hit.

What can be reused depends on the model's layers:

- **attention only, no window**: K/V of any common prefix is exact (a slice), so an
  entry serves every prompt that shares any part of it (longest common prefix).
- **windowed or recurrent layers**: a ring or a recurrent state cannot be rewound,
  so an entry serves only prompts that start with *all* of its tokens. The engine
  therefore snapshots such prompts one token before their end (at the last
  `assistant` header of a chat prompt): the next turn of the conversation, and the
  same prompt again, both start with exactly that.

Entries are immutable once stored (a hit gets fresh copies of every tensor the
model updates in place; K/V tensors are only ever replaced, never written) and live
in LRU order under a byte budget; eviction drops whole entries, so reuse is never
partial or stale. The cache lives in the worker process: a worker that dies takes
it with it, and its replacement starts empty.

Not for: choosing which sequence runs (the engine), or the gateway's prefix-aware
routing (cortex), which only makes hits likelier by sending a conversation to the
replica that holds its prefix.
"""

from __future__ import annotations

import copy
from array import array
from collections import OrderedDict

import torch
from attrs import define
from transformers import DynamicCache
from transformers.cache_utils import LinearAttentionCacheLayerMixin

# A hit shorter than this saves less than a lookup and a copy cost.
MIN_HIT_TOKENS = 16
# Bounds the scan per lookup; the byte budget usually binds first.
MAX_ENTRIES = 256


@define
class PrefixHit:
    tokens: int  # prompt tokens covered by `cache`
    cache: DynamicCache  # a private copy: the caller's sequence continues from it


@define
class _Entry:
    key: bytes  # the covered token ids, packed int32
    cache: DynamicCache
    nbytes: int


class PrefixCache:
    """Stored prefill caches, LRU under `budget_bytes`. Single-threaded, like the engine."""

    def __init__(self, budget_bytes: int, *, exact_only: bool) -> None:
        self.budget_bytes = budget_bytes
        self.exact_only = exact_only
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self.bytes = 0
        self.lookups = self.hit_lookups = self.hit_tokens = 0

    @property
    def entries(self) -> int:
        return len(self._entries)

    def lookup(self, prompt: list[int]) -> PrefixHit | None:
        """The longest stored prefix of `prompt` (leaving at least one token to run)."""
        self.lookups += 1
        key = _packed(prompt)
        best, best_tokens = None, 0
        for entry in self._entries.values():
            tokens = _usable(entry.key, key, exact=self.exact_only) // 4
            tokens = min(tokens, len(prompt) - 1)
            if tokens > best_tokens and (not self.exact_only or tokens == len(entry.key) // 4):
                best, best_tokens = entry, tokens
        if best is None or best_tokens < MIN_HIT_TOKENS:
            return None
        self._entries.move_to_end(best.key)
        self.hit_lookups += 1
        self.hit_tokens += best_tokens
        return PrefixHit(best_tokens, _restored(best.cache, best_tokens))

    def store(self, tokens: list[int], cache: DynamicCache) -> None:
        """Keep `cache` (covering exactly `tokens`); the caller must not change it after."""
        if len(tokens) < MIN_HIT_TOKENS:
            return
        key = _packed(tokens)
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        nbytes = _cache_bytes(cache)
        if nbytes > self.budget_bytes:
            return
        if not self.exact_only:
            # Attention-only: a stored prefix of this prompt is served by this entry too.
            for old in [k for k in self._entries if key.startswith(k)]:
                self._drop(old)
        self._entries[key] = _Entry(key, cache, nbytes)
        self.bytes += nbytes
        while self.bytes > self.budget_bytes or len(self._entries) > MAX_ENTRIES:
            self._drop(next(iter(self._entries)))

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def _drop(self, key: bytes) -> None:
        self.bytes -= self._entries.pop(key).nbytes


def snapshot(cache: DynamicCache) -> DynamicCache:
    """A copy of `cache` as it is now, safe to keep while `cache` goes on prefilling:
    recurrent states (updated in place) are cloned, K/V tensors (only ever replaced)
    are shared."""
    return _restored(cache, None)


def _restored(cache: DynamicCache, tokens: int | None) -> DynamicCache:
    """A private copy of `cache` cut to its first `tokens` (None: all of them)."""
    fresh = copy.copy(cache)
    fresh.layers = [_layer_copy(layer, tokens) for layer in cache.layers]
    return fresh


def _layer_copy(layer, tokens: int | None):
    fresh = copy.copy(layer)
    keys = getattr(layer, "keys", None)
    if keys is not None and keys.dim() == 4:
        fresh.keys = keys if tokens is None else keys[:, :, :tokens]
        fresh.values = layer.values if tokens is None else layer.values[:, :, :tokens]
    if isinstance(layer, LinearAttentionCacheLayerMixin):
        for name in ("conv_states", "recurrent_states"):
            states = getattr(layer, name)
            setattr(fresh, name, {i: None if t is None else t.clone() for i, t in states.items()})
        for name in ("is_conv_states_initialized", "is_recurrent_states_initialized",
                     "has_previous_state", "conv_kernel_size"):  # fmt: skip
            setattr(fresh, name, dict(getattr(layer, name)))
    return fresh


def _cache_bytes(cache: DynamicCache) -> int:
    seen, total = set(), 0
    for layer in cache.layers:
        tensors = [getattr(layer, "keys", None), getattr(layer, "values", None)]
        if isinstance(layer, LinearAttentionCacheLayerMixin):
            tensors += [*layer.conv_states.values(), *layer.recurrent_states.values()]
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in seen:
                seen.add(tensor.untyped_storage().data_ptr())
                total += tensor.untyped_storage().nbytes()
    return total


def _packed(tokens: list[int]) -> bytes:
    return array("i", tokens).tobytes()


def _usable(stored: bytes, prompt: bytes, *, exact: bool) -> int:
    """Bytes of `stored` that `prompt` starts with: all or nothing when `exact`, else
    their common prefix (whole tokens)."""
    if exact:
        return len(stored) if prompt.startswith(stored) else 0
    if prompt[:4] != stored[:4]:
        return 0
    lo, hi = 0, min(len(stored), len(prompt)) // 4  # common prefix is >= lo, < hi + 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if prompt[: mid * 4] == stored[: mid * 4]:
            lo = mid
        else:
            hi = mid - 1
    return lo * 4
