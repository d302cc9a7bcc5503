"""neuron.metrics: names, buckets, bounded labels, exposition formats, isolation."""

from __future__ import annotations

import re
from pathlib import Path

import trio
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from neuron.metrics import E2E_BUCKETS, TTFT_BUCKETS, NeuronMetrics
from protocol.node import BuildInfo, DeviceHealth

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
PROMETHEUS_SCRAPE = (  # what Prometheus 2.x sends
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def exercised() -> NeuronMetrics:
    """A metrics object with one of everything recorded."""
    m = NeuronMetrics()
    m.requests_running.labels("org/a").set(2)
    m.requests_waiting.labels("org/a").set(1)
    m.request_finished("org/a", "stop", prompt_tokens=12, generation_tokens=5,
                       e2e_seconds=1.5, first_token_seconds=0.3)  # fmt: skip
    m.request_refused("org/a", "queue_full")
    m.request_queue_time.labels("org/a").observe(0.02)
    m.worker_restarts.labels("cpu:0").inc()
    m.worker_ready.labels("cpu:0").set(1)
    m.model_loaded("org/a", "cpu:0", seconds=4.2, memory_bytes=123 * 2**20)
    m.models_loaded.set(1)
    m.device_sampled(DeviceHealth(0, 900, 100, 50, 60, id="cpu:0"), "cpu:0")
    m.set_build_info(BuildInfo("0.1.0", "abc1234", python_version="3.11.7"))
    return m


def samples(m: NeuronMetrics, accept: str | None = None) -> dict[str, list]:
    body, content_type = m.render(accept)
    parse = parse_om if "openmetrics" in content_type else parse_text
    found: dict[str, list] = {}
    for family in parse(body.decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


EXPECTED = {
    "neuron_num_requests_running",
    "neuron_num_requests_waiting",
    "neuron_prompt_tokens_total",
    "neuron_generation_tokens_total",
    "neuron_request_prompt_tokens_bucket",
    "neuron_request_generation_tokens_bucket",
    "neuron_time_to_first_token_seconds_bucket",
    "neuron_time_per_output_token_seconds_bucket",
    "neuron_e2e_request_latency_seconds_bucket",
    "neuron_request_queue_time_seconds_bucket",
    "neuron_request_success_total",
    "neuron_request_rejected_total",
    "neuron_worker_restarts_total",
    "neuron_worker_ready",
    "neuron_models_loaded",
    "neuron_model_loads_total",
    "neuron_model_load_duration_seconds_bucket",
    "neuron_model_memory_bytes",
    "neuron_device_memory_used_bytes",
    "neuron_device_memory_free_bytes",
    "neuron_device_utilization_ratio",
    "neuron_device_temperature_celsius",
    "neuron_build_info",
}


def test_every_metric_is_exported_after_observations():
    found = samples(exercised())
    assert set(found) >= EXPECTED
    assert found["neuron_prompt_tokens_total"][0].value == 12
    assert found["neuron_device_memory_used_bytes"][0].value == 900 * 2**20
    assert found["neuron_device_utilization_ratio"][0].value == 0.5
    (info,) = found["neuron_build_info"]
    assert info.labels["version"] == "0.1.0" and info.labels["git_sha"] == "abc1234"


def test_time_per_output_token_is_the_decode_gap():
    found = samples(exercised())
    (total,) = (s for s in found["neuron_time_per_output_token_seconds_sum"])
    assert abs(total.value - (1.5 - 0.3) / 4) < 1e-9


def test_histograms_use_the_explicit_buckets():
    found = samples(exercised())
    ttft = [s.labels["le"] for s in found["neuron_time_to_first_token_seconds_bucket"]]
    assert ttft == [*(repr(float(b)) for b in TTFT_BUCKETS), "+Inf"]
    e2e = [s.labels["le"] for s in found["neuron_e2e_request_latency_seconds_bucket"]]
    assert len(e2e) == len(E2E_BUCKETS) + 1


def test_content_type_negotiation():
    m = exercised()
    body, content_type = m.render(OPENMETRICS)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
    body, content_type = m.render(PROMETHEUS_SCRAPE)
    assert content_type.startswith("application/openmetrics-text")
    for accept in (None, "", "text/plain", "*/*"):
        body, content_type = m.render(accept)
        assert content_type == "text/plain; version=0.0.4; charset=utf-8"
        assert not body.endswith(b"# EOF\n")


def test_series_names_do_not_depend_on_the_format():
    m = exercised()
    assert set(samples(m, OPENMETRICS)) == set(samples(m, None))
    body, _ = m.render(OPENMETRICS)
    typed = set(re.findall(rb"^# TYPE (\S+)", body, re.MULTILINE))
    assert all(b":" not in name for name in typed)


def test_label_values_are_bounded():
    m = NeuronMetrics()
    m.request_finished("org/a", "made-up", prompt_tokens=1, generation_tokens=1, e2e_seconds=1)
    m.request_refused("org/a", "request-1234")
    found = samples(m)
    assert [s.labels["finished_reason"] for s in found["neuron_request_success_total"]] == ["other"]
    assert [s.labels["reason"] for s in found["neuron_request_rejected_total"]] == ["other"]


def test_an_unloaded_model_leaves_no_stale_gauges():
    m = exercised()
    m.model_unloaded("org/a", ["cpu:0"])
    found = samples(m)
    for gone in ("neuron_num_requests_running", "neuron_model_memory_bytes"):
        assert gone not in found
    assert found["neuron_prompt_tokens_total"][0].value == 12  # history stays
    m.model_unloaded("org/never-loaded", ["cpu:9"])  # harmless


def test_what_a_device_does_not_report_is_removed():
    m = exercised()
    m.device_sampled(DeviceHealth(0, 900, id="cpu:0"), "cpu:0")
    found = samples(m)
    assert "neuron_device_temperature_celsius" not in found
    assert "neuron_device_memory_used_bytes" in found


def test_two_instances_are_independent():
    first, second = NeuronMetrics(), NeuronMetrics()
    first.prompt_tokens.labels("org/a").inc(7)
    assert "neuron_prompt_tokens_total" in samples(first)
    assert "neuron_prompt_tokens_total" not in samples(second)


async def test_render_runs_in_a_worker_thread():
    m = exercised()
    body, content_type = await trio.to_thread.run_sync(m.render, None)
    assert b"neuron_num_requests_running" in body and content_type.startswith("text/plain")


def test_the_operations_guide_lists_every_metric():
    text = DOCS.read_text()
    for name in EXPECTED:
        family = re.sub(r"_(bucket|total)$", "", name)
        assert family in text, f"{family} missing from docs/operations.md"
