"""`[timeouts] request_idle`: a sequence that gets no step for that long ends.

A real `neuron serve` with one CPU device whose worker is SIGSTOPped (a wedged
device) while the watchdog is set far out of the way: a stream that was
running ends in-band with `request_idle_timeout`, a plain request gets 504, and
once the worker runs again the cancelled sequences have given their slots back
and the model serves.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import trio
from daemon_harness import (
    HTTPX_ASYNCGEN_WARNING,
    assert_openai_error,
    chat_body,
    next_data,
    open_sse,
    sse_events,
    start_daemon,
    walk_actors,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.filterwarnings(HTTPX_ASYNCGEN_WARNING),
]

NO_EOS = {"4089": -100, "4087": -100}
SETTINGS = {
    "cpu": {"devices": 1},
    # the watchdog would replace a stopped worker; keep it out of this test's way
    "timeouts": {"request_idle": 1, "worker_heartbeat": 120, "worker_step": 120},
}


async def test_a_stalled_sequence_ends_after_request_idle(daemon_models, tmp_path):
    daemon = start_daemon(tmp_path, daemon_models, settings=SETTINGS)
    tree = daemon.get("/admin/actors")
    [device] = [a for a in walk_actors(tree["root"]) if a["kind"] == "device"]
    pid = device["status"]["pid"]
    try:
        async with daemon.async_http(timeout=30) as client:
            body = chat_body(max_tokens=3000, stream=True, logit_bias=NO_EOS)
            async with open_sse(client, "/v1/chat/completions", body) as (_, lines):
                await next_data(lines)
                os.kill(pid, signal.SIGSTOP)
                with trio.fail_after(15):
                    rest = [line async for line in lines]
                plain = await client.post("/v1/chat/completions", json=chat_body(max_tokens=5))
            os.kill(pid, signal.SIGCONT)
            events = list(sse_events(rest))
            assert events[-1] == "[DONE]"
            payloads = [json.loads(e) for e in events if e.startswith("{")]
            [error] = [p["error"] for p in payloads if "error" in p]
            last = [p for p in payloads if p.get("choices")][-1]
            assert last["choices"][0]["finish_reason"] == "error"
            assert error["code"] == "request_idle_timeout"
            assert "no token for 1 s" in error["message"]
            assert_openai_error(plain, 504, "request_idle_timeout", type="api_error")

            with trio.fail_after(15):  # the cancelled sequences give their slots back
                while [m["in_flight"] for m in daemon.health()["models"]] != [0]:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            after = await client.post("/v1/chat/completions", json=chat_body(max_tokens=5))
            assert after.status_code == 200, after.text
            assert after.json()["usage"]["completion_tokens"] == 5
        tree = daemon.get("/admin/actors")
        [device] = [a for a in walk_actors(tree["root"]) if a["kind"] == "device"]
        assert device["status"]["pid"] == pid  # the idle timeout replaced no worker
        daemon.assert_serving()
    except BaseException:
        os.kill(pid, signal.SIGCONT)
        daemon.kill()
        raise
    daemon.stop()
