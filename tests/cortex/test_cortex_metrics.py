"""cortex.metrics: upstream's names, explicit buckets, bounded labels, polled
gauges without stale series, exposition formats, isolation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from cortex.config import load_config
from cortex.metrics import (
    LOAD_BUCKETS,
    OUTCOMES,
    SECONDS_LONG,
    SECONDS_SHORT,
    SPARE_LABELS,
    TOKENS_PER_SECOND,
    CortexMetrics,
    RequestRecord,
)
from protocol.node import DeviceHealth, Health, ModelLoad

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
CHAT = "/v1/chat/completions"


def record(**overrides) -> RequestRecord:
    fields = dict(
        route=CHAT, model="org/a", node="beast", outcome="ok", duration=2.0,
        first_token=0.8, queue_wait=0.1, load_wait=0.5, overhead=0.002, decode=1.0,
        cold_start=True, retried_on=("beast",), prompt_tokens=12, completion_tokens=30,
        cached_prompt_tokens=4,
    )  # fmt: skip
    return RequestRecord(**{**fields, **overrides})


def health() -> Health:
    load = ModelLoad(
        id="org/a", in_flight=2, queue_depth=1, max_in_flight=8, max_queue_depth=24,
        rejected_queue_full=5, rejected_timeout=1, anon_in_flight=1, anon_max_in_flight=3,
        tok_s_prefill=850.0, tok_s_decode=42.5,
    )  # fmt: skip
    device = DeviceHealth(0, vram_used_mb=20000, vram_free_mb=4000, utilization_pct=90, temp_c=70)
    return Health(uptime_secs=10, devices=(device,), models=(load,))


def exercised() -> CortexMetrics:
    """A metrics object with one of everything recorded."""
    m = CortexMetrics(nodes=["beast"], models=["org/a"])
    m.in_flight(CHAT).inc()
    m.request_finished(record())
    m.in_flight(CHAT).dec()
    m.request_finished(record(outcome="upstream_error", cold_start=False, retried_on=()))
    m.model_loaded("org/a", "beast", 12.0)
    m.evicted("org/a", "beast", "make_room")
    m.node_up_changed("beast", True)
    m.node_health("beast", health())
    return m


def samples(m: CortexMetrics, accept: str | None = None) -> dict[str, list]:
    body, content_type = m.render(accept)
    parse = parse_om if "openmetrics" in content_type else parse_text
    found: dict[str, list] = {}
    for family in parse(body.decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def value(found: dict[str, list], name: str, **labels: str) -> float:
    (sample,) = (s for s in found[name] if labels.items() <= s.labels.items())
    return sample.value


EXPECTED = {
    # upstream's
    "cortex_requests_total",
    "cortex_request_errors_total",
    "cortex_cold_starts_total",
    "cortex_request_duration_seconds_bucket",
    "cortex_time_to_first_token_seconds_bucket",
    "cortex_tokens_per_second_bucket",
    "cortex_prompt_tokens_total",
    "cortex_completion_tokens_total",
    "cortex_cached_prompt_tokens_total",
    "cortex_evictions_total",
    "cortex_model_in_flight",
    "cortex_model_queue_depth",
    "cortex_model_max_in_flight",
    "cortex_model_max_queue_depth",
    "cortex_model_tok_s_prefill",
    "cortex_model_tok_s_decode",
    "cortex_model_anon_in_flight",
    "cortex_model_anon_max_in_flight",
    "cortex_model_rejections_total",
    "cortex_device_vram_used_mb",
    "cortex_device_vram_free_mb",
    "cortex_device_utilization_pct",
    "cortex_device_temp_c",
    # ours
    "cortex_requests_in_flight",
    "cortex_request_retries_total",
    "cortex_queue_wait_seconds_bucket",
    "cortex_load_wait_seconds_bucket",
    "cortex_gateway_overhead_seconds_bucket",
    "cortex_model_loads_total",
    "cortex_model_load_duration_seconds_bucket",
    "cortex_node_up",
    "cortex_build_info",
}


def test_every_metric_is_exported_after_recording():
    found = samples(exercised())
    assert set(found) >= EXPECTED
    assert value(found, "cortex_requests_total", outcome="ok", route=CHAT) == 1
    assert value(found, "cortex_request_errors_total", reason="upstream_error") == 1
    assert value(found, "cortex_cold_starts_total") == 1
    assert value(found, "cortex_request_retries_total", node="beast") == 1
    assert value(found, "cortex_prompt_tokens_total") == 24
    assert value(found, "cortex_cached_prompt_tokens_total") == 8
    assert value(found, "cortex_evictions_total", reason="make_room") == 1
    assert value(found, "cortex_model_loads_total", outcome="loaded") == 1
    assert value(found, "cortex_node_up", node="beast") == 1
    assert value(found, "cortex_requests_in_flight", route=CHAT) == 0


def test_ok_and_client_errors_are_not_errors():
    m = CortexMetrics(nodes=["beast"], models=["org/a"])
    for outcome in ("ok", "client_error", "cancelled"):
        m.request_finished(record(outcome=outcome))
    assert "cortex_request_errors_total" not in samples(m)


def test_tokens_per_second_uses_the_decode_window_when_long_enough():
    m = CortexMetrics(nodes=["beast"], models=["org/a"])
    m.request_finished(record(completion_tokens=30, decode=1.5, duration=3.0))
    m.request_finished(record(completion_tokens=10, decode=0.05, duration=2.0))  # → whole request
    m.request_finished(record(completion_tokens=0))  # nothing to rate
    found = samples(m)
    assert value(found, "cortex_tokens_per_second_count") == 2
    assert value(found, "cortex_tokens_per_second_sum") == 30 / 1.5 + 10 / 2.0


def test_waits_that_did_not_happen_are_not_observed():
    m = CortexMetrics(nodes=["beast"], models=["org/a"])
    m.request_finished(record(queue_wait=None, load_wait=None, first_token=None, overhead=None))
    found = samples(m)
    for name in ("queue_wait", "load_wait", "time_to_first_token", "gateway_overhead"):
        assert f"cortex_{name}_seconds_count" not in found
    assert value(found, "cortex_request_duration_seconds_count") == 1


def test_histograms_use_the_explicit_buckets():
    found = samples(exercised())

    def bounds(name: str) -> list[str]:
        return [s.labels["le"] for s in found[f"{name}_bucket"] if s.labels.get("node") == "beast"]

    def expected(buckets: tuple) -> list[str]:
        return [*(repr(float(b)) for b in buckets), "+Inf"]

    assert bounds("cortex_request_duration_seconds") == expected(SECONDS_LONG)
    assert bounds("cortex_time_to_first_token_seconds") == expected(SECONDS_SHORT)
    assert bounds("cortex_tokens_per_second") == expected(TOKENS_PER_SECOND)
    assert bounds("cortex_model_load_duration_seconds") == expected(LOAD_BUCKETS)
    assert bounds("cortex_load_wait_seconds") == expected(LOAD_BUCKETS)


def test_label_values_are_bounded():
    m = CortexMetrics(nodes=["beast"], models=["org/a"])
    for n in range(SPARE_LABELS + 5):
        m.request_finished(record(model=f"made-up-{n}", node=f"rogue-{n}"))
    m.request_finished(record(route="/v1/x/request-123", outcome="weird"))
    m.request_finished(record(model=None, node=None, outcome="client_error"))
    m.evicted("org/a", "beast", "because")
    m.model_load("org/a", "beast", "exploded", 1.0)
    found = samples(m)
    labels = [s.labels for s in found["cortex_requests_total"]]
    assert {s["model"] for s in labels} - {"org/a", "none", "other"} == {
        f"made-up-{n}" for n in range(SPARE_LABELS)
    }
    assert value(found, "cortex_requests_total", model="other", node="other") == 5
    assert {"route": "other", "model": "org/a", "node": "beast", "outcome": "other"} in labels
    assert {"route": CHAT, "model": "none", "node": "none", "outcome": "client_error"} in labels
    assert value(found, "cortex_request_errors_total", reason="other") == 1
    assert value(found, "cortex_evictions_total", reason="other") == 1
    assert value(found, "cortex_model_loads_total", outcome="other") == 1


def test_known_labels_come_from_the_config_and_the_nodes():
    config = load_config(None, {"CORTEX_NEURONS": "beast=http://b"}, catalogue=False)
    m = CortexMetrics.for_config(config)
    m._model.spare = m._node.spare = 0  # only known values
    m.node_health("beast", health())  # the node reports org/a: now a known model
    m.request_finished(record())
    m.request_finished(record(model="org/unknown"))
    found = samples(m)
    assert value(found, "cortex_requests_total", model="org/a", node="beast") == 1
    assert value(found, "cortex_requests_total", model="other", node="beast") == 1


def test_polled_gauges_copy_the_nodes_health():
    found = samples(exercised())
    assert value(found, "cortex_model_in_flight", node="beast", model="org/a") == 2
    assert value(found, "cortex_model_max_queue_depth") == 24
    assert value(found, "cortex_model_tok_s_decode") == 42.5
    assert value(found, "cortex_model_rejections_total", reason="queue_full") == 5
    assert value(found, "cortex_model_rejections_total", reason="wait_timeout") == 1
    assert value(found, "cortex_model_rejections_total", reason="kv_unservable") == 0
    assert value(found, "cortex_device_vram_free_mb", node="beast", device="0") == 4000
    assert value(found, "cortex_device_temp_c") == 70


def test_limits_are_exported_only_when_the_node_reports_them():
    m = exercised()
    bare = Health(uptime_secs=1, models=(ModelLoad(id="org/a", in_flight=1),))
    m.node_health("beast", bare)
    found = samples(m)
    assert value(found, "cortex_model_in_flight") == 1
    for gone in ("cortex_model_max_in_flight", "cortex_model_tok_s_prefill"):
        assert gone not in found
    assert "cortex_device_vram_used_mb" not in found  # no devices reported this time


def test_models_a_node_no_longer_reports_leave_no_stale_series():
    m = exercised()
    m.node_health("beast", Health(uptime_secs=1))
    found = samples(m)
    for gone in ("cortex_model_in_flight", "cortex_model_rejections_total"):
        assert gone not in found
    assert value(found, "cortex_prompt_tokens_total") == 24  # history stays


def test_a_down_node_drops_its_polled_gauges():
    m = exercised()
    m.node_up_changed("beast", False)
    found = samples(m)
    assert value(found, "cortex_node_up", node="beast") == 0
    assert "cortex_model_in_flight" not in found and "cortex_device_temp_c" not in found
    m.node_up_changed("never-polled", False)  # harmless


def test_content_type_negotiation():
    m = exercised()
    body, content_type = m.render(OPENMETRICS)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
    for accept in (None, "", "text/plain", "*/*"):
        body, content_type = m.render(accept)
        assert content_type == "text/plain; version=0.0.4; charset=utf-8"
        assert not body.endswith(b"# EOF\n")


def test_series_names_do_not_depend_on_the_format():
    m = exercised()
    assert set(samples(m, OPENMETRICS)) == set(samples(m, None))


def test_two_instances_are_independent():
    first, second = exercised(), CortexMetrics()
    assert "cortex_requests_total" in samples(first)
    assert "cortex_requests_total" not in samples(second)
    assert "cortex_model_rejections_total" not in samples(second)


async def test_render_runs_in_a_worker_thread():
    m = exercised()
    body, content_type = await trio.to_thread.run_sync(m.render, None)
    assert b"cortex_model_rejections_total" in body and content_type.startswith("text/plain")


def test_the_operations_guide_lists_every_metric():
    text = DOCS.read_text()
    for name in EXPECTED:
        family = re.sub(r"_(bucket|total)$", "", name)
        assert family in text, f"{family} missing from docs/operations.md"


def _observed(m: CortexMetrics, name: str, labels: dict[str, str]) -> float | None:
    return m.registry.get_sample_value(name, labels)


async def test_meter_observes_a_streams_queue_wait_only(autojump_clock):
    """A 200 stream head's wait is the node's queue wait; a whole non-streamed answer, or
    a refusal, is not: those requests add nothing to `cortex_queue_wait_seconds`."""
    from cortex.meter import Meter
    from cortex.relay import Head

    m = CortexMetrics(nodes=["beast"], models=["org/a"])
    labels = {"model": "org/a", "node": "beast"}
    stream = Meter(m, CHAT, "org/a")
    await trio.sleep(0.3)
    stream.head(Head(200, {}, "beast", cold=False, head_wait=0.25))
    stream.chunk(b"data: {}\n\n")
    stream.finish("ok")
    whole = Meter(m, CHAT, "org/a")
    await trio.sleep(2)
    whole.answered("beast", False, None, head_wait=2)
    whole.finish("ok")
    refused = Meter(m, CHAT, "org/a")
    refused.head(Head(503, {}, "beast", cold=False, head_wait=0.01))
    refused.finish("unavailable")
    assert _observed(m, "cortex_queue_wait_seconds_count", labels) == 1
    assert _observed(m, "cortex_queue_wait_seconds_sum", labels) == 0.25
    # the waits for the node are not the gateway's overhead
    overhead = _observed(m, "cortex_gateway_overhead_seconds_sum", {"route": CHAT})
    assert overhead is not None and overhead < 0.1


@pytest.mark.parametrize(
    "content",
    [
        b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n',
        b'data: {"choices":[{"delta":{"reasoning_content":"Hm"}}]}\n\n',
        b'data: {"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}\n\n',
        b'data: {"choices":[{"text":"Hi","index":0}]}\n\n',
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
        b'"delta":"Hi"}\n\n',
    ],
    ids=["content", "reasoning", "tool_calls", "completion", "responses"],
)
async def test_meter_times_the_first_token_not_the_first_byte(autojump_clock, content):
    """A stream opens with a role chunk and may idle with keepalives before the model's
    first token: time to first token is taken at the first chunk with generated content."""
    from cortex.meter import Meter
    from cortex.relay import Head

    m = CortexMetrics(nodes=["beast"], models=["org/a"])
    meter = Meter(m, CHAT, "org/a")
    meter.head(Head(200, {}, "beast", cold=False, retried_on=("alpha", "alpha")))
    meter.chunk(b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n')
    await trio.sleep(1)
    meter.chunk(b": keepalive\n\n")
    await trio.sleep(1)
    meter.chunk(content)
    await trio.sleep(1)
    meter.chunk(content)
    meter.finish("ok")
    labels = {"model": "org/a", "node": "beast"}
    assert _observed(m, "cortex_time_to_first_token_seconds_sum", labels) == 2
    retried = {"route": CHAT, "model": "org/a", "node": "alpha"}
    assert _observed(m, "cortex_request_retries_total", retried) == 2


@pytest.mark.parametrize(
    ("status", "detail", "outcome"),
    [
        (200, None, "ok"),
        (400, "invalid_request_error", "client_error"),
        (404, None, "client_error"),
        (429, "rate_limit_error", "rejected"),
        (429, "insufficient_quota", "rejected"),
        (503, b'{"error":{"type":"rate_limit_error","code":"rate_limit_exceeded"}}', "rejected"),
        (503, "api_error", "unavailable"),
        (503, None, "unavailable"),
        (504, b'{"error":{"code":"request_idle_timeout"}}', "timeout"),
        (500, None, "upstream_error"),
        (502, "api_error", "upstream_error"),
    ],
)
def test_outcomes_follow_the_documented_sets(status, detail, outcome):
    from cortex.meter import outcome_for_status

    assert outcome_for_status(status, detail) == outcome
    assert outcome in OUTCOMES
