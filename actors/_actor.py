"""`Actor`: the base class for long-lived actors, and the code that runs one life.

This module is for actors that own a piece of state for as long as they
run: subclass `Actor`, set up in `on_start` (start the actor's child tasks
there with `start_task`), clean up in `on_stop`. An incarnation lives until
it is cancelled, calls `stop()`, or one of its child tasks raises (a crash,
for its supervisor to deal with). There is no mailbox: the actor's state is
an ordinary object that its child tasks and the program's other tasks call
synchronously, in the one trio thread, so no mutation is seen half-done. It
is not for supervision (`_supervisor`) or for light per-request work
(`_task`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import trio

from ._cell import Cell, Readiness, Runner
from ._ref import ActorRef
from ._snapshot import ActorPath, ActorStatistics
from ._task import run_child_task

__all__ = ["Actor", "actor_runner"]

log = logging.getLogger(__name__)


class Actor:
    """Subclass me. One instance per incarnation: a restart builds a fresh one."""

    kind: ClassVar[str] = "actor"
    stop_timeout: ClassVar[float] = 5.0  # bound on on_stop, seconds

    _cell: Cell | None = None
    _nursery: trio.Nursery | None = None
    _stopping = False
    _life_scope: trio.CancelScope | None = None

    async def on_start(self) -> None:
        """Set up before the actor counts as started; an error here is a failed start."""

    async def on_stop(self) -> None:
        """Clean up after a started incarnation; shielded, bounded by `stop_timeout`."""

    def _runtime(self) -> Cell:
        if self._cell is None:
            raise RuntimeError("actor is not running (runtime methods work from on_start on)")
        return self._cell

    @property
    def ref(self) -> ActorRef:
        ref: ActorRef = self._runtime().ref
        return ref

    @property
    def path(self) -> ActorPath:
        return self._runtime().path

    def set_status(self, **fields: Any) -> None:
        """Update the status fields the registry shows (a value of None removes one)."""
        self._runtime().set_status(fields)

    def statistics(self) -> ActorStatistics:
        return self._runtime().statistics()

    def stop(self) -> None:
        """End this incarnation normally; its child tasks are cancelled.

        Whether it comes back is its supervisor's call (permanent: yes).
        """
        self._stopping = True
        if self._life_scope is not None:
            self._life_scope.cancel("actor stopped itself")

    def start_task(
        self, fn: Callable[..., Awaitable[object]], *args: Any, name: str, kind: str = "task"
    ) -> ActorRef:
        """Run `fn(task, *args)` as a child task actor of this incarnation.

        It shows in the registry under this actor and can be cancelled by ref.
        If it raises, this actor crashes; a task that must report a failure
        to someone records it on the state it serves instead.
        """
        if self._nursery is None:
            raise RuntimeError("start_task() needs a running incarnation")
        cell = self._runtime().add_child(name, kind, ref_type=ActorRef)
        self._nursery.start_soon(run_child_task, cell, fn, args, name=cell.path)
        return cell.ref


def actor_runner(factory: Callable[..., Actor], args: tuple[Any, ...]) -> Runner:
    async def run(cell: Cell, ready: Readiness) -> None:
        actor = factory(*args)
        if not isinstance(actor, Actor):
            raise TypeError(f"{factory!r} returned {actor!r}, not an Actor")
        await _run_incarnation(actor, cell, ready)

    return run


async def _run_incarnation(actor: Actor, cell: Cell, ready: Readiness) -> None:
    actor._cell = cell
    start_error: Exception | None = None
    started = False
    try:
        async with trio.open_nursery() as nursery:
            actor._nursery = nursery
            try:
                await actor.on_start()
            except Exception as exc:
                # Raised below, outside the nursery, so the starter gets it unwrapped.
                start_error = exc
                nursery.cancel_scope.cancel("actor failed to start")
            else:
                started = True
                cell.mark_running()
                ready.started(cell.ref)
                with trio.CancelScope() as actor._life_scope:
                    if not actor._stopping:  # stop() may come from on_start itself
                        await trio.sleep_forever()
                nursery.cancel_scope.cancel("actor stopped")
    finally:
        # Child tasks are done by now: on_stop never races them.
        actor._nursery = None
        if started:
            await _bounded_on_stop(actor, cell)
    if start_error is not None:
        raise start_error


async def _bounded_on_stop(actor: Actor, cell: Cell) -> None:
    # Shielded so it runs even when we got here by cancellation; bounded so
    # a stuck cleanup cannot hold up the supervisor (or a cancel) forever.
    with trio.move_on_after(actor.stop_timeout, shield=True) as cleanup:
        await actor.on_stop()
    if cleanup.cancelled_caught:
        log.warning("on_stop timed out path=%s timeout=%s", cell.path, actor.stop_timeout)
