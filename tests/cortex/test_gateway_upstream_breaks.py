"""A node that dies mid-answer: the gateway answers a clear 502, never a 500.

The node is a few lines of raw HTTP on a real socket: it answers the polls,
and to an inference request it sends a head promising 500 bytes, a few of
them, and closes the connection — what a neuron killed while writing its
answer looks like from the gateway.
"""

from __future__ import annotations

import functools
import json

import httpx
import trio

from cortex.config import CortexConfig, Fleet, Gateway, Neuron
from cortex.fleet_snapshot import Catalogue, ModelProfile
from cortex.gateway import Gateway as CortexGateway

MODEL = "org/m"
POLLS = {
    b"/discovery": {"hostname": "h", "devices": [{"index": 0, "name": "c", "vram_total_mb": 64}]},
    b"/models": [{"id": MODEL, "harness": "transformers", "status": "loaded", "devices": [0]}],
    b"/health": {"uptime_secs": 1, "models": [{"id": MODEL}]},
}


async def dying_node(stream: trio.SocketStream) -> None:
    request = b""
    while b"\r\n\r\n" not in request:
        request += await stream.receive_some(65536)
    path = request.split(b" ", 2)[1]
    if path in POLLS:
        body = json.dumps(POLLS[path]).encode()
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                              b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
                              % (len(body), body))  # fmt: skip
    else:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                              b'Content-Length: 500\r\n\r\n{"id": "chatcmpl-')  # fmt: skip
    await stream.aclose()


async def test_a_node_dying_mid_answer_is_a_502(nursery):
    listeners = await nursery.start(functools.partial(trio.serve_tcp, host="127.0.0.1"),
                                    dying_node, 0)  # fmt: skip
    port = listeners[0].socket.getsockname()[1]
    gw = CortexGateway(CortexConfig(
        models_config="", neurons=(Neuron(name="n", endpoint=f"http://127.0.0.1:{port}"),),
        gateway=Gateway(listen="127.0.0.1:0", metrics_listen="127.0.0.1:0"),
        fleet=Fleet(poll_interval=0.2), catalogue=Catalogue.of([ModelProfile(id=MODEL)]),
    ))  # fmt: skip
    await nursery.start(gw.run)
    messages = [{"role": "user", "content": "hi"}]
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
        with trio.fail_after(10):
            while not gw.fleet.healthy():
                await gw.fleet.wait_changed()
        chat = await client.post("/v1/chat/completions",
                                 json={"model": MODEL, "messages": messages})  # fmt: skip
        anthropic = await client.post("/v1/messages", json={"model": MODEL, "messages": messages,
                                                            "max_tokens": 4})  # fmt: skip
    gw.stop()
    assert chat.status_code == 502, chat.text
    assert chat.json()["error"]["code"] == "upstream_connection_error"
    assert anthropic.status_code == 502, anthropic.text
    assert anthropic.json()["type"] == "error"
