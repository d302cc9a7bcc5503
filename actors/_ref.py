"""`ActorRef`: the caller's handle to an actor.

This module is for talking to an actor from outside it: `tell` (waits while
the mailbox is full), `tell_nowait` (raises `MailboxFull`), `ask` (a reply or
the handler's boxed error, within a timeout), `cancel` (the actor and its
subtree, awaited until gone) and read-only views (`statistics`, `snapshot`).
A ref points at the registry entry, not at one incarnation, so it stays
valid across restarts. It is not for starting children; see `SupervisorRef`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from ._mailbox import Envelope, Mailbox, Reply
from ._snapshot import ActorPath, ActorSnapshot, ActorState, ActorStatistics
from .errors import AskTimeout

if TYPE_CHECKING:
    from ._cell import Cell

__all__ = ["ActorRef"]


class ActorRef:
    """Handle to one actor; compare refs with ``is``/``==`` (one ref per actor)."""

    __slots__ = ("_cell",)

    def __init__(self, cell: Cell) -> None:
        self._cell = cell

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path} {self.state.value}>"

    @property
    def name(self) -> str:
        return self._cell.name

    @property
    def path(self) -> ActorPath:
        return self._cell.path

    @property
    def kind(self) -> str:
        return self._cell.kind

    @property
    def state(self) -> ActorState:
        return self._cell.state

    def _mailbox(self) -> Mailbox:
        mailbox = self._cell.mailbox
        if mailbox is None:
            raise TypeError(f"{self.path} is a {self.kind} and has no mailbox")
        return mailbox

    async def tell(self, message: Any) -> None:
        """Deliver `message`; waits while the mailbox is full. Raises `ActorStopped`."""
        await self._mailbox().put(Envelope(message))

    def tell_nowait(self, message: Any) -> None:
        """Deliver `message` or raise `MailboxFull` at once (or `ActorStopped`)."""
        self._mailbox().put_nowait(Envelope(message))

    # A timeout *parameter* (not just the caller's fail_after) is the contract
    # here: it turns silence into AskTimeout naming the actor, and every ask
    # must state one.
    async def ask(self, message: Any, *, timeout: float) -> Any:  # noqa: ASYNC109
        """Send `message` and return the handler's reply.

        `timeout` (seconds, `math.inf` for none) bounds the whole exchange,
        including waiting for mailbox space: `AskTimeout` when it runs out.
        A handler error arrives here as `RemoteError` and the actor keeps
        running; `ActorStopped` if the actor goes before answering. There is
        deliberately no default: every ask states how long it may wait.
        """
        mailbox = self._mailbox()
        reply = Reply(self.path)
        with trio.move_on_after(timeout):
            await mailbox.put(Envelope(message, reply))
            return await reply._wait()
        raise AskTimeout(self.path, timeout)

    def cancel_nowait(self) -> None:
        """Cancel this actor and its subtree for good; returns at once."""
        self._cell.request_stop()

    async def cancel(self) -> None:
        """Cancel this actor and its subtree for good, and wait until all of it is gone.

        A supervised actor cancelled this way is not restarted. The actors'
        own cleanup is shielded and bounded; tasks that ignore cancellation
        are the one thing that can make this wait longer.
        """
        cells = list(self._cell.walk())
        self._cell.request_stop()
        for cell in cells:
            await cell.gone.wait()

    async def wait_stopped(self) -> None:
        """Wait until the actor has left the registry for good."""
        await self._cell.gone.wait()

    def statistics(self) -> ActorStatistics:
        return self._cell.statistics()

    def snapshot(self) -> ActorSnapshot:
        """This actor's subtree as a frozen snapshot."""
        return self._cell.snapshot()
