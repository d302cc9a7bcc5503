"""Load a resolved snapshot onto a torch device and give the memory back on unload.

`load_model` reads safetensors weights with transformers from local files only, in
the requested dtype, onto one device ("cpu" here; "cuda" in production, where the
worker process is pinned by CUDA_VISIBLE_DEVICES before torch starts), and measures
what the load cost: parameter + buffer tensor bytes, process RSS delta (CPU), torch
allocator figures (CUDA) and wall time. The returned `LoadedModel` is the single owner
of the module; `unload()` drops it, collects, returns freed heap / cached CUDA blocks
and reports what came back.

Not for: finding the snapshot (`snapshot`, torch-free) or running it (`engine`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import importlib.util
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import psutil
import torch
from attrs import frozen
from safetensors import SafetensorError

from neuron.worker.errors import DeviceOutOfMemory, LoadFailed, ModelNotLoaded, UnsupportedModel
from neuron.worker.packed_linear import pack_linear_layers, packed_bytes
from neuron.worker.snapshot import ResolvedSnapshot, SnapshotInfo, read_snapshot_info

log = logging.getLogger(__name__)

# The short names, plus torch's own names as sent in `LoadModel.dtype`.
DTypeName = Literal["auto", "bf16", "fp16", "fp32", "bfloat16", "float16", "float32"]
_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}
_DECLARED_DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}


@frozen
class MemoryReading:
    """One reading of what the process and the device hold."""

    rss_bytes: int
    cuda_allocated_bytes: int | None = None
    cuda_reserved_bytes: int | None = None


@frozen
class LoadReport:
    model_id: str
    path: Path
    device: str
    dtype: str
    load_seconds: float
    num_parameters: int
    tensor_bytes: int  # parameters + buffers, shared storage counted once
    rss_delta_bytes: int
    cuda_allocated_delta_bytes: int | None
    cuda_reserved_bytes: int | None
    before: MemoryReading
    after: MemoryReading


@frozen
class UnloadReport:
    model_id: str
    tensor_bytes_released: int
    rss_delta_bytes: int  # negative when memory went back
    cuda_allocated_delta_bytes: int | None
    before: MemoryReading
    after: MemoryReading


class LoadedModel:
    """The one owner of a loaded module. Not a value type: `unload()` mutates it."""

    def __init__(self, model: torch.nn.Module, info: SnapshotInfo, report: LoadReport) -> None:
        self._model: torch.nn.Module | None = model
        self.info = info
        self.report = report

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            raise ModelNotLoaded(f"model {self.info.snapshot.model_id!r} was unloaded")
        return self._model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def device(self) -> torch.device:
        return torch.device(self.report.device)

    def unload(self) -> UnloadReport:
        """Drop the module and give its memory back; callers must hold no other refs."""
        if self._model is None:
            raise ModelNotLoaded(f"model {self.info.snapshot.model_id!r} was already unloaded")
        device = self.device
        before = read_memory(device)
        self._model = None
        release_memory(device)
        after = read_memory(device)
        return UnloadReport(
            model_id=self.info.snapshot.model_id,
            tensor_bytes_released=self.report.tensor_bytes,
            rss_delta_bytes=after.rss_bytes - before.rss_bytes,
            cuda_allocated_delta_bytes=_delta(before.cuda_allocated_bytes, after),
            before=before,
            after=after,
        )


def load_model(
    snapshot: ResolvedSnapshot,
    *,
    device: str = "cpu",
    dtype: DTypeName = "auto",
    shard: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
) -> LoadedModel:
    """Load `snapshot` onto `device`; raise LoadFailed (or DeviceOutOfMemory) if it fails.

    `shard` (a tensor-parallel rank's, `tensor_parallel.Group.shard`) cuts the model
    down to this rank's part before it is copied to the device; what is measured is
    that part."""
    info = read_snapshot_info(snapshot)
    torch_device = torch.device(device)
    torch_dtype = resolve_dtype(dtype, info)
    release_memory(torch_device)
    before = read_memory(torch_device)
    started = time.perf_counter()
    model = _from_pretrained(info, torch_device, torch_dtype, shard)
    num_parameters = sum(p.numel() for p in _unique_tensors(model.parameters()))
    # A tensor-parallel rank's model runs DTensor layers with hooks: left as it is.
    packed = pack_linear_layers(model, torch_device) if shard is None else 0
    if packed:
        release_memory(torch_device)  # the dense weights the packed ones replaced
    _synchronize(torch_device)
    seconds = time.perf_counter() - started
    after = read_memory(torch_device)
    report = LoadReport(
        model_id=snapshot.model_id,
        path=snapshot.path,
        device=str(torch_device),
        dtype=str(torch_dtype).removeprefix("torch."),
        load_seconds=seconds,
        num_parameters=num_parameters,
        tensor_bytes=tensor_bytes(model),
        rss_delta_bytes=after.rss_bytes - before.rss_bytes,
        cuda_allocated_delta_bytes=_delta(before.cuda_allocated_bytes, after),
        cuda_reserved_bytes=after.cuda_reserved_bytes,
        before=before,
        after=after,
    )
    log.info(
        "model loaded model=%s device=%s dtype=%s seconds=%.2f tensor_bytes=%d rss_delta=%d",
        report.model_id, report.device, report.dtype, seconds, report.tensor_bytes,
        report.rss_delta_bytes,
    )  # fmt: skip
    if packed:
        log.info("linear layers prepacked for oneDNN model=%s layers=%d", report.model_id, packed)
    if kernels := recurrent_kernels(model):
        log.info("recurrent-layer kernels model=%s %s", report.model_id, kernels)
    return LoadedModel(model, info, report)


def resolve_dtype(dtype: DTypeName, info: SnapshotInfo) -> torch.dtype:
    """The dtype to load in: explicit, else what config.json declares, else float32."""
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    if dtype != "auto":
        raise ValueError(f"dtype must be one of auto, {', '.join(_DTYPES)}; got {dtype!r}")
    return _DECLARED_DTYPES.get(str(info.declared_dtype), torch.float32)


def _from_pretrained(info: SnapshotInfo, device: torch.device, dtype: torch.dtype, shard=None):
    path = info.snapshot.path
    try:
        with quiet_transformers():
            model = _auto_class(path).from_pretrained(
                path,
                local_files_only=True,
                use_safetensors=True,
                trust_remote_code=False,
                dtype=dtype,
                attn_implementation=attention_implementation(path),
            )
            if shard is not None:
                model = shard(model)
            # device_map would need accelerate: stage through host memory instead.
            model = model.to(device) if device.type != "cpu" else _own_memory(model)
    except torch.OutOfMemoryError as exc:
        raise DeviceOutOfMemory(f"out of memory loading {info.snapshot.model_id!r}") from exc
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise LoadFailed(
            f"could not load {info.snapshot.model_id!r} from {path}: {reason}"
        ) from exc
    if not hasattr(model, "generation_config") or not callable(model):
        raise UnsupportedModel(f"{info.snapshot.model_id!r} is not a causal language model")
    model.eval()
    model.requires_grad_(False)
    return model


# The optional fast paths transformers takes for recurrent layers when they are
# installed (the `gpu` extra; CUDA only), by the module it imports.
_RECURRENT_KERNELS = {
    "flash-linear-attention": "fla",  # gated delta net (qwen3_5, qwen3_next)
    "causal-conv1d": "causal_conv1d",  # their short convolutions, Mamba2's
    "mamba-ssm": "mamba_ssm",  # Mamba2 scans (granitemoehybrid)
}


def recurrent_kernels(model: torch.nn.Module) -> str:
    """Which fast kernels a model with recurrent layers runs on, for the load log ("" for
    a model without such layers). Missing ones fall back to transformers' reference
    PyTorch implementations: exact, slower."""
    from transformers import DynamicCache
    from transformers.cache_utils import LinearAttentionCacheLayerMixin

    layers = DynamicCache(config=model.config).layers
    if not any(isinstance(layer, LinearAttentionCacheLayerMixin) for layer in layers):
        return ""
    found = {name: importlib.util.find_spec(module) is not None
             for name, module in _RECURRENT_KERNELS.items()}  # fmt: skip
    return " ".join(f"{name}={'yes' if ok else 'no (reference)'}" for name, ok in found.items())


def _auto_class(path: Path):
    """transformers' auto class to load with: the causal LM one, or, for a family served
    with images in (`vision.VISION_FAMILIES`) whose snapshot has its image processor's
    `preprocessor_config.json`, the image-text-to-text one. Other vision-language
    checkpoints load their language model through the causal LM class and serve text."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    from neuron.worker.vision import VISION_FAMILIES

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError):
        return AutoModelForCausalLM  # from_pretrained reports what is wrong with the snapshot
    processor = (path / "preprocessor_config.json").is_file()
    if getattr(config, "model_type", None) in VISION_FAMILIES and processor:
        return AutoModelForImageTextToText
    return AutoModelForCausalLM


def attention_implementation(path: Path) -> str:
    """`sdpa` where the architecture has it, else `eager` (gpt-oss: its attention sinks
    have no sdpa path). Both take the engine's additive masks; other implementations
    (flash, flex, paged) do not, so they are never chosen here."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        model_class = _auto_class(path)._model_mapping[type(config)]
    except (OSError, ValueError, KeyError):
        return "sdpa"  # from_pretrained reports what is wrong with the snapshot
    return "sdpa" if getattr(model_class, "_supports_sdpa", False) else "eager"


def _own_memory(model: torch.nn.Module) -> torch.nn.Module:
    """Copy CPU weights out of the safetensors file mapping into process memory.

    Zero-copy loading leaves tensors backed by an mmap of the snapshot file: RSS would
    not show them until first use, and rewriting the file in place would SIGBUS the
    worker. Ties (same storage in two modules) are preserved.
    """
    copies: dict[tuple[object, ...], torch.Tensor] = {}
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, tensor in table.items():
                if tensor is not None and not _is_dtensor(tensor):  # a shard is a copy
                    table[name] = _copy_once(tensor, copies)
    return model


def _copy_once(tensor: torch.Tensor, copies: dict[tuple[object, ...], torch.Tensor]):
    key = (tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
    if key not in copies:
        data = tensor.detach().clone()
        is_param = isinstance(tensor, torch.nn.Parameter)
        copies[key] = torch.nn.Parameter(data, requires_grad=False) if is_param else data
    return copies[key]


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars (stderr noise in a worker) for the duration."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


# -- memory ---------------------------------------------------------------------------


def tensor_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters, buffers and packed weights, counting shared (tied) storage once."""
    tensors = [*model.parameters(), *model.buffers()]
    storages = {}
    for tensor in tensors:
        storage = _local(tensor).untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values()) + packed_bytes(model)


def _is_dtensor(tensor: torch.Tensor) -> bool:
    return hasattr(tensor, "to_local")


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a tensor (a tensor-parallel shard's local tensor)."""
    return tensor.to_local() if _is_dtensor(tensor) else tensor


def _unique_tensors(tensors: Iterator[torch.Tensor]) -> list[torch.Tensor]:
    seen: dict[int, torch.Tensor] = {}
    for tensor in map(_local, tensors):
        seen.setdefault(tensor.data_ptr(), tensor)
    return list(seen.values())


def read_memory(device: torch.device) -> MemoryReading:
    rss = psutil.Process().memory_info().rss
    if device.type != "cuda":
        return MemoryReading(rss)
    return MemoryReading(
        rss, torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
    )


def release_memory(device: torch.device) -> None:
    """Collect garbage and hand freed memory back: CUDA's cache, glibc's heap."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    _malloc_trim()


def _malloc_trim() -> None:
    # glibc keeps freed heap pages mapped; without this RSS would not show an unload.
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    trim = getattr(ctypes.CDLL(libc_name), "malloc_trim", None)
    if trim is not None:
        trim(0)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _delta(before: int | None, after: MemoryReading) -> int | None:
    if before is None or after.cuda_allocated_bytes is None:
        return None
    return after.cuda_allocated_bytes - before
