"""Chaos: device workers killed (SIGKILL) and stopped (SIGSTOP) under streams.

Through a real gateway over two real neurons, each round puts long streams
on `alpha`'s only worker, then kills it. Every stream that had started must
end with an in-band error event, a final chunk with `finish_reason: "error"`
and `[DONE]` — quickly, never a hang; requests sent at the moment of the kill
(not started yet) must be retried and succeed; the worker must come back
with its model; and while the gateway sees the model `recovering` it must not
route a request to `alpha` (counted on alpha's own refusal counters). After
each round nothing may be held anywhere (`assert_quiescent`).

CI runs 5 SIGKILL rounds and one SIGSTOP round; the long version 25 and 3:

    HELEXA_CHAOS_LONG=1 .venv/bin/python -m pytest tests/chaos/test_chaos_worker_faults.py
"""

from __future__ import annotations

import signal

import httpx
import psutil
import pytest
import trio

from tests.chaos.chaos_fleet import (
    assert_quiescent,
    chat,
    figure,
    neuron_get,
    read_stream,
    streams_when_hit,
    total,
    wait_until,
    where_loaded,
)
from tests.neuron.daemon_harness import HTTPX_ASYNCGEN_WARNING, QWEN

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.filterwarnings(HTTPX_ASYNCGEN_WARNING),
]

STREAMS = 3  # long streams on the worker when it is hit
LATE = 3  # requests sent right after the hit
# A stream hit by the fault must end within this: ~0.1 s after a SIGKILL, the
# heartbeat bound (4 s) + a watchdog period after a SIGSTOP; generous for a busy box.
END_WITHIN = 30.0
RECOVER_WITHIN = 90.0  # worker respawned (torch import) + model reloaded, on a busy box


async def test_sigkill_a_worker_under_streams_repeatedly(gateway, fleet):
    gw = await gateway()
    figures = {"faults": 0, "hit": 0, "late": 0, "waited": 0}
    async with httpx.AsyncClient(base_url=gw.url, timeout=120) as client:
        for _ in range(figure(5, 25)):
            await _only_on_alpha(gw, fleet)
            victim = fleet.workers("alpha")[0]
            hit = await _streams_when_hit(client, lambda v=victim: v.send_signal(
                signal.SIGKILL))  # fmt: skip
            figures["faults"] += 1
            late = await _requests_at_the_hit(client)
            figures["hit"] += len(hit)
            figures["late"] += len(late)
            figures["waited"] += await _no_routing_while_recovering(gw, fleet, client)
            await _worker_is_back(fleet, victim.pid)
            await assert_quiescent(gw, fleet.urls().values())
    print(f"worker SIGKILL chaos: {figures}")


async def test_sigstop_a_worker_the_watchdog_replaces_it(gateway, fleet):
    gw = await gateway()
    async with httpx.AsyncClient(base_url=gw.url, timeout=120) as client:
        for _ in range(figure(1, 3)):
            await _only_on_alpha(gw, fleet)
            victim = fleet.workers("alpha")[0]
            hit = await _streams_when_hit(client, lambda v=victim: fleet.sigstop(v.pid))
            assert all("silent" in r.errors[0]["message"] for r in hit), [r.errors for r in hit]
            await _worker_is_back(fleet, victim.pid)  # the stop ladder killed and reaped it
            fleet.stopped.discard(victim.pid)
            assert len(await _requests_at_the_hit(client)) == LATE
            await assert_quiescent(gw, fleet.urls().values())


# ---------------------------------------------------------------------------------------------


async def _only_on_alpha(gw, fleet) -> None:
    """QWEN loaded on alpha only (a previous round's retries may have loaded it on beta)."""
    if QWEN in {m["id"] for m in fleet.daemons["beta"].get("/models")}:
        with fleet.daemons["beta"].http() as beta:
            assert beta.post("/models/unload", json={"model_id": QWEN}).status_code == 200
    if QWEN not in {m["id"] for m in fleet.daemons["alpha"].get("/models")}:
        fleet.load("alpha", QWEN)

    async def seen() -> bool:
        return where_loaded(gw) == {"alpha": {QWEN}, "beta": set()}

    await wait_until(seen, within=10, what="the gateway to see QWEN on alpha only")


async def _streams_when_hit(client: httpx.AsyncClient, hit) -> list:
    """Long streams on alpha's worker, hit; each ends with the node's in-band error:
    an error event, a final chunk with `finish_reason: "error"`, `[DONE]`."""
    results = await streams_when_hit(client, hit, count=STREAMS, within=END_WITHIN)
    for result in results:
        assert result.errors[0]["code"] == "worker_died", result.errors
        assert result.finish_reasons[-1] == "error", result.data[-4:]
    return results


async def _requests_at_the_hit(client: httpx.AsyncClient) -> list:
    """Requests sent right after the fault, before anything noticed it: each must
    be retried (or wait for the model) and succeed."""
    answers: list = []

    async def plain() -> None:
        response = await client.post("/v1/chat/completions", json=chat(max_tokens=3))
        assert response.status_code == 200, response.text
        answers.append(response.json()["usage"]["completion_tokens"])

    async def streamed() -> None:
        result = await read_stream(client, "/v1/chat/completions", chat(stream=True))
        assert result.status == 200, result.body
        assert result.done and not result.errors, result.data
        answers.append(result.finish_reasons[-1])

    with trio.fail_after(RECOVER_WITHIN):
        async with trio.open_nursery() as nursery:
            for _ in range(LATE - 1):
                nursery.start_soon(plain)
            nursery.start_soon(streamed)
    assert len(answers) == LATE
    return answers


async def _no_routing_while_recovering(gw, fleet, client: httpx.AsyncClient) -> int:
    """While the gateway sees alpha's QWEN recovering, requests wait: none reaches
    alpha (its refusal counters do not move). Returns how many were sent meanwhile."""
    alpha = fleet.urls()["alpha"]

    def recovering() -> bool:
        node = gw.fleet.nodes["alpha"]
        return any(m.id == QWEN and m.status == "recovering" for m in node.models)

    if not recovering():  # recovered before the late requests finished: nothing to check
        return 0
    before = total(await neuron_get(alpha, "/metrics"), "neuron_request_rejected_total")
    sent = 0
    async with trio.open_nursery() as nursery:
        while recovering():
            nursery.start_soon(_must_succeed, client)
            sent += 1
            await trio.sleep(1.0)
    after = total(await neuron_get(alpha, "/metrics"), "neuron_request_rejected_total")
    assert after == before, f"alpha refused {after - before} requests while recovering"
    return sent


async def _must_succeed(client: httpx.AsyncClient) -> None:
    with trio.fail_after(RECOVER_WITHIN):
        response = await client.post("/v1/chat/completions", json=chat(max_tokens=2))
    assert response.status_code == 200, response.text


async def _worker_is_back(fleet, old_pid: int) -> None:
    """A new worker pid, the old process gone (not a zombie), and QWEN loaded again."""
    alpha = fleet.urls()["alpha"]

    async def back() -> bool:
        health = await neuron_get(alpha, "/health")
        models = {m["id"]: m["status"] for m in await neuron_get(alpha, "/models")}
        workers = [w.pid for w in fleet.workers("alpha")]
        ready = health["devices"][0]["worker_state"] == "ready"
        gone = not psutil.pid_exists(old_pid)  # reaped: neither running nor a zombie
        return ready and gone and workers and models.get(QWEN) == "loaded"

    await wait_until(back, within=RECOVER_WITHIN, what="alpha's worker and QWEN to come back")
    health = await neuron_get(alpha, "/health")
    assert health["devices"][0]["worker_restarts"] >= 1
