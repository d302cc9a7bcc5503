"""Chaos: whole neurons killed and stopped, and the gateway itself restarted.

* SIGKILL a neuron under load: its workers exit on their own (EOF on their
  socket), streams it carried end in-band at once (the gateway's error event,
  a final chunk with `finish_reason: "error"`, `[DONE]`), the gateway marks it down
  within seconds and serves every request from the other node (loading the
  model there), and when the neuron is restarted on the same port the
  gateway re-synchronises with it — including a model loaded behind its back.
* SIGSTOP a neuron (parent and workers) under load: streams it carried end
  in-band after the gateway's upstream idle timeout, new requests are routed
  around it (idle timeout, then failed polls mark it down), and after SIGCONT
  it is up again, gives back every slot, and keeps its worker.
* Restart the gateway (a `cortex serve` subprocess, SIGKILLed mid-stream) with
  the nodes running: the node frees the orphaned stream's slot, and the new
  gateway on the same port rebuilds its view from the nodes and serves at
  once, without loading anything.

CI runs each once; `HELEXA_CHAOS_LONG=1` repeats the neuron kill 5 times and
the stop 3 times.
"""

from __future__ import annotations

import functools
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import trio

from tests.chaos.chaos_fleet import (
    assert_quiescent,
    chat,
    figure,
    gateway_metrics,
    long_chat,
    neuron_get,
    read_stream,
    streams_when_hit,
    total,
    wait_until,
    where_loaded,
)
from tests.neuron.daemon_harness import HTTPX_ASYNCGEN_WARNING, LLAMA, QWEN

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.filterwarnings(HTTPX_ASYNCGEN_WARNING),
]

STREAMS = 2
DOWN_WITHIN = 10.0  # poll every 0.3 s, down after 2 failed polls of at most 1.5 s
REQUEST_WITHIN = 60.0  # any request, fault or not: a cold load on a busy box included
IDLE_TIMEOUT = 4.0  # the gateway's upstream idle timeout in the SIGSTOP test


async def test_sigkill_a_neuron_under_load(gateway, fleet):
    gw = await gateway()
    async with httpx.AsyncClient(base_url=gw.url, timeout=120) as client:
        for _ in range(figure(1, 5)):
            await _only_on(gw, fleet, "alpha", QWEN)
            workers: list[int] = []
            traffic = _SteadyTraffic(client)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(traffic.run)
                streams = await streams_when_hit(
                    client, functools.partial(_kill, fleet, "alpha", workers, traffic),
                    count=STREAMS, within=REQUEST_WITHIN,
                )  # fmt: skip
                killed_at = time.monotonic()
                await _down(gw, "alpha")
                assert time.monotonic() - killed_at < DOWN_WITHIN
                await _workers_exit(workers)
                await _served_meanwhile(traffic.served, by="beta", gw=gw)
                traffic.stop()
            for result in streams:
                assert result.errors[0]["code"] == "upstream_stream_error", result.errors
                assert result.finish_reasons[-1] == "error", result.data[-3:]

            fleet.start("alpha")  # same port
            await _up(gw, "alpha")
            fleet.load("alpha", LLAMA)  # behind the gateway's back: it must notice
            await wait_until(_async(lambda: LLAMA in where_loaded(gw)["alpha"]), within=10,
                             what="the gateway to see LLAMA on the restarted alpha")  # fmt: skip
            loads = total(await gateway_metrics(gw), "cortex_model_loads_total")
            response = await client.post("/v1/chat/completions", json=chat(LLAMA))
            assert response.status_code == 200, response.text
            assert total(await gateway_metrics(gw), "cortex_model_loads_total") == loads
            await assert_quiescent(gw, fleet.urls().values())
            _unload(fleet, "alpha", LLAMA)


async def test_sigstop_a_neuron_the_gateway_routes_around_it(gateway, fleet):
    gw = await gateway(upstream_idle_timeout=IDLE_TIMEOUT)
    async with httpx.AsyncClient(base_url=gw.url, timeout=120) as client:
        for _ in range(figure(1, 3)):
            await _only_on(gw, fleet, "alpha", QWEN)
            pids = [fleet.daemons["alpha"].process.pid] + [w.pid for w in fleet.workers("alpha")]
            restarts = (await neuron_get(fleet.urls()["alpha"], "/health"))["devices"][0]
            traffic = _SteadyTraffic(client)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(traffic.run)
                    streams = await streams_when_hit(
                        client, functools.partial(_stop_all, fleet, pids, traffic), count=STREAMS,
                        within=IDLE_TIMEOUT + 30,
                    )  # fmt: skip
                    await _down(gw, "alpha")
                    await _served_meanwhile(traffic.served, by="beta", gw=gw)
                    traffic.stop()
            finally:
                for pid in pids:
                    fleet.sigcont(pid)
            for result in streams:
                assert result.errors[0]["code"] == "upstream_stream_error", result.errors
                assert result.finish_reasons[-1] == "error", result.data[-3:]
            await _up(gw, "alpha")
            await assert_quiescent(gw, fleet.urls().values())
            health = await neuron_get(fleet.urls()["alpha"], "/health")
            assert health["devices"][0]["worker_restarts"] == restarts["worker_restarts"], (
                "a pause of the whole neuron is not a dead worker"
            )


async def test_gateway_restart_rebuilds_its_view_from_the_nodes(fleet, tmp_path):
    fleet.load("beta", QWEN)  # loaded before any gateway runs
    first = _GatewayProcess.start(tmp_path / "first", fleet.urls())
    try:
        async with httpx.AsyncClient(base_url=first.url, timeout=120) as client:
            await first.wait_nodes_up(client)
            response = await client.post("/v1/chat/completions", json=chat(LLAMA))  # cold load
            assert response.status_code == 200, response.text
            holder = next(n for n, m in _loaded(await _get(client, "/v1/models"), LLAMA))
            orphan = await _stream_then(client, first.kill)  # the gateway dies mid-stream
        assert orphan.status == 200 and not orphan.done
        await assert_quiescent(None, fleet.urls().values())  # the node freed the slot

        second = _GatewayProcess.start(tmp_path / "second", fleet.urls(), port=first.port)
        try:
            async with httpx.AsyncClient(base_url=second.url, timeout=120) as client:
                await second.wait_nodes_up(client)
                cards = await _get(client, "/v1/models")
                assert dict(_loaded(cards, LLAMA)) == {holder: "loaded"}
                assert dict(_loaded(cards, QWEN)) == {"beta": "loaded"}
                for model in (LLAMA, QWEN, "fast"):
                    response = await client.post("/v1/chat/completions", json=chat(model))
                    assert response.status_code == 200, response.text
                metrics = await second.metrics(client)
                assert total(metrics, "cortex_model_loads_total") == 0  # nothing reloaded
                assert total(metrics, "cortex_cold_starts_total") == 0
                assert total(metrics, "cortex_requests_total", outcome="ok") == 3
            assert second.stop() == 0
        finally:
            second.kill()
    finally:
        first.kill()


# ---------------------------------------------------------------------------------------------


def _async(predicate):
    async def check() -> bool:
        return bool(predicate())

    return check


async def _only_on(gw, fleet, name: str, model: str) -> None:
    for other, daemon in fleet.daemons.items():
        loaded = {m["id"] for m in daemon.get("/models")}
        if other != name and model in loaded:
            _unload(fleet, other, model)
        elif other == name and model not in loaded:
            fleet.load(name, model)
    want = {n: ({model} if n == name else set()) for n in fleet.daemons}
    await wait_until(_async(lambda: where_loaded(gw) == want), within=10,
                     what=f"the gateway to see {model} on {name} only")  # fmt: skip


def _kill(fleet, name: str, workers: list[int], traffic: _SteadyTraffic) -> None:
    traffic.hit_at = time.monotonic()
    workers.extend(fleet.sigkill(name))


def _stop_all(fleet, pids: list[int], traffic: _SteadyTraffic) -> None:
    traffic.hit_at = time.monotonic()
    for pid in pids:
        fleet.sigstop(pid)


def _unload(fleet, name: str, model: str) -> None:
    with fleet.daemons[name].http() as client:
        assert client.post("/models/unload", json={"model_id": model}).status_code == 200


async def _down(gw, name: str) -> None:
    with trio.fail_after(DOWN_WITHIN + 30):
        while gw.fleet.nodes[name].state.value != "down":
            await gw.fleet.wait_changed()


async def _up(gw, name: str) -> None:
    with trio.fail_after(30):
        while gw.fleet.nodes[name].state.value != "up":
            await gw.fleet.wait_changed()


async def _workers_exit(pids: list[int]) -> None:
    """An orphaned worker sees EOF on its socket and exits: no process outlives its neuron."""
    assert pids
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
              for p in pids):  # fmt: skip
        assert time.monotonic() < deadline, f"workers {pids} outlived their neuron"
        await trio.sleep(0.1)


class _SteadyTraffic:
    """Short requests, one every 0.25 s, until `stop()`; each must succeed within
    `REQUEST_WITHIN` — except one the node held when it was hit (`hit_at`), which
    may instead end with a clear 502 (the node died or froze mid-answer; a request
    that had no answer head yet is retried elsewhere). `served` collects the
    successes' (sent, answered) monotonic times; `cut` counts the clear 502s."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.served: list[tuple[float, float]] = []
        self.cut = 0
        self.hit_at = float("inf")
        self._stop = trio.Event()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while not self._stop.is_set():
                nursery.start_soon(self._one)
                with trio.move_on_after(0.25):
                    await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()

    async def _one(self) -> None:
        sent = time.monotonic()
        with trio.fail_after(REQUEST_WITHIN):
            response = await self.client.post("/v1/chat/completions", json=chat(max_tokens=2))
        if response.status_code == 200:
            self.served.append((sent, time.monotonic()))
            return
        assert sent < self.hit_at and response.status_code == 502, response.text
        assert response.json()["error"]["code"] == "upstream_connection_error", response.text
        self.cut += 1


async def _served_meanwhile(served: list, *, by: str, gw) -> None:
    """Requests keep being answered while the node is out: wait for a few sent after
    the gateway marked it down, and check the model is now on `by`."""
    marked = time.monotonic()
    with trio.fail_after(REQUEST_WITHIN):
        while sum(1 for sent, _ in served if sent > marked) < 3:  # noqa: ASYNC110 - polled
            await trio.sleep(0.1)
    assert QWEN in where_loaded(gw)[by]


async def _stream_then(client: httpx.AsyncClient, hit):
    """One long stream; `hit()` once it generates; read whatever comes until it breaks."""
    started = trio.Event()
    result = None

    async def one() -> None:
        nonlocal result
        try:
            result = await read_stream(client, "/v1/chat/completions", long_chat(LLAMA),
                                       started=started, after_content=2)  # fmt: skip
        except httpx.HTTPError as exc:  # the gateway died: the connection broke
            result = _Broken(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one)
        with trio.fail_after(60):
            await started.wait()
        hit()
    return result


class _Broken:
    status = 200
    done = False

    def __init__(self, error: Exception) -> None:
        self.error = error


async def _get(client: httpx.AsyncClient, path: str):
    response = await client.get(path)
    assert response.status_code == 200, response.text
    return response.json()


def _loaded(cards: dict, model: str) -> list[tuple[str, str]]:
    card = next(c for c in cards["data"] if c["id"] == model)
    return [(loc["node"], loc["status"]) for loc in card["locations"]]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


_LISTENING = re.compile(rb"cortex listening url=(\S+) metrics=(\S+)")


class _GatewayProcess:
    """`python -m cortex serve` over the chaos neurons, on loopback."""

    def __init__(self, process: subprocess.Popen, log: Path) -> None:
        self.process, self.log = process, log
        self.url = self.metrics_url = ""
        self.port = 0

    @classmethod
    def start(cls, tmp: Path, urls: dict[str, str], *, port: int = 0) -> _GatewayProcess:
        """On `port` (a free one if 0); the metrics on a free port."""
        tmp.mkdir(parents=True)
        port, metrics_port = port or _free_port(), _free_port()
        (tmp / "models.toml").write_text(
            f'[[models]]\nid = "{QWEN}"\nvram_mb = 4\n\n[[models]]\nid = "{LLAMA}"\n'
            f'vram_mb = 4\n\n[aliases]\nfast = "{QWEN}"\n'
        )
        neurons = "".join(f'\n[[neurons]]\nname = "{n}"\nendpoint = "{u}"\n'
                          for n, u in urls.items())  # fmt: skip
        (tmp / "cortex.toml").write_text(
            'models_config = "models.toml"\n\n[gateway]\n'
            f'listen = "127.0.0.1:{port}"\nmetrics_listen = "127.0.0.1:{metrics_port}"\n\n'
            "[eviction]\nmin_residency_seconds = 0\n\n"
            "[fleet]\npoll_interval = 0.3\npoll_timeout = 1.5\nfailure_threshold = 2\n"
            "backoff_max = 1\n\n[http]\nkeepalive_interval = 0.2\ndrain_timeout = 5\n" + neurons
        )
        log = tmp / "cortex.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "cortex", "serve", "--config", str(tmp / "cortex.toml")],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=Path(__file__).resolve().parents[2],
            )  # fmt: skip
        gateway = cls(process, log)
        try:
            gateway._wait_listening()
        except BaseException:
            gateway.kill()
            raise
        return gateway

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 60
        while not (match := _LISTENING.search(self.log.read_bytes())):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"cortex did not start:\n{self.log.read_text()}")
            time.sleep(0.05)
        self.url, self.metrics_url = match.group(1).decode(), match.group(2).decode()
        self.port = int(self.url.rsplit(":", 1)[1])

    async def wait_nodes_up(self, client: httpx.AsyncClient) -> None:
        async def both_up() -> bool:
            return (await _get(client, "/health"))["nodes"]["healthy"] == 2

        await wait_until(both_up, within=15, what="the gateway's first poll of both nodes")

    async def metrics(self, client: httpx.AsyncClient):
        from tests.chaos.chaos_fleet import parse_metrics

        return parse_metrics((await client.get(f"{self.metrics_url}/metrics")).text)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)
