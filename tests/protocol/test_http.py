"""The shared HTTP edge: the two hypercorn/Quart fixes and body parsing."""

from __future__ import annotations

import os
import re
import stat

import attrs
import httpx
import pytest
import trio
from quart import request
from quart_trio import QuartTrio

from protocol.errors import ApiError, RateLimited
from protocol.http import error_response, json_response, make_config, parse_body, prepare_app, serve

BIG = 8 << 20


@attrs.frozen
class Echo:
    text: str
    loud: bool = False


def make_app() -> QuartTrio:
    app = QuartTrio(__name__)
    app.config["RESPONSE_TIMEOUT"] = 0.5  # prepare_app must lift this

    @app.post("/echo")
    async def echo():
        try:
            body = await parse_body(request, Echo)
        except ApiError as exc:
            return error_response(exc)
        return json_response({"text": body.text.upper() if body.loud else body.text})

    @app.get("/busy")
    async def busy():
        return error_response(RateLimited("model is busy", retry_after=2.2), "anthropic")

    @app.get("/slow-stream")
    async def slow_stream():
        async def body():
            for i in range(4):
                await trio.sleep(0.3)
                yield f"data: {i}\n\n".encode()

        return body(), 200, {"Content-Type": "text/event-stream"}

    @app.get("/big")
    async def big():  # more than a socket buffer takes at once
        return bytes(range(256)) * (BIG // 256), 200, {"Content-Type": "application/octet-stream"}

    return prepare_app(app, max_body_bytes=1024)


@pytest.fixture
async def base_url(nursery):
    return (await nursery.start(serve, make_app(), make_config("127.0.0.1", 0)))[0]


async def test_connection_close_gets_eof(base_url):
    port = int(base_url.rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET /busy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    received = b""
    with trio.fail_after(3):  # without the shielded close, no EOF ever arrives
        while chunk := await stream.receive_some(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 429")
    await stream.aclose()


async def test_stream_outlives_quart_response_timeout(base_url):
    async with httpx.AsyncClient() as client, client.stream("GET", f"{base_url}/slow-stream") as r:
        chunks = [line async for line in r.aiter_lines() if line]
    assert chunks == ["data: 0", "data: 1", "data: 2", "data: 3"]


async def test_parse_body_and_errors(base_url):
    async with httpx.AsyncClient(base_url=base_url) as client:
        ok = await client.post("/echo", json={"text": "hi", "loud": True, "vendor_extra": 1})
        assert ok.json() == {"text": "HI"}

        wrong = await client.post("/echo", json={"text": "hi", "loud": "false"})
        assert wrong.status_code == 400
        assert wrong.json()["error"] == {
            "message": "expected bool, got string @ $.loud",
            "type": "invalid_request_error",
            "code": "invalid_request_body",
            "param": "loud",
            "errors": ["expected bool, got string @ $.loud"],
        }

        bad = await client.post(
            "/echo", content=b'{"text": ', headers={"content-type": "application/json"}
        )
        assert (bad.status_code, bad.json()["error"]["code"]) == (400, "malformed_json")

        form = await client.post("/echo", data={"text": "hi"})
        assert (form.status_code, form.json()["error"]["code"]) == (415, "unsupported_media_type")

        big = await client.post("/echo", json={"text": "x" * 2000})
        assert big.status_code == 413
        assert big.json()["error"]["code"] == "request_too_large"
        assert big.json()["error"]["max_bytes"] == 1024

        busy = await client.get("/busy")
        assert busy.status_code == 429
        assert busy.headers["retry-after"] == "3"
        assert busy.json() == {
            "type": "error",
            "error": {"type": "rate_limit_error", "message": "model is busy"},
        }
        # the server kept serving through all of it
        assert (await client.post("/echo", json={"text": "still"})).json() == {"text": "still"}


async def _server_writes(base_url, monkeypatch, raw_request: bytes) -> list[bytes]:
    """What the server wrote to its socket for `raw_request`, write by write (straight
    to the socket, or through trio's stream when the socket was busy)."""
    writes: list[bytes] = []
    send_all, write = trio.SocketStream.send_all, os.write

    async def recording_send_all(self, data) -> None:
        if not bytes(data).startswith(b"GET "):  # the client's own request
            writes.append(bytes(data))
        await send_all(self, data)

    def recording_write(fd: int, data) -> int:
        sent = write(fd, data)
        if stat.S_ISSOCK(os.fstat(fd).st_mode):
            writes.append(bytes(data[:sent]))
        return sent

    monkeypatch.setattr(trio.SocketStream, "send_all", recording_send_all)
    monkeypatch.setattr(os, "write", recording_write)
    stream = await trio.open_tcp_stream("127.0.0.1", int(base_url.rsplit(":", 1)[1]))
    await stream.send_all(raw_request)
    with trio.fail_after(5):
        while await stream.receive_some(65536):
            pass
    await stream.aclose()
    return writes


async def test_a_sized_response_goes_out_in_one_write(base_url, monkeypatch):
    request = b"GET /busy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    writes = await _server_writes(base_url, monkeypatch, request)
    assert len(writes) == 1, writes  # head, body and the empty end: one write
    assert writes[0].startswith(b"HTTP/1.1 429") and writes[0].endswith(b"}")


async def test_a_streamed_response_sends_its_head_at_once(base_url, monkeypatch):
    request = b"GET /slow-stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    writes = await _server_writes(base_url, monkeypatch, request)
    assert writes[0].startswith(b"HTTP/1.1 200") and writes[0].endswith(b"\r\n\r\n"), writes
    assert b"data: 0" in writes[1]


async def test_a_body_the_socket_cannot_take_at_once_arrives_whole(base_url):
    """The direct write takes what the socket buffer holds; the rest goes through
    hypercorn's send path, in order, while the client reads slowly."""
    port = int(base_url.rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await trio.sleep(0.2)  # the server has filled the socket and waits to write the rest
    received = bytearray()
    with trio.fail_after(10):
        while data := await stream.receive_some(1 << 16):
            received += data
    await stream.aclose()
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and f"content-length: {BIG}".encode() in head
    assert body == bytes(range(256)) * (BIG // 256)


async def test_writes_keep_their_order_on_a_busy_connection(base_url):
    """Keep-alive requests in a row on one connection, one of them big: every answer
    whole and in order (a direct write never overtakes bytes still queued)."""
    async with httpx.AsyncClient(base_url=base_url) as client:
        for path in ("/busy", "/big", "/busy", "/big", "/busy"):
            response = await client.get(path)
            if path == "/big":
                assert response.content == bytes(range(256)) * (BIG // 256)
            else:
                assert response.status_code == 429


async def test_pipelined_requests_in_one_packet_are_each_answered_in_order(base_url):
    """Three requests written at once (the server reads them in one go): three
    answers, in order, on the one connection."""
    port = int(base_url.rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    body = b'{"text": "one"}'
    post = (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
    busy = b"GET /busy HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /busy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    await stream.send_all(post + busy + last)
    received = b""
    with trio.fail_after(5):
        while data := await stream.receive_some(65536):
            received += data
    await stream.aclose()
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", received) == [b"200", b"429", b"429"], received
    assert received.index(b'{"text":"one"}') < received.index(b"HTTP/1.1 429")
