"""The decode batch's cache: per-layer stores for every layer kind, one row per sequence.

A model's layers each keep one of these, read from the model's own cache class
(`layer_kinds`):

- **full attention**: per layer, keys and values live in one zero-initialised buffer
  of shape `[row_capacity, kv_heads, column_capacity, head_dim]`. Row r holds one
  sequence's cache in columns `[start[r], end)`: every row ends at the same column,
  so one decode step writes every row's new K/V into the single column `end` and
  attends over the window `[min(start), end]` with an additive mask that hides each
  row's left padding.
- **sliding-window attention** (window W): a ring of W columns per row,
  `[row_capacity, kv_heads, W, head_dim]`; column c lives in slot `c % W`. After a
  decode step writes column `end`, the ring holds exactly the W columns a query at
  `end` may see (`end - W < c <= end`, transformers' window), so memory is bounded
  by the window however long a sequence grows. Attention does not care about the
  order of keys (RoPE is already applied), so the ring is attended as it lies, with a
  mask hiding slots older than the row's start.
- **recurrent state** (gated delta net / Mamba2 SSM / short convolution): fixed-size
  conv and recurrent states per row, `[row_capacity, ...]`, handed to the model as
  views of the live rows; the model updates them in place.
- **none** (MLP/MoE-only layers, or layers that reuse another layer's KV): nothing.

Rows are dense (`0..n-1`): removing a row moves the last row into the hole in every
store, so the batch the model sees is always a view, never a gather. The column
space re-lays itself out (compacting to the left, growing, shrinking) only when a
column or row runs out, when a longer prompt joins, or when occupancy drops to a
quarter; rings roll with it, so every column keeps its slot. When the last row
leaves, the buffers are released. Masked slots always hold finite values (zeros or
stale K/V), so the mask's large negative bias zeroes them exactly.

The cost of the full-attention layout is the padding: a short row in a batch with a
long one attends over the long one's window (masked). A paged, variable-length
attention kernel would avoid that; this arena keeps to what stock `sdpa` and eager
attention accept (docs/design.md has the measurements behind that choice).

Not for: prefill (a joining sequence is prefilled on its own `DynamicCache` and
then copied in with `insert`), or deciding which sequences run (the engine does that).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from attrs import frozen
from transformers import DynamicCache
from transformers.cache_utils import (
    Cache,
    CacheLayerMixin,
    DummyLayer,
    DynamicLayer,
    DynamicSlidingWindowLayer,
    LinearAttentionAndFullAttentionLayer,
    LinearAttentionAndSlidingWindowAttentionLayer,
    LinearAttentionCacheLayerMixin,
    LinearAttentionLayer,
)

from neuron.worker.errors import UnsupportedModel

_MIN_COLUMNS = 64

Attention = Literal["full", "sliding"]


@frozen
class LayerKind:
    """What one layer keeps per sequence."""

    attention: Attention | None = None  # None: no K/V
    window: int | None = None  # sliding only: keys a query sees, itself included
    states: int = 0  # conv/recurrent state slots (0: none)

    @property
    def name(self) -> str:
        parts = []
        if self.attention == "full":
            parts.append("full attention")
        elif self.attention == "sliding":
            parts.append(f"sliding-window attention ({self.window})")
        if self.states:
            parts.append("recurrent state")
        return " + ".join(parts) or "no cache"


@frozen
class PrefilledLayer:
    """One layer of a finished prefill, for `KvArena.insert` (batch dimension 1)."""

    keys: torch.Tensor | None = None  # [1, heads, tokens, dim]: the last tokens kept
    values: torch.Tensor | None = None
    conv: tuple[torch.Tensor | None, ...] = ()
    recurrent: tuple[torch.Tensor | None, ...] = ()


def layer_kinds(config, max_seq_len: int) -> list[LayerKind]:
    """Each layer's kind, read from the cache transformers itself builds for `config`.

    Raises `UnsupportedModel` naming the kinds this arena cannot hold exactly: chunked
    attention, indexed (sparse) attention, or any cache layer class it does not know.
    A sliding window no shorter than `max_seq_len` never hides anything, so such a
    layer is held as full attention.
    """
    text = config.get_text_config(decoder=True)
    declared = list(getattr(text, "layer_types", None) or [])
    if "chunked_attention" in declared or getattr(text, "attention_chunk_size", None):
        raise UnsupportedModel("chunked attention layers are not supported by the engine")
    kinds, unknown = [], set()
    for layer in DynamicCache(config=config).layers:
        kind = _kind_of(layer, max_seq_len)
        if kind is None:
            unknown.add(type(layer).__name__)
        kinds.append(kind)
    if unknown:
        raise UnsupportedModel(
            f"the engine cannot hold these cache layer kinds exactly: {sorted(unknown)}"
        )
    windows = {k.window for k in kinds if k.attention == "sliding"}
    if len(windows) > 1:
        raise UnsupportedModel(f"layers with different sliding windows {sorted(windows)}")
    return kinds


def _kind_of(layer, max_seq_len: int) -> LayerKind | None:
    states = getattr(layer, "number_of_states", 0)
    match layer:
        case LinearAttentionAndSlidingWindowAttentionLayer():
            return _attention_kind(layer.sliding_window, max_seq_len, states)
        case LinearAttentionAndFullAttentionLayer():
            return LayerKind("full", states=states)
        case LinearAttentionLayer() if type(layer) is LinearAttentionLayer:
            return LayerKind(states=states)
        case DynamicSlidingWindowLayer() if type(layer) is DynamicSlidingWindowLayer:
            return _attention_kind(layer.sliding_window, max_seq_len, 0)
        case DynamicLayer() if type(layer) is DynamicLayer:
            return LayerKind("full")
        case DummyLayer():
            return LayerKind()
    return None


def _attention_kind(window: int, max_seq_len: int, states: int) -> LayerKind:
    if window >= max_seq_len:
        return LayerKind("full", states=states)
    return LayerKind("sliding", window, states)


def prefilled_layers(cache: Cache) -> list[PrefilledLayer]:
    """A single sequence's finished prefill cache, layer by layer, for `insert`."""
    layers = []
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        values = getattr(layer, "values", None)
        conv = recurrent = ()
        if isinstance(layer, LinearAttentionCacheLayerMixin):
            count = layer.number_of_states
            conv = tuple(layer.conv_states[i] for i in range(count))
            recurrent = tuple(layer.recurrent_states[i] for i in range(count))
        layers.append(PrefilledLayer(keys, values, conv, recurrent))
    return layers


class KvArena:
    """The decode batch's cache stores. Row indices are the engine's batch order."""

    def __init__(
        self,
        *,
        max_rows: int,
        max_columns: int,
        token_budget: int,
        kinds: Sequence[LayerKind],
    ) -> None:
        self.max_rows = max_rows
        self.max_columns = max_columns
        self.token_budget = token_budget
        self.kinds = list(kinds)
        self.starts: list[int] = []
        self.end = 0
        self._row_capacity = 0
        self._column_capacity = 0
        self._keys: dict[int, torch.Tensor] = {}  # layer -> buffer (full or ring)
        self._values: dict[int, torch.Tensor] = {}
        self._conv: dict[int, list[torch.Tensor | None]] = {}  # layer -> per state slot
        self._recurrent: dict[int, list[torch.Tensor | None]] = {}
        self.cache = _ArenaCache(self)

    # -- what the engine reads ---------------------------------------------------------

    @property
    def rows(self) -> int:
        return len(self.starts)

    @property
    def window_start(self) -> int:
        return min(self.starts, default=self.end)

    @property
    def has_full_attention(self) -> bool:
        return any(k.attention == "full" for k in self.kinds)

    @property
    def sliding_window(self) -> int | None:
        return next((k.window for k in self.kinds if k.attention == "sliding"), None)

    @property
    def tokens_used(self) -> int:
        """Cached tokens per layer of the largest kind: the full-attention span, or the
        window-bounded span when the model has only windowed attention."""
        if self.has_full_attention:
            return sum(self.end - s for s in self.starts)
        window = self.sliding_window
        if window is None:
            return 0
        return sum(min(self.end - s, window - 1) for s in self.starts)

    @property
    def tokens_allocated(self) -> int:
        if not self._row_capacity:
            return 0
        if self.has_full_attention:
            return self._row_capacity * self._column_capacity
        return self._row_capacity * (self.sliding_window or 0)

    @property
    def bytes_allocated(self) -> int:
        tensors = [*self._keys.values(), *self._values.values()]
        for slots in (*self._conv.values(), *self._recurrent.values()):
            tensors.extend(t for t in slots if t is not None)
        return sum(t.numel() * t.element_size() for t in tensors)

    def decode_masks(self, dtype: torch.dtype) -> dict[Attention, torch.Tensor]:
        """Additive masks `[rows, 1, 1, keys]` for a decode step writing column `end`,
        one per attention kind present."""
        device = self.cache.device
        starts = torch.tensor(self.starts, device=device)
        masks = {}
        if self.has_full_attention:
            columns = torch.arange(self.window_start, self.end + 1, device=device)
            masks["full"] = _row_mask(columns.unsqueeze(0) < starts.unsqueeze(1), dtype)
        if (window := self.sliding_window) is not None:
            slots = torch.arange(window, device=device)
            columns = self.end - torch.remainder(self.end - slots, window)
            masks["sliding"] = _row_mask(columns.unsqueeze(0) < starts.unsqueeze(1), dtype)
        return masks

    # -- changing the layout -----------------------------------------------------------

    def insert(self, layers: Sequence, length: int) -> int:
        """Copy one prefilled sequence of `length` tokens in as a new row; `layers` come
        from `prefilled_layers`, or are `(keys, values)` pairs (attention-only models'
        packed prefill; a windowed layer's pair holds its last `window - 1` columns)."""
        layers = [_as_prefilled(layer) for layer in layers]
        self._learn_layers(layers)
        if self.has_full_attention:
            if not self._row_capacity or length > self.end or self.rows == self._row_capacity:
                width = max(self.end - self.window_start, length)
                self._relayout(self.rows + 1, width + 1, shift=width - self.end)
        elif self.rows == self._row_capacity:
            # Rings only: no columns to make room in (a start may be negative).
            self._relayout(self.rows + 1, 0, shift=0)
        row, start = self.rows, self.end - length
        for index, layer in enumerate(layers):
            kind = self.kinds[index]
            if kind.attention == "full":
                self._keys[index][row, :, start : self.end] = layer.keys[0]
                self._values[index][row, :, start : self.end] = layer.values[0]
            elif kind.attention == "sliding":
                kept = layer.keys.shape[-2]
                slots = torch.remainder(
                    torch.arange(self.end - kept, self.end, device=layer.keys.device), kind.window
                )
                self._keys[index][row][:, slots] = layer.keys[0]
                self._values[index][row][:, slots] = layer.values[0]
            for store, prefilled in ((self._conv, layer.conv), (self._recurrent, layer.recurrent)):
                for slot, state in enumerate(prefilled):
                    if state is not None:
                        store[index][slot][row] = state[0]
        self.starts.append(start)
        return row

    def remove(self, row: int) -> int | None:
        """Drop `row`; the last row moves into its place. Returns the moved row's old index."""
        last = self.rows - 1
        moved = None
        if row != last:
            start = self.starts[last]
            for index, buffer in self._kv_buffers():
                if self.kinds[index].attention == "full":
                    buffer[row, :, start : self.end] = buffer[last, :, start : self.end]
                else:
                    buffer[row] = buffer[last]
            for state in self._state_buffers():
                state[row] = state[last]
            self.starts[row] = start
            moved = last
        self.starts.pop()
        if not self.starts:
            self.release()
        elif self.rows <= self._row_capacity // 4:
            self._relayout(self.rows, self.end - self.window_start + 1, shift=-self.window_start)
        return moved

    def ensure_writable(self) -> None:
        """Make column `end` writable, compacting to the left or growing as needed."""
        if self.end < self._column_capacity or not self.has_full_attention:
            self.cache.prepare_states(self.rows)
            return
        width = self.end - self.window_start
        self._relayout(self.rows, width + 1, shift=-self.window_start)
        self.cache.prepare_states(self.rows)

    def advance(self) -> None:
        """Account for the column a decode step just wrote."""
        self.end += 1

    def release(self) -> None:
        self.starts.clear()
        self.end = 0
        self._row_capacity = self._column_capacity = 0
        for store in (self._keys, self._values):
            for index in store:
                store[index] = _empty_like(store[index])
        for store in (self._conv, self._recurrent):
            for index, slots in store.items():
                store[index] = [None if t is None else t[:0].clone() for t in slots]

    # -- what the model calls (through the Cache) -----------------------------------------

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor):
        rows, end, kind = self.rows, self.end, self.kinds[layer]
        if kind.attention == "sliding":
            slot = end % kind.window
            self._keys[layer][:rows, :, slot : slot + 1] = keys
            self._values[layer][:rows, :, slot : slot + 1] = values
            return self._keys[layer][:rows], self._values[layer][:rows]
        self._keys[layer][:rows, :, end : end + 1] = keys
        self._values[layer][:rows, :, end : end + 1] = values
        lo = self.window_start
        return (
            self._keys[layer][:rows, :, lo : end + 1],
            self._values[layer][:rows, :, lo : end + 1],
        )

    def states(self, layer: int) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
        return self._conv[layer], self._recurrent[layer]

    # -- internals -------------------------------------------------------------------

    def _kv_buffers(self):
        for index, keys in self._keys.items():
            yield index, keys
            yield index, self._values[index]

    def _state_buffers(self):
        for store in (self._conv, self._recurrent):
            for slots in store.values():
                yield from (t for t in slots if t is not None)

    def _learn_layers(self, layers: Sequence[PrefilledLayer]) -> None:
        """Take per-layer shapes, dtype and device from the first prefilled sequence."""
        if self.cache.layers:
            return
        for index, (kind, layer) in enumerate(zip(self.kinds, layers, strict=True)):
            if kind.attention is not None:
                self._keys[index] = _empty_like(layer.keys)
                self._values[index] = _empty_like(layer.values)
            if kind.states:
                self._conv[index] = [None if t is None else t[:0].clone() for t in layer.conv]
                self._recurrent[index] = [
                    None if t is None else t[:0].clone() for t in layer.recurrent
                ]
        self.cache.build(self.kinds, layers)

    def _relayout(self, rows: int, columns: int, *, shift: int) -> None:
        """New buffers for `rows` x `columns`; occupied columns move by `shift`."""
        row_capacity, column_capacity = self._capacity(rows, columns)
        live, lo, end = self.rows, self.window_start, self.end
        for store in (self._keys, self._values):
            for index, old in store.items():
                kind = self.kinds[index]
                if kind.attention == "full":
                    store[index] = _moved(old, row_capacity, column_capacity, live, lo, end, shift)
                else:
                    store[index] = _rolled(old, row_capacity, kind.window, live, shift)
        for store in (self._conv, self._recurrent):
            for index, slots in store.items():
                store[index] = [
                    None if t is None else _rows_moved(t, row_capacity, live) for t in slots
                ]
        self._row_capacity, self._column_capacity = row_capacity, column_capacity
        self.starts = [s + shift for s in self.starts]
        self.end = end + shift

    def _capacity(self, rows: int, columns: int) -> tuple[int, int]:
        """Round up for headroom (powers of two), within the limits and the token budget.

        Admission keeps `rows x columns` within the budget, so the exact size always fits;
        under a tight budget the headroom shrinks, rows' first.
        """
        row_capacity = min(self.max_rows, _next_power_of_two(rows))
        if not self.has_full_attention:
            return row_capacity, 0
        column_capacity = min(self.max_columns, max(_MIN_COLUMNS, _next_power_of_two(columns)))
        if row_capacity * column_capacity <= self.token_budget:
            return row_capacity, column_capacity
        if row_capacity * columns > self.token_budget:
            row_capacity = rows
        column_capacity = max(columns, min(column_capacity, self.token_budget // row_capacity))
        return row_capacity, column_capacity


def _as_prefilled(layer) -> PrefilledLayer:
    if isinstance(layer, PrefilledLayer):
        return layer
    keys, values = layer
    return PrefilledLayer(keys, values)


def _row_mask(hidden: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`[rows, 1, 1, keys]`: a decode step's mask per row."""
    return additive_mask(hidden, dtype)[:, None, None, :]


def additive_mask(hidden: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where a key is seen, the dtype's minimum where `hidden`; `hidden`'s shape."""
    mask = torch.zeros(hidden.shape, dtype=dtype, device=hidden.device)
    mask.masked_fill_(hidden, torch.finfo(dtype).min)
    return mask


def _empty_like(t: torch.Tensor) -> torch.Tensor:
    # A fresh tensor, not a view: a view would keep the whole prefill cache alive.
    return torch.empty((0, t.shape[1], 0, t.shape[3]), dtype=t.dtype, device=t.device)


def _moved(old, rows, columns, live, lo, end, shift) -> torch.Tensor:
    _, heads, _, dim = old.shape
    new = torch.zeros(rows, heads, columns, dim, dtype=old.dtype, device=old.device)
    if live and end > lo:
        new[:live, :, lo + shift : end + shift] = old[:live, :, lo:end]
    return new


def _rolled(old, rows, window, live, shift) -> torch.Tensor:
    """A ring for `rows` rows; live rows' slots follow their columns' `shift`."""
    _, heads, _, dim = old.shape
    new = torch.zeros(rows, heads, window, dim, dtype=old.dtype, device=old.device)
    if live:
        new[:live] = torch.roll(old[:live], shifts=shift % window, dims=2)
    return new


def _rows_moved(old: torch.Tensor, rows: int, live: int) -> torch.Tensor:
    new = torch.zeros((rows, *old.shape[1:]), dtype=old.dtype, device=old.device)
    new[:live] = old[:live]
    return new


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class _ArenaLayer(CacheLayerMixin):
    """A transformers attention cache layer that stores into, and reads from, the arena."""

    def __init__(self, arena: KvArena, index: int) -> None:
        super().__init__()
        self._arena = arena
        self._index = index
        self.is_sliding = arena.kinds[index].attention == "sliding"
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states) -> None:
        return None

    def update(self, key_states, value_states, *args, **kwargs):
        return self._arena.write(self._index, key_states, value_states)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_seq_length(self) -> int:
        return self._arena.end - self._arena.window_start

    def get_max_length(self) -> int:
        return -1


class _ArenaStateLayer(LinearAttentionLayer):
    """A transformers linear-attention cache layer over the arena's per-row states.

    Before each decode step the engine points its state slots at views of the live
    rows (`KvArena.ensure_writable`); the model updates them in place."""

    def __init__(self, arena: KvArena, index: int, prefilled: PrefilledLayer) -> None:
        super().__init__(number_of_states=len(prefilled.conv) or len(prefilled.recurrent))
        self._arena = arena
        self._index = index
        for slot in range(self.number_of_states):
            conv = prefilled.conv[slot] if slot < len(prefilled.conv) else None
            self.conv_kernel_size[slot] = None if conv is None else conv.shape[-1]

    def point_at(self, rows: int) -> None:
        conv, recurrent = self._arena.states(self._index)
        for slot in range(self.number_of_states):
            for states, initialized, store in (
                (self.conv_states, self.is_conv_states_initialized, conv),
                (self.recurrent_states, self.is_recurrent_states_initialized, recurrent),
            ):
                buffer = store[slot] if slot < len(store) else None
                states[slot] = None if buffer is None else buffer[:rows]
                initialized[slot] = buffer is not None
            self.has_previous_state[slot] = True


class _ArenaHybridLayer(_ArenaStateLayer, _ArenaLayer):
    """A layer with both a recurrent state and attention K/V."""

    def __init__(self, arena: KvArena, index: int, prefilled: PrefilledLayer) -> None:
        _ArenaLayer.__init__(self, arena, index)
        _ArenaStateLayer.__init__(self, arena, index, prefilled)

    def lazy_initialization(self, *args, **kwargs) -> None:
        return None


class _ArenaCache(Cache):
    """The `Cache` the model is handed for decode steps: one arena layer per layer."""

    def __init__(self, arena: KvArena) -> None:
        super().__init__(layers=[])
        self._arena = arena
        self.device: torch.device | None = None

    def build(self, kinds: Sequence[LayerKind], layers: Sequence[PrefilledLayer]) -> None:
        built = []
        for index, (kind, prefilled) in enumerate(zip(kinds, layers, strict=True)):
            if kind.attention is not None and kind.states:
                built.append(_ArenaHybridLayer(self._arena, index, prefilled))
            elif kind.attention is not None:
                built.append(_ArenaLayer(self._arena, index))
            elif kind.states:
                built.append(_ArenaStateLayer(self._arena, index, prefilled))
            else:
                built.append(DummyLayer())
        self.layers = built
        sample = next(t for p in layers for t in (p.keys, *p.conv, *p.recurrent) if t is not None)
        self.device = sample.device

    def prepare_states(self, rows: int) -> None:
        for layer in self.layers:
            if isinstance(layer, _ArenaStateLayer):
                layer.point_at(rows)
