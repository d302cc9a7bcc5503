"""Relaying one request to a node: place, connect, forward bytes as they come.

`open_upstream` acquires a node for the model (loading it if placement says
so), sends the request, and returns the node's response with its body still
unread. A failure before the first byte — the node refused the connection,
or answered a retriable 503 (worker died, model recovering, node shutting
down) — is retried on another replica, a bounded number of times.

`open_stream` runs a streaming request as a request actor feeding an event
stream (`protocol.streaming`): first the upstream head, then each body chunk
exactly as it arrived (never buffered or re-framed), then the end; a refusal
(a head that is not 200) comes with its whole body and nothing follows. A
failure after the head is reported in-band. The HTTP layer renders these,
with SSE keepalive comments while the request waits (for a load, a queue).
`answer_in_full` runs a non-streamed one. Both take an `Upstream`: what
relaying needs of the gateway, and nothing else.

Not for: choosing nodes (`cortex.placement` via `cortex.fleet`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import httpx
import trio

import actors
from cortex.affinity import prefix_key
from cortex.fleet import Acquired, Fleet
from cortex.upstream_http import Client, Response
from protocol.errors import (
    RETRIABLE_CODES,
    ApiError,
    InternalError,
    UpstreamError,
    api_error_from_envelope,
)
from protocol.ids import ModelId, NodeName
from protocol.streaming import END, EventStream, open_event_stream

if TYPE_CHECKING:
    from cortex.meter import Meter

log = logging.getLogger(__name__)


@attrs.frozen
class Head:
    """The node answered: status and headers; a 200's body follows as chunks, any
    other status's whole body is `body`."""

    status: int
    headers: Mapping[str, str]
    node: NodeName
    cold: bool
    load_wait: float = 0.0
    head_wait: float = 0.0  # request sent → this head (a stream's: the node admitted it)
    retried_on: tuple[NodeName, ...] = ()  # nodes that failed the request before this one
    body: bytes = b""  # a refusal's body (status not 200)


@attrs.frozen
class Chunk:
    data: bytes


@attrs.frozen
class Broken:
    """The relay failed; before a `Head` it is the answer, after it in-band."""

    error: ApiError


@attrs.frozen
class Upstream:
    """What relaying needs of the gateway: placement (`fleet`), the client to the
    nodes (`cortex.upstream_http`), the supervisor request actors live under, how
    often a request that failed before its first byte is tried elsewhere (`retries`),
    and the seconds of silence after which a stream gets a keepalive."""

    fleet: Fleet
    client: Client
    requests: actors.SupervisorRef
    retries: int
    keepalive: float


SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
               "X-Accel-Buffering": "no"}  # fmt: skip

# `x-helexa-prompt-tokens`: the prompt's size on a node's stream head (Anthropic message_start).
_FORWARDED_RESPONSE_HEADERS = ("content-type", "retry-after", "cache-control",
                               "x-helexa-prompt-tokens")  # fmt: skip


async def open_upstream(
    fleet: Fleet,
    model: ModelId,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    client: Client,
    *,
    retries: int,
    status: Any = None,
) -> tuple[Acquired, Response]:
    """The node's response (body unread: the caller closes it) or an ApiError."""
    failed: list[NodeName] = []  # in order; none is tried again
    last: ApiError | None = None
    prefix = None  # the request's prefix key, read from the body once, when needed
    if fleet.affinity is not None:
        prefix = _Once(prefix_key, path, body, fleet.prefix_chars)
    for attempt in range(retries + 1):
        acquired = await fleet.acquire(model, status=status, exclude=frozenset(failed),
                                       prefix=prefix)  # fmt: skip
        node = acquired.node
        if status is not None:
            status(phase="upstream", node=node.name)
        sent = trio.current_time()
        try:
            response = await client.post(node.endpoint + path, headers, body)
        except httpx.TransportError as exc:
            node.mark_unreachable(exc)
            last = UpstreamError(f"node {node.name} unreachable: {type(exc).__name__}",
                                 code="upstream_connection_error")  # fmt: skip
            failed.append(node.name)
            continue
        if attempt < retries and await _retriable(response):
            log.warning("retrying elsewhere node=%s status=%s", node.name, response.status_code)
            failed.append(node.name)
            last = None
            continue
        head_wait = trio.current_time() - sent
        return attrs.evolve(acquired, head_wait=head_wait, retried_on=tuple(failed)), response
    raise last or UpstreamError("no replica could take the request", code="upstream_error")


class _Once:
    """`function(*args)`, worked out on the first call and remembered (what
    `functools.cache` over a `partial` does, without building an LRU wrapper for
    every request)."""

    __slots__ = ("_call", "_value")

    def __init__(self, function: Callable[..., Any], *args: Any) -> None:
        self._call: Callable[[], Any] | None = functools.partial(function, *args)
        self._value: Any = None

    def __call__(self) -> Any:
        if self._call is not None:
            self._value, self._call = self._call(), None
        return self._value


async def _retriable(response: Response) -> bool:
    """Read (and close) a refusal worth retrying elsewhere; False leaves it unread."""
    if response.status_code not in (404, 503):
        return False
    try:
        data = await response.aread()
    finally:
        await response.aclose()
    try:
        error = json.loads(data).get("error")
    except (ValueError, AttributeError):
        return False
    code = error.get("code") if isinstance(error, dict) else None
    return code in RETRIABLE_CODES


def response_headers(response: Response | httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower() in _FORWARDED_RESPONSE_HEADERS}


async def open_stream(
    upstream: Upstream,
    rid: str,
    *,
    model: ModelId,
    route: str,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    meter: Meter,
) -> EventStream:
    """A streamed request as request actor `rid`, its events read from the returned
    stream (the first already there: a refusal is still a plain HTTP answer)."""
    return await open_event_stream(
        lambda send: upstream.requests.start_task(
            _produce, upstream, send, model, route, path, body, headers, meter,
            name=rid, kind="request",
        ),
        keepalive=upstream.keepalive,
    )  # fmt: skip


def refusal(stream: EventStream) -> Head | None:
    """None when the stream began (or is waiting: keepalives); else, with the stream
    closed, the node's refusing head, or the error that broke it before one (raised)."""
    first = stream.first
    if isinstance(first, Head) and first.status != 200:
        stream.close()
        return first
    if first is END or isinstance(first, Broken):
        stream.close()
        if isinstance(first, Broken):
            raise first.error
        raise InternalError("the relay ended before the node answered")
    return None


async def _produce(task: Any, upstream: Upstream, send: trio.MemorySendChannel, model: ModelId,
                   route: str, path: str, body: bytes, headers: Mapping[str, str],
                   meter: Meter) -> None:  # fmt: skip
    task.set_status(model=model, route=route, phase="placing")
    status = meter.watching(task.set_status)
    with contextlib.suppress(trio.BrokenResourceError):  # the client went away
        await stream_events(send, upstream, model, path, body, headers, status=status)


async def stream_events(
    send: trio.MemorySendChannel,
    upstream: Upstream,
    model: ModelId,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    status: Any = None,
) -> None:
    """Producer: Head, Chunk…, then close; a refused Head with its body; or Broken.
    Closes `send` when done."""
    async with send:
        try:
            acquired, response = await open_upstream(
                upstream.fleet, model, path, body, headers, upstream.client,
                retries=upstream.retries, status=status,
            )  # fmt: skip
        except ApiError as exc:
            await send.send(Broken(exc))
            return
        try:
            refusal = b"" if response.status_code == 200 else await response.aread()
            head = Head(response.status_code, response_headers(response), acquired.node.name,
                        acquired.cold, acquired.load_wait, acquired.head_wait,
                        acquired.retried_on, refusal)  # fmt: skip
            await send.send(head)
            if response.status_code != 200:
                return
            if status is not None:
                status(phase="streaming")
            async with contextlib.aclosing(response.aiter_raw()) as chunks:
                async for data in chunks:
                    await send.send(Chunk(data))
        except httpx.HTTPError as exc:
            log.warning("upstream stream broke node=%s: %r", acquired.node.name, exc)
            await send.send(Broken(UpstreamError(
                f"node {acquired.node.name} stream failed: {type(exc).__name__}",
                code="upstream_stream_error",
            )))  # fmt: skip
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await response.aclose()


async def answer_in_full(
    upstream: Upstream,
    rid: str,
    *,
    model: str,
    route: str,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    meter: Meter,
) -> tuple[Response, bytes]:
    """One non-streamed request as a request actor: placed, sent to a node (retried
    elsewhere when that is worth it), its whole answer read; `meter` told who answered.
    The response comes back closed, with its body."""
    async with actors.open_task(upstream.requests, rid, kind="request") as task:
        task.set_status(model=model, route=route, phase="placing")
        acquired, response = await open_upstream(
            upstream.fleet, ModelId(model), path, body, headers, upstream.client,
            retries=upstream.retries, status=meter.watching(task.set_status),
        )  # fmt: skip
        meter.answered(acquired.node.name, acquired.cold, acquired.load_wait or None,
                       acquired.head_wait, retried_on=acquired.retried_on)  # fmt: skip
        try:
            data = await response.aread()
        except httpx.HTTPError as exc:  # the node went away mid-answer: a 502, not a 500
            raise broke_mid_answer(acquired.node.name, exc) from exc
        finally:
            await response.aclose()
    return response, data


def broke_mid_answer(node: str, exc: httpx.HTTPError) -> ApiError:
    """A node's answer cut off after its head (it died, the connection broke) while
    the gateway read it whole: nothing reached the client yet, so a clear 502."""
    return UpstreamError(f"node {node} broke off its answer: {type(exc).__name__}",
                         code="upstream_connection_error")  # fmt: skip


def error_from_body(status: int, raw: bytes, retry_after: str | None) -> ApiError:
    """A node's non-2xx answer as an ApiError (for dialects that re-render errors)."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = {"error": raw[:500].decode("utf-8", "replace")}
    seconds = float(retry_after) if retry_after and retry_after.isdigit() else None
    return api_error_from_envelope(status, body, retry_after=seconds)
