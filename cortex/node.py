"""One neuron as the gateway knows it: polled state and lifecycle operations.

A `Node` holds what the gateway last learned from a neuron — `/discovery`
(fetched on connect and after every reconnect), `/models` and `/health`
(every `poll_interval`) — and its state: `up` after a good poll, `suspect`
after one failed poll, `down` after `failure_threshold` consecutive
failures (polls then back off up to `backoff_max`). A node that comes back is
re-synchronised from its own answers, including models loaded behind the
gateway's back. The `NodeActor` runs the polling as its child task and shows
the node in the actor tree.

Lifecycle operations (load, unload) are serialised per node by a lock, and
loads are single-flight per model: concurrent requests for a cold model share
one `/models/load`, which runs in the node actor's own task so that a caller
who goes away does not cancel it for the others. A model in the gateway's
runtime pins (`Fleet.pins`, shared as `pins`) counts as pinned here, as one
the node's config pins, and is never unloaded (409 `model_pinned`).

Not for: deciding where a model goes (`cortex.placement`) or relaying
requests (`cortex.relay`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Set
from typing import Any, Protocol

import attrs
import httpx
import trio

import actors
from cortex.fleet_snapshot import (
    Device,
    NodeSnapshot,
    NodeState,
    Residency,
    ResidencyStatus,
    Servability,
)
from cortex.transport import url
from protocol import node as wire
from protocol.errors import (
    ApiError,
    Conflict,
    ErrorCode,
    GatewayTimeout,
    ServiceUnavailable,
    UpstreamError,
    api_error_from_envelope,
)
from protocol.ids import ModelId, NodeName

log = logging.getLogger(__name__)

_STATUS = {
    "loaded": ResidencyStatus.LOADED,
    "loading": ResidencyStatus.LOADING,
    "recovering": ResidencyStatus.RECOVERING,
    "poisoned": ResidencyStatus.RECOVERING,
    "reloading": ResidencyStatus.LOADING,
    "unloaded": ResidencyStatus.UNLOADED,
    "unloading": ResidencyStatus.LOADED,  # memory still held; not routable (see servable)
    "failed": ResidencyStatus.FAILED,
}


@attrs.frozen
class PollSettings:
    interval: float = 5.0
    timeout: float = 5.0
    failure_threshold: int = 3
    backoff_max: float = 30.0
    load_timeout: float = 1800.0


class LifecycleObserver(Protocol):
    """What a node tells of its loads and evictions (the gateway's metrics)."""

    def loaded(self, node: str, model: str, seconds: float) -> None: ...
    def load_failed(self, node: str, model: str, seconds: float, outcome: str) -> None: ...
    def evicted(self, node: str, model: str, reason: str) -> None: ...


class _Flight:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: BaseException | None = None


class Node:
    """The gateway's view of one neuron. Changed in place — by its actor's poller, its
    own lifecycle operations and the request path (`Fleet.acquire` counts what it
    routes) — always by synchronous code in the one trio thread, so never seen
    half-done; a change that needs I/O does the I/O first, then applies its result."""

    def __init__(self, name: NodeName, endpoint: str, client: httpx.AsyncClient,
                 settings: PollSettings, *,
                 observer: LifecycleObserver | None = None) -> None:  # fmt: skip
        self.name = name
        self.endpoint = endpoint.rstrip("/")
        self.client = client
        self.settings = settings
        self.state = NodeState.DOWN
        self.failures = 0
        self.last_poll_at: float | None = None  # trio time
        self.last_error: str | None = None
        self.discovery: wire.Discovery | None = None
        self.health: wire.Health | None = None
        self.models: tuple[wire.ModelInfo, ...] = ()
        self.draining = False
        self.lifecycle_cycles = 0
        self.last_used_at: dict[ModelId, float] = {}
        # Requests routed here since the last poll, per model: the poll's in-flight
        # figures do not show them yet, and a burst placed on one stale snapshot would
        # all go to the same node.
        self.routed: dict[ModelId, int] = {}
        self.loaded_at: dict[ModelId, float] = {}
        self.changed = trio.Event()
        self._lifecycle = trio.Lock()
        self._flights: dict[ModelId, _Flight] = {}
        self.actor: NodeActor | None = None  # the incarnation polling this node, while one runs
        self.observer = observer
        self.pins: Set[ModelId] = frozenset()  # the gateway's runtime pins (`Fleet.pins`)
        self._snapshot: tuple[tuple[Any, ...], NodeSnapshot] | None = None  # (inputs, it)
        self._edits = 0  # one more at each change of the per-model dicts above (in place)

    # -- polling ---------------------------------------------------------------------------

    async def poll_once(self) -> None:
        """One poll round; updates state. Never raises for a node-side failure."""
        try:
            with trio.fail_after(self.settings.timeout):
                if self.discovery is None or self.state is NodeState.DOWN:
                    self.discovery = await self._get("/discovery", wire.Discovery)
                models = await self._get("/models", list[wire.ModelInfo])
                health = await self._get("/health", wire.Health)
        except (httpx.HTTPError, ApiError, trio.TooSlowError, ValueError) as exc:
            self._poll_failed(exc)
            return
        self._polled(tuple(models), health)

    async def _get(self, path: str, cls: Any) -> Any:
        response = await self.client.get(url(self.endpoint + path))
        if response.status_code != 200:
            raise UpstreamError(f"{path} answered {response.status_code}")
        return wire.parse_response(response.content, cls)

    def _polled(self, models: tuple[wire.ModelInfo, ...], health: wire.Health) -> None:
        was = self.state
        now = time.monotonic()
        for info in models:
            self.loaded_at.setdefault(info.id, now)
        for gone in set(self.loaded_at) - {m.id for m in models}:
            del self.loaded_at[gone]
        self.models, self.health = models, health
        self.routed = {}  # now counted in `health`
        self._edits += 1
        self.state, self.failures, self.last_error = NodeState.UP, 0, None
        self.last_poll_at = trio.current_time()
        if was is not NodeState.UP:
            log.info("node up node=%s models=%d", self.name, len(models))
        self._notify()

    def _poll_failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        was = self.state
        threshold = self.settings.failure_threshold
        self.state = NodeState.DOWN if self.failures >= threshold else NodeState.SUSPECT
        if was is NodeState.DOWN and self.state is NodeState.SUSPECT:
            self.state = NodeState.DOWN  # a down node stays down until a good poll
        if self.state is not was:
            log.warning("node %s node=%s error=%s", self.state.value, self.name, self.last_error)
        self._notify()

    def next_poll_delay(self) -> float:
        if self.state is NodeState.DOWN:
            extra = self.failures - self.settings.failure_threshold
            return min(self.settings.backoff_max, self.settings.interval * 2 ** max(0, extra))
        return self.settings.interval

    def mark_unreachable(self, exc: BaseException) -> None:
        """A request could not connect: count it like a failed poll."""
        self._poll_failed(exc)

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    async def ensure_loaded(self, model: ModelId, devices: tuple[int, ...],
                            evict: tuple[ModelId, ...]) -> None:  # fmt: skip
        """Load `model` here (after evicting `evict`); concurrent callers share one load."""
        flight = self._flights.get(model)
        if flight is None:
            if self.actor is None:  # between incarnations: the actor's restart backoff
                raise ServiceUnavailable(f"node {self.name} is restarting its poller",
                                         retry_after=1)  # fmt: skip
            flight = self._flights[model] = _Flight()
            self._edits += 1
            name = "load " + model.replace("/", "--")  # actor names hold no "/"
            self.actor.start_task(self._fly, model, devices, evict, flight, name=name, kind="load")
        await flight.done.wait()
        if flight.error is not None:
            raise flight.error

    async def _fly(self, task: Any, model: ModelId, devices, evict, flight: _Flight) -> None:
        task.set_status(model=model, phase="waiting for node")
        log.info("loading model node=%s model=%s evict=%s", self.name, model,
                 ",".join(evict) or None)  # fmt: skip
        started = trio.current_time()
        try:
            async with self._lifecycle:
                for victim in evict:
                    if victim in self.pins:  # pinned since placement chose it
                        raise ServiceUnavailable(
                            f"{victim} on {self.name} was pinned while room was being made "
                            f"for {model}; try again", retry_after=1,
                        )  # fmt: skip
                    task.set_status(phase=f"evicting {victim}")
                    await self._unload(victim, reason="make_room")
                task.set_status(phase="loading")
                await self._load(model, devices)
            self._observe("loaded", model, trio.current_time() - started)
        except Exception as exc:  # delivered to every request waiting on this load
            flight.error = self._load_error(model, exc)
            outcome = "timeout" if isinstance(exc, trio.TooSlowError) else "failed"
            self._observe("load_failed", model, trio.current_time() - started, outcome)
        except trio.Cancelled:  # the gateway is stopping: no waiter may take it as loaded
            flight.error = UpstreamError(f"the load of {model} on {self.name} was cancelled",
                                         code="load_cancelled")  # fmt: skip
            self._observe("load_failed", model, trio.current_time() - started, "cancelled")
            raise
        finally:
            del self._flights[model]
            self._edits += 1
            flight.done.set()
            self._notify()

    def _load_error(self, model: ModelId, exc: Exception) -> Exception:
        """A failed load as the error its waiting requests get (an ApiError when known)."""
        if isinstance(exc, trio.TooSlowError):
            return GatewayTimeout(
                f"loading {model} on {self.name} took longer than load_timeout "
                f"({self.settings.load_timeout:g} s)", code="load_timeout",
            )  # fmt: skip
        if isinstance(exc, httpx.HTTPError):
            message = f"node {self.name} failed during the load of {model}: {type(exc).__name__}"
            return UpstreamError(message, code="upstream_connection_error")
        return exc

    async def _load(self, model: ModelId, devices: tuple[int, ...]) -> None:
        # the node's first harness: upstream neurons require the field, ours default it
        harnesses = self.discovery.harnesses if self.discovery else ()
        # Upstream's rule: a model placed over several devices is split over them.
        tensor_parallel = len(devices) if devices and len(devices) > 1 else None
        spec = wire.ModelSpec(model_id=model, harness=harnesses[0] if harnesses else None,
                              tensor_parallel=tensor_parallel, devices=devices or None)  # fmt: skip
        started = time.monotonic()
        with trio.fail_after(self.settings.load_timeout):
            response = await self.client.post(
                self.endpoint + "/models/load", json=_unstructure(spec),
                timeout=httpx.Timeout(self.settings.load_timeout),
            )  # fmt: skip
        body = _json(response)
        already = response.status_code == 400 and _code(body) == "model_already_loaded"
        if response.status_code != 200 and not already:
            raise _node_error(self.name, "load", response.status_code, body)
        self.lifecycle_cycles += 1
        self.loaded_at[model] = time.monotonic()
        self._edits += 1
        log.info("model loaded node=%s model=%s seconds=%.1f", self.name, model,
                 time.monotonic() - started)  # fmt: skip
        await self.poll_once()

    async def unload(self, model: ModelId, *, reason: str = "admin") -> None:
        async with self._lifecycle:
            await self._unload(model, reason=reason)

    async def _unload(self, model: ModelId, *, reason: str) -> None:
        if model in self.pins:
            raise Conflict(f"model {model!r} is pinned by the gateway; unpin it first "
                           "(POST /admin/models/unpin)", code=ErrorCode.MODEL_PINNED)  # fmt: skip
        response = await self.client.post(self.endpoint + "/models/unload",
                                          json={"model_id": model})  # fmt: skip
        if response.status_code not in (200, 404):
            raise _node_error(self.name, "unload", response.status_code, _json(response))
        self.lifecycle_cycles += 1
        self.last_used_at.pop(model, None)
        self._edits += 1
        self._observe("evicted", model, reason)
        await self.poll_once()

    def _observe(self, what: str, *args: Any) -> None:
        if self.observer is not None:
            getattr(self.observer, what)(self.name, *args)

    def routed_here(self, model: ModelId) -> None:
        """A request for `model` was placed here: used now, one more in flight until the
        next poll counts it."""
        self.last_used_at[model] = time.monotonic()
        self.routed[model] = self.routed.get(model, 0) + 1
        self._edits += 1

    def loading(self) -> tuple[ModelId, ...]:
        return tuple(self._flights)

    # -- the snapshot ----------------------------------------------------------------------

    def snapshot(self) -> NodeSnapshot:
        """The node as placement sees it; the same object while nothing it is made of
        changed (every request places over every node's snapshot: most are unchanged)."""
        inputs = self._snapshot_inputs()
        if self._snapshot is None or self._snapshot[0] != inputs:
            self._snapshot = inputs, NodeSnapshot(
                name=self.name, state=self.state, draining=self.draining,
                devices=self._devices(), residencies=self._residencies(),
                lifecycle_cycles=self.lifecycle_cycles,
            )  # fmt: skip
        return self._snapshot[1]

    def _snapshot_inputs(self) -> tuple[Any, ...]:
        """All that `snapshot` reads: the attributes (the polled answers are frozen, and
        compared by identity first), and for the per-model dicts (`routed`,
        `last_used_at`, `loaded_at`, the loads in flight), changed in place, `_edits`:
        whatever changes one of them counts it."""
        return (self.state, self.draining, self.lifecycle_cycles, self.discovery, self.health,
                self.models, self._edits, frozenset(self.pins))  # fmt: skip

    def _devices(self) -> tuple[Device, ...]:
        if self.discovery is None:
            return ()
        free = {h.index: h.vram_free_mb for h in (self.health.devices if self.health else ())}
        return tuple(
            Device(d.index, d.vram_total_mb, free.get(d.index) or d.vram_total_mb)
            for d in self.discovery.devices
        )

    def _residencies(self) -> tuple[Residency, ...]:
        loads = {m.id: m for m in (self.health.models if self.health else ())}
        out = {}
        for info in self.models:
            load = loads.get(info.id)
            in_flight = (load.in_flight if load else 0) + self.routed.get(info.id, 0)
            out[info.id] = Residency(
                model=info.id, status=_STATUS.get(info.status, ResidencyStatus.FAILED),
                servable=_servable(info), memory_mb=_memory_mb(info), devices=info.devices,
                in_flight=in_flight, queued=load.queue_depth if load else 0,
                last_used_at=self.last_used_at.get(info.id),
                loaded_at=self.loaded_at.get(info.id),
                pinned=info.pinned or info.id in self.pins,
            )  # fmt: skip
        for model in self._flights:
            out.setdefault(model, Residency(model=model, status=ResidencyStatus.LOADING,
                                            pinned=model in self.pins))  # fmt: skip
        return tuple(out.values())


def _servable(info: wire.ModelInfo) -> Servability:
    if info.status == "unloading" or (info.servable is not None and not info.servable.ok):
        return Servability.NO
    return Servability.OK if info.servable is not None else Servability.UNKNOWN


def _memory_mb(info: wire.ModelInfo) -> int | None:
    if info.memory_bytes is not None:
        return max(1, info.memory_bytes // (1 << 20))
    return info.vram_used_mb


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return {"error": response.text[:500]}


def _code(body: Any) -> str | None:
    if isinstance(body, dict):
        code = body.get("code")
        error = body.get("error")
        if code is None and isinstance(error, dict):
            code = error.get("code")
        if code is None and isinstance(error, str) and "already loaded" in error:
            return "model_already_loaded"
        return code if isinstance(code, str) else None
    return None


def _node_error(name: str, what: str, status: int, body: Any) -> ApiError:
    error = api_error_from_envelope(status, body)
    error.message = f"node {name} refused to {what}: {error.message}"
    return error


def _unstructure(value: Any) -> Any:
    from protocol import unstructure

    return unstructure(value)


class NodeActor(actors.Actor):
    """Polls one node for as long as the gateway runs."""

    kind = "node"

    def __init__(self, node: Node) -> None:
        self.node = node

    async def on_start(self) -> None:
        self.node.actor = self
        self.start_task(self._poll_forever, name="poll", kind="poller")

    async def on_stop(self) -> None:
        self.node.actor = None  # no loads start on a dead incarnation

    async def _poll_forever(self, task: Any) -> None:
        while True:
            await self.node.poll_once()
            self._show()
            await trio.sleep(self.node.next_poll_delay())

    def _show(self) -> None:
        n = self.node
        polled = n.last_poll_at  # trio time of the last good poll; shown as wall clock
        self.set_status(
            state=n.state.value, endpoint=n.endpoint,
            models=",".join(m.id for m in n.models) or None, error=n.last_error,
            draining=n.draining or None,
            last_poll_at=None if polled is None else
            round(time.time() - (trio.current_time() - polled), 3),
        )  # fmt: skip
