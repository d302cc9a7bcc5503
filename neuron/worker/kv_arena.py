"""The batched KV cache of the decode batch: one left-padded, column-aligned arena.

Per layer, keys and values live in one zero-initialised buffer of shape
`[row_capacity, kv_heads, column_capacity, head_dim]`. Row r holds one sequence's
cache in columns `[start[r], end)`: every row ends at the same column, so one decode
step writes every row's new K/V into the single column `end` and attends over the
window `[min(start), end]` with an additive mask that hides each row's left padding.
Rows are dense (`0..n-1`): removing a row moves the last row into the hole, so the
batch the model sees is always a view, never a gather. The arena re-lays itself out
(compacting to the left, growing, shrinking) only when a column or row runs out,
when a longer prompt joins, or when occupancy drops to a quarter; when the last row
leaves, the buffers are released. Masked columns always hold finite values (zeros or
stale K/V), so the mask's large negative bias zeroes them exactly.

The cost of the layout is the padding: a short row in a batch with a long one attends
over the long one's window (masked). A paged, variable-length attention kernel would
avoid that; this arena keeps to what stock `sdpa` and eager attention accept.

Not for: prefill (a joining sequence is prefilled on its own cache and then copied
in with `insert`), or deciding which sequences run (the engine does that).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

_MIN_COLUMNS = 64


class KvArena:
    """The decode batch's KV buffers. Row indices are the engine's batch order."""

    def __init__(self, *, max_rows: int, max_columns: int, token_budget: int) -> None:
        self.max_rows = max_rows
        self.max_columns = max_columns
        self.token_budget = token_budget
        self.starts: list[int] = []
        self.end = 0
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        # Zero-size tensors with each layer's heads, dim, dtype and device.
        self._empty: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.cache = _ArenaCache(self)

    # -- what the engine reads ---------------------------------------------------------

    @property
    def rows(self) -> int:
        return len(self.starts)

    @property
    def window_start(self) -> int:
        return min(self.starts, default=self.end)

    @property
    def tokens_used(self) -> int:
        return sum(self.end - s for s in self.starts)

    @property
    def tokens_allocated(self) -> int:
        if not self._keys:
            return 0
        rows, _, columns, _ = self._keys[0].shape
        return rows * columns

    @property
    def bytes_allocated(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self._keys, *self._values))

    def decode_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask `[rows, 1, 1, window]` for a decode step writing column `end`."""
        device = self._keys[0].device
        columns = torch.arange(self.window_start, self.end + 1, device=device)
        starts = torch.tensor(self.starts, device=device)
        hidden = columns.unsqueeze(0) < starts.unsqueeze(1)
        mask = torch.zeros(hidden.shape, dtype=dtype, device=device)
        mask.masked_fill_(hidden, torch.finfo(dtype).min)
        return mask[:, None, None, :]

    # -- changing the layout -----------------------------------------------------------

    def insert(self, layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Copy a prefilled cache (`[1, heads, length, dim]` per layer) in as a new row."""
        self._learn_layers(layers)
        length = layers[0][0].shape[-2]
        if not self._keys or length > self.end or self.rows == self._row_capacity():
            width = max(self.end - self.window_start, length)
            self._relayout(self.rows + 1, width + 1, shift=width - self.end)
        row, start = self.rows, self.end - length
        for index, (keys, values) in enumerate(layers):
            self._keys[index][row, :, start : self.end] = keys[0]
            self._values[index][row, :, start : self.end] = values[0]
        self.starts.append(start)
        return row

    def remove(self, row: int) -> int | None:
        """Drop `row`; the last row moves into its place. Returns the moved row's old index."""
        last = self.rows - 1
        moved = None
        if row != last:
            start = self.starts[last]
            for buffer in (*self._keys, *self._values):
                buffer[row, :, start : self.end] = buffer[last, :, start : self.end]
            self.starts[row] = start
            moved = last
        self.starts.pop()
        if not self.starts:
            self.release()
        elif self.rows <= self._row_capacity() // 4:
            self._relayout(self.rows, self.end - self.window_start + 1, shift=-self.window_start)
        return moved

    def ensure_writable(self) -> None:
        """Make column `end` writable, compacting to the left or growing as needed."""
        if self.end < self._column_capacity():
            return
        width = self.end - self.window_start
        self._relayout(self.rows, width + 1, shift=-self.window_start)

    def advance(self) -> None:
        """Account for the column a decode step just wrote."""
        self.end += 1

    def release(self) -> None:
        self.starts.clear()
        self.end = 0
        self._keys.clear()
        self._values.clear()

    # -- what the model calls (through the Cache) -----------------------------------------

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor):
        rows, end = self.rows, self.end
        self._keys[layer][:rows, :, end : end + 1] = keys
        self._values[layer][:rows, :, end : end + 1] = values
        lo = self.window_start
        return (
            self._keys[layer][:rows, :, lo : end + 1],
            self._values[layer][:rows, :, lo : end + 1],
        )

    # -- internals -------------------------------------------------------------------

    def _row_capacity(self) -> int:
        return self._keys[0].shape[0] if self._keys else 0

    def _column_capacity(self) -> int:
        return self._keys[0].shape[2] if self._keys else 0

    def _learn_layers(self, layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Take per-layer shapes, dtype and device from the first prefilled cache."""
        if self._empty:
            return
        self._empty = [(_empty_like(k), _empty_like(v)) for k, v in layers]
        self.cache.layers = [_ArenaLayer(self, i) for i in range(len(layers))]

    def _relayout(self, rows: int, columns: int, *, shift: int) -> None:
        """New buffers sized for `rows` x `columns`; occupied columns move by `shift`."""
        row_capacity, column_capacity = self._capacity(rows, columns)
        live, lo, end = self.rows, self.window_start, self.end
        old = list(zip(self._keys, self._values, strict=True)) or self._empty
        fresh = [
            tuple(_moved(t, row_capacity, column_capacity, live, lo, end, shift) for t in pair)
            for pair in old
        ]
        self._keys = [k for k, _ in fresh]
        self._values = [v for _, v in fresh]
        self.starts = [s + shift for s in self.starts]
        self.end = end + shift

    def _capacity(self, rows: int, columns: int) -> tuple[int, int]:
        """Round up for headroom (powers of two), within the limits and the token budget.

        Admission keeps `rows x columns` within the budget, so the exact size always fits;
        under a tight budget the headroom shrinks, rows' first.
        """
        row_capacity = min(self.max_rows, _next_power_of_two(rows))
        column_capacity = min(self.max_columns, max(_MIN_COLUMNS, _next_power_of_two(columns)))
        if row_capacity * column_capacity <= self.token_budget:
            return row_capacity, column_capacity
        if row_capacity * columns > self.token_budget:
            row_capacity = rows
        column_capacity = max(columns, min(column_capacity, self.token_budget // row_capacity))
        return row_capacity, column_capacity


def _empty_like(t: torch.Tensor) -> torch.Tensor:
    # A fresh tensor, not a view: a view would keep the whole prefill cache alive.
    return torch.empty((0, t.shape[1], 0, t.shape[3]), dtype=t.dtype, device=t.device)


def _moved(old, rows, columns, live, lo, end, shift) -> torch.Tensor:
    _, heads, _, dim = old.shape
    new = torch.zeros(rows, heads, columns, dim, dtype=old.dtype, device=old.device)
    if live and end > lo:
        new[:live, :, lo + shift : end + shift] = old[:live, :, lo:end]
    return new


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class _ArenaLayer(CacheLayerMixin):
    """A transformers cache layer that stores into, and reads from, the arena."""

    is_sliding = False

    def __init__(self, arena: KvArena, index: int) -> None:
        super().__init__()
        self._arena = arena
        self._index = index
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


class _ArenaCache(Cache):
    """The `Cache` the model is handed for decode steps: one `_ArenaLayer` per layer."""

    def __init__(self, arena: KvArena) -> None:
        super().__init__(layers=[])
