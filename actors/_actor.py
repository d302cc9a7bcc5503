"""`Actor`: the base class for mailbox actors, and the loop that runs one.

This module is for actors that own state and serve messages one at a time:
subclass `Actor`, implement `handle(message)` (sync preferred: no checkpoint
mid-mutation; async allowed), optionally `on_start`/`on_stop`. A handler's
return value answers an `ask`; its exception goes to the asker (boxed) and
the actor carries on, but an exception while handling a `tell` crashes the
actor, for its supervisor to deal with. Work that needs I/O runs as a child
task (`start_task`) that reports back by message. It is not for supervision
(`_supervisor`) or for light per-request work (`_task`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import trio

from ._cell import Cell, Readiness, Runner
from ._mailbox import Envelope, Reply
from ._ref import ActorRef
from ._snapshot import ActorPath, ActorStatistics
from ._task import DEFAULT_TASK_MAILBOX, run_child_task
from .errors import ActorStopped

__all__ = ["Actor", "actor_runner"]

log = logging.getLogger(__name__)


class Actor:
    """Subclass me. One instance per incarnation: a restart builds a fresh one."""

    kind: ClassVar[str] = "actor"
    stop_timeout: ClassVar[float] = 5.0  # bound on on_stop, seconds

    _cell: Cell | None = None
    _nursery: trio.Nursery | None = None
    _current: Envelope | None = None
    _deferred_current = False
    _stopping = False
    _serve_scope: trio.CancelScope | None = None

    async def on_start(self) -> None:
        """Set up before the actor counts as started; an error here is a failed start."""

    def handle(self, message: Any) -> Any:
        """Handle one message; the return value answers an `ask`. May be `async def`."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement handle()")

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
        """End this incarnation normally: after the current message, or at once if idle.

        Whether it comes back is its supervisor's call (permanent: yes).
        """
        self._stopping = True
        if self._current is None and self._serve_scope is not None:
            self._serve_scope.cancel("actor stopped itself")  # idle: no need to wait for mail

    def defer_reply(self) -> Reply:
        """Take over answering the ask being handled; the return value is then ignored.

        Settle the `Reply` later, e.g. from a child task. If the incarnation
        ends first, the asker gets `ActorStopped`.
        """
        envelope = self._current
        if envelope is None or envelope.reply is None:
            raise RuntimeError("defer_reply() is only valid while handling an ask")
        self._deferred_current = True
        self._runtime().owe(envelope.reply)
        return envelope.reply

    def start_task(
        self, fn: Callable[..., Awaitable[object]], *args: Any, name: str, kind: str = "task"
    ) -> ActorRef:
        """Run `fn(task, *args)` as a child task actor of this incarnation.

        It shows in the registry under this actor and can be cancelled by ref.
        If it raises, this actor crashes; report results by message instead,
        e.g. ``await self.ref.tell(Loaded(...))``.
        """
        if self._nursery is None:
            raise RuntimeError("start_task() needs a running incarnation")
        cell = self._runtime().add_child(
            name, kind, ref_type=ActorRef, mailbox_size=DEFAULT_TASK_MAILBOX
        )
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
                with trio.CancelScope() as actor._serve_scope:
                    await _serve(actor, cell)
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


async def _serve(actor: Actor, cell: Cell) -> None:
    assert cell.mailbox is not None
    is_async = inspect.iscoroutinefunction(actor.handle)
    while not actor._stopping:
        envelope = await cell.mailbox.get()
        try:
            await _dispatch(actor, envelope, is_async)
        finally:
            cell.messages_handled += 1


async def _dispatch(actor: Actor, envelope: Envelope, is_async: bool) -> None:
    reply = envelope.reply
    actor._current, actor._deferred_current = envelope, False
    try:
        result = actor.handle(envelope.message)
        if is_async:
            result = await result
    except Exception as exc:
        if reply is None:
            raise  # a failed tell has nobody to tell: the actor crashes
        actor._runtime().asks_failed += 1
        if not reply.done:
            reply.fail(exc)
    except BaseException:
        # Cancelled mid-handler: the asker must not wait for a reply that cannot come.
        if reply is not None and not actor._deferred_current:
            reply._abandon(ActorStopped(actor.path, "stopped while handling the ask"))
        raise
    else:
        if reply is not None and not actor._deferred_current:
            reply.send(result)
    finally:
        actor._current = None
