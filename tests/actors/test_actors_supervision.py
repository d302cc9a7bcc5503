"""Supervision: restart types, exponential backoff, intensity limits and escalation."""

from __future__ import annotations

import logging

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

import actors
from actors import Backoff, Restart, RestartIntensity

PLENTY = RestartIntensity(max_restarts=100, window=1000)


async def crash_every_time(task, lives: list[float], run_for: float = 0.0):
    """Task actor that records each incarnation's start, runs `run_for`, then crashes."""
    lives.append(trio.current_time())
    await trio.sleep(run_for)
    raise RuntimeError(f"crash #{len(lives)}")


async def idle(task):
    await trio.sleep_forever()


async def crash_first(task, lives: list[float], crashes: int):
    """Crashes in its first `crashes` incarnations, then stays up."""
    lives.append(trio.current_time())
    if len(lives) <= crashes:
        raise RuntimeError(f"crash #{len(lives)}")
    await trio.sleep_forever()


async def test_restarts_back_off_exponentially_up_to_the_maximum(autojump_clock):
    lives: list[float] = []
    backoff = Backoff(initial=1, factor=2, maximum=5)
    async with actors.open_root("t") as root:
        sup = await root.start_supervisor("sup", intensity=PLENTY, backoff=backoff)
        start = trio.current_time()
        ref = await sup.start_task(crash_every_time, lives, name="c", restart=Restart.PERMANENT)
        await trio.sleep(17.5)
        assert [at - start for at in lives] == pytest.approx([0, 1, 3, 7, 12, 17])
        snap = ref.snapshot()
        assert snap.restarts == 5
        assert snap.last_error == "RuntimeError: crash #6"
        assert snap.state is actors.ActorState.RESTARTING
        await ref.cancel()


@pytest.mark.parametrize(
    ("run_for", "expected"),
    [
        (10, [0, 11, 22]),  # stayed up reset_after: the streak restarts, delay stays 1
        (5, [0, 6, 13]),  # crashed sooner: 1 s, then 2 s
    ],
)
async def test_a_stable_run_resets_the_backoff_streak(autojump_clock, run_for, expected):
    lives: list[float] = []
    backoff = Backoff(initial=1, factor=2, maximum=60, reset_after=10)
    async with actors.open_root("t") as root:
        sup = await root.start_supervisor("sup", intensity=PLENTY, backoff=backoff)
        start = trio.current_time()
        ref = await sup.start_task(
            crash_every_time, lives, run_for, name="c", restart=Restart.PERMANENT
        )
        await trio.sleep(expected[-1] + 0.5)
        assert [at - start for at in lives] == pytest.approx(expected)
        await ref.cancel()


async def test_exceeding_intensity_fails_the_supervisor_and_its_parent_restarts_it(
    autojump_clock,
):
    lives: list[float] = []
    async with actors.open_root("t", intensity=PLENTY) as root:
        sup = await root.start_supervisor(
            "sup", intensity=RestartIntensity(max_restarts=2, window=10), backoff=Backoff(1)
        )
        sibling = await sup.start_task(idle, name="sibling")
        await sup.start_task(crash_first, lives, 3, name="c", restart=Restart.PERMANENT)
        await trio.sleep(30)
        # Crashes at 0, 1 and 3: the third needs a 3rd restart within 10 s, one
        # too many. The supervisor fails (its temporary sibling goes with it);
        # the root restarts it, which starts `c` afresh; that life stays up.
        assert len(lives) == 4
        snap = root.registry.snapshot()
        node = snap.find("t/sup")
        assert node.restarts == 1
        assert node.state is actors.ActorState.RUNNING
        assert node.last_error.startswith("RestartIntensityExceeded: t/sup: more than 2 restarts")
        assert snap.find("t/sup/c").state is actors.ActorState.RUNNING
        assert snap.find("t/sup/sibling") is None
        assert sibling.state is actors.ActorState.STOPPED


async def test_root_intensity_exceeded_leaves_open_root_with_the_cause_chain(autojump_clock):
    lives: list[float] = []
    body_cancelled = False
    with pytest.raises(actors.RestartIntensityExceeded) as info:
        async with actors.open_root("t", intensity=RestartIntensity(1, 100)) as root:
            sup = await root.start_supervisor(
                "sup", intensity=RestartIntensity(1, 100), backoff=Backoff(0)
            )
            await sup.start_task(crash_every_time, lives, name="c", restart=Restart.PERMANENT)
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                body_cancelled = True
                raise
    root_failure = info.value
    assert (root_failure.path, root_failure.child) == ("t", "t/sup")
    sup_failure = root_failure.__cause__
    assert isinstance(sup_failure, actors.RestartIntensityExceeded)
    assert (sup_failure.path, sup_failure.child) == ("t/sup", "t/sup/c")
    assert isinstance(sup_failure.__cause__, RuntimeError)
    assert body_cancelled
    assert len(lives) == 4  # two lives of c under each of the supervisor's two lives
    final = root.registry.snapshot()
    assert final.root.state is actors.ActorState.FAILED
    assert final.root.children == ()


@pytest.mark.parametrize(
    ("restart", "crash", "restarted"),
    [
        (Restart.PERMANENT, False, True),
        (Restart.PERMANENT, True, True),
        (Restart.TRANSIENT, False, False),
        (Restart.TRANSIENT, True, True),
        (Restart.TEMPORARY, False, False),
        (Restart.TEMPORARY, True, False),
    ],
)
async def test_restart_types(autojump_clock, caplog, restart, crash, restarted):
    caplog.set_level(logging.DEBUG, logger="actors._supervisor")
    lives: list[float] = []

    async def first_life_ends(task):
        lives.append(trio.current_time())
        if len(lives) == 1:
            if crash:
                raise RuntimeError("first life crashed")
            return
        await trio.sleep_forever()

    async with actors.open_root("t") as root:
        ref = await root.start_task(first_life_ends, name="c", restart=restart)
        await trio.sleep(1)
        assert len(lives) == (2 if restarted else 1)
        entry = root.registry.find("t/c")
        if restarted:
            assert entry is ref
            assert ref.snapshot().restarts == 1
        else:
            assert entry is None
            assert ref.state is (actors.ActorState.FAILED if crash else actors.ActorState.STOPPED)
    # A crash is a warning, a restart news, a finished actor that stays ended routine.
    (end,) = [r for r in caplog.records if "path=t/c " in r.getMessage()]
    expected = "WARNING" if crash else "INFO" if restarted else "DEBUG"
    assert end.levelname == expected


class Stopper(actors.Actor):
    """An actor the test holds: `lives` gets each incarnation, numbered by birth."""

    def __init__(self, lives: list[Stopper]) -> None:
        self.birth = len(lives)
        lives.append(self)


@pytest.mark.parametrize("restart", [Restart.PERMANENT, Restart.TRANSIENT])
async def test_actor_normal_exit_follows_restart_type(autojump_clock, restart):
    lives: list[Stopper] = []
    async with actors.open_root("t") as root:
        ref = await root.start(Stopper, lives, name="s", restart=restart)
        lives[0].stop()
        await trio.sleep(1)
        if restart is Restart.PERMANENT:
            assert [life.birth for life in lives] == [0, 1]  # a fresh instance
            assert ref.state is actors.ActorState.RUNNING
        else:
            await ref.wait_stopped()
            assert len(lives) == 1


class Fragile(actors.Actor):
    """Counts in its state; its child task crashes it when `crash()` is called."""

    def __init__(self, lives: list[Fragile]) -> None:
        self.count = 0
        self._crash = trio.Event()
        lives.append(self)

    async def on_start(self) -> None:
        self.start_task(self._watch, name="watch")

    async def _watch(self, task):
        await self._crash.wait()
        raise KeyError("told to crash")

    def bump(self) -> int:
        self.count += 1
        self.set_status(count=self.count)
        return self.count

    def crash(self) -> None:
        self._crash.set()


async def test_a_crash_restarts_the_actor_with_fresh_state(autojump_clock):
    lives: list[Fragile] = []
    async with actors.open_root("t", backoff=Backoff(initial=2)) as root:
        ref = await root.start(Fragile, lives, name="f")
        assert lives[0].bump() == 1
        lives[0].crash()
        await trio.sleep(1)
        snap = ref.snapshot()
        assert snap.state is actors.ActorState.RESTARTING
        assert snap.last_error == "KeyError: 'told to crash'"
        assert snap.status == {}  # status fields belonged to the dead incarnation
        await trio.sleep(2)
        assert len(lives) == 2
        assert lives[1].bump() == 1  # a fresh count
        assert ref.snapshot().restarts == 1


class FailsToStart(actors.Actor):
    async def on_start(self) -> None:
        raise OSError("no such device")


async def test_a_failed_first_start_raises_to_the_starter_and_leaves_no_entry():
    async with actors.open_root("t") as root:
        with pytest.raises(OSError, match="no such device"):
            await root.start(FailsToStart, name="dev")
        assert root.registry.find("t/dev") is None
        # The name is free again.
        ref = await root.start(Fragile, [], name="dev")
        assert ref.state is actors.ActorState.RUNNING


async def test_factory_must_build_an_actor():
    async with actors.open_root("t") as root:
        with pytest.raises(TypeError):
            await root.start(lambda: object(), name="x")


async def test_starting_under_a_stopped_supervisor_raises():
    async with actors.open_root("t") as root:
        sup = await root.start_supervisor("sup")
        await sup.cancel()
        with pytest.raises(actors.ActorStopped):
            await sup.start_task(idle, name="late")


async def test_a_supervisor_restart_builds_fresh_child_instances(autojump_clock):
    stoppers: list[Stopper] = []
    lives: list[float] = []
    async with actors.open_root("t", intensity=PLENTY) as root:
        sup = await root.start_supervisor("sup", intensity=RestartIntensity(0, 10))
        stopper = await sup.start(Stopper, stoppers, name="s")
        await sup.start_task(crash_first, lives, 1, name="c", restart=Restart.PERMANENT)
        await wait_all_tasks_blocked()
        await trio.sleep(1)
        assert [life.birth for life in stoppers] == [0, 1]
        assert stopper.state is actors.ActorState.RUNNING
