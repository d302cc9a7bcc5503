"""The registry: tree snapshots, status fields, versions, watch, statistics()."""

from __future__ import annotations

import json
import time

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

import actors
from actors import ActorState


class Node(actors.Actor):
    """Its lives are appended to `lives`; `crash()` makes the current one fail."""

    kind = "node"

    def __init__(self, gate: trio.Event | None = None, lives: list | None = None) -> None:
        self.gate = gate
        self.lives = lives
        self._crash = trio.Event()

    async def on_start(self) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.set_status(model="qwen-0.5b")
        if self.lives is not None:  # a test that holds the instance may crash it
            self.lives.append(self)
            self.start_task(self._watch, name="watch")

    async def _watch(self, task):
        await self._crash.wait()
        raise RuntimeError("node lost")

    def crash(self) -> None:
        self._crash.set()


async def test_snapshot_shows_the_tree_with_identity_state_and_status():
    before = time.time()
    async with actors.open_root("cortex") as root:
        fleet = await root.start_supervisor("fleet")
        await fleet.start(Node, name="beast")
        requests = await root.start_supervisor("requests")
        async with actors.open_task(requests, "req-7", kind="request") as task:
            task.set_status(tokens=3)
            snap = root.registry.snapshot()
    after = time.time()
    rows = {node.path: node for node in snap.walk()}
    assert list(rows) == [
        "cortex",
        "cortex/fleet",
        "cortex/fleet/beast",
        "cortex/requests",
        "cortex/requests/req-7",
    ]
    kinds = {path: node.kind for path, node in rows.items()}
    assert kinds == {
        "cortex": "root",
        "cortex/fleet": "supervisor",
        "cortex/fleet/beast": "node",
        "cortex/requests": "supervisor",
        "cortex/requests/req-7": "request",
    }
    assert {node.state for node in rows.values()} == {ActorState.RUNNING}
    assert all(before <= node.started_at <= after for node in rows.values())
    beast = rows["cortex/fleet/beast"]
    assert (beast.name, beast.restarts, beast.last_error) == ("beast", 0, None)
    assert beast.status == {"model": "qwen-0.5b"}
    assert rows["cortex/requests/req-7"].status == {"tokens": 3}
    assert before <= snap.taken_at <= after


async def test_to_dict_is_plain_json():
    async with actors.open_root("cortex") as root:
        await root.start(Node, name="beast")
        data = root.registry.snapshot().to_dict()
    assert json.loads(json.dumps(data)) == data
    beast = data["root"]["children"][0]
    assert beast["path"] == "cortex/beast"
    assert beast["state"] == "running"
    assert beast["status"] == {"model": "qwen-0.5b"}
    assert beast["children"] == []
    assert set(beast) == {
        "name",
        "path",
        "kind",
        "state",
        "started_at",
        "restarts",
        "last_error",
        "status",
        "children",
    }


async def test_snapshot_follows_starting_running_restarting_and_removal(autojump_clock):
    gate, lives = trio.Event(), []
    async with actors.open_root("t", backoff=actors.Backoff(initial=4)) as root:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: root.start(Node, gate, lives, name="n"))
            await wait_all_tasks_blocked()
            starting = root.registry.snapshot().find("t/n")
            assert (starting.state, starting.started_at) == (ActorState.STARTING, None)
            gate.set()
        ref = root.registry.find("t/n")
        assert ref.snapshot().state is ActorState.RUNNING
        lives[-1].crash()
        await trio.sleep(1)
        restarting = ref.snapshot()
        assert restarting.state is ActorState.RESTARTING
        assert restarting.last_error == "RuntimeError: node lost"
        await trio.sleep(4)
        again = ref.snapshot()
        assert (again.state, again.restarts) == (ActorState.RUNNING, 1)
        ref.cancel_nowait()
        assert ref.snapshot().state is ActorState.STOPPING
        await ref.wait_stopped()
        assert root.registry.snapshot().find("t/n") is None


async def test_set_status_bumps_the_version_and_none_removes_a_field():
    async with actors.open_root("t") as root:
        lives = []
        ref = await root.start(Node, None, lives, name="n")
        version = root.registry.version
        lives[-1].set_status(tokens=12)
        assert root.registry.version > version
        assert ref.snapshot().status == {"model": "qwen-0.5b", "tokens": 12}
        lives[-1].set_status(model=None)
        assert ref.snapshot().status == {"tokens": 12}


async def test_names_are_unique_among_siblings_and_slash_free():
    async with actors.open_root("t") as root:
        await root.start(Node, name="n")
        with pytest.raises(actors.NameTaken):
            await root.start(Node, name="n")
        for bad in ["", "a/b"]:
            with pytest.raises(ValueError):
                await root.start(Node, name=bad)
        sup = await root.start_supervisor("sup")
        await sup.start(Node, name="n")  # same name, different parent: fine
        assert root.registry.find("t/sup/n").path == "t/sup/n"
        assert root.registry.find("t/nope") is None
        assert root.registry.find("other/n") is None


async def test_actor_statistics(autojump_clock):
    async with actors.open_root("t") as root:
        lives = []
        ref = await root.start(Node, None, lives, name="n")
        lives[-1].crash()
        await trio.sleep(10)  # past the restart backoff
        stats = ref.statistics()
        assert stats == actors.ActorStatistics(
            path="t/n", kind="node", state=ActorState.RUNNING, restarts=1, children=1
        )
        assert lives[-1].statistics() == stats
        with pytest.raises(AttributeError):
            stats.restarts = 5  # frozen


async def test_registry_statistics():
    async with actors.open_root("t") as root:
        await root.start(Node, name="a")
        await root.start_supervisor("sup")
        stats = root.registry.statistics()
        assert (stats.actors, stats.watchers, stats.closed) == (3, 0, False)
    assert root.registry.statistics().closed


async def test_watch_yields_at_once_then_on_change(autojump_clock):
    async with actors.open_root("t") as root:
        watch = root.registry.watch()
        first = await watch.__anext__()
        assert [node.path for node in first.walk()] == ["t"]
        await root.start(Node, name="n")
        second = await watch.__anext__()
        assert second.version > first.version
        assert second.find("t/n") is not None
        # Nothing changes: the watcher waits (no polling) and is visible in statistics.
        with trio.move_on_after(100) as idle:
            await watch.__anext__()
        assert idle.cancelled_caught
        assert root.registry.statistics().watchers == 0


async def test_watch_coalesces_bursts_within_min_interval(autojump_clock):
    seen: list[tuple[float, object]] = []
    async with (
        actors.open_root("t") as root,
        actors.open_task(root, "req") as task,
        trio.open_nursery() as nursery,
    ):

        async def watcher():
            async for snap in root.registry.watch(min_interval=1):
                node = snap.find("t/req")
                seen.append((trio.current_time(), node and node.status.get("tokens")))

        start = trio.current_time()
        nursery.start_soon(watcher)
        await wait_all_tasks_blocked()
        assert len(seen) == 1  # the current snapshot, at once
        assert root.registry.statistics().watchers == 1
        for tokens in range(1, 11):  # a burst of ten changes
            task.set_status(tokens=tokens)
            await trio.sleep(0.05)
        await trio.sleep(10)
        task.set_status(tokens=99)  # after a quiet spell: delivered at once
        await wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    times = [round(at - start, 3) for at, _ in seen]
    values = [value for _, value in seen]
    # The ten changes inside the first second arrive as one snapshot at t=1.
    assert times == [0, 1, 10.5]
    assert values == [None, 10, 99]


async def test_watch_ends_after_the_root_closes(autojump_clock):
    seen: list[actors.RegistrySnapshot] = []
    with trio.fail_after(100):  # a watch that never ends fails here instead of hanging
        async with trio.open_nursery() as nursery, actors.open_root("t") as root:
            await root.start(Node, name="n")

            async def watcher():
                async for snap in root.registry.watch():
                    seen.append(snap)

            nursery.start_soon(watcher)
            await wait_all_tasks_blocked()
    last = seen[-1]
    assert last.root.state is ActorState.STOPPED
    assert last.root.children == ()
    assert seen[0].find("t/n") is not None


async def test_watch_rejects_negative_interval():
    async with actors.open_root("t") as root:
        with pytest.raises(ValueError):
            root.registry.watch(min_interval=-1)


async def test_status_changes_wake_watchers():
    async with actors.open_root("t") as root, actors.open_task(root, "req") as task:
        watch = root.registry.watch()
        await watch.__anext__()
        task.set_status(tokens=1)
        with trio.fail_after(1):
            snap = await watch.__anext__()
        assert snap.find("t/req").status == {"tokens": 1}
