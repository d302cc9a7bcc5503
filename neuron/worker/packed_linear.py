"""Linear layers whose weights are prepacked once for oneDNN (CPU, bfloat16).

`torch.nn.functional.linear` on a CPU bfloat16 tensor runs oneDNN's matmul, which
reorders the plain row-major weight into its blocked layout on every call. At the
row counts of a decode step (1-64) that reorder is a large part of the call: measured
on this project's 2-core AVX-512 CI box, a 16x576 @ 576x1536 product takes 115 us
plain and 84 us prepacked, a 49k-row `lm_head` 6.8 ms and 3.3 ms, one row 58 and
31 us. The results are bit-identical (the same oneDNN kernels run on the same
blocked weight; checked in `tests/neuron/test_packed_linear.py`), so prepacking changes
speed and nothing else. This is what `torch.compile`'s CPU "freezing" pass does to
linear layers; here it is done once at load without compiling anything.

Only exact `nn.Linear` modules on CPU with bfloat16 weights are packed, and only where
oneDNN supports bfloat16; a tensor-parallel rank's model (DTensors, module hooks) is left
alone. A packed
module drops its dense weight, so untied layers take no extra memory; a head tied to
the input embeddings keeps the embeddings dense and packs a copy for itself.
"""

from __future__ import annotations

import torch

# The overload itself: skips the packet's per-call overload resolution (~0.5 us).
_linear_pointwise = torch.ops.mkldnn._linear_pointwise.default


class PackedLinear(torch.nn.Module):
    """`nn.Linear`'s forward over a oneDNN-prepacked weight.

    `weight` stays readable (model code reads `.weight.shape` or `.dtype` here and
    there) but is rebuilt from the packed form on each access: correct, not fast."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())
        self.bias = linear.bias

    @property
    def weight(self) -> torch.Tensor:
        return self.packed.to_dense()

    @property
    def packed_bytes(self) -> int:
        return self.packed.numel() * self.packed.element_size()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed=oneDNN"


def pack_linear_layers(model: torch.nn.Module, device: torch.device) -> int:
    """Replace each eligible `nn.Linear` in `model` by a `PackedLinear`; how many were."""
    if not (
        device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    ):
        return 0
    parents = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if _eligible(child)
    ]
    packed: dict[int, PackedLinear] = {}  # one packed module per shared Linear
    for parent, name, child in parents:
        if id(child) not in packed:
            packed[id(child)] = PackedLinear(child)
        setattr(parent, name, packed[id(child)])
    return len(packed)


def packed_bytes(model: torch.nn.Module) -> int:
    """Bytes held by packed weights (not parameters, so `model.parameters()` misses them)."""
    return sum(m.packed_bytes for m in model.modules() if isinstance(m, PackedLinear))


def _eligible(module: torch.nn.Module) -> bool:
    return (
        type(module) is torch.nn.Linear
        and module.weight.dtype == torch.bfloat16
        and module.weight.device.type == "cpu"
        and not hasattr(module.weight, "to_local")  # a tensor-parallel shard
        and not (module._forward_hooks or module._forward_pre_hooks)  # would be lost
        and (module.bias is None or module.bias.dtype == torch.bfloat16)
    )
