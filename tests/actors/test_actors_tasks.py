"""Task actors: open_task (the current task), supervised tasks, and actors' child tasks."""

from __future__ import annotations

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

import actors
from actors import Restart


async def test_open_task_registers_the_current_task_for_the_block():
    async with actors.open_root("t") as root:
        requests = await root.start_supervisor("requests")
        async with actors.open_task(requests, "req-1", kind="request") as task:
            assert task.path == "t/requests/req-1"
            task.set_status(model="qwen", tokens=0)
            task.set_status(tokens=12)
            node = root.registry.snapshot().find("t/requests/req-1")
            assert node.kind == "request"
            assert node.state is actors.ActorState.RUNNING
            assert node.status == {"model": "qwen", "tokens": 12}
            assert task.ref is root.registry.find("t/requests/req-1")
        assert root.registry.find("t/requests/req-1") is None
        assert task.ref.state is actors.ActorState.STOPPED


async def test_open_task_cancelled_by_ref_exits_the_block_quietly(autojump_clock):
    events: list[str] = []
    async with actors.open_root("t") as root:
        async with trio.open_nursery() as nursery:

            async def request():
                async with actors.open_task(root, "req") as task:
                    try:
                        await trio.sleep_forever()
                    finally:
                        with trio.CancelScope(shield=True):
                            await trio.sleep(1)  # cleanup that takes a while
                        events.append("finally")
                events.append(f"after block, cancelled_caught={task.cancel_scope.cancelled_caught}")

            nursery.start_soon(request)
            await wait_all_tasks_blocked()
            start = trio.current_time()
            await root.registry.find("t/req").cancel()
            # cancel() waited for the cleanup, until the entry was gone.
            assert trio.current_time() - start == pytest.approx(1)
            assert events[0] == "finally"
        assert events == ["finally", "after block, cancelled_caught=True"]


async def test_open_task_cancelled_by_its_caller_leaves_the_registry(autojump_clock):
    """The client-disconnect path: the caller's own scope is cancelled."""
    events: list[str] = []
    async with actors.open_root("t") as root:
        with trio.move_on_after(5) as disconnect:
            async with actors.open_task(root, "req", kind="request"):
                try:
                    await trio.sleep_forever()
                finally:
                    events.append("finally")
        assert disconnect.cancelled_caught
        assert events == ["finally"]
        assert root.registry.find("t/req") is None


async def test_open_task_crash_propagates_unwrapped_and_is_recorded():
    async with actors.open_root("t") as root:
        with pytest.raises(ValueError, match="bad request"):
            async with actors.open_task(root, "req") as task:
                raise ValueError("bad request")
        assert task.ref.state is actors.ActorState.FAILED
        assert task.ref.snapshot().last_error == "ValueError: bad request"
        assert root.registry.find("t/req") is None


async def test_open_task_needs_a_live_parent_and_a_free_name():
    async with actors.open_root("t") as root:
        sup = await root.start_supervisor("sup")
        async with actors.open_task(sup, "req"):
            with pytest.raises(actors.NameTaken):
                async with actors.open_task(sup, "req"):
                    pass  # pragma: no cover
        await sup.cancel()
        with pytest.raises(actors.ActorStopped):
            async with actors.open_task(sup, "req"):
                pass  # pragma: no cover


async def test_supervised_task_cancel_runs_its_finally_and_is_not_restarted(autojump_clock):
    cleaned: list[str] = []

    async def worker(task):
        try:
            await trio.sleep_forever()
        finally:
            cleaned.append("finally")

    async with actors.open_root("t") as root:
        ref = await root.start_task(worker, name="w", restart=Restart.PERMANENT)
        await ref.cancel()
        await trio.sleep(60)
        assert cleaned == ["finally"]
        assert root.registry.find("t/w") is None


async def test_supervised_task_crash_is_recorded_and_restarted(autojump_clock):
    lives: list[float] = []

    async def worker(task):
        lives.append(trio.current_time())
        task.set_status(life=len(lives))
        if len(lives) == 1:
            raise RuntimeError("first life")
        await trio.sleep_forever()

    async with actors.open_root("t", backoff=actors.Backoff(initial=2)) as root:
        ref = await root.start_task(worker, name="w", restart=Restart.TRANSIENT)
        await trio.sleep(3)
        assert lives == pytest.approx([lives[0], lives[0] + 2])
        snap = ref.snapshot()
        assert (snap.restarts, snap.last_error) == (1, "RuntimeError: first life")
        assert snap.status == {"life": 2}


class Owner(actors.Actor):
    """Runs child tasks; `spawn(name, fails)` starts one that fails or idles."""

    def __init__(self, lives: list[Owner]) -> None:
        self.birth = len(lives)
        lives.append(self)

    def spawn(self, name: str, fails: bool) -> str:
        return self.start_task(self._child, fails, name=name).path

    async def _child(self, task, fails):
        await trio.sleep(1)
        if fails:
            raise RuntimeError("child task failed")
        await trio.sleep_forever()


async def test_actor_child_task_crash_crashes_the_actor(autojump_clock):
    lives: list[Owner] = []
    async with actors.open_root("t", backoff=actors.Backoff(initial=1)) as root:
        ref = await root.start(Owner, lives, name="o")
        assert lives[0].spawn("ok", False) == "t/o/ok"
        lives[0].spawn("bad", True)
        await trio.sleep(3)
        assert [life.birth for life in lives] == [0, 1]
        snap = ref.snapshot()
        assert (snap.restarts, snap.last_error) == (1, "RuntimeError: child task failed")
        assert snap.children == ()  # both tasks died with their incarnation


async def test_actor_child_task_cancel_stops_only_the_task(autojump_clock):
    lives: list[Owner] = []
    async with actors.open_root("t") as root:
        ref = await root.start(Owner, lives, name="o")
        lives[0].spawn("job", False)
        await root.registry.find("t/o/job").cancel()
        await trio.sleep(5)
        assert root.registry.find("t/o/job") is None
        assert len(lives) == 1
        assert ref.snapshot().restarts == 0


async def test_attached_tasks_are_cancelled_when_their_parent_crashes(autojump_clock):
    events: list[str] = []
    lives: list[Owner] = []
    async with actors.open_root("t") as root:
        host = await root.start(Owner, lives, name="host")
        async with trio.open_nursery() as nursery:

            async def request():
                async with actors.open_task(host, "req") as task:
                    await trio.sleep_forever()
                events.append(f"cancelled={task.cancel_scope.cancelled_caught}")

            nursery.start_soon(request)
            await wait_all_tasks_blocked()
            lives[0].spawn("bad", True)
        assert events == ["cancelled=True"]
        assert host.snapshot().children == ()


class Quitter(actors.Actor):
    """Ends its own incarnation from a child task while idle."""

    async def on_start(self) -> None:
        self.start_task(self._quit_later, name="quit")

    async def _quit_later(self, task):
        await trio.sleep(2)
        self.stop()


async def test_stop_from_a_child_task_ends_an_idle_actor(autojump_clock):
    async with actors.open_root("t") as root:
        ref = await root.start(Quitter, name="q", restart=Restart.TRANSIENT)
        start = trio.current_time()
        with trio.fail_after(100):
            await ref.wait_stopped()
        assert trio.current_time() - start == pytest.approx(2)
        assert ref.state is actors.ActorState.STOPPED


async def idle(task):
    await trio.sleep_forever()


class StopsAtOnce(actors.Actor):
    async def on_start(self) -> None:
        self.start_task(idle, name="idle")
        self.stop()  # from on_start: the incarnation ends as soon as it has started


async def test_stop_from_on_start_ends_the_incarnation(autojump_clock):
    async with actors.open_root("t") as root:
        ref = await root.start(StopsAtOnce, name="s", restart=Restart.TEMPORARY)
        with trio.fail_after(100):
            await ref.wait_stopped()
        assert ref.state is actors.ActorState.STOPPED


async def test_actor_runtime_methods_need_a_running_incarnation():
    with pytest.raises(RuntimeError):
        Owner([]).set_status(x=1)
    with pytest.raises(RuntimeError):
        Owner([]).start_task(idle, name="x")
