"""Helpers of the chaos suites: the two neurons, the gateway's config, streams and checks.

`ChaosNeurons` owns the `alpha` and `beta` neuron processes for the session:
it starts them, restarts one on the port it had (so a gateway's endpoint for
it stays valid), finds its device workers, stops (SIGSTOP) processes and
remembers them so that teardown always continues them, and brings the pair
back to a known state between tests.

`read_stream` consumes one SSE response whole and says how it ended;
`assert_quiescent` is the "nothing leaked" check shared by every scenario:
no slot, queue entry, engine sequence or request actor is left on either
neuron, no request actor on the gateway, and every in-flight gauge is 0.

Each test has a short CI figure (rounds, requests) and a long one, which
`HELEXA_CHAOS_LONG=1` selects (`figure(ci, long)`; see bench/README.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
import httpx
import psutil
import trio
from prometheus_client.parser import text_string_to_metric_families

from cortex.config import CortexConfig, Eviction, Fleet, Gateway, Http, Neuron
from cortex.fleet_snapshot import Catalogue, ModelProfile
from tests.neuron.daemon_harness import (
    LLAMA,
    QWEN,
    Models,
    RunningDaemon,
    start_daemon,
    walk_actors,
)

LONG_ENV = "HELEXA_CHAOS_LONG"
NAMES = ("alpha", "beta")
EOS_BANNED = {"4087": -100, "4089": -100}  # <|endoftext|>, <|im_end|>: never stop early
QUIET_WITHIN = 30.0  # seconds for every slot and actor to be given back after a fault

# One CPU device per neuron (two workers in all on a 2-core box); both tiny models fit
# on a device at once. Heartbeats are frequent and the silence bound short so that a
# stopped worker is caught in seconds, yet generous enough for a box under load.
NEURON_SETTINGS = {
    "cpu": {"devices": 1, "threads": 1, "memory_mb": 2048},
    "engine": {"max_batch_size": 8},
    "http": {"keepalive_interval": 0.2},
    "admission": {"max_queue_depth": 256, "queue_timeout": 120},
    "timeouts": {"worker_heartbeat_interval": 0.25, "worker_heartbeat": 4.0,
                 "unload_drain": 3, "drain": 10},
}  # fmt: skip


def figure(ci: int, long: int) -> int:
    """The long version's figure under `HELEXA_CHAOS_LONG=1`, else the CI one."""
    return long if os.environ.get(LONG_ENV, "") not in ("", "0") else ci


class ChaosNeurons:
    def __init__(self, models: Models, tmp: Path) -> None:
        self.models = models
        self.tmp = tmp
        self.daemons: dict[str, RunningDaemon] = {}
        self.ports: dict[str, int] = {}
        self.stopped: set[int] = set()  # pids sent SIGSTOP: continued at teardown
        self._starts = 0

    # -- life ------------------------------------------------------------------------------

    def start(self, name: str) -> RunningDaemon:
        """Start `name` (on the port it had before, if any) with no model loaded."""
        self._starts += 1
        port = self.ports.get(name, 0)
        settings = {**NEURON_SETTINGS, "listen": {"host": "127.0.0.1", "port": port}}
        daemon = start_daemon(self.tmp / f"{name}-{self._starts}", self.models,
                              default_models=(), settings=settings)  # fmt: skip
        self.ports[name] = int(daemon.url.rsplit(":", 1)[1])
        self.daemons[name] = daemon
        return daemon

    def start_all(self) -> None:
        for name in NAMES:
            self.start(name)

    def revive_all(self) -> None:
        """Continue what is stopped; restart what is dead; wait until all answer."""
        self.continue_all()
        for name in NAMES:
            daemon = self.daemons.get(name)
            if daemon is None or daemon.process.poll() is not None:
                if daemon is not None:
                    daemon.kill()  # reap it and any worker it left
                self.start(name)
            else:
                daemon.wait_ready()

    def stop_all(self) -> None:
        """SIGTERM each (asserting a clean exit); a failure is raised only once every
        daemon has been stopped, so one bad exit never leaves the other running."""
        self.continue_all()
        failures = []
        for daemon in self.daemons.values():
            try:
                if daemon.process.poll() is None:
                    daemon.stop()
                else:
                    daemon.kill()
            except AssertionError as exc:
                daemon.kill()
                failures.append(exc)
        if failures:
            raise failures[0]

    def sigkill(self, name: str) -> list[int]:
        """SIGKILL the neuron itself (not its workers); returns the workers' pids."""
        daemon = self.daemons[name]
        workers = [w.pid for w in self.workers(name)]
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait(timeout=10)
        return workers

    # -- stopping and continuing -----------------------------------------------------------

    def sigstop(self, pid: int) -> None:
        self.stopped.add(pid)
        os.kill(pid, signal.SIGSTOP)

    def sigcont(self, pid: int) -> None:
        self.stopped.discard(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    def continue_all(self) -> None:
        for pid in list(self.stopped):
            self.sigcont(pid)

    # -- looking ---------------------------------------------------------------------------

    def urls(self) -> dict[str, str]:
        return {name: f"http://127.0.0.1:{self.ports[name]}" for name in NAMES}

    def workers(self, name: str) -> list[psutil.Process]:
        """The device-worker processes of `name` now (live ones)."""
        try:
            children = psutil.Process(self.daemons[name].process.pid).children()
        except psutil.NoSuchProcess:
            return []
        return [c for c in children if alive(c) and "neuron.worker" in " ".join(c.cmdline())]

    def unload_everything(self) -> None:
        for daemon in self.daemons.values():
            for model in daemon.get("/models"):
                with daemon.http() as client:
                    client.post("/models/unload", json={"model_id": model["id"]})

    def load(self, name: str, model: str) -> None:
        with self.daemons[name].http(timeout=120) as client:
            response = client.post("/models/load", json={"model_id": model})
        assert response.status_code == 200, response.text


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- the gateway ---------------------------------------------------------------------------


def catalogue() -> Catalogue:
    return Catalogue.of([ModelProfile(id=QWEN, vram_mb=4), ModelProfile(id=LLAMA, vram_mb=4)],
                        {"fast": QWEN})  # fmt: skip


def gateway_config(urls: dict[str, str], **http: Any) -> CortexConfig:
    """Polls every 0.3 s, a node down after two failed polls (1.5 s timeout each)."""
    http_settings = {"keepalive_interval": 0.2, "retries": 2, "drain_timeout": 5,
                     "upstream_idle_timeout": 60.0, **http}  # fmt: skip
    return CortexConfig(
        models_config="",
        gateway=Gateway(listen="127.0.0.1:0", metrics_listen="127.0.0.1:0"),
        eviction=Eviction(min_residency_seconds=0),
        neurons=tuple(Neuron(name=n, endpoint=u) for n, u in urls.items()),
        fleet=Fleet(poll_interval=0.3, poll_timeout=1.5, failure_threshold=2, backoff_max=1),
        http=Http(**http_settings),
        catalogue=catalogue(),
    )  # fmt: skip


def where_loaded(gw: Any) -> dict[str, set[str]]:
    """The gateway's view: node → models it reports `loaded`."""
    return {n.name: {m.id for m in n.models if m.status == "loaded"}
            for n in gw.fleet.nodes.values()}  # fmt: skip


def gateway_request_actors(gw: Any) -> list[dict[str, Any]]:
    tree = gw.root.registry.snapshot().to_dict()
    return [a for a in walk_actors(tree["root"]) if a["kind"] == "request"]


# -- bodies --------------------------------------------------------------------------------


def chat(model: str = QWEN, **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
            **fields}  # fmt: skip


def long_chat(model: str = QWEN, max_tokens: int = 4000, **fields: Any) -> dict[str, Any]:
    """A stream that runs until stopped: EOS banned, a high token cap."""
    return chat(model, stream=True, max_tokens=max_tokens, logit_bias=EOS_BANNED, **fields)


# -- streams -------------------------------------------------------------------------------


@attrs.define
class StreamResult:
    """How one SSE response went, read to its end."""

    status: int = 0
    data: list[Any] = attrs.Factory(list)  # decoded `data:` payloads ("[DONE]" kept as is)
    comments: int = 0
    body: bytes = b""  # a non-200 answer's body

    @property
    def done(self) -> bool:
        return bool(self.data) and self.data[-1] == "[DONE]"

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [d["error"] for d in self.data if isinstance(d, dict) and "error" in d]

    @property
    def finish_reasons(self) -> list[str]:
        return [c["finish_reason"] for d in self.data if isinstance(d, dict)
                for c in d.get("choices", ()) if c.get("finish_reason")]  # fmt: skip

    @property
    def content_chunks(self) -> int:
        return sum(1 for d in self.data if isinstance(d, dict) and any(
            c.get("delta", {}).get("content") for c in d.get("choices", ())))  # fmt: skip


async def read_stream(
    client: httpx.AsyncClient,
    path: str,
    body: dict[str, Any],
    *,
    started: trio.Event | None = None,
    after_content: int = 1,
) -> StreamResult:
    """POST `body` and read the SSE answer to its end; set `started` once
    `after_content` content chunks arrived."""
    result = StreamResult()
    async with client.stream("POST", path, json=body) as response:
        result.status = response.status_code
        if response.status_code != 200:
            result.body = await response.aread()
            return result
        async with contextlib.aclosing(response.aiter_lines()) as lines:
            async for line in lines:
                if line.startswith(":"):
                    result.comments += 1
                elif line.startswith("data: "):
                    payload = line[len("data: ") :]
                    result.data.append(payload if payload == "[DONE]" else json.loads(payload))
                    if started is not None and result.content_chunks >= after_content:
                        started.set()
    return result


async def streams_when_hit(
    client: httpx.AsyncClient, hit: Any, *, count: int, within: float, model: str = QWEN
) -> list[StreamResult]:
    """Start `count` long streams, call `hit()` once every one generates, and check
    that each then ends within `within` seconds, in-band: an error event, `[DONE]`."""
    results: list[StreamResult] = []
    scopes = [trio.CancelScope() for _ in range(count)]
    generating = [trio.Event() for _ in range(count)]

    async def one(scope: trio.CancelScope, event: trio.Event) -> None:
        with scope:
            results.append(await read_stream(client, "/v1/chat/completions", long_chat(model),
                                             started=event, after_content=2))  # fmt: skip

    async with trio.open_nursery() as nursery:
        for scope, event in zip(scopes, generating, strict=True):
            nursery.start_soon(one, scope, event)
        with trio.fail_after(60):
            for event in generating:
                await event.wait()
        hit()
        deadline = trio.current_time() + within
        for scope in scopes:
            scope.deadline = deadline
    hung = sum(scope.cancelled_caught for scope in scopes)
    assert not hung, f"{hung} of {count} streams still open {within}s after the fault"
    for result in results:
        assert result.status == 200, result.body
        assert result.done and result.errors, result.data[-3:]
    return results


# -- metrics and quiescence ----------------------------------------------------------------


def parse_metrics(text: str) -> dict[str, float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of `name`'s samples whose labels include `labels`."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        value for key, value in samples.items()
        if key.split("{", 1)[0] == name and all(w in key for w in wanted)
    )  # fmt: skip


async def gateway_metrics(gw: Any) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{gw.metrics_url}/metrics")
    assert response.status_code == 200, response.text
    return parse_metrics(response.text)


async def neuron_get(url: str, path: str) -> Any:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(url + path)
    assert response.status_code == 200, (path, response.text)
    return response.json() if path != "/metrics" else parse_metrics(response.text)


async def neuron_leftovers(url: str) -> list[str]:
    """What a neuron still holds for requests: slots, queue entries, sequences, actors."""
    left = []
    health = await neuron_get(url, "/health")
    for load in health["models"]:
        if load["in_flight"] or load["queue_depth"]:
            left.append(f"{load['id']}: in_flight={load['in_flight']} "
                        f"queued={load['queue_depth']}")  # fmt: skip
    tree = await neuron_get(url, "/admin/actors")
    for actor in walk_actors(tree["root"]):
        status = actor.get("status") or {}
        if actor["kind"] == "request":
            left.append(f"request actor {actor['name']}")
        elif actor["kind"] == "device" and (status.get("running") or status.get("waiting")):
            left.append(f"{actor['name']}: engine running={status.get('running')} "
                        f"waiting={status.get('waiting')}")  # fmt: skip
    samples = await neuron_get(url, "/metrics")
    for name in ("neuron_num_requests_running", "neuron_num_requests_waiting"):
        if value := total(samples, name):
            left.append(f"{name}={value}")
    return left


async def gateway_leftovers(gw: Any) -> list[str]:
    left = [f"request actor {a['name']}" for a in gateway_request_actors(gw)]
    if value := total(await gateway_metrics(gw), "cortex_requests_in_flight"):
        left.append(f"cortex_requests_in_flight={value}")
    return left


async def assert_quiescent(gw: Any, urls: Iterable[str], within: float = QUIET_WITHIN) -> None:
    """Everything given back — on the gateway (if any) and every neuron — within a bound."""
    deadline = time.monotonic() + within
    while True:
        left = await gateway_leftovers(gw) if gw is not None else []
        for url in urls:
            left += [f"{url} {item}" for item in await neuron_leftovers(url)]
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"still held {within}s after the traffic ended: {left}")
        await trio.sleep(0.2)


async def wait_until(predicate: Any, *, within: float, what: str) -> None:
    """Poll (async) state another process drives until `predicate()` is truthy."""
    deadline = time.monotonic() + within
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await trio.sleep(0.1)
