"""A request the client gives up on after the gateway sent it to a node is counted
against that node (`cortex_requests_total{node="n", outcome="cancelled"}`), not
against `node="none"`.

The node is a few lines of raw HTTP on a real socket: it answers the polls, and
holds every inference request without answering, as a busy neuron does while it
generates. The client leaves each request once the node has it.
"""

from __future__ import annotations

import functools
import json

import httpx
import pytest
import trio

from cortex.config import CortexConfig, Fleet, Gateway, Neuron
from cortex.fleet_snapshot import Catalogue, ModelProfile
from cortex.gateway import Gateway as CortexGateway

MODEL = "org/m"
NODE = "n"
POLLS = {
    b"/discovery": {"hostname": "h", "devices": [{"index": 0, "name": "c", "vram_total_mb": 64}]},
    b"/models": [{"id": MODEL, "harness": "transformers", "status": "loaded", "devices": [0]}],
    b"/health": {"uptime_secs": 1, "models": [{"id": MODEL}]},
}
MESSAGES = [{"role": "user", "content": "hi"}]


class BusyNode:
    """Answers polls; holds inference requests. `held` counts those it got."""

    def __init__(self) -> None:
        self.held = 0
        self.changed = trio.Event()

    async def serve(self, stream: trio.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some(65536)
        method, path, _ = request.split(b" ", 2)
        if method == b"POST":
            self.held += 1
            self.changed.set()
            self.changed = trio.Event()
            while await stream.receive_some(65536):  # its body; then EOF: the gateway let go
                pass
            return
        body = json.dumps(POLLS.get(path, {})).encode()
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                              b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
                              % (len(body), body))  # fmt: skip
        await stream.aclose()


def cancelled(gw: CortexGateway, route: str, node: str) -> float:
    labels = {"route": route, "model": MODEL, "node": node, "outcome": "cancelled"}
    return gw.metrics.registry.get_sample_value("cortex_requests_total", labels) or 0.0


@pytest.mark.parametrize(
    ("route", "stream"),
    [("/v1/chat/completions", False), ("/v1/chat/completions", True),
     ("/v1/messages", False), ("/v1/messages", True)],
)  # fmt: skip
async def test_a_cancelled_routed_request_counts_against_its_node(nursery, route, stream):
    node = BusyNode()
    listeners = await nursery.start(functools.partial(trio.serve_tcp, host="127.0.0.1"),
                                    node.serve, 0)  # fmt: skip
    port = listeners[0].socket.getsockname()[1]
    gw = CortexGateway(CortexConfig(
        models_config="", neurons=(Neuron(name=NODE, endpoint=f"http://127.0.0.1:{port}"),),
        gateway=Gateway(listen="127.0.0.1:0", metrics_listen="127.0.0.1:0"),
        fleet=Fleet(poll_interval=0.2), catalogue=Catalogue.of([ModelProfile(id=MODEL)]),
    ))  # fmt: skip
    await nursery.start(gw.run)
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, "stream": stream}
    with trio.fail_after(20):
        while not gw.fleet.healthy():
            await gw.fleet.wait_changed()
        async with (
            httpx.AsyncClient(base_url=gw.url, timeout=30) as client,
            trio.open_nursery() as inner,
        ):
            inner.start_soon(functools.partial(client.post, route, json=body))
            await node.changed.wait()  # the node has the request: leave it
            inner.cancel_scope.cancel()
        while not cancelled(gw, route, NODE):  # noqa: ASYNC110 (a metric has no event)
            await trio.sleep(0.05)  # until the gateway notices the client left
    gw.stop()
    assert cancelled(gw, route, NODE) == 1
    assert cancelled(gw, route, "none") == 0
