"""Every Prometheus metric the neuron exports, defined in one place.

`NeuronMetrics` owns a dedicated `CollectorRegistry` (never the global one,
so several daemons can live in one test process) holding the metrics below,
plus the parent's `process_*` collector. Names follow vLLM's engine metrics
where one exists (`num_requests_running`, `time_to_first_token_seconds`, …)
under the `neuron_` prefix: prometheus-client accepts vLLM's colon form
(`neuron:…`) but, when a scraper negotiates OpenMetrics, writes the samples
with `_` while keeping `:` in `# TYPE` — so the series name would depend on
the scraper. Labels are bounded: `model` (ids this node loaded — callers pass
`OTHER` for anything else), `device`, and closed sets of reasons; never a
request id. `docs/operations.md` ("neuron metrics") lists every metric.

`render(accept)` produces the exposition; it takes a few milliseconds for a
large registry, so call it with `trio.to_thread.run_sync`. Not for: serving
HTTP (the route calls `render`) or computing the values (the code that sees
the event records it, through the helpers or the metric objects).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder

from neuron.admission import QueueFull, QueueTimeout
from protocol.errors import ApiError
from protocol.node import BuildInfo, DeviceHealth
from protocol.worker import EngineStatistics

__all__ = ["FINISHED_REASONS", "OTHER", "REJECTED_REASONS", "NeuronMetrics", "refusal_reason"]

MIB = 1024 * 1024
OTHER = "other"  # the label value for anything outside a bounded set
FINISHED_REASONS = frozenset({"stop", "length", "tool_calls", "abort", "error"})
REJECTED_REASONS = frozenset(
    {"queue_full", "queue_timeout", "model_unavailable", "prompt_too_long", "bad_request",
     "unauthorized", "shutting_down"}
)  # fmt: skip

_REASON_BY_CODE = {"shutting_down": "shutting_down", "context_length_exceeded": "prompt_too_long"}

# Explicit buckets so every histogram exports as one (`_bucket` series).
# CPU devices are slow, so the latency ranges reach further than vLLM's.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
TPOT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120, 300, 600, 1200, 1800)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)
LOAD_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800)


class NeuronMetrics:
    """The neuron's metrics on their own registry; attributes are the metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._requests(self.registry)
        self._tokens(self.registry)
        self._latency(self.registry)
        self._models(self.registry)
        self._prefix_cache(self.registry)
        self._devices(self.registry)
        self.build_info = Info("neuron_build", "Version of this neuron", registry=self.registry)
        ProcessCollector(registry=self.registry)

    def _requests(self, r: CollectorRegistry) -> None:
        self.requests_running = Gauge(
            "neuron_num_requests_running", "Requests generating now", ["model"], registry=r
        )
        self.requests_waiting = Gauge(
            "neuron_num_requests_waiting", "Requests queued for a slot", ["model"], registry=r
        )
        self.request_success = Counter(
            "neuron_request_success", "Requests finished, by finish reason",
            ["model", "finished_reason"], registry=r,
        )  # fmt: skip
        self.request_rejected = Counter(
            "neuron_request_rejected", "Requests refused before generating, by reason",
            ["model", "reason"], registry=r,
        )  # fmt: skip

    def _tokens(self, r: CollectorRegistry) -> None:
        self.prompt_tokens = Counter(
            "neuron_prompt_tokens", "Prompt tokens processed (prefill)", ["model"], registry=r
        )
        self.generation_tokens = Counter(
            "neuron_generation_tokens", "Tokens generated", ["model"], registry=r
        )
        self.request_prompt_tokens = Histogram(
            "neuron_request_prompt_tokens", "Prompt length of finished requests", ["model"],
            buckets=TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.request_generation_tokens = Histogram(
            "neuron_request_generation_tokens", "Tokens generated per finished request",
            ["model"], buckets=TOKEN_BUCKETS, registry=r,
        )  # fmt: skip

    def _latency(self, r: CollectorRegistry) -> None:
        self.time_to_first_token = Histogram(
            "neuron_time_to_first_token_seconds", "Admission to first generated token",
            ["model"], buckets=TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.time_per_output_token = Histogram(
            "neuron_time_per_output_token_seconds", "Mean gap between tokens, per request",
            ["model"], buckets=TPOT_BUCKETS, registry=r,
        )  # fmt: skip
        self.e2e_request_latency = Histogram(
            "neuron_e2e_request_latency_seconds", "Arrival to last token", ["model"],
            buckets=E2E_BUCKETS, registry=r,
        )  # fmt: skip
        self.request_queue_time = Histogram(
            "neuron_request_queue_time_seconds", "Time waiting for an admission slot",
            ["model"], buckets=QUEUE_BUCKETS, registry=r,
        )  # fmt: skip

    def _models(self, r: CollectorRegistry) -> None:
        self.models_loaded = Gauge("neuron_models_loaded", "Models resident now", registry=r)
        self.model_loads = Counter(
            "neuron_model_loads", "Model loads, by outcome (loaded|failed)", ["outcome"],
            registry=r,
        )  # fmt: skip
        self.model_load_duration = Histogram(
            "neuron_model_load_duration_seconds", "Successful load time, request to ready",
            ["model"], buckets=LOAD_BUCKETS, registry=r,
        )  # fmt: skip
        self.model_memory = Gauge(
            "neuron_model_memory_bytes", "Memory a model holds, measured after load",
            ["model", "device"], registry=r,
        )  # fmt: skip

    def _prefix_cache(self, r: CollectorRegistry) -> None:
        self.prefix_cache_lookups = Counter(
            "neuron_prefix_cache_lookups", "Prompts looked up in the prefix cache", ["model"],
            registry=r,
        )  # fmt: skip
        self.prefix_cache_hits = Counter(
            "neuron_prefix_cache_hit_lookups", "Prefix cache lookups that reused a prefix",
            ["model"], registry=r,
        )  # fmt: skip
        self.prefix_cache_hit_tokens = Counter(
            "neuron_prefix_cache_hit_tokens", "Prompt tokens reused from the prefix cache",
            ["model"], registry=r,
        )  # fmt: skip
        self.prefix_cache_bytes = Gauge(
            "neuron_prefix_cache_bytes", "Memory the model's cached prefixes hold now",
            ["model"], registry=r,
        )  # fmt: skip
        self.prefix_cache_budget = Gauge(
            "neuron_prefix_cache_budget_bytes", "The model's prefix cache budget (0: off)",
            ["model"], registry=r,
        )  # fmt: skip
        self.prefix_cache_entries = Gauge(
            "neuron_prefix_cache_entries", "Cached prefix entries held now", ["model"],
            registry=r,
        )  # fmt: skip
        # model -> (the worker that counted, its cumulative counts at the last sample)
        self._prefix_seen: dict[str, tuple[object, tuple[int, int, int]]] = {}

    def _devices(self, r: CollectorRegistry) -> None:
        self.worker_restarts = Counter(
            "neuron_worker_restarts", "Device worker replacements", ["device"], registry=r
        )
        self.worker_ready = Gauge(
            "neuron_worker_ready", "1 while the device's worker serves", ["device"], registry=r
        )
        self.device_memory_used = Gauge(
            "neuron_device_memory_used_bytes", "Device memory in use (CPU: worker RSS)",
            ["device"], registry=r,
        )  # fmt: skip
        self.device_memory_free = Gauge(
            "neuron_device_memory_free_bytes", "Device memory free (CPU: budget left)",
            ["device"], registry=r,
        )  # fmt: skip
        self.device_utilization = Gauge(
            "neuron_device_utilization_ratio", "Device busy fraction, 0-1", ["device"],
            registry=r,
        )  # fmt: skip
        self.device_temperature = Gauge(
            "neuron_device_temperature_celsius", "Device temperature", ["device"], registry=r
        )

    # ------------------------------------------------------------------ recording

    def request_finished(
        self,
        model: str,
        finished_reason: str,
        *,
        prompt_tokens: int,
        generation_tokens: int,
        e2e_seconds: float,
        first_token_seconds: float | None = None,
        queue_seconds: float = 0.0,
    ) -> None:
        """Record one request that generated (also when aborted or failed midway).

        `e2e_seconds` runs from arrival, `first_token_seconds` from admission
        (after `queue_seconds` in the queue), so the decode time is what is left.
        """
        reason = finished_reason if finished_reason in FINISHED_REASONS else OTHER
        self.request_success.labels(model, reason).inc()
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        self.generation_tokens.labels(model).inc(generation_tokens)
        self.request_prompt_tokens.labels(model).observe(prompt_tokens)
        self.request_generation_tokens.labels(model).observe(generation_tokens)
        self.e2e_request_latency.labels(model).observe(e2e_seconds)
        if first_token_seconds is not None:
            self.time_to_first_token.labels(model).observe(first_token_seconds)
            if generation_tokens > 1:
                decode = max(0.0, e2e_seconds - queue_seconds - first_token_seconds)
                self.time_per_output_token.labels(model).observe(decode / (generation_tokens - 1))

    def request_refused(self, model: str, reason: str) -> None:
        self.request_rejected.labels(model, reason if reason in REJECTED_REASONS else OTHER).inc()

    def model_loaded(self, model: str, device: str, seconds: float, memory_bytes: int) -> None:
        self.model_loads.labels("loaded").inc()
        self.model_load_duration.labels(model).observe(seconds)
        self.model_memory.labels(model, device).set(memory_bytes)

    def model_unloaded(self, model: str, devices: Iterable[str]) -> None:
        """Drop the model's gauges so a gone model leaves no stale series
        (its counters and histograms stay: their history is still true)."""
        gauges = (self.requests_running, self.requests_waiting, self.prefix_cache_bytes,
                  self.prefix_cache_budget, self.prefix_cache_entries)  # fmt: skip
        for gauge in gauges:
            _remove(gauge, model)
        self._prefix_seen.pop(model, None)
        for device in devices:
            _remove(self.model_memory, model, device)

    def prefix_cache_sampled(
        self, model: str, budget_bytes: int, stats: EngineStatistics | None, source: object
    ) -> None:
        """Copy a model's prefix cache figures from its worker's latest heartbeat.

        The worker's counts are cumulative per engine; `source` names the engine
        that counted (a replaced worker or a reload starts again from 0), so the
        counters here only ever grow by what is new since the last sample."""
        self.prefix_cache_budget.labels(model).set(budget_bytes)
        if stats is None:
            return
        self.prefix_cache_bytes.labels(model).set(stats.prefix_cache_bytes)
        self.prefix_cache_entries.labels(model).set(stats.prefix_cache_entries)
        now = (stats.prefix_cache_lookups, stats.prefix_cache_hit_lookups,
               stats.prefix_cache_hit_tokens)  # fmt: skip
        seen_source, before = self._prefix_seen.get(model, (None, (0, 0, 0)))
        if seen_source is not source or any(n < b for n, b in zip(now, before, strict=True)):
            before = (0, 0, 0)
        counters = (self.prefix_cache_lookups, self.prefix_cache_hits, self.prefix_cache_hit_tokens)
        for counter, n, b in zip(counters, now, before, strict=True):
            counter.labels(model).inc(n - b)
        self._prefix_seen[model] = (source, now)

    def device_sampled(self, health: DeviceHealth, device: str) -> None:
        """Copy one `/health` device reading; what the device did not report is
        removed rather than left at its last value."""
        readings = (
            (self.device_memory_used, _mib(health.vram_used_mb)),
            (self.device_memory_free, _mib(health.vram_free_mb)),
            (self.device_utilization, _ratio(health.utilization_pct)),
            (self.device_temperature, health.temp_c),
        )
        for gauge, value in readings:
            if value is None:
                _remove(gauge, device)
            else:
                gauge.labels(device).set(value)

    def set_build_info(self, info: BuildInfo) -> None:
        self.build_info.info({
            "version": info.package_version, "git_sha": info.git_sha,
            "python": info.python_version or "", "torch": info.torch_version or "",
        })  # fmt: skip

    # ------------------------------------------------------------------ exposition

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """(body, Content-Type) for a scrape with this `Accept` header: OpenMetrics
        when asked for, else Prometheus text 0.0.4. Blocking: run it in a thread."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def refusal_reason(error: ApiError) -> str:
    """The `reason` label for a request refused with `error` (see `REJECTED_REASONS`)."""
    if isinstance(error, QueueFull):
        return "queue_full"
    if isinstance(error, QueueTimeout):
        return "queue_timeout"
    if reason := _REASON_BY_CODE.get(error.code or ""):
        return reason
    if error.status == 401:
        return "unauthorized"
    if error.status in (404, 503):  # not loaded, loading, unloading, worker restarting
        return "model_unavailable"
    return "bad_request" if 400 <= error.status < 500 else OTHER


def _remove(metric, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never set: nothing to remove
        metric.remove(*labels)


def _mib(value: int | None) -> int | None:
    return None if value is None else value * MIB


def _ratio(percent: int | None) -> float | None:
    return None if percent is None else percent / 100
