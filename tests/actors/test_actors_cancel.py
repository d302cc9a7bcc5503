"""Cancellation by ref: whole subtrees go, cleanup runs and is bounded, nothing restarts."""

import pytest
import trio
import trio.lowlevel
from trio.testing import wait_all_tasks_blocked

import actors
from actors import Restart


class Tidy(actors.Actor):
    """Records that its cleanup ran; optionally holds a child task open."""

    def __init__(self, cleaned: list[str], with_task: bool = False) -> None:
        self.cleaned = cleaned
        self.with_task = with_task

    async def on_start(self) -> None:
        if self.with_task:
            self.start_task(self._poll, name="poll")

    async def _poll(self, task):
        try:
            await trio.sleep_forever()
        finally:
            self.cleaned.append(f"{task.path} finally")

    async def on_stop(self) -> None:
        await trio.lowlevel.checkpoint()  # cleanup may await: it is shielded
        self.cleaned.append(f"{self.path} on_stop")


async def guarded(task, cleaned: list[str]):
    try:
        await trio.sleep_forever()
    finally:
        cleaned.append(f"{task.path} finally")


async def test_cancelling_a_supervisor_takes_its_whole_subtree():
    cleaned: list[str] = []
    async with actors.open_root("t") as root:
        keep = await root.start(Tidy, cleaned, name="keep")
        sup = await root.start_supervisor("sup")
        await sup.start(Tidy, cleaned, True, name="a")
        inner = await sup.start_supervisor("inner")
        await inner.start_task(guarded, cleaned, name="job", restart=Restart.PERMANENT)
        attached_exited = trio.Event()

        async def request():
            async with actors.open_task(sup, "req-1", kind="request"):
                try:
                    await trio.sleep_forever()
                finally:
                    cleaned.append("t/sup/req-1 finally")
            attached_exited.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(request)
            await wait_all_tasks_blocked()
            paths = {node.path for node in root.registry.snapshot().walk()}
            assert {"t/sup/a/poll", "t/sup/inner/job", "t/sup/req-1"} <= paths
            await sup.cancel()
            # `cancel` returned: every cleanup has already run.
            assert sorted(cleaned) == [
                "t/sup/a on_stop",
                "t/sup/a/poll finally",
                "t/sup/inner/job finally",
                "t/sup/req-1 finally",
            ]
        assert attached_exited.is_set()
        snap = root.registry.snapshot()
        assert [node.path for node in snap.walk()] == ["t", "t/keep"]
        assert sup.state is actors.ActorState.STOPPED
        assert keep.state is actors.ActorState.RUNNING


async def test_a_cancelled_permanent_actor_is_not_restarted(autojump_clock):
    cleaned: list[str] = []
    async with actors.open_root("t") as root:
        ref = await root.start(Tidy, cleaned, name="a", restart=Restart.PERMANENT)
        await ref.cancel()
        await trio.sleep(60)
        assert cleaned == ["t/a on_stop"]
        assert root.registry.find("t/a") is None
        assert ref.statistics().restarts == 0


class Stubborn(actors.Actor):
    stop_timeout = 3.0

    async def on_stop(self) -> None:
        await trio.sleep_forever()  # a cleanup that never finishes by itself


async def test_cleanup_is_bounded_by_stop_timeout(autojump_clock):
    async with actors.open_root("t") as root:
        ref = await root.start(Stubborn, name="s")
        start = trio.current_time()
        with trio.fail_after(100):  # an unbounded cleanup fails here instead of hanging
            await ref.cancel()
        assert trio.current_time() - start == pytest.approx(3.0)
        assert root.registry.find("t/s") is None


async def test_cancel_nowait_then_wait_stopped():
    cleaned: list[str] = []
    async with actors.open_root("t") as root:
        ref = await root.start(Tidy, cleaned, name="a")
        ref.cancel_nowait()
        assert ref.state is actors.ActorState.STOPPING
        await ref.wait_stopped()
        assert ref.state is actors.ActorState.STOPPED
        assert cleaned == ["t/a on_stop"]


async def test_cancelling_a_child_waiting_for_its_supervisor_removes_it(autojump_clock):
    """A child whose supervisor is between lives has no task; cancel must not hang."""

    async def crash_soon(task):
        await trio.sleep(1)
        raise RuntimeError("boom")

    async def idle(task):
        await trio.sleep_forever()

    async with actors.open_root("t", backoff=actors.Backoff(initial=100)) as root:
        sup = await root.start_supervisor("sup", intensity=actors.RestartIntensity(0, 10))
        waiting = await sup.start_task(idle, name="waiting", restart=Restart.PERMANENT)
        await sup.start_task(crash_soon, name="crasher", restart=Restart.PERMANENT)
        await trio.sleep(2)
        assert sup.state is actors.ActorState.RESTARTING
        assert waiting.state is actors.ActorState.STOPPED
        with trio.fail_after(1):
            await waiting.cancel()
        assert root.registry.snapshot().find("t/sup/waiting") is None


async def test_cancelling_the_root_stops_everything_and_ends_the_block_quietly():
    cleaned: list[str] = []
    reached: list[str] = []
    async with actors.open_root("t") as root:
        await root.start(Tidy, cleaned, True, name="a")
        await root.cancel()
        reached.append("after cancel")  # not reached: cancel() cancels the body too
    assert reached == []
    assert sorted(cleaned) == ["t/a on_stop", "t/a/poll finally"]
    assert root.registry.closed
    assert root.registry.snapshot().root.children == ()


async def test_leaving_the_root_block_stops_every_actor_and_closes_the_registry():
    cleaned: list[str] = []
    async with actors.open_root("t") as root:
        await root.start(Tidy, cleaned, True, name="a")
        sup = await root.start_supervisor("sup")
        await sup.start_task(guarded, cleaned, name="job")
    assert sorted(cleaned) == ["t/a on_stop", "t/a/poll finally", "t/sup/job finally"]
    assert root.registry.statistics().actors == 0
    assert root.state is actors.ActorState.STOPPED


async def test_a_body_error_leaves_open_root_unwrapped_after_cleanup():
    cleaned: list[str] = []
    with pytest.raises(LookupError, match="from the body"):
        async with actors.open_root("t") as root:
            await root.start(Tidy, cleaned, name="a")
            raise LookupError("from the body")
    assert cleaned == ["t/a on_stop"]
