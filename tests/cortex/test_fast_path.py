"""`cortex.fast_path` as an ASGI app, driven directly: what it serves and what it
passes on, the body as Quart would read it, the client leaving, the exchange's end.

What the gateway answers through it (envelopes, status codes, headers) is held by
the gateway tests (`tests/hostile`, `tests/cortex/test_gateway_*`, conformance).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from quart import Response
from werkzeug.exceptions import RequestTimeout

from cortex.fast_path import FastPath
from protocol.errors import PayloadTooLarge
from protocol.http import at_request_end

ROUTE = "/v1/chat/completions"


class Exchange:
    """One ASGI exchange: scripted `receive` messages, the messages sent."""

    def __init__(self, *messages: dict[str, Any], hold: bool = True) -> None:
        self.incoming = list(messages)
        self.hold = hold  # after the scripted messages: wait (True) or disconnect
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        if self.incoming:
            return self.incoming.pop(0)
        if self.hold:
            await trio.sleep_forever()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def head(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])


def scope(method: str = "POST", path: str = ROUTE, **headers: str) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "root_path": "",
            "headers": [(k.replace("_", "-").encode(), v.encode())
                        for k, v in headers.items()]}  # fmt: skip


def body(data: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.request", "body": data, "more_body": more}


class Route:
    """The answer: records what it was given, reads the body unless told not to."""

    def __init__(self, read: bool = True, wait: bool = False) -> None:
        self.read, self.wait = read, wait
        self.calls: list[tuple[str, dict[str, str], str, Any]] = []
        self.cancelled = False
        self.ended: list[str] = []

    async def __call__(self, path, headers, rid, read) -> Response:
        at_request_end(lambda: self.ended.append(rid))
        got: Any = None
        if self.read:
            try:
                got = await read()
            except (PayloadTooLarge, RequestTimeout) as exc:
                got = exc
        self.calls.append((path, headers, rid, got))
        if self.wait:
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                self.cancelled = True
                raise
        response = Response(b"done", 200, {"content-type": "application/json"})
        response.headers["x-request-id"] = rid
        return response


def fast(route: Route, inner: list | None = None, **kwargs: Any) -> FastPath:
    async def app(scope, receive, send) -> None:
        assert inner is not None
        inner.append((scope["method"], scope["path"]))

    options = {"max_body_bytes": 100, "body_timeout": 5.0} | kwargs
    return FastPath(app, [ROUTE], route, **options)


@pytest.mark.parametrize("method, path", [("GET", ROUTE), ("POST", ROUTE + "/"),
                                          ("POST", "/v1/models"), ("PUT", ROUTE)])  # fmt: skip
async def test_anything_but_a_post_to_a_relayed_route_goes_to_the_app(method, path):
    inner: list = []
    route = Route()
    await fast(route, inner)(scope(method, path), Exchange().receive, Exchange().send)
    assert inner == [(method, path)] and route.calls == []


async def test_a_relayed_route_is_answered_with_its_body_headers_and_request_id():
    route, exchange = Route(), Exchange(body(b'{"model":'), body(b'"m"}'))
    request = scope(X_Request_Id="abc", Accept="text/event-stream", accept="second")
    await fast(route)(request, exchange.receive, exchange.send)
    [(path, headers, rid, got)] = route.calls
    assert (path, rid, got) == (ROUTE, "abc", b'{"model":"m"}')
    assert headers == {"x-request-id": "abc", "accept": "text/event-stream"}  # the first
    assert exchange.sent[0]["status"] == 200
    assert exchange.head()[b"content-type"] == b"application/json"
    assert exchange.head()[b"x-request-id"] == b"abc"
    assert exchange.body() == b"done"
    assert exchange.sent[-1]["more_body"] is False
    assert all(m["more_body"] for m in exchange.sent[1:-1])
    assert route.ended == ["abc"]  # at_request_end ran


async def test_a_body_over_the_limit_is_refused_and_the_connection_closed():
    route, exchange = Route(), Exchange(body(b"x" * 60, more=True), body(b"x" * 60))
    await fast(route)(scope(), exchange.receive, exchange.send)
    assert isinstance(route.calls[0][3], PayloadTooLarge)
    assert exchange.head()[b"connection"] == b"close"

    route, exchange = Route(), Exchange()  # said so up front: refused before any byte
    await fast(route)(scope(content_length="101"), exchange.receive, exchange.send)
    assert isinstance(route.calls[0][3], PayloadTooLarge)


async def test_a_body_slower_than_the_timeout_is_a_408(autojump_clock):
    route, exchange = Route(), Exchange(body(b"{", more=True))
    await fast(route, body_timeout=2.0)(scope(), exchange.receive, exchange.send)
    assert isinstance(route.calls[0][3], RequestTimeout)
    assert exchange.head()[b"connection"] == b"close"  # the rest never came


async def test_an_unread_body_that_arrives_keeps_the_connection():
    route, exchange = Route(read=False), Exchange(body(b"{}"))
    await fast(route)(scope(), exchange.receive, exchange.send)
    assert b"connection" not in exchange.head()


async def test_the_client_leaving_cancels_the_route(autojump_clock):
    route, exchange = Route(wait=True), Exchange(body(b"{}"), hold=False)
    with trio.fail_after(60):  # virtual seconds: never cancelled fails, not hangs
        await fast(route)(scope(x_request_id="gone"), exchange.receive, exchange.send)
    assert route.cancelled and exchange.sent == []
    assert route.ended == ["gone"]
