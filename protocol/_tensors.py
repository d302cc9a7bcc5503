"""`RawTensor`: a CPU tensor as dtype, shape and raw bytes, for worker frames.

Tensors cross the device-worker pipe as their bytes plus a small header,
never pickled (stack notes §4: pickling is about 4x slower). This module
imports torch only inside the two conversion functions, so the gateway and
the protocol package stay torch-free. It does not know about frames; the
codec in `protocol.worker` lays the bytes out.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs

from protocol.errors import FrameError

if TYPE_CHECKING:
    import torch

__all__ = ["DTYPE_SIZES", "RawTensor", "raw_tensor_from_torch"]

# Bytes per element, by torch dtype name (`str(torch.float32)` minus "torch.").
DTYPE_SIZES: dict[str, int] = {
    "bool": 1,
    "uint8": 1,
    "int8": 1,
    "int16": 2,
    "uint16": 2,
    "int32": 4,
    "uint32": 4,
    "int64": 8,
    "uint64": 8,
    "float16": 2,
    "bfloat16": 2,
    "float32": 4,
    "float64": 8,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
}


def _as_bytes_view(data: Any) -> bytes | memoryview:
    """Keep `bytes`; view anything else as flat unsigned bytes (no copy)."""
    if type(data) is bytes:
        return data
    view = memoryview(data)
    if not view.c_contiguous:
        raise FrameError("tensor data must be C-contiguous")
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _check_dtype(_: Any, __: Any, dtype: str) -> None:
    if dtype not in DTYPE_SIZES:
        raise FrameError(f"unsupported tensor dtype {dtype!r}")


def _check_shape(_: Any, __: Any, shape: tuple[int, ...]) -> None:
    if not all(type(n) is int and n >= 0 for n in shape):
        raise FrameError(f"tensor shape must be non-negative integers, got {shape!r}")


@attrs.frozen
class RawTensor:
    """A tensor's dtype name, shape and bytes (C order, host byte order).

    Both ends of the pipe are on one host, so host byte order is the wire
    byte order. `data` is `bytes` or a flat byte `memoryview`.
    """

    dtype: str = attrs.field(validator=_check_dtype)
    shape: tuple[int, ...] = attrs.field(converter=tuple, validator=_check_shape)
    data: bytes | memoryview = attrs.field(converter=_as_bytes_view)

    def __attrs_post_init__(self) -> None:
        expected = math.prod(self.shape) * DTYPE_SIZES[self.dtype]
        if len(self.data) != expected:
            raise FrameError(
                f"tensor {self.dtype}{list(self.shape)} needs {expected} bytes,"
                f" got {len(self.data)}"
            )

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def to_torch(self) -> torch.Tensor:
        """A CPU tensor over these bytes (shared when writable, else copied)."""
        import torch

        dtype = getattr(torch, self.dtype)
        if not self.data:
            return torch.empty(self.shape, dtype=dtype)
        buffer = self.data
        if memoryview(buffer).readonly:  # torch.frombuffer warns on read-only memory
            buffer = bytearray(buffer)
        return torch.frombuffer(buffer, dtype=dtype).reshape(self.shape)


def raw_tensor_from_torch(tensor: torch.Tensor) -> RawTensor:
    """View a CPU tensor's bytes without copying (if it is contiguous).

    Refuses tensors on any other device: the parent never touches a device,
    so a worker must copy results to the CPU itself, deliberately.
    """
    import torch

    if tensor.device.type != "cpu":
        raise FrameError(
            f"tensor is on device {tensor.device}; only CPU tensors cross the worker pipe"
        )
    if tensor.layout != torch.strided:
        raise FrameError(f"tensor layout {tensor.layout} cannot be sent; use a dense tensor")
    dtype = str(tensor.dtype).removeprefix("torch.")
    if dtype not in DTYPE_SIZES:
        raise FrameError(f"unsupported tensor dtype {dtype!r}")
    flat = tensor.detach().contiguous().reshape(-1)
    return RawTensor(dtype, tuple(tensor.shape), flat.view(torch.uint8).numpy())
