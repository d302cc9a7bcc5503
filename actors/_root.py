"""`open_root`: the top of an actor tree, its registry, and its lifetime.

This module is for bringing an actor system up and down inside one trio
program: `async with open_root("cortex") as root:` gives a `Root` — a
supervisor ref (start children on it) that also carries the `Registry`.
Leaving the block stops every actor (each one's cleanup shielded and
bounded) before it returns; if the root itself has to give up (restart
intensity exceeded), the block is cancelled and `RestartIntensityExceeded`
leaves it. It is not for supervision rules (`_supervisor`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from ._cell import Cell
from ._policy import Backoff, RestartIntensity
from ._registry import Registry
from ._snapshot import ActorPath
from ._supervisor import Supervision, SupervisorRef

__all__ = ["Root", "open_root"]


class Root(SupervisorRef):
    """The root supervisor's ref, plus the tree's `registry`."""

    __slots__ = ("registry",)

    def __init__(self, cell: Cell, registry: Registry) -> None:
        super().__init__(cell)
        self.registry = registry


@asynccontextmanager
async def open_root(
    name: str,
    *,
    intensity: RestartIntensity = RestartIntensity(),
    backoff: Backoff = Backoff(),
) -> AsyncIterator[Root]:
    """Open an actor tree named `name`; the root supervises one_for_one.

    An exception from the block propagates as itself (not wrapped in an
    ExceptionGroup) once every actor has stopped. `await root.cancel()`
    stops the tree and cancels the block, which then exits quietly.
    """
    if not name or "/" in name:
        raise ValueError(f"root name must be a non-empty string without '/': {name!r}")
    registry = Registry()
    supervision = Supervision(intensity, backoff)
    cell = Cell(registry, name, "root", None, ActorPath(name), supervision=supervision)
    root = cell.ref = Root(cell, registry)
    registry._set_root(cell)
    body_error: Exception | None = None
    cell.active = True
    try:
        with cell.scope:
            async with trio.open_nursery() as nursery:
                supervision.nursery = nursery
                cell.mark_running()
                try:
                    yield root
                except Exception as exc:
                    # Re-raised below, after the nursery, so it is not wrapped in a group.
                    body_error = exc
                finally:
                    cell.request_stop()
    finally:
        supervision.nursery = None
        cell.active = False
        cell.remove()
        registry._close()
    if supervision.escalation is not None:
        raise supervision.escalation
    if body_error is not None:
        raise body_error
