"""Where the inspector's data comes from: actor-tree snapshots, once or as streams.

A `Board` holds the latest snapshot of each actor tree the view shows — the
target's (`--url`: a gateway or a neuron, told apart by the name of its
root actor) and, for a gateway, each node's, read through the gateway
(`/admin/nodes/<name>/actors`) — or why there is none (unreachable).
`fetch_board` fills one with plain GETs (`--once`); `follow` keeps one
current from the SSE streams (`/admin/actors/stream`, then one stream per
node as the gateway's tree names them), reconnecting with backoff — for a
node the gateway reports down, only once its state changes (or every
`RETRY_DOWN` seconds), so a dead node costs the gateway no 502s. Every change
bumps `Board.version` and wakes `wait_changed`: the renderer never polls.

Not for: drawing (`cortex.inspect.render`) or the terminal (`cortex.inspect.live`).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import trio

from protocol.errors import EventStreamError
from protocol.sse import SseDecoder, SseEvent

__all__ = ["Board", "InspectError", "Source", "fetch_board", "follow"]

RETRY_INITIAL = 0.5  # seconds before reconnecting a stream, doubling per failure ...
RETRY_MAX = 5.0  # ... up to this
RETRY_DOWN = 30.0  # a node the gateway reports down: retry when its state changes, or after this
STREAM_TIMEOUT = httpx.Timeout(5.0, read=None)  # a quiet tree sends nothing for a while


class InspectError(Exception):
    """A tree could not be read: the one-line reason (unreachable, refused, bad body)."""


class Source:
    """One actor tree the view shows, and how fresh it is."""

    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.path = path  # of the snapshot route, relative to the target URL
        self.snapshot: dict[str, Any] | None = None
        self.error: str | None = None  # why there is no snapshot right now
        self.received_at: float | None = None  # local wall clock
        self.node_state: str | None = None  # a node's state as the gateway last reported it
        self.retry_now = trio.Event()  # cut a reconnect backoff short

    def clock(self, now: float) -> float:
        """The source's own wall clock at local time `now` (ages survive clock skew)."""
        if self.snapshot is None or self.received_at is None:
            return now
        return self.snapshot["taken_at"] + (now - self.received_at)

    def to_dict(self) -> dict[str, Any]:
        return self.snapshot if self.snapshot is not None else {"error": self.error}


class Board:
    """The latest snapshot of every tree in view; `version` grows with each change."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.target = Source("target", "/admin/actors")
        self.nodes: dict[str, Source] = {}
        self.version = 0
        self._changed = trio.Event()

    @property
    def kind(self) -> str | None:
        """Either "gateway" or "neuron" once the target answered (its root actor's name)."""
        if self.target.snapshot is None:
            return None
        return "gateway" if self.target.snapshot["root"]["name"] == "cortex" else "neuron"

    def node_states(self) -> dict[str, str | None]:
        """The gateway's node actors (children of `fleet`): name → reported state."""
        if self.kind != "gateway":
            return {}
        fleet = [c for c in self.target.snapshot["root"]["children"] if c["name"] == "fleet"]
        nodes = (n for f in fleet for n in f["children"] if n["kind"] == "node")
        return {n["name"]: n["status"].get("state") for n in nodes}

    def add_node(self, name: str) -> Source:
        source = self.nodes[name] = Source(name, f"/admin/nodes/{quote(name, safe='')}/actors")
        source.node_state = self.node_states().get(name)
        return source

    def set_snapshot(self, source: Source, snapshot: dict[str, Any]) -> None:
        source.snapshot, source.error, source.received_at = snapshot, None, time.time()
        if source is self.target:
            for name, state in self.node_states().items():
                node = self.nodes.get(name)
                if node is not None and node.node_state != state:
                    node.node_state = state
                    node.retry_now.set()
        self.poke()

    def set_error(self, source: Source, error: str) -> None:
        source.snapshot, source.error = None, error
        self.poke()

    def poke(self) -> None:
        """Record a change (also one that only needs a redraw, like a resize)."""
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self, seen: int) -> None:
        """Return once `version` differs from `seen`."""
        while self.version == seen:
            await self._changed.wait()

    def to_dict(self) -> dict[str, Any]:
        """What `--json` prints: the raw snapshots, or an `error` where there is none."""
        return {
            "url": self.url,
            "kind": self.kind,
            "target": self.target.to_dict(),
            "nodes": {name: source.to_dict() for name, source in self.nodes.items()},
        }


# ------------------------------------------------------------------ once


async def fetch_board(client: httpx.AsyncClient, url: str) -> Board:
    """Every tree once; raises `InspectError` if the target itself cannot be read."""
    board = Board(url)
    try:
        board.set_snapshot(board.target, await _get(client, board.target.path))
    except InspectError as exc:
        raise InspectError(f"cannot read {url}{board.target.path}: {exc}") from None
    async with trio.open_nursery() as nursery:
        for name in board.node_states():
            nursery.start_soon(_fetch_node, client, board, board.add_node(name))
    return board


async def _fetch_node(client: httpx.AsyncClient, board: Board, source: Source) -> None:
    try:
        board.set_snapshot(source, await _get(client, source.path))
    except InspectError as exc:
        board.set_error(source, str(exc))


async def _get(client: httpx.AsyncClient, path: str) -> dict[str, Any]:
    try:
        response = await client.get(path)
    except httpx.HTTPError as exc:
        raise InspectError(describe(exc)) from None
    if response.status_code != 200:
        raise InspectError(_refusal(response))
    return _snapshot(response.content)


# ------------------------------------------------------------------ streams


async def follow(client: httpx.AsyncClient, board: Board) -> None:
    """Keep `board` current until cancelled: the target's stream, and each node's."""
    async with trio.open_nursery() as nursery:

        def start_new_nodes() -> None:
            for name in board.node_states():
                if name not in board.nodes:
                    nursery.start_soon(_follow_source, client, board, board.add_node(name), None)

        await _follow_source(client, board, board.target, start_new_nodes)


async def _follow_source(client: httpx.AsyncClient, board: Board, source: Source,
                         on_snapshot: Callable[[], None] | None) -> None:  # fmt: skip
    delay = RETRY_INITIAL
    while True:
        received = False

        def deliver(snapshot: dict[str, Any]) -> None:
            nonlocal received
            received = True
            board.set_snapshot(source, snapshot)
            if on_snapshot is not None:
                on_snapshot()

        try:
            await _read_stream(client, source.path + "/stream", deliver)
            error = "the stream ended"
        except InspectError as exc:
            error = str(exc)
        board.set_error(source, error)
        delay = RETRY_INITIAL if received else min(delay * 2, RETRY_MAX)
        with trio.move_on_after(RETRY_DOWN if source.node_state == "down" else delay):
            await source.retry_now.wait()
        source.retry_now = trio.Event()


async def _read_stream(client: httpx.AsyncClient, path: str,
                       deliver: Callable[[dict[str, Any]], None]) -> None:  # fmt: skip
    """Deliver each snapshot of one SSE stream until it ends; InspectError on failure."""
    try:
        async with client.stream("GET", path, timeout=STREAM_TIMEOUT) as response:
            if response.status_code != 200:
                await response.aread()
                raise InspectError(_refusal(response))
            decoder = SseDecoder()
            async with contextlib.aclosing(response.aiter_bytes()) as chunks:
                async for chunk in chunks:
                    for event in decoder.feed(chunk):
                        if isinstance(event, SseEvent):
                            deliver(_snapshot(event.data))
    except httpx.HTTPError as exc:
        raise InspectError(describe(exc)) from None
    except EventStreamError as exc:
        raise InspectError(f"bad event stream: {exc}") from None


# ------------------------------------------------------------------ parsing


def _snapshot(raw: bytes | str) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        raise InspectError("the answer is not JSON") from None
    if not (isinstance(body, dict) and isinstance(body.get("root"), dict) and "taken_at" in body):
        raise InspectError("the answer is not an actor snapshot")
    return body


def _refusal(response: httpx.Response) -> str:
    """`HTTP 502: node alpha unreachable: ConnectError` (the error message if any)."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    message = error.get("message") if isinstance(error, dict) else error
    head = f"HTTP {response.status_code}"
    return f"{head}: {message}" if isinstance(message, str) and message else head


def describe(exc: httpx.HTTPError) -> str:
    """One line for a transport failure: `connection refused`, `timed out`, …"""
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    cause: BaseException | None = exc
    while cause is not None:  # the OS's reason, under httpcore's and trio's wrappers
        if isinstance(cause, BaseExceptionGroup):
            cause = cause.exceptions[0]
        elif isinstance(cause, OSError) and cause.strerror:
            return cause.strerror[:1].lower() + cause.strerror[1:]
        else:
            cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__
