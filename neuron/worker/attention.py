"""The attention implementation CPU workers run: `sdpa`, with decode done by two matmuls.

A decode step asks one query token per row to attend over that row's keys. On CPU,
`torch.nn.functional.scaled_dot_product_attention` runs that through its flash kernel,
which is built for long query blocks: in bf16, with the engine's padding mask, it
takes 2-3x the time of the plain computation (two batched matmuls and a float32
softmax — what transformers' own `eager` attention does), and the gap grows with the
context (`bench/attention.py` measures it). The plain computation also reads each
key/value head once for its whole query group (grouped-query attention without
`repeat_kv`).

So CPU workers load models with `helexa_cpu`: one query token per row without extra
inputs (no positional bias, no per-head mask) goes the plain way — in a batch, or for
a single row over a long context — and everything else (prefill, a single row over a
short context, anything unusual) goes to transformers' `sdpa` unchanged. Its masks are `sdpa`'s.
CUDA keeps `sdpa`, whose kernels are the fast ones there.

Not for: attention with sinks or soft-capping (those models load with `eager`; see
`loader.attention_implementation`).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "helexa_cpu"
# Below this many keys a single row decodes at least as fast through sdpa's kernel.
_ONE_ROW_CONTEXT = 1024


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: `query` is [batch, heads, q, dim],
    `key`/`value` [batch, kv_heads, k, dim]; returns [batch, q, heads, dim]."""
    if _plain_decode(query, key, attention_mask, dropout, kwargs):
        return _decode(query, key, value, attention_mask, scaling), None
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )


def _plain_decode(query, key, mask, dropout, kwargs) -> bool:
    if query.shape[2] != 1 or dropout or query.shape[1] % key.shape[1]:
        return False
    if query.shape[0] == 1 and key.shape[2] < _ONE_ROW_CONTEXT:
        return False  # one row over a short context: sdpa's kernel is as fast or faster
    if any(kwargs.get(name) is not None for name in ("position_bias", "softcap", "cache")):
        return False
    if kwargs.get("output_attentions"):
        return False
    return mask is None or (mask.dim() == 4 and mask.shape[1] == 1 and mask.dtype != torch.bool)


def _decode(query, key, value, mask, scaling) -> torch.Tensor:
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    # [batch, kv_heads, group, dim]: a kv head's query group as rows of one matmul.
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(grouped, key.transpose(-1, -2))
    scores = scores * (dim**-0.5 if scaling is None else scaling)
    if mask is not None:
        scores = scores + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(probs, value)  # [batch, kv_heads, group, dim]
    return out.reshape(batch, 1, heads, value.shape[-1])


AttentionInterface.register(NAME, attention_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)
