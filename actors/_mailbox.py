"""Bounded mailboxes, the envelopes they carry, and one-shot ask replies.

This module is for moving messages into an actor: a `Mailbox` is a bounded
trio memory channel (a full mailbox is backpressure: `put` waits, `put_nowait`
raises `MailboxFull`), an `Envelope` pairs a message with the `Reply` slot an
asker waits on. It is not for deciding what a message means or who handles
it; see `_actor` (dispatch) and `_ref` (the sending side).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import trio

from .errors import ActorStopped, MailboxFull, RemoteError

__all__ = ["Envelope", "Mailbox", "Reply"]

_UNSET: Any = object()


class Reply:
    """The one-shot answer to one `ask`: settled once, awaited by the asker.

    A handler that needs I/O before it can answer takes the reply with
    `Actor.defer_reply()` and settles it later (e.g. from a child task).
    Settling twice is a bug and raises `RuntimeError`; settling after the
    asker gave up is harmless.
    """

    __slots__ = ("__weakref__", "_error", "_event", "_value", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self._event = trio.Event()
        self._value: Any = _UNSET
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def send(self, value: Any) -> None:
        """Answer the ask with `value`."""
        self._settle(value, None)

    def fail(self, exc: BaseException) -> None:
        """Answer the ask with an error; the asker gets it boxed in `RemoteError`."""
        box = RemoteError.from_exception(self.path, exc)
        box.__cause__ = exc
        self._settle(_UNSET, box)

    def _settle(self, value: Any, error: BaseException | None) -> None:
        if self.done:
            raise RuntimeError(f"{self.path}: reply already settled")
        self._value, self._error = value, error
        self._event.set()

    def _abandon(self, error: BaseException) -> None:
        if not self.done:
            self._settle(_UNSET, error)

    async def _wait(self) -> Any:
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value


@attrs.frozen
class Envelope:
    """A message in a mailbox; `reply` is None for `tell`, set for `ask`."""

    message: Any
    reply: Reply | None = None


class Mailbox:
    """A bounded FIFO of envelopes that outlives restarts of its actor."""

    def __init__(self, path: str, capacity: int, on_change: Callable[[], None]) -> None:
        if capacity < 1:
            raise ValueError(f"mailbox capacity must be at least 1, got {capacity}")
        self.path = path
        self.capacity = capacity
        self._on_change = on_change
        self._send, self._receive = trio.open_memory_channel[Envelope](capacity)
        # Counted here rather than read from channel statistics(): snapshots
        # read it for every actor, so it must be nearly free.
        self.depth = 0

    @property
    def senders_waiting(self) -> int:
        return self._send.statistics().tasks_waiting_send

    async def put(self, envelope: Envelope) -> None:
        try:
            await self._send.send(envelope)
        except trio.BrokenResourceError:
            raise ActorStopped(self.path, "stopped; message not delivered") from None
        self._delivered(+1)

    def put_nowait(self, envelope: Envelope) -> None:
        try:
            self._send.send_nowait(envelope)
        except trio.WouldBlock:
            raise MailboxFull(self.path, self.capacity) from None
        except trio.BrokenResourceError:
            raise ActorStopped(self.path, "stopped; message not delivered") from None
        self._delivered(+1)

    async def get(self) -> Envelope:
        try:
            envelope = await self._receive.receive()
        except (trio.ClosedResourceError, trio.EndOfChannel):
            raise ActorStopped(self.path, "mailbox closed") from None
        self._delivered(-1)
        return envelope

    def get_nowait(self) -> Envelope:
        """Raises `trio.WouldBlock` when empty."""
        try:
            envelope = self._receive.receive_nowait()
        except (trio.ClosedResourceError, trio.EndOfChannel):
            raise ActorStopped(self.path, "mailbox closed") from None
        self._delivered(-1)
        return envelope

    def _delivered(self, change: int) -> None:
        self.depth += change
        self._on_change()

    def close(self) -> None:
        """Refuse further messages and fail every ask still queued."""
        while True:
            try:
                envelope = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.ClosedResourceError, trio.EndOfChannel):
                break
            if envelope.reply is not None:
                envelope.reply._abandon(ActorStopped(self.path, "stopped before replying"))
        self._receive.close()
        self.depth = 0
