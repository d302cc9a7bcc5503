"""A real `neuron serve` process from start to SIGTERM.

Start-up binds first and loads the default models in the background, with
progress on `/health`. SIGTERM stops admitting (503 `shutting_down` with
Retry-After, requests waiting for a slot included), lets requests in flight
finish within `[timeouts] drain`, ends what is still running after that with
an in-band error (a stream) or a 503 (a non-streaming request), unloads, stops
the workers, and exits 0 with no worker left (`RunningDaemon.stop`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest
import trio
from daemon_harness import (
    HTTPX_ASYNCGEN_WARNING,
    LLAMA,
    QWEN,
    assert_flat_error,
    assert_openai_error,
    chat_body,
    next_data,
    open_sse,
    sse_events,
    start_daemon,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.filterwarnings(HTTPX_ASYNCGEN_WARNING),
]

MISSING = "helexa/missing"
NO_EOS = {"4089": -100, "4087": -100}


async def test_activation_progress_then_a_graceful_drain(daemon_models, tmp_path):
    daemon = start_daemon(
        tmp_path,
        daemon_models,
        default_models=(QWEN, MISSING, LLAMA),
        wait_ready=False,
        settings={"timeouts": {"drain": 30}},
    )
    try:
        # bound first: /health answers while the workers are still starting
        activation = daemon.health()["activation"]
        assert activation["state"] == "pre_warming"
        assert activation["pending"] == [QWEN, MISSING, LLAMA]
        assert activation["completed"] == [] and activation["failed"] == []
        async with daemon.async_http() as client:
            early = await client.post("/v1/chat/completions", json=chat_body())
            assert early.status_code in (404, 503)  # not loaded yet, or loading
            seen = await _activation_states(client)
        assert (QWEN, (MISSING, LLAMA)) in seen  # one at a time, in order
        assert (LLAMA, ()) in seen
        health = daemon.wait_ready()
        activation = health["activation"]
        assert activation["pending"] == [] and activation.get("in_progress") is None
        assert activation["completed"] == [QWEN, LLAMA]
        [failure] = activation["failed"]
        assert failure["model_id"] == MISSING and MISSING in failure["error"]
        assert "not found" in failure["error"]
        await _sigterm_lets_the_stream_finish(daemon)
    except BaseException:
        daemon.kill()
        raise
    daemon.stop()
    assert "shut down" in daemon.log()


async def _activation_states(client: httpx.AsyncClient) -> set[tuple]:
    """Every (in_progress, pending) seen on `/health` until activation is ready."""
    seen = set()
    with trio.fail_after(90):
        while True:
            activation = (await client.get("/health")).json()["activation"]
            if activation["state"] == "ready":
                return seen
            seen.add((activation.get("in_progress"), tuple(activation["pending"])))
            await trio.sleep(0.02)


async def _sigterm_lets_the_stream_finish(daemon) -> None:
    body = chat_body(max_tokens=2000, stream=True, logit_bias=NO_EOS)  # outlives the checks
    async with (
        daemon.async_http(timeout=30) as client,
        open_sse(client, "/v1/chat/completions", body) as (_, lines),
    ):
        await next_data(lines)
        daemon.signal()
        await wait_until(lambda: "received SIGTERM" in daemon.log())
        refused = await client.post("/v1/chat/completions", json=chat_body(model=LLAMA))
        error = assert_openai_error(refused, 503, "shutting_down", type="api_error")
        assert "shutting down" in error["message"]
        assert refused.headers["retry-after"] == "15"
        load = await client.post("/models/load", json={"model_id": "helexa/other"})
        assert_flat_error(load, 503, "shutting_down")
        health = await client.get("/health")  # still answering while it drains
        assert health.status_code == 200
        rest = [line async for line in lines]
    events = list(sse_events(rest))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events if e.startswith("{")]
    assert all("error" not in c for c in chunks)
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 2000


async def test_sigterm_past_the_drain_timeout(daemon_models, tmp_path):
    """With `drain = 2`: a request waiting for a slot is refused at once, and what
    still runs after two seconds ends — a stream in-band, a plain request with 503."""
    daemon = start_daemon(
        tmp_path,
        daemon_models,
        default_models=(QWEN, LLAMA),
        settings={"timeouts": {"drain": 2}, "admission": {"max_in_flight": 1}},
    )
    try:
        results = await _sigterm_with_work_in_flight(daemon)
    except BaseException:
        daemon.kill()
        raise
    daemon.stop()
    stream_lines, queued, plain, drained_in = results
    assert_openai_error(queued, 503, "shutting_down", type="api_error")
    assert queued.headers["retry-after"] == "15"
    events = list(sse_events(stream_lines))
    assert events[-1] == "[DONE]"
    payloads = [json.loads(e) for e in events if e.startswith("{")]
    errors = [p["error"] for p in payloads if "error" in p]
    assert len(errors) == 1 and errors[0]["message"]
    assert payloads[-2]["choices"][0]["finish_reason"] == "error"
    assert_openai_error(plain, 503, "request_cancelled", type="api_error")
    assert 1.5 < drained_in < 10
    assert "drain timeout: cancelling 2 requests" in daemon.log()


async def _sigterm_with_work_in_flight(daemon):
    plain: list[httpx.Response] = []
    queued: list[httpx.Response] = []
    long = dict(max_tokens=3500, logit_bias=NO_EOS)

    async def post(client, body, into) -> None:
        into.append(await client.post("/v1/chat/completions", json=body))

    async with (
        daemon.async_http(timeout=60) as client,
        trio.open_nursery() as nursery,
        open_sse(client, "/v1/chat/completions", chat_body(stream=True, **long)) as (_, lines),
    ):
        await next_data(lines)  # QWEN's one slot is taken
        nursery.start_soon(post, client, chat_body(model=LLAMA, **long), plain)
        nursery.start_soon(post, client, chat_body(max_tokens=2), queued)
        await wait_until(
            lambda: (
                daemon.model_load(QWEN)["queue_depth"] == 1
                and daemon.model_load(LLAMA)["in_flight"] == 1
            )
        )
        daemon.signal()
        signalled = time.monotonic()
        await wait_until(lambda: bool(queued))  # refused at once, not after the drain
        rest = [line async for line in lines]
        drained_in = time.monotonic() - signalled
    [queued_reply], [plain_reply] = queued, plain
    return rest, queued_reply, plain_reply, drained_in


async def wait_until(predicate, within: float = 15) -> None:
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 - the state lives in another process
            await trio.sleep(0.02)


def test_a_bad_configuration_exits_2_naming_the_key(daemon_models, tmp_path):
    config = tmp_path / "neuron.toml"
    config.write_text('[admission]\nmax_inflight = 3\n[listen]\nport = "http"\n')
    result = subprocess.run(
        [sys.executable, "-m", "neuron", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "max_inflight" in result.stderr and "max_in_flight" in result.stderr
    assert "port" in result.stderr
