"""The gateway's HTTP client transport: httpx with a pool that costs O(1) per request.

httpcore's `AsyncConnectionPool` re-examines every connection it holds each time a
request starts or ends — every idle one with a `poll()` system call, and the idle count
in a nested loop — so with a few dozen keep-alive connections to the neurons the pool,
not the relay, was the gateway's largest cost under load (`bench/gateway.py`).
`Transport` is httpx's own transport (httpcore's HTTP/1.1 connections over trio, its
timeouts and its exception mapping) with `Pool` in place of httpcore's: a stack of idle
connections per origin, most recently used on top, and a semaphore bounding the
requests in flight (`max_connections`; waiting for one is the `pool` timeout).

`Client` is httpx's client without a cookie jar: the neurons set no cookies, and a
jar shared by every request would carry one request's cookies into the next; reading
every response's headers for them cost more than the relay's own work per request.
`url` parses a node URL once (httpx parses every `str` it is given).

Not for: HTTP/2 or proxies (the gateway speaks HTTP/1.1 to its neurons).
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any

import httpcore
import httpx
import trio

__all__ = ["Client", "Pool", "Transport", "url"]


class _NoCookies(httpx.Cookies):
    """A jar that keeps nothing."""

    def extract_cookies(self, response: httpx.Response) -> None:
        pass


class Client(httpx.AsyncClient):
    """`httpx.AsyncClient` that neither keeps nor sends cookies."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cookies = _NoCookies()  # httpx (pinned) reads and fills `self._cookies`


@functools.lru_cache(maxsize=4096)
def url(text: str) -> httpx.URL:
    """`text` parsed, once (node endpoints and routes: a bounded set)."""
    return httpx.URL(text)


class Transport(httpx.AsyncHTTPTransport):
    """`httpx.AsyncHTTPTransport` over a `Pool`."""

    def __init__(self, limits: httpx.Limits, keepalive_expiry: float | None = 5.0) -> None:
        super().__init__(limits=limits)
        # httpx (pinned) sends every request through `self._pool`; ours replaces httpcore's.
        self._pool = Pool(
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=keepalive_expiry,
        )


class Pool:
    """What httpx needs of an httpcore pool: `handle_async_request`, `aclose`."""

    def __init__(self, *, max_connections: int | None = None,
                 max_keepalive_connections: int | None = None,
                 keepalive_expiry: float | None = 5.0) -> None:  # fmt: skip
        self._slots = trio.Semaphore(max_connections or 1 << 30)
        self._max_idle = max_keepalive_connections
        self._expiry = keepalive_expiry
        self._ssl_context = httpx.create_ssl_context()
        self._idle: dict[_Key, list[httpcore.AsyncHTTPConnection]] = {}
        self._live: set[httpcore.AsyncHTTPConnection] = set()  # closed by `aclose`, busy or not

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        await self._acquire_slot(request.extensions.get("timeout", {}).get("pool"))
        origin = request.url.origin
        connection = None
        try:
            while True:
                connection = await self._checkout(origin)
                try:
                    response = await connection.handle_async_request(request)
                except httpcore.ConnectionNotAvailable:
                    continue  # it closed under us: take another
                break
        except BaseException:
            self._slots.release()
            if connection is not None and connection.is_closed():
                self._live.discard(connection)
            raise
        stream = _PooledStream(response.stream, self, origin, connection)
        return httpcore.Response(status=response.status, headers=response.headers,
                                 content=stream, extensions=response.extensions)  # fmt: skip

    async def _acquire_slot(self, wait: float | None) -> None:
        """A request slot; httpcore's PoolTimeout (httpx's) after `wait` seconds."""
        with trio.move_on_after(math.inf if wait is None else wait):
            await self._slots.acquire()
            return
        raise httpcore.PoolTimeout(f"no connection slot within {wait:g}s")

    async def _checkout(self, origin: httpcore.Origin) -> httpcore.AsyncHTTPConnection:
        """The most recently used live idle connection to `origin`, else a new one."""
        idle = self._idle.get(_key(origin))
        while idle:
            connection = idle.pop()
            if connection.is_available() and not connection.has_expired():
                return connection
            await self._close(connection)
        connection = httpcore.AsyncHTTPConnection(origin, ssl_context=self._ssl_context,
                                                  keepalive_expiry=self._expiry)  # fmt: skip
        self._live.add(connection)
        return connection

    async def _checkin(self, origin: httpcore.Origin,
                       connection: httpcore.AsyncHTTPConnection) -> None:  # fmt: skip
        """A response was closed: keep its connection if it can serve another request."""
        self._slots.release()
        if not connection.is_idle() or connection.is_closed():
            await self._close(connection)
            return
        idle = self._idle.setdefault(_key(origin), [])
        idle.append(connection)
        # The oldest idle connection is the likeliest to have expired: one look per
        # request keeps the stack free of dead sockets without scanning it.
        if len(idle) > 1 and (idle[0].has_expired() or not idle[0].is_available()):
            await self._close(idle.pop(0))
        if self._max_idle is not None and len(idle) > self._max_idle:
            await self._close(idle.pop(0))

    async def _close(self, connection: httpcore.AsyncHTTPConnection) -> None:
        self._live.discard(connection)
        with trio.CancelScope(shield=True), trio.move_on_after(2), contextlib.suppress(OSError):
            await connection.aclose()

    async def aclose(self) -> None:
        """Close every connection, idle or busy (as httpcore's pool does)."""
        live, self._live = list(self._live), set()
        self._idle.clear()
        for connection in live:
            await self._close(connection)

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _PooledStream:
    """A response body that returns its connection to the pool when closed."""

    def __init__(self, stream: Any, pool: Pool, origin: httpcore.Origin,
                 connection: httpcore.AsyncHTTPConnection) -> None:  # fmt: skip
        self._stream, self._pool = stream, pool
        self._origin, self._connection = origin, connection
        self._closed = False
        self._parts: Any = None

    # An iterator, not an async generator: a body left early is closed by its
    # response, never by the garbage collector.
    def __aiter__(self) -> _PooledStream:
        self._parts = self._stream.__aiter__()
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._parts.__anext__()
        except StopAsyncIteration:
            raise
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            try:
                await self._stream.aclose()
            finally:
                await self._pool._checkin(self._origin, self._connection)


_Key = tuple[bytes, bytes, int]


def _key(origin: httpcore.Origin) -> _Key:
    return origin.scheme, origin.host, origin.port  # an Origin is not hashable
