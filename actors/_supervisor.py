"""Supervisors: one_for_one restarts with backoff, intensity limits, escalation.

This module is for keeping children alive. Each supervised child runs in its
own loop task inside the supervisor's nursery (`supervise`): incarnation,
then — depending on how it ended and its `Restart` type — removal, or a
backoff sleep and a fresh incarnation. A crash restarts only that child
(one_for_one). When restarts exceed the supervisor's `RestartIntensity`, the
supervisor fails: its nursery is cancelled (all children stop) and it raises
`RestartIntensityExceeded` to its own supervisor, which applies its policy in
turn; at the root the error leaves `open_root`. A restarted supervisor starts
its non-temporary children again, in order. It is not for the policy
arithmetic (`_policy`) or what runs inside a child (`_actor`, `_task`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from ._actor import Actor, actor_runner
from ._cell import Cell, Readiness, Runner, sole_error
from ._policy import Backoff, Restart, RestartIntensity
from ._ref import ActorRef
from ._snapshot import ActorState
from ._task import task_runner
from .errors import ActorStopped, RestartIntensityExceeded

__all__ = ["Supervision", "SupervisorRef", "supervise"]

log = logging.getLogger(__name__)


@attrs.define(eq=False)
class Supervision:
    """A supervisor's policy and per-incarnation state, kept on its cell."""

    intensity: RestartIntensity
    backoff: Backoff
    nursery: trio.Nursery | None = None
    history: deque[float] = attrs.Factory(deque)
    escalation: RestartIntensityExceeded | None = None

    def escalate(self, supervisor: Cell, child: Cell, error: BaseException | None) -> None:
        """Give up: record why, mark the supervisor failed, stop all its children."""
        limit = self.intensity
        failure = RestartIntensityExceeded(
            supervisor.path, limit.max_restarts, limit.window, child.path
        )
        failure.__cause__ = error
        self.escalation = failure
        supervisor.record_error(failure)
        supervisor.set_state(ActorState.FAILED)
        log.error("supervisor gave up path=%s child=%s", supervisor.path, child.path)
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel("restart intensity exceeded")


async def supervise(
    cell: Cell, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run `cell` under its parent's policy until it is done for good or the parent stops."""
    ready = Readiness(task_status)
    final = True
    cell.active = True
    try:
        with cell.renew_scope():
            final = await _restart_loop(cell, ready)
        if not ready.done:
            raise ActorStopped(cell.path, "cancelled before it started")
    except BaseException:
        # Leaving because the parent is stopping or failed to start us: keep
        # the entry for the parent's next incarnation unless it can never run.
        final = cell.stop_requested or cell.restart is Restart.TEMPORARY
        raise
    finally:
        cell.active = False
        if final:
            cell.remove()
        elif not cell.removed and cell.state is not ActorState.FAILED:
            cell.set_state(ActorState.STOPPED)


async def _restart_loop(cell: Cell, ready: Readiness) -> bool:
    """True when the child is done for good; False when its supervisor gave up."""
    assert cell.parent is not None and cell.parent.supervision is not None
    supervision = cell.parent.supervision
    streak = 0
    while True:
        began = trio.current_time()
        error = await _incarnate(cell, ready)
        if cell.stop_requested:
            return True
        if not cell.restart.wants_restart(error):
            _log_end(cell, error, NO_RESTART)
            cell.set_state(ActorState.FAILED if error else ActorState.STOPPED)
            return True
        if not supervision.intensity.allows(supervision.history, trio.current_time()):
            cell.set_state(ActorState.FAILED)
            supervision.escalate(cell.parent, cell, error)
            return False
        if trio.current_time() - began >= supervision.backoff.reset_after:
            streak = 0
        delay = supervision.backoff.delay(streak)
        streak += 1
        _log_end(cell, error, f"restart in {delay:.3f}s")
        cell.set_state(ActorState.RESTARTING)
        await trio.sleep(delay)
        cell.restarts += 1


async def _incarnate(cell: Cell, ready: Readiness) -> Exception | None:
    """One life of the child; returns its error, or None for a normal exit."""
    assert cell.runner is not None
    if not cell.stop_requested:
        cell.set_state(ActorState.STARTING)
    try:
        await cell.runner(cell, ready)
    except Exception as exc:
        cell.record_error(exc)
        if not ready.done:
            cell.set_state(ActorState.FAILED)
            raise
        return sole_error(exc)
    finally:
        cell.status.clear()  # status fields describe one incarnation, not its successor
        cell.stop_attached()
    return None


NO_RESTART = "no restart"


def _log_end(cell: Cell, error: BaseException | None, action: str) -> None:
    """A crash is a warning and a restart news; an actor that finished its work
    and stays ended (a request, a one-off job) is routine: DEBUG."""
    if error is not None:
        log.warning("actor crashed path=%s error=%r action=%r", cell.path, cell.last_error, action)
    elif action == NO_RESTART:
        log.debug("actor exited path=%s action=%r", cell.path, action)
    else:
        log.info("actor exited path=%s action=%r", cell.path, action)


async def _run_supervisor(cell: Cell, ready: Readiness) -> None:
    supervision = cell.supervision
    assert supervision is not None
    supervision.history.clear()
    supervision.escalation = None
    async with trio.open_nursery() as nursery:
        supervision.nursery = nursery
        try:
            for child in list(cell.children.values()):
                if not child.attached and not child.removed:
                    await nursery.start(supervise, child, name=child.path)
            cell.mark_running()
            ready.started(cell.ref)
            await trio.sleep_forever()
        finally:
            supervision.nursery = None
    if supervision.escalation is not None:
        raise supervision.escalation


class SupervisorRef(ActorRef):
    """Ref to a supervisor (or the root): starts supervised children.

    Every `start*` returns once the child is ready (`nursery.start`
    semantics); a child that fails before it is ready raises here and is not
    kept. Raises `ActorStopped` if the supervisor is not running and
    `NameTaken` if the name is in use.
    """

    __slots__ = ()

    async def start(
        self,
        factory: Callable[..., Actor],
        *args: Any,
        name: str,
        restart: Restart = Restart.PERMANENT,
        kind: str | None = None,
    ) -> ActorRef:
        """Start an actor; `factory(*args)` builds each incarnation's instance."""
        kind = kind or getattr(factory, "kind", Actor.kind)
        return await self._start_child(name, kind, ActorRef, actor_runner(factory, args), restart)

    async def start_supervisor(
        self,
        name: str,
        *,
        restart: Restart = Restart.PERMANENT,
        intensity: RestartIntensity = RestartIntensity(),
        backoff: Backoff = Backoff(),
        kind: str = "supervisor",
    ) -> SupervisorRef:
        """Start a child supervisor (one_for_one) with its own policy."""
        supervision = Supervision(intensity, backoff)
        ref = await self._start_child(
            name, kind, SupervisorRef, _run_supervisor, restart, supervision=supervision
        )
        assert isinstance(ref, SupervisorRef)
        return ref

    async def start_task(
        self,
        fn: Callable[..., Awaitable[object]],
        *args: Any,
        name: str,
        restart: Restart = Restart.TEMPORARY,
        kind: str = "task",
    ) -> ActorRef:
        """Start a supervised task actor running `fn(task, *args)`; returning is a normal exit."""
        return await self._start_child(name, kind, ActorRef, task_runner(fn, args), restart)

    async def _start_child(
        self,
        name: str,
        kind: str,
        ref_type: type[ActorRef],
        runner: Runner,
        restart: Restart,
        **fields: Any,
    ) -> ActorRef:
        parent = self._cell
        supervision = parent.supervision
        assert supervision is not None
        nursery = supervision.nursery
        if nursery is None or parent.state is not ActorState.RUNNING:
            raise ActorStopped(parent.path, f"supervisor is {parent.state.value}")
        cell = parent.add_child(
            name, kind, ref_type=ref_type, runner=runner, restart=restart, **fields
        )
        try:
            await nursery.start(supervise, cell, name=cell.path)
        except BaseException:
            cell.remove()
            raise
        return cell.ref
