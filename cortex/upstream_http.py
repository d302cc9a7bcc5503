"""The relay's HTTP/1.1 client: gateway → neuron, over trio sockets, nothing else.

The inference relay sends one POST per request to a node and forwards its answer;
httpx (httpcore, h11) spent several thousand Python calls on each of those exchanges
(`bench/gateway.py`), more than the relay itself. `Client` does that one exchange
directly:

* a keep-alive pool per origin (scheme, host, port): idle connections on a stack,
  most recently used on top, at most `max_idle` kept per origin, none older than
  `keepalive_expiry` seconds reused; a semaphore bounds the requests in flight
  (`max_connections`, waiting for a slot is the `pool` timeout);
* the request written in one go (head and body, with `Content-Length`), the
  response head read and parsed once, the body framed by `Content-Length`, chunked
  transfer coding (chunk data yielded as it arrives, every whole chunk already
  received in one piece) or the connection's end;
* timeouts as httpx's: `connect`, `read` (each wait for bytes), `write`, `pool`;
* a connection goes back to the pool only with its answer read to the end; a body
  left early, a cancelled read, a broken answer close it;
* a pooled connection the node had already closed (the request could not be written,
  or the connection ended before any byte of an answer) is retried once on a new one;
* failures are httpx's exception classes (`httpx.ConnectError`, `ReadTimeout`,
  `RemoteProtocolError`, …), so the relay maps them as before: before the head a
  `TransportError`, mid-body an `HTTPError`.

`Response` has what the relay reads of httpx's: `status_code`, `headers` (names in
lower case), `aread`, `aiter_raw`, `aclose`.

Not for: anything but the relay's POSTs (polls, loads and admin relays use httpx),
HTTP/2, proxies, redirects, cookies, content decoding (nothing asks a node for any).
"""

from __future__ import annotations

import functools
import math
import re
import ssl
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs
import httpx
import trio

from protocol.http import write_now

__all__ = ["Client", "Response"]

MAX_HEAD_BYTES = 64 * 1024  # a response head (status line and headers)
_MAX_LINE = 4096  # a chunk-size or trailer line
_READ_SIZE = 64 * 1024
_NO_BODY = frozenset((204, 304))
# A chunk-size line: hex digits, optional extensions (ignored).
_CHUNK_SIZE = re.compile(rb"([0-9a-fA-F]{1,16})[ \t]*(?:;[^\r\n]*)?\r\n")


@attrs.frozen
class _Target:
    """A URL as the client uses it: where to connect, and the request's first lines."""

    origin: tuple[str, str, int]  # scheme, host, port
    head: bytes  # b"<path> HTTP/1.1\r\nhost: <host>\r\n"


@functools.lru_cache(maxsize=4096)
def _target(url: str) -> _Target:
    """`url` parsed once (node endpoints and routes: a bounded set)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise httpx.UnsupportedProtocol(f"not an http(s) URL: {url!r}")
    default = 443 if parts.scheme == "https" else 80
    port = parts.port or default
    host = parts.hostname
    named = f"[{host}]" if ":" in host else host
    authority = named if port == default else f"{named}:{port}"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = f"{path} HTTP/1.1\r\nhost: {authority}\r\n".encode("ascii")
    return _Target((parts.scheme, host, port), head)


class Client:
    """A pool of keep-alive connections to the nodes; see the module docstring.

    `token(url)` names the `Authorization: Bearer` token for a URL (None: none)."""

    def __init__(
        self,
        *,
        connect: float = 5.0,
        read: float | None = 300.0,
        write: float | None = 60.0,
        pool: float | None = 60.0,
        max_connections: int = 1024,
        max_idle: int = 256,
        keepalive_expiry: float = 5.0,
        token: Callable[[str], str | None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._connect = connect
        self._read = math.inf if read is None else read
        self._write = math.inf if write is None else write
        self._pool = math.inf if pool is None else pool
        self._slots = trio.Semaphore(max_connections)
        self._max_idle = max_idle
        self._expiry = keepalive_expiry
        self._token = token
        self._ssl = ssl_context  # made on the first https connection when not given
        self._auth: dict[str, bytes] = {}  # url → its authorization header line (or b"")
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._live: set[_Connection] = set()  # every open connection, busy or idle
        self._closed = False

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> Response:
        """Send `body` to `url`; the response with its head read, its body not (close it)."""
        return await self.request("POST", url, headers, body)

    async def request(self, method: str, url: str, headers: Mapping[str, str],
                      body: bytes = b"") -> Response:  # fmt: skip
        if self._closed:
            raise RuntimeError("the client is closed")
        target = _target(url)
        message = self._message(method, url, target, headers, body)
        await self._acquire_slot()
        try:
            for attempt in range(2):
                if target.origin[0] == "https" and self._ssl is None:
                    self._ssl = httpx.create_ssl_context()  # once: it reads the CA bundle
                connection, reused = await self._checkout(target.origin)
                try:
                    status, fields, keep = await connection.exchange(message, self._write,
                                                                     self._read)  # fmt: skip
                except _Stale as stale:
                    connection.close()
                    if reused and attempt == 0:
                        continue  # the node closed it while it was idle: a new one
                    raise stale.error from None
                except BaseException:
                    connection.close()
                    raise
                return Response(self, connection, status, fields, keep, method)
            raise AssertionError("unreachable")  # pragma: no cover
        except BaseException:
            self._slots.release()
            raise

    def _message(self, method: str, url: str, target: _Target, headers: Mapping[str, str],
                 body: bytes) -> bytes:  # fmt: skip
        lines = [method.encode("ascii"), b" ", target.head]
        for name, value in headers.items():
            lines += (_field(name), b": ", _field(value), b"\r\n")
        lines += (self._authorization(url), b"content-length: ", b"%d" % len(body),
                  b"\r\n\r\n", body)  # fmt: skip
        return b"".join(lines)

    def _authorization(self, url: str) -> bytes:
        line = self._auth.get(url)
        if line is None:
            token = self._token(url) if self._token is not None else None
            line = b"authorization: Bearer " + _field(token) + b"\r\n" if token else b""
            if len(self._auth) < 4096:  # endpoints by routes: bounded, but be sure
                self._auth[url] = line
        return line

    async def _acquire_slot(self) -> None:
        try:
            self._slots.acquire_nowait()  # the common case: no timer
            return
        except trio.WouldBlock:
            pass
        with trio.move_on_after(self._pool):
            await self._slots.acquire()
            return
        raise httpx.PoolTimeout(f"no connection slot within {self._pool:g}s")

    async def _checkout(self, origin: tuple[str, str, int]) -> tuple[_Connection, bool]:
        """The most recently used idle connection to `origin` (True), else a new one."""
        idle = self._idle.get(origin)
        now = trio.current_time()
        while idle:
            connection = idle.pop()
            if now - connection.idle_since < self._expiry:
                return connection, True
            connection.close()
        connection = await _Connection.open(origin, self._connect, self._ssl, self._live)
        return connection, False

    def _checkin(self, connection: _Connection) -> None:
        """A response ended: its connection kept for the next request if it can serve one."""
        self._slots.release()
        if self._closed or not connection.reusable():
            connection.close()
            return
        idle = self._idle.setdefault(connection.origin, [])
        now = connection.idle_since = trio.current_time()
        idle.append(connection)
        # The oldest idle connection is the likeliest to have expired: one look per
        # request keeps the stack free of old sockets without scanning it.
        if len(idle) > self._max_idle or now - idle[0].idle_since >= self._expiry:
            idle.pop(0).close()

    def _discard(self, connection: _Connection) -> None:
        """A response left unfinished: its connection closed, never reused."""
        self._slots.release()
        connection.close()

    async def aclose(self) -> None:
        """Close every connection, idle or busy."""
        self._closed = True
        self._idle.clear()
        for connection in list(self._live):
            connection.close()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _field(value: str) -> bytes:
    data = value.encode("utf-8")
    if b"\r" in data or b"\n" in data or b"\0" in data:
        raise httpx.LocalProtocolError(f"a header holds a line break: {value[:60]!r}")
    return data


class _Stale(Exception):
    """A reused connection turned out closed before any byte of an answer: `error` is
    what a fresh connection failing the same way raises."""

    def __init__(self, error: httpx.TransportError) -> None:
        self.error = error


class _Connection:
    """One connection: its stream, the bytes read past what has been consumed."""

    def __init__(self, origin: tuple[str, str, int], stream: trio.abc.Stream,
                 sock: Any, live: set[_Connection]) -> None:  # fmt: skip
        self.origin = origin
        self.stream = stream
        self.buffer = bytearray()
        self.idle_since = 0.0
        self.open = True
        self.keep_alive = True  # what the node's head allowed
        self._socket = sock
        self._live = live
        live.add(self)

    @classmethod
    async def open(cls, origin: tuple[str, str, int], limit: float,
                   context: ssl.SSLContext | None,
                   live: set[_Connection]) -> _Connection:  # fmt: skip
        scheme, host, port = origin
        with trio.move_on_after(limit):
            try:
                tcp = await trio.open_tcp_stream(host, port)
            except OSError as exc:
                raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
            stream: trio.abc.Stream = tcp
            if scheme == "https":
                context = context or httpx.create_ssl_context()  # (a client sets it)
                stream = trio.SSLStream(tcp, context, server_hostname=host,
                                        https_compatible=True)  # fmt: skip
                try:
                    await stream.do_handshake()
                except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
                    tcp.socket.close()
                    raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
                except BaseException:
                    tcp.socket.close()
                    raise
            return cls(origin, stream, tcp.socket, live)
        raise httpx.ConnectTimeout(f"no connection to {host}:{port} within {limit:g}s")

    async def exchange(self, message: bytes, write: float,
                       read: float) -> tuple[int, dict[str, str], bool]:  # fmt: skip
        """Write the request, read the answer's final head (informational 1xx heads are
        skipped): status, headers, whether the connection may be kept after its body.
        One timer, its deadline moved at each step (`write`, then `read` per wait)."""
        writing, unsent = True, None
        with trio.CancelScope(deadline=trio.current_time() + write) as scope:
            try:
                socket = getattr(self.stream, "socket", None)  # plain TCP (TLS: its stream)
                if socket is not None and (sent := write_now(socket, message)):
                    message = memoryview(message)[sent:]  # (usually all of it)
                if message:
                    await self.stream.send_all(message)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                # A node may refuse a request (413) before reading all of it and close:
                # its answer is read all the same, as httpcore does.
                unsent = httpx.WriteError(str(exc) or type(exc).__name__)
            writing = False
            while True:
                try:
                    head = await self._head_bytes(scope, read)
                except _Stale:
                    if unsent is not None:
                        raise _Stale(unsent) from None
                    raise
                status, fields, keep = _parse_head(head)
                if not 100 <= status < 200:
                    return status, fields, keep and unsent is None
                if status == 101:
                    raise httpx.RemoteProtocolError("the node switched protocols")
        if writing:
            raise httpx.WriteTimeout(f"the request was not written within {write:g}s")
        raise httpx.ReadTimeout(f"nothing received for {read:g}s")

    async def receive(self, limit: float) -> bytes:
        """The next bytes (b"" at the connection's end)."""
        with trio.move_on_after(limit):
            return await self._receive()
        raise httpx.ReadTimeout(f"nothing received for {limit:g}s")

    async def _receive(self) -> bytes:
        try:
            return await self.stream.receive_some(_READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__) from exc

    async def _head_bytes(self, scope: trio.CancelScope, limit: float) -> bytes:
        buffer, start = self.buffer, 0
        while (end := buffer.find(b"\r\n\r\n", start)) < 0:
            if len(buffer) > MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError(f"a response head over {MAX_HEAD_BYTES} bytes")
            start = max(0, len(buffer) - 3)
            nothing_yet = not buffer
            scope.deadline = trio.current_time() + limit
            try:
                data = await self._receive()
            except httpx.ReadError as exc:
                if nothing_yet:
                    raise _Stale(exc) from exc
                raise
            if not data:
                error = httpx.RemoteProtocolError("Server disconnected without sending a response.")
                if nothing_yet:
                    raise _Stale(error)
                raise error
            buffer += data
        if end > MAX_HEAD_BYTES:
            raise httpx.RemoteProtocolError(f"a response head over {MAX_HEAD_BYTES} bytes")
        head = bytes(buffer[:end])
        del buffer[: end + 4]
        return head

    def reusable(self) -> bool:
        return self.open and self.keep_alive and not self.buffer

    def close(self) -> None:
        """Close now (sync: also from a cancelled or finishing task)."""
        if self.open:
            self.open = False
            self._live.discard(self)
            self._socket.close()


def _parse_head(head: bytes) -> tuple[int, dict[str, str], bool]:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if (len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") or len(parts[1]) != 3
            or not parts[1].isdigit()):  # fmt: skip
        raise httpx.RemoteProtocolError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or b" " in name:
            raise httpx.RemoteProtocolError(f"not a header line: {line[:80]!r}")
        key = name.decode("latin-1").lower()
        text = value.strip().decode("latin-1")
        fields[key] = f"{fields[key]}, {text}" if key in fields else text
    connection = fields.get("connection", "").lower()
    keep = parts[0] == b"HTTP/1.1" and "close" not in connection
    return int(parts[1]), fields, keep


class Response:
    """A node's answer: head read; the body read with `aread` or `aiter_raw`, once.

    Its connection returns to the pool when the body has been read to its end, and is
    closed when the response is closed before that (or a read fails)."""

    def __init__(self, client: Client, connection: _Connection, status: int,
                 headers: dict[str, str], keep_alive: bool, method: str) -> None:  # fmt: skip
        self.status_code = status
        self.headers = headers
        self._client = client
        self._connection: _Connection | None = connection
        connection.keep_alive = keep_alive
        self._content: bytes | None = None  # the body, once `aread`
        self._left = 0  # bytes left: of the body (`Content-Length`) or of this chunk
        self._mode = _framing(status, headers, method)
        if self._mode == _LENGTH:
            self._left = _content_length(headers["content-length"])
        elif self._mode == _TO_END:
            connection.keep_alive = False
        if self._mode == _NONE or (self._mode == _LENGTH and self._left == 0):
            self._release()

    @property
    def is_closed(self) -> bool:
        return self._connection is None

    async def aread(self) -> bytes:
        """The whole body (kept: a second `aread` returns it again)."""
        if self._content is None:
            parts = [data async for data in self]
            self._content = parts[0] if len(parts) == 1 else b"".join(parts)
        return self._content

    def aiter_raw(self) -> Response:
        """The body as it arrives (an async iterator with `aclose`)."""
        return self

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes:
        connection = self._connection
        if connection is None:
            raise StopAsyncIteration
        try:
            if self._mode == _LENGTH:
                data = await self._length(connection)
            elif self._mode == _CHUNKED:
                data = await self._chunked(connection)
            else:
                data = await self._to_end(connection)
        except BaseException:
            self._discard()
            raise
        if data:
            return data
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Done with it: an unread remainder closes the connection."""
        self._discard()

    async def _fill(self, connection: _Connection) -> bool:
        data = await connection.receive(self._client._read)
        connection.buffer += data
        return bool(data)

    async def _length(self, connection: _Connection) -> bytes:
        buffer = connection.buffer
        if not buffer and not await self._fill(connection):
            raise httpx.RemoteProtocolError(f"peer closed connection without sending "
                                            f"complete message body: {self._left} bytes "
                                            "missing")  # fmt: skip
        take = min(self._left, len(buffer))
        data = bytes(buffer[:take])
        del buffer[:take]
        self._left -= take
        if not self._left:
            self._release()
        return data

    async def _to_end(self, connection: _Connection) -> bytes:
        if not connection.buffer and not await self._fill(connection):
            self._release()  # the end of the connection is the end of the body
            return b""
        data = bytes(connection.buffer)
        connection.buffer.clear()
        return data

    async def _chunked(self, connection: _Connection) -> bytes:
        """Every whole chunk's data already received (at least some), b"" at the end."""
        parts: list[bytes] = []
        while True:
            if self._parse_chunks(connection.buffer, parts):
                self._release()
                return b"".join(parts)
            if parts:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            if not await self._fill(connection):
                raise httpx.RemoteProtocolError("peer closed connection without sending "
                                                "complete message body: incomplete chunked "
                                                "read")  # fmt: skip

    # `_left` in chunked mode: > 0 data bytes of this chunk left; 0 a size line next;
    # -1 the CRLF after a chunk's data next; -2 in the trailer (lines until an empty one).
    def _parse_chunks(self, buffer: bytearray, parts: list[bytes]) -> bool:
        """Move whole or partial chunk data from `buffer` to `parts`; True at the end."""
        data, pos, end = bytes(buffer), 0, len(buffer)  # sliced as bytes, consumed once
        try:
            while True:
                left = self._left
                if left > 0:
                    if pos == end:
                        return False
                    take = min(left, end - pos)
                    parts.append(data[pos : pos + take])
                    pos += take
                    if take < left:
                        self._left = left - take
                        return False
                    left = -1
                if left == -1:
                    if end - pos < 2:
                        self._left = -1
                        return False
                    if data[pos : pos + 2] != b"\r\n":
                        raise httpx.RemoteProtocolError("chunk data not followed by CRLF")
                    pos += 2
                    left = 0
                if left == 0:
                    size = _CHUNK_SIZE.match(data, pos)
                    if size is None:
                        line = data.find(b"\r\n", pos)
                        if line >= 0 or end - pos > _MAX_LINE:
                            raise httpx.RemoteProtocolError(
                                f"not a chunk size: {data[pos : pos + 40]!r}"
                            )
                        self._left = 0
                        return False
                    pos = size.end()
                    self._left = int(size.group(1), 16) or -2
                    continue
                line = data.find(b"\r\n", pos)  # the trailer: its fields are dropped
                if line < 0:
                    if end - pos > _MAX_LINE:
                        raise httpx.RemoteProtocolError("a trailer line too long")
                    return False
                last, pos = line == pos, line + 2
                if last:
                    return True
        finally:
            del buffer[:pos]

    def _release(self) -> None:
        """The body is complete: the connection goes back to the pool."""
        connection, self._connection = self._connection, None
        if connection is not None:
            self._client._checkin(connection)

    def _discard(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._client._discard(connection)


_NONE, _LENGTH, _CHUNKED, _TO_END = range(4)


def _framing(status: int, headers: Mapping[str, str], method: str) -> int:
    if status in _NO_BODY or method == "HEAD":
        return _NONE
    coding = headers.get("transfer-encoding")
    if coding is not None:
        if coding.lower().rsplit(",", 1)[-1].strip() != "chunked":
            raise httpx.RemoteProtocolError(f"unsupported transfer-encoding {coding!r}")
        return _CHUNKED
    return _LENGTH if "content-length" in headers else _TO_END


def _content_length(value: str) -> int:
    first, *rest = (v.strip() for v in value.split(","))
    if not first.isdigit() or len(first) > 18 or any(v != first for v in rest):
        raise httpx.RemoteProtocolError(f"not a content-length: {value[:40]!r}")
    return int(first)
