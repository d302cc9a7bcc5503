"""The neuron's node API and HTTP edge, against a real `neuron serve` process.

One daemon for the session (`neuron_daemon`: two CPU devices, the tiny Qwen3
loaded at start, the tiny Llama on disk for load tests). Every error case
checks the status and body shape, then that the daemon still serves.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest
import trio
from daemon_harness import (
    HTTPX_ASYNCGEN_WARNING,
    LLAMA,
    QWEN,
    assert_flat_error,
    assert_openai_error,
    chat_body,
    counter,
    next_data,
    open_sse,
    sse_events,
    wait_for,
    walk_actors,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.filterwarnings(HTTPX_ASYNCGEN_WARNING),
]

REPO = Path(__file__).resolve().parents[2]


# -- discovery, health, models, version ---------------------------------------------------


def test_discovery_lists_two_cpu_devices(neuron_daemon):
    discovery = neuron_daemon.get("/discovery")
    assert [(d["index"], d["id"], d["kind"]) for d in discovery["devices"]] == [
        (0, "cpu:0", "cpu"),
        (1, "cpu:1", "cpu"),
    ]
    assert all(d["vram_total_mb"] == 2048 for d in discovery["devices"])
    assert discovery["hostname"] == socket.gethostname()
    assert discovery["max_prompt_tokens"] > 0
    assert discovery["harnesses"] == ["transformers"]


def test_health_shows_activation_devices_and_model_load(neuron_daemon):
    health = neuron_daemon.health()
    activation = health["activation"]
    assert activation["state"] == "ready"
    assert activation["completed"] == [QWEN]
    assert activation["pending"] == [] and activation["failed"] == []
    assert [(d["id"], d["worker_state"], d["worker_restarts"]) for d in health["devices"]] == [
        ("cpu:0", "ready", 0),
        ("cpu:1", "ready", 0),
    ]
    for device in health["devices"]:  # a CPU device's budget is [cpu] memory_mb
        assert device["vram_used_mb"] >= 0 and 0 < device["vram_free_mb"] <= 2048
    load = neuron_daemon.model_load(QWEN)
    assert load["in_flight"] == 0 and load["queue_depth"] == 0
    assert load["max_in_flight"] == 8  # [engine] max_batch_size
    assert health["uptime_secs"] >= 0


def test_models_reports_status_devices_memory_limit_and_markers(neuron_daemon):
    [info] = [m for m in neuron_daemon.get("/models") if m["id"] == QWEN]
    assert info["status"] == "loaded"
    assert info["harness"] == "transformers"
    assert len(info["devices"]) == 1 and info["devices"][0] in (0, 1)
    assert info["memory_bytes"] > 0  # measured in the worker after load
    assert info["vram_used_mb"] == info["memory_bytes"] // (1 << 20)
    assert info["limit"] == {"context": 4096, "input": 4096}
    assert info["tool_call"] is True and info["reasoning"] is True
    assert info["capabilities"] == ["text"]
    assert info["dtype"] == "fp32"


def test_v1_models_lists_loaded_models(neuron_daemon):
    with neuron_daemon.openai() as client:
        models = client.models.list()
    [card] = [m for m in models.data if m.id == QWEN]
    assert card.object == "model"
    assert card.model_extra["max_model_len"] == 4096


def test_version_reports_the_checkout_git_sha(neuron_daemon):
    version = neuron_daemon.get("/version")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert version["git_sha_long"] == head
    assert head.startswith(version["git_sha"]) and len(version["git_sha"]) >= 7
    assert version["package_version"]
    assert version["python_version"] and version["torch_version"]


def test_endpoint_of_a_loaded_model_is_this_node(neuron_daemon):
    assert neuron_daemon.get(f"/models/{QWEN}/endpoint") == {"url": neuron_daemon.url}
    with neuron_daemon.http() as client:
        for path in ("helexa/nope", "..%2F..%2Fetc%2Fpasswd", "%2E%2E/%2E%2E/etc"):
            response = client.get(f"/models/{path}/endpoint")
            assert_flat_error(response, 404, "model_not_found")


# -- /models/load and /models/unload ------------------------------------------------------


def test_load_of_a_loaded_model_is_refused(neuron_daemon):
    with neuron_daemon.http() as client:
        response = client.post("/models/load", json={"model_id": QWEN})
    body = assert_flat_error(response, 400, "model_already_loaded")
    assert QWEN in body["error"]
    neuron_daemon.assert_serving()


def test_a_pinned_model_refuses_unloads_through_the_api(neuron_daemon):
    with neuron_daemon.http() as client:
        response = client.post("/models/unload", json={"model_id": QWEN})
    body = assert_flat_error(response, 409, "model_pinned")
    assert "pinned on this node" in body["error"]
    [model] = [m for m in neuron_daemon.get("/models") if m["id"] == QWEN]
    assert (model["status"], model["pinned"]) == ("loaded", True)
    neuron_daemon.assert_serving()


def test_unload_of_an_unknown_model_is_404(neuron_daemon):
    with neuron_daemon.http() as client:
        response = client.post("/models/unload", json={"model_id": "helexa/nope"})
    assert_flat_error(response, 404, "model_not_found")
    neuron_daemon.assert_serving()


@pytest.mark.parametrize(
    ("model_id", "status", "code"),
    [
        ("../etc/passwd", 400, "invalid_model_id"),
        ("helexa/../../etc", 400, "invalid_model_id"),
        ("..", 400, "invalid_model_id"),
        ("/etc/passwd", 400, "invalid_model_id"),  # absolute paths are off by default
        ("helexa\\..\\x", 400, "invalid_model_id"),
        ("helexa/not-there", 404, "model_not_found"),
    ],
)
def test_load_refuses_unsafe_and_unknown_ids(neuron_daemon, model_id, status, code):
    with neuron_daemon.http() as client:
        response = client.post("/models/load", json={"model_id": model_id})
    assert_flat_error(response, status, code)
    assert {m["id"] for m in neuron_daemon.get("/models")} == {QWEN}
    neuron_daemon.assert_serving()


def test_a_near_miss_id_names_the_model_meant(neuron_daemon):
    with neuron_daemon.http() as client:
        response = client.post("/models/load", json={"model_id": "helexa/llama-tiy"})
    body = assert_flat_error(response, 404, "model_not_found")
    assert body["error"].endswith(f"did you mean {LLAMA!r}?")
    neuron_daemon.assert_serving()


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b'{"model_id": ', 400, "malformed_json"),
        (b'{"model_id": 7}', 400, "invalid_request_body"),
        (b"{}", 400, "invalid_request_body"),
        (b'{"model_id": "helexa/llama-tiny", "tensor_paralel": 2}', 400, "invalid_request_body"),
        (b'{"model_id": "helexa/llama-tiny", "tensor_parallel": 3}', 400, "invalid_request"),
        (b'{"model_id": "helexa/llama-tiny", "quant": "q4_k_m"}', 400, "unsupported_parameter"),
        (b'{"model_id": "helexa/llama-tiny", "devices": [5]}', 400, "invalid_request"),
        (b'{"model_id": "helexa/llama-tiny", "harness": "vllm"}', 400, "unknown_harness"),
    ],
)
def test_load_refuses_bad_bodies(neuron_daemon, body, status, code):
    with neuron_daemon.http() as client:
        response = client.post(
            "/models/load", content=body, headers={"content-type": "application/json"}
        )
    assert_flat_error(response, status, code)
    assert {m["id"] for m in neuron_daemon.get("/models")} == {QWEN}
    neuron_daemon.assert_serving()


async def test_concurrent_loads_of_one_model_are_single_flight(neuron_daemon):
    loads_before = counter(neuron_daemon.metrics(), 'neuron_model_loads_total{outcome="loaded"}')
    logged_before = neuron_daemon.log().count(f"model loaded model={LLAMA} ")
    responses: list[httpx.Response] = []

    async def load(client: httpx.AsyncClient) -> None:
        responses.append(await client.post("/models/load", json={"model_id": LLAMA}))

    async with neuron_daemon.async_http() as client, trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(load, client)
    try:
        outcomes = sorted((r.status_code, r.json().get("code")) for r in responses)
        assert all(o in ((200, None), (400, "model_already_loaded")) for o in outcomes), outcomes
        assert (200, None) in outcomes
        loaded = [r.json() for r in responses if r.status_code == 200]
        assert len({(r["memory_bytes"], r["load_seconds"]) for r in loaded}) == 1  # one load
        samples = neuron_daemon.metrics()
        assert counter(samples, 'neuron_model_loads_total{outcome="loaded"}') == loads_before + 1
        assert neuron_daemon.log().count(f"model loaded model={LLAMA} ") == logged_before + 1
        [info] = [m for m in neuron_daemon.get("/models") if m["id"] == LLAMA]
        assert info["status"] == "loaded" and info["memory_bytes"] > 0
        memory = f'neuron_model_memory_bytes{{device="cpu:{info["devices"][0]}",model="{LLAMA}"}}'
        assert samples[memory] == info["memory_bytes"]
        with neuron_daemon.http() as sync_client:
            body = chat_body(model=LLAMA, max_tokens=3)
            reply = sync_client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200 and reply.json()["model"] == LLAMA
    finally:
        with neuron_daemon.http() as sync_client:
            unloaded = sync_client.post("/models/unload", json={"model_id": LLAMA})
    assert unloaded.status_code == 200
    assert unloaded.json() == {"status": "unloaded", "model_id": LLAMA}
    assert {m["id"] for m in neuron_daemon.get("/models")} == {QWEN}
    with neuron_daemon.http() as sync_client:
        gone = sync_client.post("/v1/chat/completions", json=chat_body(model=LLAMA))
    assert_openai_error(gone, 404, "model_not_found")


async def test_unload_waits_for_a_request_in_flight(neuron_daemon):
    """An unload stops admitting at once, lets the running stream finish, then unloads."""
    load(neuron_daemon, LLAMA)
    unload_status: list[int] = []
    # short enough to finish within the daemon's 3 s unload_drain on a loaded machine
    body = chat_body(model=LLAMA, max_tokens=120, stream=True, logit_bias=NO_EOS)

    async def unload(client: httpx.AsyncClient) -> None:
        reply = await client.post("/models/unload", json={"model_id": LLAMA})
        unload_status.append(reply.status_code)

    async with (
        neuron_daemon.async_http(timeout=60) as client,
        open_sse(client, "/v1/chat/completions", body) as (stream, lines),
        trio.open_nursery() as nursery,
    ):
        assert stream.status_code == 200
        await next_data(lines)  # the stream has started: one in flight
        unloading = time.monotonic()
        nursery.start_soon(unload, client)
        await wait_status(client, LLAMA, "unloading")
        refused = await client.post("/v1/chat/completions", json=chat_body(model=LLAMA))
        assert_openai_error(refused, 503, "model_unloading", type="api_error")
        assert refused.headers["retry-after"]
        rest = [line async for line in lines]
        finished_at = time.monotonic()
    assert unload_status == [200]
    events = list(sse_events(rest))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events if e.startswith("{")]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"  # the whole 120 tokens
    assert chunks[-1]["usage"]["completion_tokens"] == 120
    assert finished_at - unloading < 3  # the stream was not held up by the unload
    assert {m["id"] for m in neuron_daemon.get("/models")} == {QWEN}


async def test_unload_past_its_drain_timeout_fails_the_stream_in_band(neuron_daemon):
    """`unload_drain` (3 s here) bounds the wait; the stream then ends with an error event."""
    load(neuron_daemon, LLAMA)
    body = chat_body(model=LLAMA, max_tokens=3500, stream=True, logit_bias=NO_EOS)
    async with (
        neuron_daemon.async_http(timeout=60) as client,
        open_sse(client, "/v1/chat/completions", body) as (_, lines),
    ):
        await next_data(lines)
        started = time.monotonic()
        reply = await client.post("/models/unload", json={"model_id": LLAMA})
        waited = time.monotonic() - started
        rest = [line async for line in lines]
    assert reply.status_code == 200
    assert 2.5 < waited < 15
    events = list(sse_events(rest))
    assert events[-1] == "[DONE]"
    payloads = [json.loads(e) for e in events if e.startswith("{")]
    errors = [p["error"] for p in payloads if "error" in p]
    assert len(errors) == 1 and errors[0]["message"], payloads[-3:]
    assert "unloaded" in errors[0]["message"]
    assert payloads[-2]["choices"][0]["finish_reason"] == "error"
    assert 0 < payloads[-1]["usage"]["completion_tokens"] < 3500
    assert {m["id"] for m in neuron_daemon.get("/models")} == {QWEN}
    neuron_daemon.assert_serving()


def load(daemon, model_id: str) -> None:
    """Load as an upstream cortex does: with upstream's harness name."""
    with daemon.http(timeout=120) as client:
        response = client.post("/models/load", json={"model_id": model_id, "harness": "candle"})
    assert response.status_code == 200, response.text


NO_EOS = {"4089": -100, "4087": -100}  # <|im_end|>, <|endoftext|>: run to max_tokens


async def wait_status(client: httpx.AsyncClient, model_id: str, status: str) -> None:
    with trio.fail_after(10):
        while True:
            models = (await client.get("/models")).json()
            if any(m["id"] == model_id and m["status"] == status for m in models):
                return
            await trio.sleep(0.02)


# -- metrics --------------------------------------------------------------------------------


def test_metrics_count_known_traffic(neuron_daemon):
    before = neuron_daemon.metrics()
    usages = []
    with neuron_daemon.openai() as client:
        for max_tokens in (2, 3, 4):
            reply = client.chat.completions.create(
                model=QWEN,
                messages=[{"role": "user", "content": "count me"}],
                max_tokens=max_tokens,
                logit_bias=NO_EOS,
            )
            usages.append(reply.usage)
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(
                model=QWEN, messages=[{"role": "user", "content": "word " * 5000}]
            )
    assert refused.value.code == "context_length_exceeded"
    after = neuron_daemon.metrics()
    model = f'model="{QWEN}"'

    def delta(key: str) -> float:
        return counter(after, key) - counter(before, key)

    prompt = sum(u.prompt_tokens for u in usages)
    generated = sum(u.completion_tokens for u in usages)
    assert generated == 9
    assert delta(f"neuron_prompt_tokens_total{{{model}}}") == prompt
    assert delta(f"neuron_generation_tokens_total{{{model}}}") == generated
    assert delta(f'neuron_request_success_total{{finished_reason="length",{model}}}') == 3
    assert delta(f"neuron_request_generation_tokens_count{{{model}}}") == 3
    assert delta(f"neuron_request_generation_tokens_sum{{{model}}}") == 9
    assert delta(f'neuron_request_generation_tokens_bucket{{le="2.0",{model}}}') == 1
    assert delta(f'neuron_request_generation_tokens_bucket{{le="5.0",{model}}}') == 3
    assert delta(f"neuron_request_prompt_tokens_sum{{{model}}}") == prompt
    assert delta(f"neuron_time_to_first_token_seconds_count{{{model}}}") == 3
    assert delta(f"neuron_e2e_request_latency_seconds_count{{{model}}}") == 3
    assert delta(f"neuron_time_per_output_token_seconds_count{{{model}}}") == 3
    assert delta(f"neuron_request_queue_time_seconds_count{{{model}}}") == 3
    assert delta(f'neuron_request_rejected_total{{{model},reason="prompt_too_long"}}') == 1
    assert after[f"neuron_num_requests_running{{{model}}}"] == 0
    assert after[f"neuron_num_requests_waiting{{{model}}}"] == 0
    assert after["neuron_models_loaded{}"] == 1
    assert after['neuron_worker_ready{device="cpu:0"}'] == 1
    assert after['neuron_device_memory_used_bytes{device="cpu:1"}'] >= 0
    assert 0 < after['neuron_device_memory_free_bytes{device="cpu:0"}'] <= 2048 << 20


def test_metrics_negotiate_openmetrics(neuron_daemon):
    with neuron_daemon.http() as client:
        plain = client.get("/metrics")
        open_metrics = client.get(
            "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
        )
    assert plain.headers["content-type"].startswith("text/plain")
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    assert open_metrics.text.rstrip().endswith("# EOF")
    assert "neuron_build_info" in plain.text


# -- /admin/actors --------------------------------------------------------------------------


def test_admin_actors_shows_devices_with_worker_pids(neuron_daemon):
    tree = neuron_daemon.get("/admin/actors")
    by_path = {a["path"]: a for a in walk_actors(tree["root"])}
    assert by_path["neuron"]["kind"] == "root"
    for device in ("cpu:0", "cpu:1"):
        actor = by_path[f"neuron/devices/{device}"]
        assert actor["state"] == "running" and actor["kind"] == "device"
        assert actor["status"]["pid"] > 0
    assert by_path["neuron/requests"]["children"] == []


async def test_admin_actors_stream_shows_a_request_actor_during_a_stream(neuron_daemon):
    body = chat_body(max_tokens=2000, stream=True, logit_bias=NO_EOS)
    async with (
        neuron_daemon.async_http(timeout=30) as client,
        open_sse(client, "/admin/actors/stream", method="GET") as (watch, snapshots),
    ):
        assert watch.status_code == 200
        assert watch.headers["content-type"].startswith("text/event-stream")
        first = json.loads(await next_data(snapshots))
        paths = {a["path"] for a in walk_actors(first["root"])}
        assert {"neuron/devices/cpu:0", "neuron/devices/cpu:1"} <= paths
        async with open_sse(client, "/v1/chat/completions", body) as (_, tokens):
            await next_data(tokens)
            with trio.fail_after(10):
                while True:
                    snapshot = json.loads(await next_data(snapshots))
                    requests = [a for a in walk_actors(snapshot["root"]) if a["kind"] == "request"]
                    if requests and requests[0]["status"].get("phase") == "streaming":
                        break
            assert requests[0]["path"].startswith("neuron/requests/")
            assert requests[0]["status"]["model"] == QWEN
    wait_for(lambda: not neuron_daemon.request_actors(), within=10, what="request actor gone")


# -- the HTTP edge --------------------------------------------------------------------------


def test_request_id_is_echoed_or_generated(neuron_daemon):
    with neuron_daemon.http() as client:
        given = client.get("/health", headers={"x-request-id": "trace-123"})
        fresh = client.get("/health")
        error = client.post(
            "/v1/chat/completions",
            content=b"{",
            headers={"content-type": "application/json", "x-request-id": "trace-err"},
        )
        stream = client.post(
            "/v1/chat/completions",
            json=chat_body(max_tokens=1, stream=True),
            headers={"x-request-id": "trace-stream"},
        )
    assert given.headers["x-request-id"] == "trace-123"
    assert len(fresh.headers["x-request-id"]) == 32
    assert error.headers["x-request-id"] == "trace-err"
    assert stream.headers["x-request-id"] == "trace-stream"


def test_unknown_route_and_wrong_method(neuron_daemon):
    with neuron_daemon.http() as client:
        missing = client.get("/v1/nope")
        wrong = client.get("/v1/chat/completions")
    assert_openai_error(missing, 404, "route_not_found")
    assert_openai_error(wrong, 405, "method_not_allowed")


def test_connection_close_gets_eof(neuron_daemon):
    host, port = neuron_daemon.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):  # a timeout here raises: no EOF came
            received += chunk
    assert received.startswith(b"HTTP/1.1 200")
    assert b'"activation"' in received
