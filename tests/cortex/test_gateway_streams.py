"""A relayed stream's lifetime on the gateway: counted in flight until its body ends,
and cleaned up when the client leaves between the response head and the body.

The node is a few lines of raw HTTP on a real socket: it answers the polls, and
to an inference request it sends an SSE head and one chat chunk, then holds the
stream open until the test lets it finish (or the gateway hangs up on it).
"""

from __future__ import annotations

import functools
import json
from typing import Any

import httpx
import pytest
import trio

from cortex.config import CortexConfig, Fleet, Gateway, Neuron
from cortex.fleet_snapshot import Catalogue, ModelProfile
from cortex.gateway import Gateway as CortexGateway
from cortex.http import create_app

MODEL = "org/m"
POLLS = {
    b"/discovery": {"hostname": "h", "devices": [{"index": 0, "name": "c", "vram_total_mb": 64}]},
    b"/models": [{"id": MODEL, "harness": "transformers", "status": "loaded", "devices": [0]}],
    b"/health": {"uptime_secs": 1, "models": [{"id": MODEL}]},
}
CHUNK = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
         "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"},
                      "finish_reason": None}]}  # fmt: skip
LAST = {**CHUNK, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}  # fmt: skip
ROUTES = {
    "/v1/chat/completions": {"model": MODEL, "stream": True,
                             "messages": [{"role": "user", "content": "hi"}]},
    "/v1/messages": {"model": MODEL, "stream": True, "max_tokens": 4,
                     "messages": [{"role": "user", "content": "hi"}]},
}  # fmt: skip


class HeldNode:
    """The node: streams one chunk, then waits for `release`; notes each hang-up."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.streams_started = 0
        self.streams_closed = 0

    async def serve(self, stream: trio.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some(65536)
        path = request.split(b" ", 2)[1]
        if path in POLLS:
            body = json.dumps(POLLS[path]).encode()
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                  b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
                                  % (len(body), body))  # fmt: skip
            return await stream.aclose()
        self.streams_started += 1
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n" + _chunk(CHUNK))  # fmt: skip
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_hang_up, stream, nursery.cancel_scope)
            await self.release.wait()
            await stream.send_all(_chunk(LAST) + _sse(b"[DONE]") + b"0\r\n\r\n")
            nursery.cancel_scope.cancel()
        await stream.aclose()

    async def _watch_hang_up(self, stream: trio.SocketStream, scope: trio.CancelScope) -> None:
        while await stream.receive_some(65536):  # b"": the gateway hung up
            pass
        self.streams_closed += 1
        scope.cancel()


def _sse(data: bytes) -> bytes:
    event = b"data: " + data + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


def _chunk(body: dict) -> bytes:
    return _sse(json.dumps(body).encode())


async def _gateway(nursery: trio.Nursery, node: HeldNode) -> CortexGateway:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, host="127.0.0.1"),
                                    node.serve, 0)  # fmt: skip
    port = listeners[0].socket.getsockname()[1]
    gw = CortexGateway(CortexConfig(
        models_config="", neurons=(Neuron(name="n", endpoint=f"http://127.0.0.1:{port}"),),
        gateway=Gateway(listen="127.0.0.1:0", metrics_listen="127.0.0.1:0"),
        fleet=Fleet(poll_interval=0.2), catalogue=Catalogue.of([ModelProfile(id=MODEL)]),
    ))  # fmt: skip
    await nursery.start(gw.run)
    with trio.fail_after(10):
        while not gw.fleet.healthy():
            await gw.fleet.wait_changed()
    return gw


async def _eventually(check: Any) -> None:
    with trio.fail_after(10):
        while True:
            if check():
                return
            await trio.sleep(0.01)


def _in_flight(gw: CortexGateway, route: str) -> float:
    return gw.metrics.registry.get_sample_value("cortex_requests_in_flight", {"route": route})


def _finished(gw: CortexGateway, route: str, outcome: str) -> float:
    return gw.metrics.registry.get_sample_value("cortex_requests_total", {
        "route": route, "model": MODEL, "node": "n", "outcome": outcome}) or 0  # fmt: skip


@pytest.mark.parametrize("route", list(ROUTES))
async def test_a_stream_counts_in_flight_until_its_body_ends(nursery, route):
    node = HeldNode()
    gw = await _gateway(nursery, node)
    async with (
        httpx.AsyncClient(base_url=gw.url, timeout=30) as client,
        client.stream("POST", route, json=ROUTES[route]) as response,
    ):
        assert response.status_code == 200
        lines = response.aiter_lines()
        with trio.fail_after(10):
            while "hi" not in await anext(lines):  # the first content is through
                pass
        assert _in_flight(gw, route) == 1  # the route returned long ago; the body has not
        node.release.set()
        async for _ in lines:
            pass
    await _eventually(lambda: _in_flight(gw, route) == 0)
    assert _finished(gw, route, "ok") == 1
    gw.stop()


def _asgi_scope(route: str, body: bytes) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": "POST", "scheme": "http", "path": route,
            "raw_path": route.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"gw"), (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "extensions": {}}  # fmt: skip


@pytest.mark.parametrize("route", list(ROUTES))
async def test_a_client_gone_between_head_and_body_ends_the_request(nursery, route):
    """The gateway's own app, driven at its ASGI edge: the client hangs up while the
    response head is being sent, so the body is never iterated. The request actor must
    still be cancelled, the node's stream closed, the request counted as cancelled."""
    node = HeldNode()
    gw = await _gateway(nursery, node)
    app = create_app(gw)
    body, requested, gone = json.dumps(ROUTES[route]).encode(), False, trio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200
            gone.set()  # the client hangs up as the head goes out
            await trio.sleep_forever()
        raise AssertionError(f"the body was sent: {message}")

    with trio.fail_after(10):
        await app(_asgi_scope(route, body), receive, send)
    await _eventually(lambda: node.streams_closed == 1 and not gw.requests.statistics().children)
    assert node.streams_started == 1
    assert _in_flight(gw, route) == 0
    assert _finished(gw, route, "cancelled") == 1
    gw.stop()


async def test_the_fleet_view_is_what_cortex_status_reads(nursery):
    """`/admin/fleet` is built as a `cortex.fleet_view.FleetView` and reads back as one."""
    from cortex.fleet_view import FleetView

    gw = await _gateway(nursery, HeldNode())
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
        body = (await client.get("/admin/fleet")).json()
    view = FleetView.from_dict(body)
    [node] = view.nodes
    assert (view.status, node.name, node.state) == ("ok", "n", "up")
    assert [m.id for m in node.models] == [MODEL] and node.devices[0].total_mb == 64
    assert view.to_dict() == body
    gw.stop()
