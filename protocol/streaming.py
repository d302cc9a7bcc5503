"""One streaming path for both daemons: a producer task's events as a response body.

A streaming route starts a producer (a request actor) that puts events into a
memory channel; the response body reads the channel, so nothing yields inside
a nursery (PEP 789). What is the same for every streamed answer lives here:

* `open_event_stream` opens the channel, starts the producer with
  `start(send)` (which returns a handle with `cancel_nowait()`, an actor ref),
  and waits for its first event up to `first_timeout`: the route sees that
  event — `END` if the producer closed its channel first, `IDLE` if it took
  too long — and can still answer a plain HTTP error;
* `EventStream.body(renderer)` is the body: each event, `IDLE` after every
  `keepalive` seconds of silence and `END` at the end go through the
  dialect's `StreamRenderer`, which turns them into bytes and says when the
  stream is `done`. Events already waiting behind one are rendered into the
  same write (a client that keeps up gets each as it came; one that falls
  behind gets fewer, larger writes — the same bytes either way);
* `EventStream.close` cancels the producer, closes the channel and tells the
  renderer once (`closed`), however the exchange ended: the body finishing,
  the server closing it, or — the case a generator's `finally` cannot see —
  the client leaving after the route returned but before the body's first
  step. Registered with `protocol.http.at_request_end`, it runs when the HTTP
  exchange is over whatever happened to the body.

Not for: what the events mean or how they look on the wire — the renderers
live with their routes (`cortex.http`, `cortex.messages`, `neuron.serving`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from protocol.http import at_request_end

__all__ = ["END", "IDLE", "EventStream", "StreamRenderer", "open_event_stream"]


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


END = _Marker("END")  # the producer closed its channel
IDLE = _Marker("IDLE")  # nothing for `keepalive` seconds

# How much already-waiting output one write may gather.
_COALESCE_BYTES = 64 * 1024


class Cancellable(Protocol):
    def cancel_nowait(self) -> None: ...


class StreamRenderer(Protocol):
    """A dialect's view of a stream: bytes for each event (`IDLE` and `END` included)."""

    @property
    def done(self) -> bool:
        """Everything has been said: the body ends after the last render."""
        ...

    def render(self, event: Any) -> bytes: ...

    def closed(self) -> None:
        """Called once when the stream is closed, done or not (not done: the client left)."""
        ...


async def open_event_stream(
    start: Callable[[trio.MemorySendChannel[Any]], Awaitable[Cancellable]],
    *,
    keepalive: float,
    first_timeout: float | None = None,
    buffer: int = 64,
) -> EventStream:
    """Start the producer and wait for its first event (`first_timeout`, default the
    keepalive interval; `math.inf` waits as long as it takes)."""
    send, receive = trio.open_memory_channel[Any](buffer)
    stream = EventStream(receive, keepalive)
    try:
        stream._producer = await start(send)
        at_request_end(stream.close)
        stream.first = await stream._next(keepalive if first_timeout is None else first_timeout)
    except BaseException:
        stream.close()
        raise
    return stream


class EventStream:
    """The receiving end of a producer's events; see the module docstring."""

    def __init__(self, receive: trio.MemoryReceiveChannel[Any], keepalive: float) -> None:
        self.first: Any = None
        self._receive = receive
        self._keepalive = keepalive
        self._producer: Cancellable | None = None
        self._renderer: StreamRenderer | None = None
        self._closed = False

    def body(self, renderer: StreamRenderer) -> _Body:
        """The response body, starting with `first`; the stream is closed at its end."""
        self._renderer = renderer
        return _Body(self, renderer)

    def close(self) -> None:
        """Cancel the producer, close the channel, tell the renderer. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._producer is not None:
            self._producer.cancel_nowait()  # a no-op once it has ended
        self._receive.close()
        if self._renderer is not None:
            self._renderer.closed()

    async def _next(self, wait: float) -> Any:
        try:
            return self._receive.receive_nowait()  # already there: no timer (the common case)
        except trio.WouldBlock:
            pass
        except trio.EndOfChannel:
            return END
        with trio.move_on_after(wait):
            try:
                return await self._receive.receive()
            except trio.EndOfChannel:
                return END
        return IDLE

    def _ready(self) -> Any:
        """The next event if one is waiting, else None (the end is seen by `_next`)."""
        try:
            return self._receive.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return None


class _Body:
    """An async iterator of the rendered bytes, closing the stream when it ends."""

    def __init__(self, stream: EventStream, renderer: StreamRenderer) -> None:
        self._stream = stream
        self._renderer = renderer
        self._pending: Any = stream.first

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        renderer, stream = self._renderer, self._stream
        while not renderer.done and not stream._closed:
            event, self._pending = self._pending, None
            if event is None:
                event = await stream._next(stream._keepalive)
            data = self._gather(renderer.render(event))
            if data:
                return data
        stream.close()
        raise StopAsyncIteration

    def _gather(self, data: bytes) -> bytes:
        """`data` and the renders of the events already waiting behind it, as one write."""
        renderer, parts, size = self._renderer, [data], len(data)
        while size < _COALESCE_BYTES and not renderer.done:
            event = self._stream._ready()
            if event is None:
                break
            parts.append(more := renderer.render(event))
            size += len(more)
        return data if len(parts) == 1 else b"".join(parts)

    async def aclose(self) -> None:
        self._stream.close()
