"""The inference routes served straight from ASGI, in front of the gateway's Quart app.

The relayed POSTs (`/v1/chat/completions`, `/v1/completions`, `/v1/responses`,
`/v1/messages` and `/v1/messages/count_tokens`: `cortex.http.RELAYED_ROUTES`) are
most of what a gateway serves, and Quart's own machinery around a route (request and
app contexts, the URL map, before/after hooks, signals, the request object) cost more
CPU than the relay itself (`bench/gateway.py --profile`). `FastPath` is an ASGI app
that serves exactly those (method, path) pairs and hands every other request to the
Quart app unchanged. It does for them what the app does, in the same order,
with the same code where there is code to share:

* the request id bound to the log context (`protocol.http.request_id_from`);
* the caller authenticated (`Keyring.authenticate`: 401/403);
* the route itself, `cortex.http.proxy`, which answers a Quart `Response`;
* the body read as Quart reads it: at most `max_body_bytes` (413 `payload_too_large`,
  a `Content-Length` over the limit refused before a byte is read), within
  `body_timeout` seconds (408), while a second task watches for the client leaving
  (which cancels the request, as quart-trio does);
* every failure answered as the app's error handlers answer it
  (`protocol.http.error_for`, `cortex.http.refused`);
* the response stamped (`x-request-id`, the `answered` log line) and, when the route
  answered without reading the whole body, that body waited for briefly or the
  connection closed (`Connection: close`), as `protocol.http`'s `_settle_body` does;
* `at_request_end` callbacks run when the exchange is over (`ending_exchanges`);
* the response sent as Quart sends it: the same headers (Quart's `Response`
  builds them), body parts as they come.

Not for: any other route, or another method on these paths (405 with `Allow` comes
from the app), or a path that differs in any byte.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any

import trio
from quart import Response
from quart.utils import encode_headers
from quart.wrappers.response import DataBody
from werkzeug.exceptions import RequestTimeout

from protocol.errors import PayloadTooLarge
from protocol.http import ending_exchanges, request_id_from
from protocol.logs import set_request_id

__all__ = ["Answer", "FastPath"]

# `answer(path, headers, request_id, read)`: the route's stamped response, every
# failure already answered; `read()` reads the body (`cortex.http.fast_answer`).
Answer = Callable[[str, dict[str, str], str, Callable[[], Awaitable[bytes]]],
                  Awaitable[Response]]  # fmt: skip

# How long a response waits for the rest of a body its route did not read
# (`protocol.http._SETTLE_TIMEOUT`).
_SETTLE_TIMEOUT = 1.0


class FastPath:
    """The ASGI app: POSTs to `routes` answered by `answer`, the rest by `app` (the
    Quart app's ASGI callable)."""

    def __init__(self, app: Callable[..., Any], routes: Collection[str], answer: Answer, *,
                 max_body_bytes: int, body_timeout: float | None) -> None:  # fmt: skip
        self._app = app
        self._routes = frozenset(routes)
        self._answer = answer
        self._max_body = max_body_bytes
        self._body_timeout = float("inf") if body_timeout is None else body_timeout
        self._exchange = ending_exchanges(self._serve)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (scope["type"] == "http" and scope["method"] == "POST"
                and scope["path"] in self._routes and not scope.get("root_path")):  # fmt: skip
            return await self._exchange(scope, receive, send)
        return await self._app(scope, receive, send)

    async def _serve(self, scope: Any, receive: Any, send: Any) -> None:
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:  # the first of a repeated header, as Quart's `get`
            headers.setdefault(name.decode("latin1").lower(), value.decode("latin1"))
        rid = request_id_from(headers.get("x-request-id", ""))
        set_request_id(rid)  # this request's task and the tasks it starts
        body = _Body(_content_length(headers.get("content-length")), self._max_body)
        async with trio.open_nursery() as nursery:
            if not _drain(receive, body):
                nursery.cancel_scope.cancel()  # the client has already left
            nursery.start_soon(_messages, receive, body, nursery.cancel_scope)
            timeout = self._body_timeout
            response = await self._answer(scope["path"], headers, rid,
                                          lambda: body.read(timeout))  # fmt: skip
            if not body.read_whole and not await body.settle():
                response.headers["Connection"] = "close"
            await _send_response(send, response)
            nursery.cancel_scope.cancel()


class _Body:
    """The request body as the messages task receives it (Quart's `Body`, with its
    limit: past it the body is refused, whatever else arrives)."""

    def __init__(self, expected: int | None, limit: int) -> None:
        self.data = bytearray()
        self.complete = trio.Event()
        self.too_large = expected is not None and expected > limit
        self.read_whole = False  # the route has read it
        self._limit = limit

    def append(self, data: bytes) -> None:
        if not data or self.too_large:
            return
        self.data += data
        if len(self.data) > self._limit:
            self.too_large = True
            self.complete.set()

    async def read(self, limit: float) -> bytes:
        """The whole body (`protocol.http.read_body` on Quart's `get_data`)."""
        if not self.too_large and not self.complete.is_set():  # (usually there: no timer)
            with trio.move_on_after(limit) as wait:
                await self.complete.wait()
            if wait.cancelled_caught:
                raise RequestTimeout()
        if self.too_large:
            limit = self._limit
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes",
                                  extra={"max_bytes": limit})  # fmt: skip
        self.read_whole = True
        data = bytes(self.data)
        self.data.clear()
        return data

    async def settle(self) -> bool:
        """Whether the connection stays usable after an answer given without the body:
        it arrived within a second and was not over the limit."""
        if self.too_large:
            return False
        with trio.move_on_after(_SETTLE_TIMEOUT):
            await self.complete.wait()
        return self.complete.is_set() and not self.too_large


def _content_length(value: str | None) -> int | None:
    """`Content-Length` as werkzeug reads it: digits, else none."""
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isdigit() else None


def _drain(receive: Any, body: _Body) -> bool:
    """The messages the server has already queued for this request (usually the whole
    body: it came with the head), taken without waiting, so that the route finds its
    body there; False when one says the client has left. (`receive` is a trio memory
    channel's under hypercorn; with any other, nothing is taken here.)"""
    receive_nowait = getattr(getattr(receive, "__self__", None), "receive_nowait", None)
    while receive_nowait is not None and not body.complete.is_set():
        try:
            message = receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return True  # (`_messages` meets the end the same way)
        if not _take(message, body):
            return False
    return True


async def _messages(receive: Any, body: _Body, scope: trio.CancelScope) -> None:
    """The body into `body`; the client leaving cancels the exchange (quart-trio's
    `handle_messages`)."""
    while _take(await receive(), body):
        pass
    scope.cancel()


def _take(message: Any, body: _Body) -> bool:
    """One ASGI message into `body`; False when it says the client has left."""
    if message["type"] == "http.request":
        body.append(message.get("body", b""))
        if not message.get("more_body", False):
            body.complete.set()
    elif message["type"] == "http.disconnect":
        return False
    return True


async def _send_response(send: Any, response: Response) -> None:
    """Quart's `_send_response`: the head, each body part, the end (a whole body and
    the end in one message: the same bytes on the wire, one step less)."""
    await send({"type": "http.response.start", "status": response.status_code,
                "headers": encode_headers(response.headers)})  # fmt: skip
    body = response.response
    if isinstance(body, DataBody) and (body.begin, body.end) == (0, len(body.data)):
        await send({"type": "http.response.body", "body": body.data, "more_body": False})
        return
    async with body as parts:
        async for data in parts:
            await send({"type": "http.response.body", "body": data, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
