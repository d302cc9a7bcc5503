"""The neuron daemon's life: start, serve, drain, stop.

Start-up binds the HTTP listener first, then (in the background) starts one
device worker per device and loads the configured default models one by one,
reporting progress on `/health` (`activation`: pending → in progress →
completed / failed with the reason). A request for a model that is not
loaded yet gets a 404, or a 503 while it is loading.

Shutdown (SIGTERM / SIGINT, or `stop()`): stop admitting (new inference and
loads, and requests still queued for a slot, get 503 `shutting_down` with
Retry-After), let requests in flight finish within `timeouts.drain` — the
listener stays open meanwhile, so clients get that 503 and `/health` keeps
answering — then cancel what is still running (a stream ends with an in-band
error event), close the listener, unload the models, stop every worker with
the stop ladder, and return. Nothing is left running.

    neuron (actor root)
    ├── devices      supervisor: one DeviceActor per device (neuron.devices)
    ├── requests     supervisor: one task actor per generation
    └── activation   task: default models
"""

from __future__ import annotations

import functools
import logging
import signal
import time
from typing import Any

import attrs
import trio

import actors
from neuron.config import NeuronConfig
from neuron.devices import Device, start_devices
from neuron.discovery import HealthSampler, HostProbe, build_discovery, probe_host
from neuron.http import SHUTDOWN_RETRY_AFTER, create_app
from neuron.metrics import NeuronMetrics
from neuron.registry import (
    LoadRequest,
    ModelAlreadyLoaded,
    ModelRegistry,
    RegistryLimits,
    ServedModel,
    engine_statistics,
)
from neuron.serving import Serving, ServingSettings
from neuron.text.images import ImageLimits
from protocol import node, sdnotify
from protocol.buildinfo import build_info
from protocol.errors import ApiError
from protocol.http import make_config, serve
from protocol.ids import ModelId
from protocol.models import ModelCard, ModelLimit, ModelList

log = logging.getLogger(__name__)

_FLUSH_TIMEOUT = 5.0  # after the drain: responses still being written get this long


@attrs.frozen
class _Running:
    """What exists only while the daemon runs (inside its actor root and nursery)."""

    root: actors.Root
    requests: actors.SupervisorRef
    registry: ModelRegistry
    serving: Serving


class Neuron:
    """Everything one daemon holds, built whole from its config and the host probe;
    what lives only while it runs is there from `run()`'s start (`registry`,
    `serving`, `root`, `requests`). The HTTP routes read from it."""

    def __init__(self, config: NeuronConfig, probe: HostProbe) -> None:
        self.config = config
        self.started_at = time.monotonic()
        self.metrics = NeuronMetrics()
        self.build_info = build_info()
        self.metrics.set_build_info(self.build_info)
        specs = config.device_specs([g.index for g in probe.gpu.gpus], probe.resources)
        self.discovery = build_discovery(
            probe, specs, max_prompt_tokens=config.limits.max_prompt_tokens
        )
        self.devices = [Device(spec, config.worker_timeouts()) for spec in specs]
        self._wanted = config.model_devices(specs)
        self.activation = node.Activation(
            "pre_warming", pending=tuple(m.id for m, _ in self._wanted)
        )
        self._health_sampler = HealthSampler(specs)
        self.draining = False
        self.public_url = ""  # bound by run()
        self._running: _Running | None = None
        self._sampling = trio.Lock()  # the sampler measures CPU deltas: one caller at a time
        self._restarts_counted: dict[str, int] = {}
        self._stop = trio.Event()  # begin the shutdown
        self._close_listener = trio.Event()  # drained: stop accepting connections
        self._http_closed = trio.Event()

    @property
    def registry(self) -> ModelRegistry:
        return self._live().registry

    @property
    def serving(self) -> Serving:
        return self._live().serving

    @property
    def root(self) -> actors.Root:
        return self._live().root

    @property
    def requests(self) -> actors.SupervisorRef:
        return self._live().requests

    def _live(self) -> _Running:
        if self._running is None:
            raise RuntimeError("the neuron is not running")
        return self._running

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        wanted = self._wanted
        async with actors.open_root("neuron") as root, trio.open_nursery() as nursery:
            registry = ModelRegistry(self.devices, self._limits(), nursery, self.metrics)
            requests = await root.start_supervisor("requests")
            serving = Serving(registry, requests, self._settings(), self.metrics)
            self._running = _Running(root, requests, registry, serving)
            url = await nursery.start(self._serve_http)
            self.public_url = url
            sdnotify.ready(f"listening on {url}; {len(wanted)} default model(s) to load")
            log.info("neuron listening url=%s", url)
            task_status.started(url)
            await root.start_task(self._activate, wanted, name="activation", kind="activation")
            await self._stop.wait()
            await self._shutdown(nursery)
        log.info("shut down")

    async def _serve_http(self, *, task_status: trio.TaskStatus[str]) -> None:
        """Serve until the drain is over; then give responses still being written
        a few seconds (hypercorn's graceful timeout) and return."""
        listen = self.config.listen
        http = self.config.http
        config = make_config(listen.host, listen.port, graceful_timeout=_FLUSH_TIMEOUT,
                             keep_alive_timeout=http.idle_timeout,
                             max_header_bytes=http.max_header_bytes)  # fmt: skip
        app = create_app(self)
        try:
            async with trio.open_nursery() as nursery:
                trigger = self._close_listener.wait
                urls = await nursery.start(
                    functools.partial(serve, app, config, shutdown_trigger=trigger)
                )
                task_status.started(_public_url(urls[0], listen.host))
        finally:
            self._http_closed.set()

    async def _activate(self, task: Any, wanted: list) -> None:
        await start_devices(self.root, self.devices)
        pending = [m.served_id for m, _ in wanted]
        completed, failed = [], []
        for model, devices in wanted:
            served = ModelId(model.served_id)
            pending.remove(served)
            self._activation(pending, served, completed, failed)
            sdnotify.status(f"loading {served} ({len(wanted) - len(pending)}/{len(wanted)})")
            try:
                request = LoadRequest(served, model.dtype, devices or None, model.max_in_flight,
                                      pinned=model.pinned, source=model.id)  # fmt: skip
                request = attrs.evolve(request, prefix_cache=model.prefix_cache,
                                       prefix_cache_bytes=_mib(model.prefix_cache_mb),
                                       tensor_parallel=model.ranks)  # fmt: skip
                await self.registry.load(request)
                completed.append(served)
            except ModelAlreadyLoaded:  # loaded through the API meanwhile
                completed.append(served)
            except ApiError as exc:
                log.error("default model failed model=%s: %s", served, exc.message)
                failed.append(node.ActivationFailure(served, exc.message))
        self._activation(pending, None, completed, failed, state="ready")
        log.info("activation done loaded=%d failed=%d", len(completed), len(failed))
        sdnotify.status(f"ready: {len(completed)} model(s) loaded, {len(failed)} failed")

    def _activation(self, pending, current, completed, failed, state="pre_warming") -> None:
        self.activation = node.Activation(
            state=state, pending=tuple(pending), in_progress=current,
            completed=tuple(completed), failed=tuple(failed),
        )  # fmt: skip

    def stop(self) -> None:
        """Begin the graceful shutdown (idempotent)."""
        self.draining = True
        self._stop.set()

    async def _shutdown(self, nursery: trio.Nursery) -> None:
        drain = self.config.timeouts.drain
        log.info("shutting down: draining for up to %.0fs", drain)
        sdnotify.stopping(f"shutting down: draining for up to {drain:.0f}s")
        self.registry.close_admissions("shutting down", code="shutting_down",
                                       retry_after=SHUTDOWN_RETRY_AFTER)  # fmt: skip
        with trio.move_on_after(drain):
            await self.registry.wait_idle()
        if busy := self.registry.in_flight():
            log.warning("drain timeout: cancelling %d requests still in flight", busy)
        await self.requests.cancel()  # what still runs ends now, a stream with an error event
        self._close_listener.set()
        await self._http_closed.wait()  # bounded by hypercorn's graceful timeout
        with trio.move_on_after(self.config.timeouts.unload_drain + 10):
            await self.registry.unload_all()
        nursery.cancel_scope.cancel()  # the registry's load flights, if any
        await self.root.cancel()  # all actors; the devices stop their workers with the ladder

    # -- what the routes read ----------------------------------------------------------------

    async def load(self, spec: node.ModelSpec) -> ServedModel:
        return await self.registry.load(LoadRequest.from_spec(spec))

    async def health(self) -> node.Health:
        pids = {d.id: (d.worker.pid if d.worker else None) for d in self.devices}
        model_bytes = {d.id: 0 for d in self.devices}
        for model in self.registry.models.values():
            if model.group is not None:  # each rank's measured share on its own device
                for device_id, loaded in model.group.member_loaded().items():
                    model_bytes[device_id] += loaded.memory_bytes
            else:
                model_bytes[model.device.id] += model.memory_bytes
        async with self._sampling:
            devices = await self._health_sampler.sample(pids, model_bytes)
        devices = tuple(
            attrs.evolve(
                h,
                worker_state="ready" if d.worker else "restarting",
                worker_restarts=max(0, d.incarnations - 1),
            )
            for h, d in zip(devices, self.devices, strict=True)
        )
        return node.Health(
            uptime_secs=int(time.monotonic() - self.started_at), devices=devices,
            activation=self.activation, models=tuple(self.registry.model_loads()),
        )  # fmt: skip

    async def sample_metrics(self) -> None:
        """Copy what is sampled rather than counted (queues, devices) into the gauges."""
        health = await self.health()
        for load in health.models:
            self.metrics.requests_running.labels(load.id).set(load.in_flight)
            self.metrics.requests_waiting.labels(load.id).set(load.queue_depth)
        for model in list(self.registry.models.values()):
            stats, worker = engine_statistics(model), model.device.worker
            self.metrics.prefix_cache_sampled(model.id, model.prefix_cache_bytes, stats, worker)
        for reading, device in zip(health.devices, self.devices, strict=True):
            self.metrics.device_sampled(reading, device.id)
            self.metrics.worker_ready.labels(device.id).set(1 if device.worker else 0)
            restarts = max(0, device.incarnations - 1)
            counted = self._restarts_counted.get(device.id, 0)
            self.metrics.worker_restarts.labels(device.id).inc(restarts - counted)
            self._restarts_counted[device.id] = restarts

    def model_list(self) -> ModelList:
        cards = []
        for info in self.registry.model_infos():
            limit = info.limit and ModelLimit(context=info.limit.context, input=info.limit.input,
                                              output=info.limit.output)  # fmt: skip
            cards.append(ModelCard.with_limit(
                limit, id=info.id, created=int(time.time()),
                loaded=info.status == "loaded", capabilities=info.capabilities or (),
                tool_call=info.tool_call, reasoning=info.reasoning,
            ))  # fmt: skip
        return ModelList(data=tuple(cards))

    def _limits(self) -> RegistryLimits:
        c = self.config
        return RegistryLimits(
            model_roots=c.model_root_paths, allow_absolute_paths=c.allow_absolute_model_paths,
            max_queue_depth=c.admission.max_queue_depth, queue_timeout=c.admission.queue_timeout,
            unload_drain_timeout=c.timeouts.unload_drain, default_dtype=c.engine.default_dtype,
            max_in_flight=c.admission.max_in_flight, prefix_cache=c.cache.prefix_cache,
            prefix_cache_bytes=_mib(c.cache.prefix_cache_mb),
        )  # fmt: skip

    def _settings(self) -> ServingSettings:
        return ServingSettings(
            keepalive_interval=self.config.http.keepalive_interval,
            default_max_tokens=self.config.limits.default_max_tokens,
            idle_timeout=self.config.timeouts.request_idle,
            constrain_tool_calls=self.config.engine.constrain_tool_calls,
            image_limits=ImageLimits(**attrs.asdict(self.config.vision)),
        )


def _mib(mb: int | None) -> int | None:
    return mb * (1 << 20) if mb else None


def _public_url(bound: str, host: str) -> str:
    """What `/models/{id}/endpoint` reports: loopback when bound to every address."""
    if host in ("0.0.0.0", "::", ""):
        port = bound.rsplit(":", 1)[1]
        return f"http://localhost:{port}"
    return bound


async def serve_forever(config: NeuronConfig) -> None:
    """Run until SIGTERM / SIGINT, then shut down gracefully (later signals are noted)."""
    neuron = Neuron(config, await probe_host())
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signals, signals, neuron)
            nursery.start_soon(sdnotify.run_watchdog)  # no-op unless WatchdogSec= is set
            await neuron.run()
            nursery.cancel_scope.cancel()


async def _stop_on_signals(signals: Any, neuron: Neuron) -> None:
    async for signum in signals:
        name = signal.Signals(signum).name
        if neuron.draining:
            log.info("received %s: already shutting down", name)
            continue
        log.info("received %s: shutting down", name)
        neuron.stop()
