"""The runtime's live record of one actor: a node in the registry tree.

This module is for the mutable per-actor state the runtime keeps across
restarts — identity (name, path, kind), lifecycle state, counters, status
fields, cancel scope, children — and for the small state
transitions every actor kind shares (running, failed, stop requested,
removed). Every transition bumps the registry version so watchers wake. It is
not for running an actor (`_actor`, `_task`, `_supervisor`) nor for the
caller-facing handle (`_ref`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._policy import Restart
from ._snapshot import ActorPath, ActorSnapshot, ActorState, ActorStatistics
from .errors import ActorStopped, NameTaken

if TYPE_CHECKING:
    from ._registry import Registry
    from ._supervisor import Supervision

__all__ = ["Cell", "Readiness", "Runner", "describe_error", "sole_error"]

_ENDED = (ActorState.STOPPED, ActorState.FAILED)


class Readiness:
    """Wraps a `task_status` so only the first incarnation reports `started()`."""

    def __init__(self, task_status: trio.TaskStatus[Any]) -> None:
        self._task_status = task_status
        self.done = False

    def started(self, value: Any = None) -> None:
        if not self.done:
            self.done = True
            self._task_status.started(value)


Runner = Callable[["Cell", Readiness], Awaitable[None]]
"""Runs one incarnation of an actor; calls `cell.mark_running()` then `ready.started()`."""


def sole_error(exc: Exception) -> Exception:
    """The one error inside (nested) single-exception groups, else `exc` itself.

    An actor's crash arrives wrapped by its own nursery; supervisors log it,
    record it and chain it as the real error.
    """
    while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def describe_error(exc: BaseException) -> str:
    """``"TypeName: message"``, looking through single-exception groups."""
    if isinstance(exc, Exception):
        exc = sole_error(exc)
    return f"{type(exc).__qualname__}: {exc}"


@attrs.define(eq=False, repr=False)
class Cell:
    registry: Registry
    name: str
    kind: str
    parent: Cell | None
    path: ActorPath
    attached: bool = False  # runs in someone else's task (open_task): cancel it explicitly
    restart: Restart = Restart.TEMPORARY
    runner: Runner | None = None
    supervision: Supervision | None = None
    ref: Any = None
    state: ActorState = ActorState.STARTING
    started_at: float | None = None
    restarts: int = 0
    last_error: str | None = None
    status: dict[str, Any] = attrs.Factory(dict)
    children: dict[str, Cell] = attrs.Factory(dict)
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    gone: trio.Event = attrs.Factory(trio.Event)
    stop_requested: bool = False
    active: bool = False  # a task is living this entry right now (incarnating or backing off)

    def __repr__(self) -> str:
        return f"<Cell {self.path} {self.kind} {self.state.value}>"

    @property
    def removed(self) -> bool:
        return self.gone.is_set()

    def add_child(
        self,
        name: str,
        kind: str,
        *,
        ref_type: Callable[[Cell], Any],
        **fields: Any,
    ) -> Cell:
        """Register a new child in state STARTING (`fields` are further Cell fields)."""
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"actor name must be a non-empty string without '/': {name!r}")
        if self.removed or self.stop_requested:
            raise ActorStopped(self.path, f"cannot add child {name!r}: parent is stopping")
        if name in self.children:
            raise NameTaken(self.path, f"already has a child named {name!r}")
        path = ActorPath(f"{self.path}/{name}")
        child = Cell(self.registry, name, kind, self, path, **fields)
        child.ref = ref_type(child)
        self.children[name] = child
        self.registry.bump()
        return child

    def renew_scope(self) -> trio.CancelScope:
        """A fresh scope for a new supervised life (a scope is entered only once)."""
        self.scope = trio.CancelScope()
        if self.stop_requested:
            self.scope.cancel("actor stop requested")
        return self.scope

    def set_state(self, state: ActorState) -> None:
        self.state = state
        self.registry.bump()

    def mark_running(self) -> None:
        self.started_at = time.time()
        self.set_state(ActorState.STOPPING if self.stop_requested else ActorState.RUNNING)

    def record_error(self, exc: BaseException) -> None:
        self.last_error = describe_error(exc)
        self.registry.bump()

    def set_status(self, fields: dict[str, Any]) -> None:
        for key, value in fields.items():
            if value is None:
                self.status.pop(key, None)
            else:
                self.status[key] = value
        self.registry.bump()

    def walk(self) -> Iterator[Cell]:
        yield self
        for child in list(self.children.values()):
            yield from child.walk()

    def request_stop(self) -> None:
        """Cancel this cell and its whole subtree for good (no restarts).

        Entries no task is living (stopped, waiting for their supervisor to
        come back) are removed here, since nothing else would remove them.
        """
        idle = []
        for cell in self.walk():
            cell.stop_requested = True
            if not cell.active:
                idle.append(cell)
            elif cell.state not in _ENDED:
                cell.state = ActorState.STOPPING
            cell.scope.cancel("actor stop requested")
        for cell in idle:
            cell.remove()
        self.registry.bump()

    def stop_attached(self) -> None:
        """Stop children running in other tasks; an incarnation must not leave them behind."""
        for child in list(self.children.values()):
            if child.attached:
                child.request_stop()

    def remove(self) -> None:
        """Leave the registry for good: subtree first, then `gone` set.

        A child some task is still living is only asked to stop: it removes
        itself (and sets its own `gone`) when that task is done with it.
        """
        if self.removed:
            return
        for child in list(self.children.values()):
            if child.active:
                child.request_stop()
            else:
                child.remove()
        if self.parent is not None and self.parent.children.get(self.name) is self:
            del self.parent.children[self.name]
        if self.state is not ActorState.FAILED:
            self.state = ActorState.STOPPED
        self.gone.set()
        self.registry.bump()

    def statistics(self) -> ActorStatistics:
        return ActorStatistics(
            path=self.path,
            kind=self.kind,
            state=self.state,
            restarts=self.restarts,
            children=len(self.children),
        )

    def snapshot(self) -> ActorSnapshot:
        return ActorSnapshot(
            name=self.name,
            path=self.path,
            kind=self.kind,
            state=self.state,
            started_at=self.started_at,
            restarts=self.restarts,
            last_error=self.last_error,
            status=MappingProxyType(dict(self.status)),
            children=tuple(child.snapshot() for child in self.children.values()),
        )
