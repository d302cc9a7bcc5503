"""The CPU attention implementation: decode by two matmuls, everything else sdpa's."""

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from neuron.worker import attention


class _Layer(torch.nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


def _inputs(dtype, *, rows=5, heads=6, kv_heads=2, keys=37, dim=16, queries=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(rows, heads, queries, dim, generator=g).to(dtype)
    k = torch.randn(rows, kv_heads, keys, dim, generator=g).to(dtype)
    v = torch.randn(rows, kv_heads, keys, dim, generator=g).to(dtype)
    # Left padding as the engine's arena has it: row r hides its first 3r columns.
    mask = torch.zeros(rows, 1, queries, keys, dtype=dtype)
    for r in range(rows):
        mask[r, :, :, : 3 * r] = torch.finfo(dtype).min
    return q, k, v, mask


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("masked", [True, False])
def test_decode_matches_sdpa(groups, masked):
    q, k, v, mask = _inputs(torch.float32, heads=2 * groups)
    mask = mask if masked else None
    layer = _Layer(groups)
    ours, _ = attention.attention_forward(layer, q, k, v, mask, scaling=0.3)
    theirs, _ = sdpa_attention_forward(layer, q, k, v, mask, scaling=0.3)
    assert ours.shape == theirs.shape == (5, 1, 2 * groups, 16)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_decode_in_bf16_stays_within_bf16_rounding():
    q, k, v, mask = _inputs(torch.bfloat16, heads=6)
    layer = _Layer(3)
    ours, _ = attention.attention_forward(layer, q, k, v, mask)
    exact, _ = sdpa_attention_forward(layer, *(t.double() for t in (q, k, v, mask)))
    torch.testing.assert_close(ours.double(), exact, rtol=0, atol=2e-2)


def test_everything_but_plain_decode_is_sdpa_unchanged(monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return sdpa_attention_forward(*args, **kwargs)

    monkeypatch.setattr(attention, "sdpa_attention_forward", spy)
    layer = _Layer(3)
    q, k, v, mask = _inputs(torch.float32, queries=4)
    attention.attention_forward(layer, q, k, v, mask)  # prefill
    q, k, v, mask = _inputs(torch.float32)
    attention.attention_forward(layer, q, k, v, mask, position_bias=torch.zeros(5, 6, 1, 37))
    attention.attention_forward(layer, q, k, v, mask.bool())
    one_row = (t[:1] for t in (q, k, v, mask))
    attention.attention_forward(layer, *one_row)  # short context: sdpa's kernel is as fast
    assert len(calls) == 4
    attention.attention_forward(layer, q, k, v, mask)  # plain decode
    q, k, v, mask = _inputs(torch.float32, rows=1, keys=2048)
    attention.attention_forward(layer, q, k, v, mask)  # one row, long context: plain
    assert len(calls) == 4
