"""`ActorRef`: the caller's handle to an actor.

This module is for handling an actor from outside it: `cancel` (the actor
and its subtree, awaited until gone), `wait_stopped`, and read-only views
(`state`, `statistics`, `snapshot`).
A ref points at the registry entry, not at one incarnation, so it stays
valid across restarts. It is not for starting children; see `SupervisorRef`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._snapshot import ActorPath, ActorSnapshot, ActorState, ActorStatistics

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
