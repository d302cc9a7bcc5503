"""Every Prometheus metric the gateway exports, defined in one place.

`CortexMetrics` owns a dedicated `CollectorRegistry` (never the global one,
so several gateways can live in one test process) with upstream helexa's
cortex metrics under their upstream names and labels — request counters,
latency and token histograms with upstream's explicit buckets, the
per-model and per-device gauges copied from each neuron's `/health` — and
what upstream lacks: time to first token split into queue wait, load wait
and the rest; gateway overhead; loads and their duration; evictions by
reason; node up/down; retries. Labels are bounded: `model` and `node` take
the values the gateway knows (the catalogue, `[[neurons]]`, what the nodes
report) plus at most `SPARE_LABELS` others, first come; beyond that a value
is recorded as `other`, and `none` means no model or node yet. `route`,
`outcome` and `reason` come from closed sets; no label ever carries a
request id. `docs/operations.md` ("cortex
metrics") lists every metric.

`render(accept)` produces the exposition for the metrics port; it takes a
few milliseconds, so call it with `trio.to_thread.run_sync`. Not for:
serving HTTP, or measuring (the request actor, node actors and fleet time
things and record them through the helpers here).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily

from protocol.node import DeviceHealth, Health, ModelLoad

if TYPE_CHECKING:
    from cortex.config import CortexConfig

__all__ = [
    "AFFINITY_OUTCOMES",
    "ERROR_OUTCOMES",
    "EVICTION_REASONS",
    "LOAD_OUTCOMES",
    "NONE",
    "OTHER",
    "OUTCOMES",
    "ROUTES",
    "SPARE_LABELS",
    "CortexMetrics",
    "RequestRecord",
]

OTHER = "other"  # the label value for anything outside a bounded set
NONE = "none"  # no model resolved, or no node chosen, yet
SPARE_LABELS = 64  # models (nodes) outside the known set that still get their own series
ROUTES = frozenset({
    "/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages",
    "/v1/messages/count_tokens", "/v1/models", "/v1/images/generations",
})  # fmt: skip
OUTCOMES = frozenset({
    "ok", "client_error", "cancelled",  # not the gateway's failures
    "rejected", "unavailable", "upstream_error", "timeout", "stream_error",
})  # fmt: skip
ERROR_OUTCOMES = OUTCOMES - {"ok", "client_error", "cancelled"} | {OTHER}
LOAD_OUTCOMES = frozenset({"loaded", "failed", "timeout", "cancelled"})
EVICTION_REASONS = frozenset({"make_room", "defrag", "admin", "drain"})
AFFINITY_OUTCOMES = frozenset({"hit", "miss", "overloaded"})
REJECTION_FIELDS = {  # neuron /health ModelLoad field → reason label
    "rejected_queue_full": "queue_full",
    "rejected_timeout": "wait_timeout",
    "rejected_per_principal": "per_principal",
    "rejected_anon_yield": "anon_yield",
    "rejected_kv_timeout": "kv_timeout",
    "rejected_kv_unservable": "kv_unservable",
}

# Explicit buckets so every histogram exports as one (`_bucket` series).
SECONDS_LONG = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200)  # upstream's
SECONDS_SHORT = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)  # upstream's
TOKENS_PER_SECOND = (1, 2.5, 5, 10, 15, 20, 30, 40, 60, 80, 120, 200)  # upstream's
QUEUE_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
LOAD_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800)
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)

# Below this decode window, tokens/s is taken over the whole request (upstream's rule).
MIN_DECODE_WINDOW = 0.1


@attrs.frozen(kw_only=True)
class RequestRecord:
    """One finished API request, as the request actor saw it. Seconds.

    `duration` runs from arrival to the last byte sent; `first_token` from
    arrival to the first generated content sent. `queue_wait` (waiting for
    a node slot) and `load_wait` (waiting for a model to load) are None when
    there was no such wait. `overhead` is the gateway's own time: parsing,
    placement, translation — not waits, the neuron or the client. `decode`
    is first to last token, for tokens/s.
    """

    route: str
    model: str | None
    node: str | None
    outcome: str
    duration: float
    first_token: float | None = None
    queue_wait: float | None = None
    load_wait: float | None = None
    overhead: float | None = None
    decode: float | None = None
    cold_start: bool = False
    retried_on: tuple[str, ...] = ()  # nodes that failed before `node` answered
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0


class _MirroredCounter:
    """A counter whose values are copied from elsewhere: a neuron's cumulative
    counts, which prometheus-client's `Counter` cannot be set to."""

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str],
                 registry: CollectorRegistry) -> None:  # fmt: skip
        self._name, self._doc, self._labelnames = name, documentation, tuple(labelnames)
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()  # render runs in a thread
        registry.register(self)

    def set(self, labels: tuple[str, ...], value: float) -> None:
        with self._lock:
            self._values[labels] = value

    def remove_where(self, doomed: Callable[[tuple[str, ...]], bool]) -> None:
        with self._lock:
            for labels in [k for k in self._values if doomed(k)]:
                del self._values[labels]

    def describe(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily(self._name, self._doc, labels=self._labelnames)]

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._doc, labels=self._labelnames)
        with self._lock:
            values = sorted(self._values.items())
        for labels, value in values:
            family.add_metric(labels, value)
        yield family


class _Allowed:
    """A bounded label: the known values, plus the first `spare` others."""

    def __init__(self, known: Iterable[str], spare: int = SPARE_LABELS) -> None:
        self.known, self.extra, self.spare = set(known), set[str](), spare

    def __call__(self, value: str | None) -> str:
        if value is None:
            return NONE
        if value in self.known or value in self.extra:
            return value
        if len(self.extra) < self.spare:
            self.extra.add(value)
            return value
        return OTHER


class CortexMetrics:
    """The gateway's metrics on their own registry; attributes are the metrics.

    `nodes` and `models` are label values known to be legitimate; `allow()`
    adds more (`node_health` does it for the models a node reports). Others
    share `SPARE_LABELS` slots, then become `other`.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        nodes: Iterable[str] = (),
        models: Iterable[str] = (),
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self._node, self._model = _Allowed(nodes), _Allowed(models)
        self._polled: dict[str, set[str]] = {}  # node → models with /health gauges
        self._polled_devices: dict[str, set[str]] = {}
        self.on_finished: list[Callable[[RequestRecord], None]] = []  # e.g. cortex.traffic
        # (metric, label values) → its child, for the per-request metrics (bounded labels;
        # never removed): prometheus_client's `labels()` costs more than the update.
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        r = self.registry
        self._requests(r)
        self._latency(r)
        self._tokens(r)
        self._lifecycle(r)
        self._polled_models(r)
        self._devices(r)
        self.build_info = Info("cortex_build", "Version of this gateway", registry=r)
        self.build_info.info({"version": _package_version()})
        ProcessCollector(registry=r)

    @classmethod
    def for_config(cls, config: CortexConfig) -> CortexMetrics:
        """Labels allowed: the configured neurons, catalogued ids and aliases' targets."""
        catalogue = config.catalogue
        models = {*catalogue.profiles, *catalogue.aliases.values()}
        return cls(nodes=(n.name for n in config.neurons), models=models)

    def allow(self, *, nodes: Iterable[str] = (), models: Iterable[str] = ()) -> None:
        self._node.known.update(nodes)
        self._model.known.update(models)

    # ------------------------------------------------------------------ definitions

    def _requests(self, r: CollectorRegistry) -> None:
        self.requests = Counter(
            "cortex_requests", "API requests finished, by outcome",
            ["route", "model", "node", "outcome"], registry=r,
        )  # fmt: skip
        self.request_errors = Counter(
            "cortex_request_errors", "Requests the gateway or a neuron failed, by reason",
            ["route", "model", "node", "reason"], registry=r,
        )  # fmt: skip
        self.request_retries = Counter(
            "cortex_request_retries", "Re-placements after a retriable failure on `node`",
            ["route", "model", "node"], registry=r,
        )  # fmt: skip
        self.requests_in_flight = Gauge(
            "cortex_requests_in_flight", "Requests the gateway holds now", ["route"], registry=r
        )
        self.cold_starts = Counter(
            "cortex_cold_starts", "Requests that waited for their model to load",
            ["model", "node"], registry=r,
        )  # fmt: skip

    def _latency(self, r: CollectorRegistry) -> None:
        def histogram(name: str, doc: str, labels: list[str], buckets: tuple) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=r)

        mn = ["model", "node"]
        self.request_duration = histogram(
            "cortex_request_duration_seconds", "Arrival to last byte sent", mn, SECONDS_LONG
        )
        self.time_to_first_token = histogram(
            "cortex_time_to_first_token_seconds", "Arrival to first content sent", mn,
            SECONDS_SHORT,
        )  # fmt: skip
        self.queue_wait = histogram(
            "cortex_queue_wait_seconds", "Waiting for a node slot", mn, QUEUE_BUCKETS
        )
        self.load_wait = histogram(
            "cortex_load_wait_seconds", "Waiting for the model to load", mn, LOAD_BUCKETS
        )
        self.gateway_overhead = histogram(
            "cortex_gateway_overhead_seconds", "Time spent in the gateway's own code",
            ["route"], OVERHEAD_BUCKETS,
        )  # fmt: skip
        self.tokens_per_second = histogram(
            "cortex_tokens_per_second", "Completion tokens per second of decode", mn,
            TOKENS_PER_SECOND,
        )  # fmt: skip

    def _tokens(self, r: CollectorRegistry) -> None:
        mn = ["model", "node"]
        self.prompt_tokens = Counter(
            "cortex_prompt_tokens", "Prompt tokens, from usage", mn, registry=r
        )
        self.completion_tokens = Counter(
            "cortex_completion_tokens", "Completion tokens, from usage", mn, registry=r
        )
        self.cached_prompt_tokens = Counter(
            "cortex_cached_prompt_tokens", "Prompt tokens served from cache", mn, registry=r
        )
        self.prefix_affinity = Counter(
            "cortex_prefix_affinity", "Prefix-aware choices among a model's replicas, by outcome",
            ["model", "outcome"], registry=r,
        )  # fmt: skip

    def _lifecycle(self, r: CollectorRegistry) -> None:
        self.model_loads = Counter(
            "cortex_model_loads", "Loads the gateway asked for, by outcome",
            ["model", "node", "outcome"], registry=r,
        )  # fmt: skip
        self.model_load_duration = Histogram(
            "cortex_model_load_duration_seconds", "Successful loads, request to loaded",
            ["model", "node"], buckets=LOAD_BUCKETS, registry=r,
        )  # fmt: skip
        self.evictions = Counter(
            "cortex_evictions", "Models the gateway unloaded, by reason",
            ["model", "node", "reason"], registry=r,
        )  # fmt: skip
        self.node_up = Gauge(
            "cortex_node_up", "1 while the node answers its polls", ["node"], registry=r
        )

    def _polled_models(self, r: CollectorRegistry) -> None:
        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, ["node", "model"], registry=r)

        self.model_gauges = {  # ModelLoad field → gauge
            "in_flight": gauge("cortex_model_in_flight", "Requests generating on the node"),
            "queue_depth": gauge("cortex_model_queue_depth", "Requests queued on the node"),
            "max_in_flight": gauge("cortex_model_max_in_flight", "Node's in-flight limit"),
            "max_queue_depth": gauge("cortex_model_max_queue_depth", "Node's queue limit"),
            "tok_s_prefill": gauge("cortex_model_tok_s_prefill", "Recent prefill tokens/s"),
            "tok_s_decode": gauge("cortex_model_tok_s_decode", "Recent decode tokens/s"),
            "anon_in_flight": gauge("cortex_model_anon_in_flight", "Anonymous in flight"),
            "anon_max_in_flight": gauge("cortex_model_anon_max_in_flight", "Anonymous limit"),
        }
        self.model_rejections = _MirroredCounter(
            "cortex_model_rejections", "Node admission refusals (the node's own count)",
            ["node", "model", "reason"], r,
        )  # fmt: skip

    def _devices(self, r: CollectorRegistry) -> None:
        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, ["node", "device"], registry=r)

        self.device_gauges = {  # DeviceHealth field → gauge
            "vram_used_mb": gauge("cortex_device_vram_used_mb", "Device memory used, MiB"),
            "vram_free_mb": gauge("cortex_device_vram_free_mb", "Device memory free, MiB"),
            "utilization_pct": gauge("cortex_device_utilization_pct", "Device busy, percent"),
            "temp_c": gauge("cortex_device_temp_c", "Device temperature, Celsius"),
        }

    # ------------------------------------------------------------------ recording

    def in_flight(self, route: str) -> Any:
        """The `cortex_requests_in_flight` gauge of `route`: a `cortex.meter.Meter` counts
        its request there from arrival until it finishes (a stream: until its body ends)."""
        return self._child(self.requests_in_flight, _bounded(route, ROUTES))

    def _child(self, metric: Any, *labels: str) -> Any:
        child = self._children.get((metric, labels))
        if child is None:
            child = self._children[metric, labels] = metric.labels(*labels)
        return child

    def request_finished(self, record: RequestRecord) -> None:
        route, outcome = _bounded(record.route, ROUTES), _bounded(record.outcome, OUTCOMES)
        model, node = self._model(record.model), self._node(record.node)
        child = self._child
        child(self.requests, route, model, node, outcome).inc()
        if outcome in ERROR_OUTCOMES:
            child(self.request_errors, route, model, node, outcome).inc()
        for failed in record.retried_on:
            child(self.request_retries, route, model, self._node(failed)).inc()
        if record.cold_start:
            child(self.cold_starts, model, node).inc()
        self._timings(record, model, node, route)
        self._usage(record, model, node)
        for listener in self.on_finished:
            listener(record)

    def _timings(self, record: RequestRecord, model: str, node: str, route: str) -> None:
        self._child(self.request_duration, model, node).observe(record.duration)
        for histogram, seconds in (
            (self.time_to_first_token, record.first_token),
            (self.queue_wait, record.queue_wait),
            (self.load_wait, record.load_wait),
        ):
            if seconds is not None:
                self._child(histogram, model, node).observe(seconds)
        if record.overhead is not None:
            self._child(self.gateway_overhead, route).observe(record.overhead)

    def _usage(self, record: RequestRecord, model: str, node: str) -> None:
        child = self._child
        child(self.prompt_tokens, model, node).inc(record.prompt_tokens)
        child(self.completion_tokens, model, node).inc(record.completion_tokens)
        child(self.cached_prompt_tokens, model, node).inc(record.cached_prompt_tokens)
        window = record.decode if (record.decode or 0) >= MIN_DECODE_WINDOW else record.duration
        if record.completion_tokens > 0 and window > 0:
            child(self.tokens_per_second, model, node).observe(record.completion_tokens / window)

    def affinity_choice(self, model: str, outcome: str) -> None:
        """Prefix-aware routing chose among two or more replicas (`cortex.affinity`):
        `hit` (the replica that served the prefix last), `miss` (not seen: hashed),
        `overloaded` (that replica was over its load bound: the least busy one)."""
        outcome = _bounded(outcome, AFFINITY_OUTCOMES)
        self.prefix_affinity.labels(self._model(model), outcome).inc()

    def model_load(self, model: str, node: str, outcome: str, seconds: float) -> None:
        """A load the gateway asked for ended (`loaded`, `failed`, `timeout`, `cancelled`)."""
        outcome = _bounded(outcome, LOAD_OUTCOMES)
        model, node = self._model(model), self._node(node)
        self.model_loads.labels(model, node, outcome).inc()
        if outcome == "loaded":
            self.model_load_duration.labels(model, node).observe(seconds)

    def model_loaded(self, model: str, node: str, seconds: float) -> None:
        self.model_load(model, node, "loaded", seconds)

    def evicted(self, model: str, node: str, reason: str) -> None:
        """The gateway unloaded `model` (`make_room`, `defrag`, `admin`, `drain`)."""
        reason = _bounded(reason, EVICTION_REASONS)
        self.evictions.labels(self._model(model), self._node(node), reason).inc()

    def node_up_changed(self, node: str, up: bool) -> None:
        """A node came up or went down; a down node's polled gauges are dropped
        (absent, rather than frozen at their last value)."""
        node = self._node(node)
        self.node_up.labels(node).set(1 if up else 0)
        if not up:
            self._drop_polled(node, keep=set())
            self._drop_devices(node, keep=set())

    def node_health(self, node: str, health: Health) -> None:
        """Copy one `/health` poll: per-model admission gauges, the node's own
        rejection counts, device gauges. What it no longer reports is removed."""
        self.allow(models=(load.id for load in health.models))
        node = self._node(node)
        self._drop_polled(node, keep={load.id for load in health.models})
        for load in health.models:
            self._model_load_gauges(node, load)
        self._drop_devices(node, keep={str(d.index) for d in health.devices})
        for device in health.devices:
            self._device_gauges(node, device)

    def _model_load_gauges(self, node: str, load: ModelLoad) -> None:
        self._polled.setdefault(node, set()).add(load.id)
        for field, gauge in self.model_gauges.items():
            value = getattr(load, field)
            if value is None or (field.startswith(("max_", "anon_max_")) and value <= 0):
                _remove(gauge, node, load.id)  # upstream exports limits only when set
            else:
                gauge.labels(node, load.id).set(value)
        for field, reason in REJECTION_FIELDS.items():
            self.model_rejections.set((node, load.id, reason), getattr(load, field))

    def _device_gauges(self, node: str, device: DeviceHealth) -> None:
        index = str(device.index)
        self._polled_devices.setdefault(node, set()).add(index)
        for field, gauge in self.device_gauges.items():
            value = getattr(device, field)
            if value is None:
                _remove(gauge, node, index)
            else:
                gauge.labels(node, index).set(value)

    def _drop_polled(self, node: str, keep: set[str]) -> None:
        gone = self._polled.get(node, set()) - keep
        for model in gone:
            for gauge in self.model_gauges.values():
                _remove(gauge, node, model)
        self.model_rejections.remove_where(lambda k: k[0] == node and k[1] in gone)
        self._polled[node] = self._polled.get(node, set()) & keep

    def _drop_devices(self, node: str, keep: set[str]) -> None:
        for index in self._polled_devices.get(node, set()) - keep:
            for gauge in self.device_gauges.values():
                _remove(gauge, node, index)
        self._polled_devices[node] = self._polled_devices.get(node, set()) & keep

    # ------------------------------------------------------------------ exposition

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """(body, Content-Type) for a scrape with this `Accept` header: OpenMetrics
        when asked for, else Prometheus text 0.0.4. Blocking: run it in a thread."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def _bounded(value: str, allowed: frozenset[str]) -> str:
    return value if value in allowed else OTHER


def _remove(metric: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never set: nothing to remove
        metric.remove(*labels)


def _package_version() -> str:
    try:
        return version("helexa")
    except PackageNotFoundError:
        return "unknown"
