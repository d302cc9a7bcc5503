"""protocol.streaming: one producer's events as a response body, closed however it ends.

On trio's autojump clock: silence is `IDLE` every keepalive interval, the end
is `END`, events already waiting are rendered into one write, and the stream
is closed (producer cancelled, renderer told once) when the body ends, when
the server closes it, and — through a real quart-trio app — when the client
leaves after the route returned but before the body's first step.
"""

from __future__ import annotations

from typing import Any

import trio
from quart_trio import QuartTrio

from protocol.http import prepare_app
from protocol.streaming import END, IDLE, open_event_stream


class Handle:
    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope

    def cancel_nowait(self) -> None:
        self.scope.cancel()


class Renderer:
    """Writes each event's repr; done after `last`."""

    def __init__(self, last: Any = END) -> None:
        self.last = last
        self.done = False
        self.closed_times = 0

    def render(self, event: Any) -> bytes:
        self.done = event == self.last or event is END
        return f"{event!r};".encode()

    def closed(self) -> None:
        self.closed_times += 1


def producer(nursery: trio.Nursery, script: list[tuple[float, Any]], then_wait: bool = False):
    """A `start` that sends each event after its delay; the scope's fate is kept."""
    state: dict[str, Any] = {"cancelled": trio.Event()}

    async def start(send: trio.MemorySendChannel) -> Handle:
        scope = trio.CancelScope()
        state["scope"] = scope

        async def produce() -> None:
            with scope:
                async with send:
                    for delay, event in script:
                        await trio.sleep(delay)
                        await send.send(event)
                    if then_wait:
                        await trio.sleep_forever()
            if scope.cancelled_caught:
                state["cancelled"].set()

        nursery.start_soon(produce)
        return Handle(scope)

    return start, state


async def test_silence_is_idle_and_the_end_is_end(autojump_clock, nursery):
    start, _ = producer(nursery, [(2.5, "a"), (0, "b")])
    stream = await open_event_stream(start, keepalive=1.0)
    assert stream.first is IDLE
    renderer = Renderer()
    out = b"".join([data async for data in stream.body(renderer)])
    assert out == b"IDLE;IDLE;'a';'b';END;"
    assert renderer.closed_times == 1


async def test_waiting_events_are_one_write(autojump_clock, nursery):
    start, _ = producer(nursery, [(0, "a"), (0, "b"), (0, "c"), (5, "d")])
    stream = await open_event_stream(start, keepalive=10.0)
    await trio.sleep(1)  # a, b and c are waiting
    writes = [data async for data in stream.body(Renderer())]
    assert writes[0] == b"'a';'b';'c';" and b"".join(writes[1:]) == b"'d';END;"


async def test_a_done_renderer_ends_the_body_and_cancels_the_producer(autojump_clock, nursery):
    start, state = producer(nursery, [(0, "a"), (0, "stop")], then_wait=True)
    stream = await open_event_stream(start, keepalive=1.0)
    renderer = Renderer(last="stop")
    assert b"".join([d async for d in stream.body(renderer)]) == b"'a';'stop';"
    with trio.fail_after(1):
        await state["cancelled"].wait()
    assert renderer.closed_times == 1


async def test_a_body_closed_before_its_first_step_cancels_the_producer(autojump_clock, nursery):
    start, state = producer(nursery, [(0, "a")], then_wait=True)
    stream = await open_event_stream(start, keepalive=1.0)
    renderer = Renderer()
    body = stream.body(renderer)
    await body.aclose()
    stream.close()  # idempotent
    with trio.fail_after(1):
        await state["cancelled"].wait()
    assert renderer.closed_times == 1


async def test_a_first_wait_cancelled_cancels_the_producer(autojump_clock, nursery):
    start, state = producer(nursery, [(100, "late")])
    with trio.move_on_after(5):
        await open_event_stream(start, keepalive=1.0, first_timeout=float("inf"))
    with trio.fail_after(1):
        await state["cancelled"].wait()


def _scope(path: str) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": "POST", "scheme": "http", "path": path,
            "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"x"), (b"content-length", b"0")],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "extensions": {}}  # fmt: skip


async def test_a_client_gone_between_the_head_and_the_body_cancels_the_producer(nursery):
    """quart-trio cancels the exchange when the client leaves; if that lands while the
    head is being sent, the body is never iterated (nor closed): a generator's
    `finally` never runs. The stream is closed at the exchange's end all the same."""
    start, state = producer(nursery, [(0, "a")], then_wait=True)
    app = prepare_app(QuartTrio("streaming"))

    @app.post("/stream")
    async def stream_route():
        stream = await open_event_stream(start, keepalive=1.0)
        return stream.body(Renderer()), 200, {"Content-Type": "text/event-stream"}

    gone, requested = trio.Event(), False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            gone.set()  # the client hangs up as the head goes out
            await trio.sleep_forever()
        raise AssertionError(f"the body was sent: {message}")

    with trio.fail_after(10):
        await app(_scope("/stream"), receive, send)
        await state["cancelled"].wait()
