"""Task actors: light, per-request actors that are just a task with an identity.

This module is for work with a natural end — one HTTP request, one
generation, one model load — that should still be visible and cancellable:
a `TaskActor` is a registry entry, a cancel scope and status fields around
an ordinary task. Use
`open_task` to make the *current* task one (a client disconnect then cancels
it the normal trio way), `SupervisorRef.start_task` to run one under
supervision, `Actor.start_task` for an actor's own child tasks. It is not for
long-lived state that serves messages; that is `Actor`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import trio

from ._cell import Cell, Readiness, Runner
from ._ref import ActorRef
from ._snapshot import ActorPath, ActorState, ActorStatistics

__all__ = ["TaskActor", "open_task", "run_child_task", "task_runner"]


class TaskActor:
    """What a task actor's code holds: its identity, scope and status."""

    __slots__ = ("_cell",)

    def __init__(self, cell: Cell) -> None:
        self._cell = cell

    def __repr__(self) -> str:
        return f"<TaskActor {self.path}>"

    @property
    def ref(self) -> ActorRef:
        ref: ActorRef = self._cell.ref
        return ref

    @property
    def path(self) -> ActorPath:
        return self._cell.path

    @property
    def cancel_scope(self) -> trio.CancelScope:
        """Cancelled by `ref.cancel()`; check `cancelled_caught` after the block."""
        return self._cell.scope

    def set_status(self, **fields: Any) -> None:
        """Update the status fields the registry shows (a value of None removes one)."""
        self._cell.set_status(fields)

    def statistics(self) -> ActorStatistics:
        return self._cell.statistics()


@contextmanager
def _life(cell: Cell) -> Iterator[TaskActor]:
    """Scope, error record and removal shared by the unsupervised task forms."""
    cell.active = True
    try:
        with cell.scope:
            cell.mark_running()
            yield TaskActor(cell)
    except Exception as exc:
        cell.record_error(exc)
        cell.set_state(ActorState.FAILED)
        raise
    finally:
        cell.active = False
        cell.remove()


@asynccontextmanager
async def open_task(
    parent: ActorRef,
    name: str,
    *,
    kind: str = "task",
) -> AsyncIterator[TaskActor]:
    """Register the current task as a task actor under `parent` for the block.

    The block runs in the task actor's cancel scope: `ref.cancel()` (or the
    parent stopping) cancels it and the block exits quietly, as with
    `trio.move_on_after`. An exception leaves the block as usual and is
    recorded as the task's last error. On exit the entry leaves the registry.
    Not supervised, never restarted.
    """
    cell = parent._cell.add_child(name, kind, ref_type=ActorRef, attached=True)
    with _life(cell) as task:
        yield task


async def run_child_task(
    cell: Cell, fn: Callable[..., Awaitable[object]], args: tuple[Any, ...]
) -> None:
    """Body of `Actor.start_task`: an error propagates and crashes the actor."""
    with _life(cell) as task:
        await fn(task, *args)


def task_runner(fn: Callable[..., Awaitable[object]], args: tuple[Any, ...]) -> Runner:
    """Incarnation of a supervised task actor: ready at once, ends when `fn` returns."""

    async def run(cell: Cell, ready: Readiness) -> None:
        cell.mark_running()
        ready.started(cell.ref)
        await fn(TaskActor(cell), *args)

    return run
