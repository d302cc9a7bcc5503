"""The model registry: which models this node serves, where, and in what state.

The registry owns the desired set of models and each one's serving state: its
snapshot, its tokenizer (kept in the parent, where prompts are rendered), the
device whose worker holds its weights, and its admission. It carries out
loads and unloads on the devices:

* loads are **single-flight**: concurrent loads of one id share one load,
  which runs in the registry's own nursery so a caller that goes away does
  not cancel it for the others; a load of a model already loaded is refused
  with 400 `model_already_loaded`;
* an unload refuses new requests at once (503 `model_unavailable`), waits up
  to `unload_drain_timeout` for requests in flight to finish, then unloads
  (requests still running then fail with `worker`'s "model was unloaded");
* a model whose device worker died shows as `recovering` until the
  replacement worker has loaded it again (see `neuron.devices`).

Not for: HTTP, tokenising a request, or generation (`neuron.serving`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import attrs
import trio

from neuron.admission import Admission
from neuron.devices import Device, ModelPlacement
from neuron.metrics import NeuronMetrics
from neuron.tensor_parallel import TensorParallelGroup
from neuron.text.images import ImageInputs
from neuron.text.tokenizer import ModelTokenizer
from neuron.worker import errors as worker_errors
from neuron.worker.snapshot import SnapshotInfo, inspect_model
from protocol import node
from protocol import worker as wire
from protocol.errors import ApiError, ErrorCode, InvalidRequest, NotFound, ServiceUnavailable
from protocol.ids import ModelId

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = 4096  # for configs that do not say
HARNESS = "transformers"  # the one harness this node has (upstream's `harness` field)
UPSTREAM_HARNESS = "candle"  # what an upstream cortex's catalogue must say; accepted as ours


class ModelNotLoaded(NotFound):
    code = "model_not_found"


class ModelAlreadyLoaded(InvalidRequest):
    code = "model_already_loaded"


class ModelPinned(ApiError):
    """An unload through the API of a model the node's config pins."""

    status = 409
    type = "invalid_request_error"
    code = "model_pinned"


@attrs.frozen
class RegistryLimits:
    """How models are admitted and where they may come from."""

    model_roots: tuple[Path, ...]
    allow_absolute_paths: bool = False
    max_queue_depth: int = 64
    queue_timeout: float = 30.0
    unload_drain_timeout: float = 30.0
    default_dtype: str = "auto"
    max_in_flight: int | None = None  # None: the engine's batch size
    prefix_cache: bool = True  # [cache] prefix_cache
    prefix_cache_bytes: int | None = None  # [cache] prefix_cache_mb; None: the worker sizes it


@attrs.frozen
class LoadRequest:
    model_id: ModelId
    dtype: str | None = None
    devices: tuple[int, ...] | None = None  # device indices, as on /discovery
    max_in_flight: int | None = None
    pinned: bool = False  # `[[models]] pinned`: the API may not unload it
    prefix_cache: bool | None = None  # `[[models]] prefix_cache`; None: [cache]'s
    prefix_cache_bytes: int | None = None  # `[[models]] prefix_cache_mb`; None: [cache]'s
    source: str | None = None  # what to resolve, when `model_id` is an alias for it
    tensor_parallel: int = 1  # ranks: devices the model is split over

    @classmethod
    def from_spec(cls, spec: node.ModelSpec) -> LoadRequest:
        if spec.harness not in (None, HARNESS, UPSTREAM_HARNESS):
            raise InvalidRequest(
                f"unknown harness: {spec.harness}; this node serves {HARNESS!r}"
                f" (upstream's {UPSTREAM_HARNESS!r} is taken as the same)",
                param="harness", code="unknown_harness",
            )  # fmt: skip
        tensor_parallel = spec.tensor_parallel or 1
        if tensor_parallel < 1:
            raise InvalidRequest("tensor_parallel must be at least 1", param="tensor_parallel")
        if tensor_parallel > 1 and spec.devices and len(spec.devices) != tensor_parallel:
            raise InvalidRequest(
                f"tensor_parallel = {tensor_parallel} needs one device per rank; "
                f"{len(spec.devices)} devices were named", param="devices",
            )  # fmt: skip
        if spec.quant:
            raise InvalidRequest(
                f"quantisation {spec.quant!r} is not supported; load the dense weights",
                param="quant", code="unsupported_parameter",
            )  # fmt: skip
        return cls(spec.model_id, spec.dtype, spec.devices, tensor_parallel=tensor_parallel)


@attrs.define
class ServedModel:
    """A model this node serves; mutable, owned by the registry."""

    id: ModelId
    info: SnapshotInfo
    tokenizer: ModelTokenizer
    device: Device
    device_index: int
    admission: Admission
    dtype: str
    memory_bytes: int = 0
    load_seconds: float = 0.0
    loaded_at: float = attrs.field(factory=time.time)
    status: str = "loaded"
    pinned: bool = False
    prefix_cache_bytes: int = 0  # the worker's prefix cache budget (0: off)
    images: ImageInputs | None = None  # a vision model's image processor; None: text only
    # A tensor-parallel model: its group (`device` is rank 0's) and every rank's index.
    group: TensorParallelGroup | None = None
    device_indices: tuple[int, ...] = ()

    @property
    def context_length(self) -> int:
        """Tokens of prompt + output this model takes (its config's position limit)."""
        return self.info.max_position_embeddings or DEFAULT_CONTEXT

    def current_status(self) -> str:
        if self.status != "loaded":
            return self.status
        resident = self.group.resident if self.group else self.id in self.device.resident
        return "loaded" if resident else "recovering"


class _Flight:
    """One load in progress; everyone who asked waits on it."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.model: ServedModel | None = None
        self.error: BaseException | None = None


class ModelRegistry:
    def __init__(
        self,
        devices: list[Device],
        limits: RegistryLimits,
        nursery: trio.Nursery,
        metrics: NeuronMetrics | None = None,
    ) -> None:
        self.devices = devices
        self.limits = limits
        self.metrics = metrics or NeuronMetrics()
        self.models: dict[ModelId, ServedModel] = {}
        self._flights: dict[ModelId, _Flight] = {}
        self._nursery = nursery

    # -- lookups ---------------------------------------------------------------------------

    def get(self, model_id: str) -> ServedModel:
        """The model, ready to serve, or 404 / 503 (recovering, unloading)."""
        model = self.models.get(ModelId(model_id))
        if model is None:
            if model_id in self._flights:
                raise ServiceUnavailable(f"model {model_id!r} is loading", retry_after=5,
                                         code="model_loading")  # fmt: skip
            raise ModelNotLoaded(f"model {model_id!r} is not loaded on this node",
                                 extra={"model_id": model_id})  # fmt: skip
        status = model.current_status()
        if status != "loaded":
            raise ServiceUnavailable(
                f"model {model_id!r} is {status}; retry shortly", retry_after=2,
                code=ErrorCode(f"model_{status}"),  # every status has its code
            )  # fmt: skip
        return model

    def loading(self) -> tuple[ModelId, ...]:
        return tuple(self._flights)

    # -- loading ---------------------------------------------------------------------------

    async def load(self, request: LoadRequest) -> ServedModel:
        if request.model_id in self.models:
            raise ModelAlreadyLoaded(f"model {request.model_id!r} already loaded")
        flight = self._flights.get(request.model_id)
        if flight is None:
            flight = self._flights[request.model_id] = _Flight()
            self._nursery.start_soon(self._fly, request, flight)
        await flight.done.wait()
        if flight.error is not None:
            raise flight.error
        assert flight.model is not None
        return flight.model

    async def _fly(self, request: LoadRequest, flight: _Flight) -> None:
        try:
            model = await self._load(request)
        except Exception as exc:  # delivered to every caller of this flight
            flight.error = exc
            self.metrics.model_loads.labels("failed").inc()
        else:
            flight.model = self.models[request.model_id] = model
            log.info("model loaded model=%s device=%s seconds=%.2f memory_bytes=%d", model.id,
                     model.device.id, model.load_seconds, model.memory_bytes)  # fmt: skip
            self.metrics.model_loaded(model.id, model.device.id, model.load_seconds,
                                      model.memory_bytes)  # fmt: skip
            self.metrics.models_loaded.set(len(self.models))
        finally:
            del self._flights[request.model_id]
            flight.done.set()

    async def _load(self, request: LoadRequest) -> ServedModel:
        info = await trio.to_thread.run_sync(self._inspect, request.source or request.model_id)
        tokenizer = await trio.to_thread.run_sync(
            lambda: ModelTokenizer.from_snapshot(
                info.snapshot.path, eos_token_ids=info.eos_token_ids
            )
        )
        picked = self._pick_devices(request)
        (index, device), group = picked[0], None
        dtype = request.dtype or self.limits.default_dtype
        log.info("loading model=%s devices=%s dtype=%s weight_bytes=%d", request.model_id,
                 ",".join(d.id for _, d in picked), dtype, info.weight_bytes)  # fmt: skip
        prefix_cache = prefix_cache_budget(self.limits, request)
        placement = ModelPlacement(
            request.model_id, str(info.snapshot.path), dtype, prefix_cache_bytes=prefix_cache
        )
        if len(picked) == 1:
            loaded = await device.load(placement)
            memory = loaded.memory_bytes
        else:
            # Every rank's engine must take the same batch: the smallest device's.
            batch = min(d.spec.max_batch_size for _, d in picked)
            placement = attrs.evolve(placement, max_sequences=batch)
            group = TensorParallelGroup(placement, [d for _, d in picked])
            loaded = await group.load()
            memory = sum(r.memory_bytes for r in group.member_loaded().values())
        # A vision model's image processor: transformers, imported in this process.
        images = await trio.to_thread.run_sync(
            ImageInputs.from_snapshot, info.snapshot.path, info.model_type
        )
        max_in_flight = (
            request.max_in_flight or self.limits.max_in_flight or loaded.max_sequences or 1
        )
        admission = Admission(request.model_id, max_in_flight, self.limits.max_queue_depth,
                              self.limits.queue_timeout)  # fmt: skip
        return ServedModel(
            request.model_id, info, tokenizer, device, index, admission, dtype,
            memory_bytes=memory, load_seconds=loaded.load_seconds,
            pinned=request.pinned, prefix_cache_bytes=loaded.prefix_cache_bytes,
            images=images, group=group, device_indices=tuple(i for i, _ in picked),
        )  # fmt: skip

    def _inspect(self, model_id: ModelId) -> SnapshotInfo:
        try:
            return inspect_model(model_id, self.limits.model_roots,
                                 allow_absolute=self.limits.allow_absolute_paths)  # fmt: skip
        except worker_errors.UnsafeModelId as exc:
            raise InvalidRequest(str(exc), param="model_id", code="invalid_model_id") from exc
        except worker_errors.ModelNotFound as exc:
            raise NotFound(str(exc), code="model_not_found",
                           extra={"model_id": model_id}) from exc  # fmt: skip
        except worker_errors.ModelError as exc:
            raise ApiError(str(exc), status=422, type="invalid_request_error",
                           code=exc.code) from exc  # fmt: skip

    def _pick_devices(self, request: LoadRequest) -> list[tuple[int, Device]]:
        """The device for each rank: the named ones in order, else the least loaded."""
        ranks = request.tensor_parallel
        if ranks == 1:
            return [self._pick_device(request)]
        if ranks > len(self.devices):
            raise InvalidRequest(
                f"tensor_parallel = {ranks}, but this node has {len(self.devices)} devices",
                param="tensor_parallel",
            )
        named = request.devices
        unknown = set(named or ()) - set(range(len(self.devices)))
        if unknown:
            raise InvalidRequest(f"no device with index {sorted(unknown)}", param="devices")
        if named and len(set(named)) != len(named):
            raise InvalidRequest("a device is named twice", param="devices")
        candidates = list(enumerate(self.devices))
        busy = [i for i, d in candidates if d.groups]
        if named:
            picked = [(i, self.devices[i]) for i in named]
        else:
            free = [(i, d) for i, d in candidates if d.worker is not None and i not in busy]
            picked = sorted(free, key=lambda pair: (len(pair[1].desired), pair[0]))[:ranks]
            picked.sort(key=lambda pair: pair[0])
        if any(i in busy for i, _ in picked) or len(picked) < ranks:
            raise ServiceUnavailable(
                f"tensor_parallel = {ranks} needs {ranks} live devices that are no other "
                "tensor-parallel model's ranks (a worker joins one group at a time)",
                retry_after=2, code="worker_unavailable",
            )  # fmt: skip
        if any(d.worker is None for _, d in picked):
            raise ServiceUnavailable("a device worker is not ready", retry_after=2,
                                     code="worker_unavailable")  # fmt: skip
        return picked

    def _pick_device(self, request: LoadRequest) -> tuple[int, Device]:
        candidates = list(enumerate(self.devices))
        if request.devices:
            wanted = set(request.devices)
            unknown = wanted - set(range(len(self.devices)))
            if unknown:
                raise InvalidRequest(f"no device with index {sorted(unknown)}", param="devices")
            candidates = [(i, d) for i, d in candidates if i in wanted]
        live = [(i, d) for i, d in candidates if d.worker is not None]
        if not live:
            raise ServiceUnavailable("no device worker is ready", retry_after=2,
                                     code="worker_unavailable")  # fmt: skip
        return min(live, key=lambda pair: (len(pair[1].desired), pair[0]))

    # -- unloading -------------------------------------------------------------------------

    async def unload(self, model_id: str, *, force: bool = False) -> ServedModel:
        """Unload `model_id`; a pinned model only with `force` (the node's own shutdown)."""
        model = self.models.get(ModelId(model_id))
        if model is None:
            raise ModelNotLoaded(f"model {model_id!r} not loaded", extra={"model_id": model_id})
        if model.pinned and not force:
            raise ModelPinned(
                f"model {model_id!r} is pinned on this node ([[models]] pinned = true);"
                " unpin it in the node's configuration to unload it",
                extra={"model_id": model_id},
            )
        model.status = "unloading"
        model.admission.close("unloading")
        with trio.move_on_after(self.limits.unload_drain_timeout):
            await model.admission.wait_idle()
        try:
            if model.group is not None:
                await model.group.unload()
            else:
                await model.device.unload(model.id)
        finally:
            self.models.pop(model.id, None)
            log.info("model unloaded model=%s device=%s", model.id, model.device.id)
            devices = model.group.devices if model.group else [model.device]
            self.metrics.model_unloaded(model.id, [d.id for d in devices])
            self.metrics.models_loaded.set(len(self.models))
        return model

    def close_admissions(self, reason: str, *, code: str, retry_after: float) -> None:
        """Refuse new requests to every model (queued ones at once); running ones go on."""
        for model in self.models.values():
            model.admission.close(reason, code=code, retry_after=retry_after)

    async def wait_idle(self) -> None:
        """Return once no model has a request in flight."""
        for model in list(self.models.values()):
            await model.admission.wait_idle()

    def in_flight(self) -> int:
        return sum(m.admission.in_flight for m in self.models.values())

    async def unload_all(self) -> None:
        for model_id in list(self.models):
            try:
                await self.unload(model_id, force=True)
            except ApiError as exc:
                log.warning("unload failed model=%s: %s", model_id, exc)

    # -- reporting -------------------------------------------------------------------------

    def model_infos(self) -> list[node.ModelInfo]:
        infos = [_model_info(m) for m in self.models.values()]
        infos += [node.ModelInfo(m, "transformers", "loading") for m in self._flights]
        return infos

    def model_loads(self) -> list[node.ModelLoad]:
        return [_model_load(m) for m in self.models.values()]


def _model_info(model: ServedModel) -> node.ModelInfo:
    context = model.info.max_position_embeddings
    engine = engine_statistics(model)
    return node.ModelInfo(
        id=model.id,
        harness=HARNESS,
        status=model.current_status(),
        devices=model.device_indices or (model.device_index,),
        vram_used_mb=model.memory_bytes // (1 << 20),
        capabilities=("text", "image") if model.images is not None else ("text",),
        limit=node.ModelLimit(context=context, input=context, output=None) if context else None,
        tool_call=_has_markers(model.tokenizer, "<tool_call>", "</tool_call>"),
        reasoning=_has_markers(model.tokenizer, "<think>", "</think>"),
        memory_bytes=model.memory_bytes,
        dtype=model.dtype,
        pinned=model.pinned,
        prefix_cache_bytes=model.prefix_cache_bytes,
        prefix_cache_used_bytes=engine.prefix_cache_bytes if engine else None,
        path=str(model.info.snapshot.source or model.info.snapshot.path),
        device_memory_bytes=_device_memory(model),
    )


def _device_memory(model: ServedModel) -> tuple[int, ...] | None:
    """A tensor-parallel model's measured bytes per rank, in `devices` order."""
    if model.group is None:
        return None
    loaded = model.group.member_loaded()
    return tuple(loaded[d.id].memory_bytes if d.id in loaded else 0 for d in model.group.devices)


def prefix_cache_budget(limits: RegistryLimits, request: LoadRequest) -> int | None:
    """A load's `LoadModel.prefix_cache_bytes`: 0 when the model's or the node's
    `prefix_cache` is off, else its budget (None: the worker sizes it)."""
    enabled = limits.prefix_cache if request.prefix_cache is None else request.prefix_cache
    if not enabled:
        return 0
    return request.prefix_cache_bytes or limits.prefix_cache_bytes


def engine_statistics(model: ServedModel) -> wire.EngineStatistics | None:
    """The model's latest engine statistics from its worker's heartbeat, if any."""
    worker = model.device.worker
    return worker.statistics.get(model.id) if worker is not None else None


def _model_load(model: ServedModel) -> node.ModelLoad:
    stats = model.admission.statistics()
    engine = engine_statistics(model)
    return node.ModelLoad(
        id=model.id,
        in_flight=stats.in_flight,
        queue_depth=stats.queued,
        max_in_flight=stats.max_in_flight,
        max_queue_depth=stats.max_queue_depth,
        rejected_queue_full=stats.rejected_queue_full,
        rejected_timeout=stats.rejected_timeout,
        tok_s_prefill=engine.tok_s_prefill if engine else None,
        tok_s_decode=engine.tok_s_decode if engine else None,
    )


def _has_markers(tokenizer: ModelTokenizer, open_: str, close: str) -> bool:
    """Both markers are single tokens: the parser can work on token ids."""
    return None not in (tokenizer.single_token_id(open_), tokenizer.single_token_id(close))
