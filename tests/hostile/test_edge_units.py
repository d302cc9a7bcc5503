"""The HTTP edge's hostile-input rules in-process: keep-alive expiry, request ids,
framework refusals and node errors mapped into the error tree."""

from __future__ import annotations

import functools
import time
from types import SimpleNamespace

import pytest
import trio
import trio.testing
from quart_trio import QuartTrio
from werkzeug.exceptions import BadRequest, RequestTimeout

from protocol.errors import api_error_from_envelope
from protocol.http import (
    _IdleTimer,
    http_exception_error,
    json_response,
    make_config,
    prepare_app,
    request_id_from,
    serve,
)


async def test_a_keep_alive_connection_is_closed_after_its_idle_timeout():
    """hypercorn re-arms its keep-alive timer from inside the app's cancelled send();
    unshielded, a connection that had served one request was never closed."""
    app = prepare_app(QuartTrio("edge"))

    @app.get("/ping")
    async def ping():
        return json_response({"ok": True})

    async with trio.open_nursery() as nursery:
        urls = await nursery.start(serve, app, make_config("127.0.0.1", 0, keep_alive_timeout=1))
        port = int(urls[0].rsplit(":", 1)[1])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        started, received = time.monotonic(), b""
        with trio.fail_after(10):
            while data := await stream.receive_some(65536):
                received += data
        await stream.aclose()
        assert received.startswith(b"HTTP/1.1 200")
        assert 0.9 <= time.monotonic() - started < 5
        nursery.cancel_scope.cancel()


async def _edge_server(nursery, keep_alive_timeout: float) -> int:
    """A prepared app on loopback (`/ping`, `/slow`: 2 s): its port."""
    app = prepare_app(QuartTrio("edge"))

    @app.get("/ping")
    async def ping():
        return json_response({"ok": True})

    @app.get("/slow")
    async def slow():
        await trio.sleep(2)
        return json_response({"ok": True})

    config = make_config("127.0.0.1", 0, keep_alive_timeout=keep_alive_timeout)
    urls = await nursery.start(serve, app, config)
    return int(urls[0].rsplit(":", 1)[1])


async def _exchange(stream: trio.SocketStream, path: str) -> bytes:
    """One keep-alive GET and its whole (small, sized) answer."""
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    received = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in received or not received.endswith(b"}"):
            data = await stream.receive_some(65536)
            assert data, f"the server closed the connection during {path}"
            received += data
    return received


async def test_the_keep_alive_timer_rearms_on_every_response_and_sleeps_during_a_request():
    """Requests closer together than the timeout keep the connection (its deadline moves
    with each response), one that runs longer than the timeout is not cut off, and the
    timeout counts from the last response."""
    async with trio.open_nursery() as nursery:
        port = await _edge_server(nursery, keep_alive_timeout=1.5)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        for _ in range(4):  # 0.6 s apart: 2.4 s in all, past the first response's deadline
            assert (await _exchange(stream, "/ping")).startswith(b"HTTP/1.1 200")
            await trio.sleep(0.6)
        assert (await _exchange(stream, "/slow")).startswith(b"HTTP/1.1 200")  # 2 s
        answered = time.monotonic()
        with trio.fail_after(10):
            assert await stream.receive_some(65536) == b""  # then closed, once idle
        assert 1.3 <= time.monotonic() - answered < 6
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_connection_the_client_ends_is_closed_at_once_not_at_the_timeout():
    """A client that sends EOF on an idle keep-alive connection gets the server's close
    straight away (hypercorn's timer held the connection until its timeout)."""
    async with trio.open_nursery() as nursery:
        port = await _edge_server(nursery, keep_alive_timeout=30)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        assert (await _exchange(stream, "/ping")).startswith(b"HTTP/1.1 200")
        await stream.send_eof()
        with trio.fail_after(3):
            assert await stream.receive_some(65536) == b""
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_request_under_way_when_the_server_terminates_gets_its_answer():
    """Shutdown closes idle keep-alive connections at once, but a request being
    answered finishes first (the keep-alive task waits on termination all along)."""
    app = prepare_app(QuartTrio("edge"))
    shutdown = trio.Event()

    @app.get("/slow")
    async def slow():
        await trio.sleep(1)
        return json_response({"ok": True})

    async with trio.open_nursery() as nursery:
        config = make_config("127.0.0.1", 0, keep_alive_timeout=30)
        urls = await nursery.start(functools.partial(serve, app, config,
                                                     shutdown_trigger=shutdown.wait))  # fmt: skip
        port = int(urls[0].rsplit(":", 1)[1])
        busy = await trio.open_tcp_stream("127.0.0.1", port)
        idle = await trio.open_tcp_stream("127.0.0.1", port)
        await busy.send_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await trio.sleep(0.3)  # the request is under way; `idle` never sent one
        shutdown.set()
        received = b""
        with trio.fail_after(10):
            while data := await busy.receive_some(65536):
                received += data
            assert await idle.receive_some(65536) == b""
        assert received.startswith(b"HTTP/1.1 200") and received.endswith(b"}")
        await busy.aclose()
        await idle.aclose()


@pytest.mark.parametrize(
    ("given", "kept"),
    [("abc-123", True), ("a/b", False), ("", False), ("x" * 129, False), ("tab\there", False),
     ("ünïcode ok", True)],
)  # fmt: skip
def test_a_client_request_id_is_kept_only_if_it_can_name_an_actor(given, kept):
    rid = request_id_from(given)
    assert (rid == given) == kept
    if not kept:
        assert len(rid) == 32 and "/" not in rid


def test_framework_refusals_become_envelopes_with_their_status():
    timeout = http_exception_error(RequestTimeout())
    assert (timeout.status, timeout.code, timeout.type) == (408, "request_timeout",
                                                            "invalid_request_error")  # fmt: skip
    assert timeout.to_anthropic()["error"]["type"] == "invalid_request_error"
    bad = http_exception_error(BadRequest("nope"))
    assert (bad.status, bad.code) == (400, "invalid_request")
    assert "nope" in bad.message


def test_a_nodes_flat_error_keeps_its_code_through_the_gateway():
    error = api_error_from_envelope(400, {"error": "refusing model id '../x'",
                                          "code": "invalid_model_id"})  # fmt: skip
    assert (error.status, error.code, error.type) == (400, "invalid_model_id",
                                                      "invalid_request_error")  # fmt: skip
    assert error.to_openai()["error"]["message"] == "refusing model id '../x'"


async def test_a_keep_alive_deadline_that_passes_as_a_request_begins_does_not_close(
        autojump_clock):  # fmt: skip
    """The timer expired in the very turn a request began (its `stop` came before the
    timer's task ran): that request's connection stays open, and the timer counts
    afresh from its answer."""
    closed: list[float] = []
    server = SimpleNamespace(config=SimpleNamespace(keep_alive_timeout=5),
                             context=SimpleNamespace(terminated=trio.Event()))  # fmt: skip

    async def initiate_server_close() -> None:
        closed.append(trio.current_time())

    server._initiate_server_close = initiate_server_close
    timer = _IdleTimer(server)
    async with trio.open_nursery() as nursery:
        task_group = SimpleNamespace(_nursery=nursery)
        await timer.restart(task_group, None)  # idle after a response
        await trio.testing.wait_all_tasks_blocked()
        timer._scope.cancel()  # the deadline has passed (trio has cancelled its scope)...
        await timer.stop()  # ...and a request begins before the timer's task runs
        await trio.sleep(1)
        assert closed == []  # the request under way is not cut off
        await timer.restart(task_group, None)  # its answer is out
        answered = trio.current_time()
        await trio.sleep(4)
        assert closed == []  # no close straight after the answer either
        await trio.sleep(2)
        assert closed == [answered + 5]  # the timeout, counted from the answer
