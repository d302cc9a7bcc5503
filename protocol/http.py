"""The HTTP edge both daemons share: serving, body parsing, error responses.

Both cortex and neuron are quart-trio apps under hypercorn's trio worker.
This module holds what is the same for both at the edge of the wire:

* `serve` runs an app with the two fixes from the stack notes — hypercorn
  never closes a connection after `Connection: close` under quart-trio (its
  close runs inside a cancelled scope), and Quart cuts every response after
  `RESPONSE_TIMEOUT` (60 s), which would truncate long streams;
* `read_body` / `parse_body` read a request body under a size limit and turn
  it into a protocol type, raising the protocol's `ApiError`s;
* `error_response` renders an `ApiError` in the OpenAI or Anthropic envelope,
  the one place where errors become HTTP; `http_exception_error` maps the
  framework's own refusals (a body that arrives too slowly, a malformed
  request) into that tree, so they get the envelope too instead of Werkzeug's
  HTML page or a 500;
* `install_edge` gives an app the request-id and error plumbing both daemons
  share: `request_id()` bound to the log context before each request, and
  every failure turned into an `ApiError` for the daemon's own renderer;
* `at_request_end` runs a callback once the HTTP exchange is over however it
  ended — body sent, or the client gone at any point, even before the body's
  first step, where a body generator's `finally` never runs.

Routes and serving logic live in the daemons; nothing here knows a route.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import math
import os
from collections.abc import Awaitable, Callable
from itertools import chain
from typing import Any, Literal, TypeVar

import h11
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, RawData
from hypercorn.protocol.events import Body as HyperBody
from hypercorn.protocol.events import EndBody
from hypercorn.protocol.events import Response as HyperResponse
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from quart import Quart, Request, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from protocol._converter import encode_json, parse
from protocol.errors import (
    ApiError,
    Conflict,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
)
from protocol.logs import printable, set_request_id

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "at_request_end",
    "ending_exchanges",
    "error_for",
    "error_response",
    "http_exception_error",
    "install_edge",
    "json_response",
    "make_config",
    "parse_body",
    "patch_hypercorn",
    "prepare_app",
    "read_body",
    "request_id",
    "request_id_from",
    "request_id_in_use",
    "serve",
]

T = TypeVar("T")
Dialect = Literal["openai", "anthropic"]

log = logging.getLogger(__name__)

# Large enough for a few base64 images in one chat request.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024


def request_id_from(given: str) -> str:
    """The client's `x-request-id` if it can name a request (printable, at most 128
    characters, no `/`: it names the request's actor), else a fresh 32-hex-digit id."""
    if 0 < len(given) <= 128 and given.isprintable() and "/" not in given:
        return given
    return os.urandom(16).hex()  # (uuid4's randomness, without building a UUID)


def patch_hypercorn() -> None:
    """Two fixes and four economies in hypercorn's trio server (stack notes §2). Idempotent.

    * `TCPServer._close` is shielded: it runs inside the app's `send()`, which
      quart-trio has already cancelled, and without the shield a `Connection: close`
      never sent its EOF;
    * the keep-alive timer (`TCPServer.idle_task`) is an `_IdleTimer`: hypercorn's
      restarts it after every response under a lock with `nursery.start` and stops it
      under the lock when a request begins — from inside that cancelled `send()` too,
      where without a shield the timer never restarted and an idle keep-alive
      connection was never closed. `_IdleTimer` never waits, so it needs no shield,
      and is one task per connection whose deadline moves, not a task started per
      response; it ends when the connection stops reading (`_read_data`), where
      hypercorn's lingered up to `keep_alive_timeout` after a client had gone;
    * a response with a `Content-Length` (a whole body, there already) goes out in
      one write, head and body together (`_coalescing_stream_send`), not three;
    * bytes for a plain-TCP connection that nothing else is writing go straight to its
      socket when it takes them all (`_direct_protocol_send`): no lock round trip and
      no trip through the scheduler per write; the rest as hypercorn sends it;
    * a message for the app (a body part, the disconnect) goes into its queue without a
      trip through the scheduler when the queue has room (`_spawn_app_with_direct_put`),
      and a plain-TCP connection is read without one after each read (`_read_directly`).
    """
    if getattr(TCPServer._close, "_helexa_shielded", False):
        return
    original_close, original_init = TCPServer._close, TCPServer.__init__
    H11Protocol.stream_send = _coalescing_stream_send(H11Protocol.stream_send)
    TCPServer.protocol_send = _direct_protocol_send(TCPServer.protocol_send)
    TaskGroup.spawn_app = _spawn_app_with_direct_put(TaskGroup.spawn_app)

    @functools.wraps(original_close)
    async def _close(self: TCPServer) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await original_close(self)

    @functools.wraps(original_init)
    def __init__(self: TCPServer, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.idle_task = _IdleTimer(self)  # type: ignore[assignment]

    original_read = TCPServer._read_data

    @functools.wraps(original_read)
    async def _read_data(self: TCPServer) -> None:
        try:
            socket = getattr(self.stream, "socket", None)  # a trio SocketStream's
            if socket is None or self.config.read_timeout:
                await original_read(self)
            else:
                await _read_directly(self, socket)
        finally:
            self.idle_task.finish()  # type: ignore[attr-defined]

    _close._helexa_shielded = True  # type: ignore[attr-defined]
    TCPServer._close = _close  # type: ignore[method-assign]
    TCPServer.__init__ = __init__  # type: ignore[method-assign]
    TCPServer._read_data = _read_data  # type: ignore[method-assign]


def _coalescing_stream_send(original: Callable[..., Awaitable[None]]):
    """hypercorn's HTTP/1.1 `stream_send`, holding back the head of a response that
    has a `Content-Length` until its body (or its end) comes, to write them as one:
    the same bytes, one socket write instead of three (head, body, and the empty end
    of a sized body). A streamed response (no length) keeps its head going out at
    once: its first part may be a while."""

    @functools.wraps(original)
    async def stream_send(self: H11Protocol, event: Any) -> None:
        if (isinstance(event, HyperResponse) and event.status_code >= 200
                and any(name == b"content-length" for name, _ in event.headers)):  # fmt: skip
            headers = list(chain(event.headers, self.config.response_headers("h11")))
            if self.keep_alive_requests >= self.config.keep_alive_max_requests:
                headers.append((b"connection", b"close"))
            head = _h11_bytes(self, h11.Response(headers=headers, status_code=event.status_code))
            if head is not None:
                self.__dict__["_helexa_head"] = head
            return
        head = self.__dict__.pop("_helexa_head", None)
        if isinstance(event, HyperBody | EndBody):
            message = (
                h11.Data(data=event.data) if isinstance(event, HyperBody) else h11.EndOfMessage()
            )
            data = _h11_bytes(self, message)
            data = (head or b"") + (data or b"")
            if data:
                await self.send(RawData(data=data))
            return
        if head is not None:
            await self.send(RawData(data=head))
        await original(self, event)

    return stream_send


def write_now(socket: Any, data: bytes | memoryview) -> int:
    """How much of `data` a plain-TCP trio socket takes at once, written without
    waiting and without a checkpoint (trio made the socket non-blocking); 0 when it
    takes nothing or the write fails — the caller's `send_all` then waits, or meets
    the error and reports it as trio does."""
    try:
        return os.write(socket.fileno(), data)  # (-1 once closed: EBADF, so 0)
    except OSError:
        return 0


async def _read_directly(server: TCPServer, socket: Any) -> None:
    """hypercorn's `TCPServer._read_data` for a plain-TCP connection without a read
    timeout: the socket read at once when it has bytes, waited on when it has none
    (trio's `receive_some` added a trip through the scheduler after every read). Bytes
    found straight after the last ones are handled after a checkpoint, so a client
    sending without pause cannot keep the other tasks from running."""
    waited = True
    while True:
        try:
            data = os.read(socket.fileno(), MAX_RECV)  # (-1 once closed: EBADF)
        except BlockingIOError:
            try:
                await trio.lowlevel.wait_readable(socket)
            except trio.ClosedResourceError:  # closed by the server meanwhile
                break
            waited = True
            continue
        except OSError:  # reset, or closed
            break
        if not waited:  # bytes again without a wait: let the others run first
            await trio.lowlevel.checkpoint()
        waited = False
        await server.protocol.handle(RawData(data))
        if not data:
            break
    await server.protocol.handle(Closed())


def _direct_protocol_send(original: Callable[..., Awaitable[None]]):
    """hypercorn's `TCPServer.protocol_send`, writing `RawData` to the socket at once
    when it can: a plain-TCP connection (TLS goes through its stream) whose send lock
    is free (no other write under way), and a socket that takes every byte now. Else,
    or for what the socket did not take, hypercorn's own path (lock, shielded
    `send_all`, a failed write reported as the connection closing), which also meets
    any error the direct write met. Once part of the bytes went, the rest is sent
    shielded: a cancellation must not leave half a message on the connection for the
    next write to follow."""

    @functools.wraps(original)
    async def protocol_send(self: TCPServer, event: Any) -> None:
        if type(event) is RawData and not self.send_lock.locked():
            socket = getattr(self.stream, "socket", None)  # a trio SocketStream's
            if socket is not None:
                data = event.data
                sent = write_now(socket, data)  # 0: hypercorn's path waits or reports
                if sent == len(data):
                    return
                if sent:  # the rest must follow before any other write, even if this
                    with trio.CancelScope(shield=True):  # task is cancelled meanwhile
                        await original(self, RawData(data=data[sent:]))
                    return
        await original(self, event)

    return protocol_send


def _spawn_app_with_direct_put(original: Callable[..., Awaitable[Any]]):
    """hypercorn's `TaskGroup.spawn_app`, whose `app_put` (what the connection's reading
    task puts into the app's message queue) puts without waiting when the queue has
    room or the app is waiting for a message, as the channel's own `send` does but
    without its checkpoint; a full queue is waited on as before."""

    @functools.wraps(original)
    async def spawn_app(self: TaskGroup, *args: Any) -> Callable[[Any], Awaitable[None]]:
        put = await original(self, *args)
        channel = put.__self__  # the app's trio memory channel

        async def put_now(message: Any) -> None:
            try:
                channel.send_nowait(message)
            except trio.WouldBlock:
                await put(message)

        return put_now

    return spawn_app


def _h11_bytes(protocol: H11Protocol, event: Any) -> bytes | None:
    """`event` as h11 writes it; None when the peer's side already failed (hypercorn's
    `_send_h11_event` drops the event then too)."""
    try:
        return protocol.connection.send(event)
    except h11.LocalProtocolError:
        if protocol.connection.their_state != h11.ERROR:
            raise
        return None


class _IdleTimer:
    """hypercorn's `TrioSingleTask` for the keep-alive timer, as one task per connection
    with a deadline that moves: `restart` arms it (`keep_alive_timeout` from now; the
    first call starts the task), `stop` disarms it while a request is answered. When it
    expires, or the server terminates, the task closes the connection as hypercorn's
    `_idle_timeout` does — a request under way first gets its answer, as it did when
    hypercorn started its timer task only once the answer was out. Neither call waits
    (no lock: trio tasks do not preempt one another), so a cancelled caller cannot
    interrupt them halfway, and a request costs no task start. `finish` (the connection
    stopped reading) ends the task without closing anything: the connection's own end
    follows."""

    def __init__(self, server: TCPServer) -> None:
        self._server = server
        self._scope: trio.CancelScope | None = None
        self._idle = False
        self._finished = False
        self._answered: trio.Event | None = None  # terminating mid-request: set by restart

    async def restart(self, task_group: Any, action: Callable[[], Awaitable[None]]) -> None:
        self._idle = True
        deadline = trio.current_time() + self._server.config.keep_alive_timeout
        if self._scope is None:
            self._scope = trio.CancelScope(deadline=deadline)
            task_group._nursery.start_soon(self._watch)
        else:
            self._scope.deadline = deadline
        if self._answered is not None:
            self._answered.set()

    async def stop(self) -> None:
        self._idle = False
        if self._scope is not None:
            self._scope.deadline = math.inf

    def finish(self) -> None:
        self._finished = True
        if self._scope is not None:
            self._scope.cancel()
        if self._answered is not None:
            self._answered.set()

    async def _watch(self) -> None:
        terminated = self._server.context.terminated
        while True:
            assert self._scope is not None
            with self._scope:  # expires only while idle (a request sets no deadline)
                await terminated.wait()
            if self._idle or self._finished or terminated.is_set():
                break
            # It expired in the very turn a request began (`stop` came before this task
            # ran): that request keeps the connection; wait again, unarmed.
            self._scope = trio.CancelScope(deadline=math.inf)
        while not (self._idle or self._finished):  # terminating while a request runs
            self._answered = trio.Event()
            await self._answered.wait()
        if not self._finished:
            with trio.CancelScope(shield=True):
                await self._server._initiate_server_close()


def prepare_app(
    app: Quart, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, body_timeout: float = 60.0
) -> Quart:
    """Remove Quart's total response timeout; bound bodies by size and time."""
    app.config["RESPONSE_TIMEOUT"] = None  # streams get idle timeouts, never a total one
    app.config["BODY_TIMEOUT"] = body_timeout  # a slow-loris body upload is cut off
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    # `//` in a path would be answered by an HTML redirect; an API answers 404 instead.
    app.url_map.merge_slashes = False
    app.after_request(_settle_body)
    app.asgi_app = ending_exchanges(app.asgi_app)  # type: ignore[method-assign]
    return app


# The callbacks to run when the current HTTP exchange ends (None: not in one).
_at_end: contextvars.ContextVar[list[Callable[[], None]] | None] = contextvars.ContextVar(
    "helexa_at_request_end", default=None
)


def at_request_end(callback: Callable[[], None]) -> None:
    """Call `callback` (sync, must not raise) when this request's exchange is over:
    its response sent, or abandoned by the client at any point. Outside an app
    prepared by `prepare_app` (a test driving a route directly) it is not called."""
    callbacks = _at_end.get()
    if callbacks is not None:
        callbacks.append(callback)


def ending_exchanges(asgi_app: Any) -> Any:
    """The ASGI app, running each HTTP exchange's `at_request_end` callbacks after it.

    The request's handler runs in a task started inside this call, which inherits the
    context, so it appends to this exchange's list."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await asgi_app(scope, receive, send)
        callbacks: list[Callable[[], None]] = []
        _at_end.set(callbacks)
        try:
            await asgi_app(scope, receive, send)
        finally:
            for callback in callbacks:
                callback()

    return app


# How long a response waits for the rest of a body its route did not read.
_SETTLE_TIMEOUT = 1.0


async def _settle_body(response: Response) -> Response:
    """Keep the connection reusable, or say it is not.

    A route that answers without reading the body (a GET sent with one, a 401, 415
    or 503 refused before parsing) leaves the body in flight, and hypercorn then
    closes the connection after the response without a word: a client that reuses
    it at once loses its next request. Wait briefly for the body to arrive; if it
    does not (or is over the limit), say `Connection: close`."""
    if getattr(request, "helexa_body_read", False):
        return response
    try:
        with trio.move_on_after(_SETTLE_TIMEOUT) as wait:
            await request.body
    except RequestEntityTooLarge:
        response.headers["Connection"] = "close"
        return response
    if wait.cancelled_caught:
        response.headers["Connection"] = "close"
    return response


def make_config(
    host: str,
    port: int,
    *,
    graceful_timeout: float = 30.0,
    keep_alive_timeout: float = 75.0,
    max_header_bytes: int = 64 * 1024,
) -> Config:
    """hypercorn's settings. `keep_alive_timeout` closes a connection that has no
    request in progress — idle between requests, or still sending its request head
    (a slow-loris client) — after that long; a head over `max_header_bytes` gets 431."""
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.graceful_timeout = graceful_timeout
    config.keep_alive_timeout = keep_alive_timeout
    config.h11_max_incomplete_size = max_header_bytes
    config.accesslog = None
    config.errorlog = None
    return config


async def serve(
    app: Quart,
    config: Config,
    *,
    shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` until `shutdown_trigger` returns; report bound URLs on start."""
    patch_hypercorn()
    await hypercorn_serve(app, config, shutdown_trigger=shutdown_trigger, task_status=task_status)


async def read_body(request: Request) -> bytes:
    """The raw body, or `PayloadTooLarge` past the app's `MAX_CONTENT_LENGTH`."""
    try:
        body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
    except RequestEntityTooLarge as exc:
        limit = request.max_content_length
        raise PayloadTooLarge(
            f"request body exceeds the limit of {limit} bytes", extra={"max_bytes": limit}
        ) from exc
    request.helexa_body_read = True  # type: ignore[attr-defined]
    return body


async def parse_body(request: Request, cls: type[T], *, internal: bool = False) -> T:
    """Read, decode and validate a JSON body into `cls`: tolerating extras, or
    refusing them with `internal=True` (bodies our own programs send)."""
    content_type = request.mimetype or ""
    if content_type and content_type != "application/json" and not content_type.endswith("+json"):
        raise InvalidRequest(
            f"expected Content-Type application/json, got {content_type}",
            status=415,
            code="unsupported_media_type",
        )
    return parse(await read_body(request), cls, internal=internal)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        encode_json(data), status=status, headers=headers, content_type="application/json"
    )


_STATUS_CODES = {400: "invalid_request", 408: "request_timeout", 413: "request_too_large",
                 415: "unsupported_media_type", 431: "request_header_fields_too_large"}  # fmt: skip


def http_exception_error(exc: HTTPException) -> ApiError:
    """The `ApiError` for a refusal raised by Quart/Werkzeug (`RequestTimeout` when
    a body is slower than `BODY_TIMEOUT`, `BadRequest`, …): same status, our envelope."""
    status = exc.code or 500
    code = _STATUS_CODES.get(status) or (exc.name or "http_error").lower().replace(" ", "_")
    kind = "invalid_request_error" if status < 500 else "api_error"
    message = exc.description or exc.name or f"HTTP {status}"
    return ApiError(f"{exc.name}: {message}", status=status, type=kind, code=code)


def request_id_in_use(request_id: str) -> ApiError:
    """Two requests in flight with one client-chosen `x-request-id` cannot both be named
    by it (it names the request's actor): the second is refused, saying why."""
    return Conflict(f"a request with x-request-id {request_id!r} is already in flight; "
                    "send a unique id per request", code="request_id_in_use",
                    param="x-request-id")  # fmt: skip


def error_response(error: ApiError, dialect: Dialect = "openai") -> Response:
    """The HTTP response for `error`, in the envelope of the route's dialect."""
    body = error.to_anthropic() if dialect == "anthropic" else error.to_openai()
    return json_response(body, error.status, error.headers())


def error_for(error: Exception, *, name_taken: type[Exception], request_id: str,
              path: str) -> ApiError:  # fmt: skip
    """The `ApiError` that `install_edge` answers for `error` raised by a route, for a
    route served outside Quart (`cortex.fast_path`): call it in the `except` block."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, name_taken):
        return request_id_in_use(request_id)
    if isinstance(error, HTTPException):
        return http_exception_error(error)
    return _unexpected(error, path)


def _unexpected(error: Exception, path: str) -> ApiError:
    log.exception("unexpected error path=%s", path)
    return InternalError(f"internal error: {type(error).__name__}")


# -- request ids and errors, the same on both daemons ----------------------------------------


def request_id() -> str:
    """This request's id: the client's `x-request-id` when usable, else a fresh one."""
    rid = getattr(request, "helexa_request_id", None)
    if rid is None:
        rid = request_id_from(request.headers.get("x-request-id", ""))
        request.helexa_request_id = rid
    return rid


def _echo(value: str, limit: int = 200) -> str:
    """A client-sent value put into a message: control characters escaped (a message
    is logged, and may be printed by a client), and cut short."""
    value = printable(value)
    return value if len(value) <= limit else value[:limit] + "…"


def install_edge(
    app: Quart,
    render: Callable[[ApiError], Awaitable[Response]],
    *,
    name_taken: type[Exception],
) -> None:
    """Bind each request's id to the log context before anything else runs, and hand
    every failure to `render` (which logs it and picks the envelope) as an `ApiError`:
    raised ones as they are, no such route (404 `route_not_found`), a wrong method (405
    `method_not_allowed`), the framework's own refusals, a request id already naming a
    request in flight (`name_taken`, the actor runtime's error: 409), and anything
    unexpected (500 `internal_error`, logged with its traceback)."""

    async def bind_request_id() -> None:
        set_request_id(request_id())  # this request's task and the tasks it starts

    async def not_found(_: Exception) -> Response:
        return await render(NotFound(f"no route {_echo(request.method)} {_echo(request.path)}",
                                     code="route_not_found"))  # fmt: skip

    async def method_not_allowed(refusal: HTTPException) -> Response:
        allow = set(getattr(refusal, "valid_methods", None) or ())
        return await render(MethodNotAllowed(f"method {_echo(request.method)} not allowed on "
                                             f"{_echo(request.path)}", allow=allow))  # fmt: skip

    async def framework_refusal(error: HTTPException) -> Response:
        return await render(http_exception_error(error))

    async def id_taken(_: Exception) -> Response:
        return await render(request_id_in_use(request_id()))

    async def unexpected(error: Exception) -> Response:
        return await render(_unexpected(error, request.path))

    app.before_request(bind_request_id)
    app.register_error_handler(ApiError, render)
    app.register_error_handler(404, not_found)
    app.register_error_handler(405, method_not_allowed)
    app.register_error_handler(HTTPException, framework_refusal)
    app.register_error_handler(name_taken, id_taken)
    app.register_error_handler(Exception, unexpected)
