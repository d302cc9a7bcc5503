"""The relay's HTTP/1.1 client (`cortex.upstream_http`) against scripted servers on
loopback: keep-alive reuse, chunked bodies, nodes that close or break, cancellation.

Every client here has one connection slot (`max_connections=1`) and a short pool
timeout, so a response that failed to give its slot back fails the next request.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import ssl
import subprocess
from collections.abc import Awaitable, Callable

import httpx
import pytest
import trio

from cortex.upstream_http import Client

Handler = Callable[[trio.SocketStream, int], Awaitable[None]]


class Server:
    """A loopback listener running `handler(stream, n)` for its n-th connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []  # each request's head and body, as received
        self.url = ""

    async def start(self, nursery: trio.Nursery) -> Server:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, host="127.0.0.1"), self._serve, 0
        )
        port = listeners[0].socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        async with stream:
            await self.handler(stream, self.connections)

    async def request(self, stream: trio.SocketStream, pending: bytearray) -> bool:
        """Read one request (head + Content-Length body) into `requests`; False at EOF."""
        while b"\r\n\r\n" not in pending:
            data = await stream.receive_some(65536)
            if not data:
                return False
            pending += data
        end = pending.index(b"\r\n\r\n") + 4
        head = bytes(pending[:end])
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))  # fmt: skip
        while len(pending) < end + length:
            pending += await stream.receive_some(65536)
        self.requests.append(bytes(pending[: end + length]))
        del pending[: end + length]
        return True


def client(**kwargs) -> Client:
    return Client(max_connections=1, pool=2.0, read=5.0, **kwargs)


def answer(body: bytes, status: bytes = b"200 OK", extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n" + extra +
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip


async def keep_answering(server: Server, stream: trio.SocketStream, body: bytes) -> None:
    pending = bytearray()
    while await server.request(stream, pending):
        await stream.send_all(answer(body))


async def test_one_connection_serves_request_after_request(nursery):
    server = Server(lambda s, n: keep_answering(server, s, b'{"ok": %d}' % n))
    await server.start(nursery)
    async with client(token=lambda url: "sekrit" if url.startswith(server.url) else None) as c:
        for _ in range(3):
            response = await c.post(server.url + "/v1/chat/completions",
                                    {"content-type": "application/json", "x-request-id": "r1"},
                                    b'{"model": "m"}')  # fmt: skip
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            assert await response.aread() == b'{"ok": 1}'
            assert await response.aread() == b'{"ok": 1}'  # kept, as httpx does
    assert server.connections == 1
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat/completions HTTP/1.1"
    port = server.url.rsplit(":", 1)[1]
    assert set(lines[1:]) == {b"host: 127.0.0.1:" + port.encode(), b"x-request-id: r1",
                              b"content-type: application/json", b"content-length: 14",
                              b"authorization: Bearer sekrit"}  # fmt: skip
    assert body == b'{"model": "m"}'


async def test_a_request_bigger_than_the_socket_buffer_arrives_whole(nursery):
    """The request goes to the socket at once as far as it takes it; the rest follows
    as the node reads (slowly here), every byte in order, twice on one connection."""
    body = bytes(range(256)) * (32 << 12)  # 8 MiB

    async def slow_reader(stream: trio.SocketStream, n: int) -> None:
        await trio.sleep(0.3)  # the client has filled the socket buffer and waits
        await keep_answering(server, stream, b'{"ok": 1}')

    server = Server(slow_reader)
    await server.start(nursery)
    async with client() as c:
        for _ in range(2):
            response = await c.post(server.url + "/v1/chat/completions",
                                    {"content-type": "application/json"}, body)  # fmt: skip
            assert response.status_code == 200 and await response.aread() == b'{"ok": 1}'
    assert server.connections == 1
    assert [r.partition(b"\r\n\r\n")[2] == body for r in server.requests] == [True, True]


CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


async def test_a_chunked_body_is_decoded_however_it_is_split(nursery):
    events = [b"data: %d\n\n" % i for i in range(5)]
    wire = b"".join(b"%x\r\n" % len(e) + e + b"\r\n" for e in events)
    wire = wire.replace(b"9\r\n", b"9;ext=1\r\n", 1) + b"0\r\ntrailer: x\r\n\r\n"

    async def handler(stream: trio.SocketStream, n: int) -> None:
        pending = bytearray()
        while await server.request(stream, pending):
            await stream.send_all(CHUNKED_HEAD)
            for start in range(0, len(wire), 3):  # every boundary split somewhere
                await stream.send_all(wire[start : start + 3])
                await trio.sleep(0.001)

    server = await Server(handler).start(nursery)
    async with client() as c:
        for _ in range(2):
            response = await c.post(server.url + "/s", {}, b"{}")
            pieces = [piece async for piece in response.aiter_raw()]
            assert b"".join(pieces) == b"".join(events)
            assert len(pieces) > 1  # relayed as it came, not read whole
    assert server.connections == 1  # the whole body read: the connection was reused


async def test_a_node_closing_mid_body_is_an_error_and_its_connection_is_not_reused(nursery):
    async def handler(stream: trio.SocketStream, n: int) -> None:
        if n > 2:
            return await keep_answering(server, stream, b"fine")
        await server.request(stream, bytearray())
        if n == 1:
            await stream.send_all(answer(b"x" * 100)[:-90])  # 10 of 100 bytes, then gone
        else:
            await stream.send_all(CHUNKED_HEAD + b"5\r\nhello\r\n")

    server = await Server(handler).start(nursery)
    async with client() as c:
        for _ in range(2):
            response = await c.post(server.url + "/a", {}, b"")
            with pytest.raises(httpx.RemoteProtocolError, match="complete message body"):
                await response.aread()
        response = await c.post(server.url + "/a", {}, b"")
        assert await response.aread() == b"fine"
    assert server.connections == 3


async def test_a_pooled_connection_the_node_closed_is_replaced_transparently(nursery):
    async def handler(stream: trio.SocketStream, n: int) -> None:
        pending = bytearray()
        await server.request(stream, pending)
        await stream.send_all(answer(b"%d" % n))  # one answer per connection, then close

    server = await Server(handler).start(nursery)
    async with client() as c:
        for n in (1, 2, 3):
            response = await c.post(server.url + "/a", {}, b"")
            assert await response.aread() == b"%d" % n
            await trio.sleep(0.05)  # the node's close reaches the idle connection
    assert server.connections == 3
    assert len(server.requests) == 3  # each sent once where it was answered


async def test_a_fresh_connection_closed_without_an_answer_is_not_retried(nursery):
    async def handler(stream: trio.SocketStream, n: int) -> None:
        await server.request(stream, bytearray())  # read it, say nothing, close

    server = await Server(handler).start(nursery)
    async with client() as c:
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await c.post(server.url + "/a", {}, b"{}")
    assert server.connections == 1


async def test_a_body_left_or_cancelled_midway_closes_its_connection(nursery):
    released = trio.Event()

    async def handler(stream: trio.SocketStream, n: int) -> None:
        if n > 2:
            return await keep_answering(server, stream, b"next")
        await server.request(stream, bytearray())
        await stream.send_all(CHUNKED_HEAD + b"6\r\nfirst \r\n")
        await released.wait()  # the rest never comes before the client gives up

    server = await Server(handler).start(nursery)
    async with client() as c:
        response = await c.post(server.url + "/s", {}, b"")
        chunks = response.aiter_raw()
        assert await chunks.__anext__() == b"first "
        with trio.move_on_after(0.1) as scope:
            await chunks.__anext__()  # waits for more: cancelled mid-body
        assert scope.cancelled_caught
        assert response.is_closed

        response = await c.post(server.url + "/s", {}, b"")
        assert await response.aiter_raw().__anext__() == b"first "
        await response.aclose()  # left early

        response = await c.post(server.url + "/s", {}, b"")
        assert await response.aread() == b"next"  # no half-read connection handed out
    released.set()
    assert server.connections == 3


@pytest.mark.parametrize(
    "reply",
    [
        b"SPDY/9 200 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"x-filler: " + b"a" * 70_000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: ten\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
    ],
    ids=["protocol", "status", "header", "oversized", "length", "coding"],
)
async def test_a_garbage_head_is_a_clean_protocol_error(nursery, reply):
    async def handler(stream: trio.SocketStream, n: int) -> None:
        if n > 1:
            return await keep_answering(server, stream, b"ok")
        await server.request(stream, bytearray())
        await stream.send_all(reply)
        await trio.sleep(1)

    server = await Server(handler).start(nursery)
    async with client() as c:
        with pytest.raises(httpx.RemoteProtocolError):
            await c.post(server.url + "/a", {}, b"")
        response = await c.post(server.url + "/a", {}, b"")  # the slot came back
        assert await response.aread() == b"ok"


async def test_a_garbage_chunk_size_breaks_the_body(nursery):
    async def handler(stream: trio.SocketStream, n: int) -> None:
        await server.request(stream, bytearray())
        await stream.send_all(CHUNKED_HEAD + b"zz\r\nhello\r\n")
        await trio.sleep(1)

    server = await Server(handler).start(nursery)
    async with client() as c:
        response = await c.post(server.url + "/a", {}, b"")
        with pytest.raises(httpx.RemoteProtocolError, match="chunk size"):
            await response.aread()


async def test_connect_and_read_failures_are_httpx_errors(nursery):
    async def silent(stream: trio.SocketStream, n: int) -> None:
        await trio.sleep(5)

    server = await Server(silent).start(nursery)
    with trio.socket.socket() as unused:
        await unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    async with Client(max_connections=1, pool=1.0, read=0.2) as c:
        with pytest.raises(httpx.ConnectError):
            await c.post(f"http://127.0.0.1:{closed_port}/a", {}, b"")
        with pytest.raises(httpx.ReadTimeout):
            await c.post(server.url + "/a", {}, b"")
        with pytest.raises(httpx.LocalProtocolError):  # never written: no header injection
            await c.post(server.url + "/a", {"x-id": "a\r\nx-evil: 1"}, b"")


async def test_a_node_refusing_a_body_before_reading_it_is_still_heard(nursery):
    async def handler(stream: trio.SocketStream, n: int) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(65536)
        await stream.send_all(answer(b'{"error": "too large"}', b"413 Payload Too Large"))
        await trio.sleep(0.3)  # the answer arrives; the body is never read: then gone

    server = await Server(handler).start(nursery)
    async with client() as c:
        response = await c.post(server.url + "/a", {}, b"x" * (16 * 1024 * 1024))
        assert response.status_code == 413  # not a WriteError: what httpx did too
        assert await response.aread() == b'{"error": "too large"}'


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1 and its key (the openssl command)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)  # fmt: skip
    return cert, key


async def test_an_https_node_is_reached_over_tls_and_kept_alive(nursery, certificate):
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    server = Server(lambda s, n: keep_answering(server, s, b"secret"))

    async def tls(stream: trio.SocketStream) -> None:
        server.connections += 1
        wrapped = trio.SSLStream(stream, server_context, server_side=True)
        with contextlib.suppress(trio.BrokenResourceError):  # a client gone, or refusing us
            await keep_answering(server, wrapped, b"secret")  # type: ignore[arg-type]

    listeners = await nursery.start(functools.partial(trio.serve_tcp, host="127.0.0.1"), tls, 0)
    url = f"https://127.0.0.1:{listeners[0].socket.getsockname()[1]}/a"
    async with client(ssl_context=ssl.create_default_context(cafile=str(cert))) as c:
        for _ in range(2):
            response = await c.post(url, {}, b"{}")
            assert await response.aread() == b"secret"
    assert server.connections == 1
    async with client() as c:  # the system's CAs do not know this certificate
        with pytest.raises(httpx.ConnectError):
            await c.post(url, {}, b"{}")
