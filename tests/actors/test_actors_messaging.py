"""Mailbox actors: tell/ask, boxed handler errors, timeouts, backpressure, deferred replies."""

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

import actors


class Recorder(actors.Actor):
    """Sync handler: remembers what it was told, answers questions about it."""

    def __init__(self) -> None:
        self.seen: list[object] = []

    def handle(self, message):
        match message:
            case ("fail", text):
                raise ValueError(text)
            case "seen":
                return list(self.seen)
            case "stop":
                self.stop()
            case _:
                self.seen.append(message)
                return message


class Doubler(actors.Actor):
    """Async handler: sleeps `message` seconds, answers twice the value."""

    async def handle(self, message):
        await trio.sleep(message)
        return message * 2


class Gated(actors.Actor):
    """Blocks in its handler until the gate opens: a stuck consumer."""

    def __init__(self, gate: trio.Event) -> None:
        self.gate = gate
        self.got: list[object] = []

    async def handle(self, message):
        await self.gate.wait()
        self.got.append(message)
        return list(self.got)


async def test_tell_is_handled_in_order_and_ask_answers():
    async with actors.open_root("t") as root:
        ref = await root.start(Recorder, name="rec")
        for i in range(5):
            await ref.tell(i)
        ref.tell_nowait(5)
        assert await ref.ask("seen", timeout=1) == [0, 1, 2, 3, 4, 5]
        assert await ref.ask("x", timeout=1) == "x"


async def test_async_handler_replies_after_its_await(autojump_clock):
    async with actors.open_root("t") as root:
        ref = await root.start(Doubler, name="d")
        start = trio.current_time()
        assert await ref.ask(3, timeout=10) == 6
        assert trio.current_time() - start == pytest.approx(3)


async def test_ask_error_is_boxed_for_the_asker_and_the_actor_keeps_serving():
    async with actors.open_root("t") as root:
        ref = await root.start(Recorder, name="rec")
        await ref.tell("before")
        with pytest.raises(actors.RemoteError) as info:
            await ref.ask(("fail", "bad input"), timeout=1)
        error = info.value
        assert error.path == "t/rec"
        assert error.type_name == "ValueError"
        assert error.message == "bad input"
        assert "raise ValueError(text)" in error.traceback_text
        assert isinstance(error.__cause__, ValueError)
        assert isinstance(error, actors.ActorError)
        # Same incarnation, state intact, still serving.
        assert await ref.ask("seen", timeout=1) == ["before"]
        stats = ref.statistics()
        assert (stats.state, stats.restarts, stats.asks_failed) == (actors.ActorState.RUNNING, 0, 1)


async def test_ask_times_out_and_the_actor_carries_on(autojump_clock):
    async with actors.open_root("t") as root:
        ref = await root.start(Doubler, name="d")
        start = trio.current_time()
        with pytest.raises(actors.AskTimeout) as info:
            await ref.ask(10, timeout=2)
        assert trio.current_time() - start == pytest.approx(2)
        assert isinstance(info.value, TimeoutError)
        assert (info.value.path, info.value.timeout) == ("t/d", 2)
        # The slow message still completes (at t=10); the next one is served after it.
        assert await ref.ask(1, timeout=20) == 2
        assert trio.current_time() - start == pytest.approx(11)


async def test_full_mailbox_makes_tell_wait_and_tell_nowait_raise():
    gate = trio.Event()
    async with actors.open_root("t") as root:
        ref = await root.start(Gated, gate, name="g", mailbox_size=2)
        await ref.tell(0)  # taken by the handler, which blocks on the gate
        await wait_all_tasks_blocked()
        ref.tell_nowait(1)
        ref.tell_nowait(2)
        with pytest.raises(actors.MailboxFull) as info:
            ref.tell_nowait(3)
        assert info.value.capacity == 2
        assert ref.statistics().mailbox_depth == 2
        delivered = trio.Event()

        async def blocked_sender():
            await ref.tell(3)
            delivered.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocked_sender)
            await wait_all_tasks_blocked()
            assert not delivered.is_set()
            assert ref.statistics().senders_waiting == 1
            gate.set()
        assert delivered.is_set()
        assert await ref.ask("last", timeout=1) == [0, 1, 2, 3, "last"]


async def test_ask_timeout_covers_waiting_for_mailbox_space(autojump_clock):
    async with actors.open_root("t") as root:
        ref = await root.start(Gated, trio.Event(), name="g", mailbox_size=1)
        await ref.tell(0)
        await wait_all_tasks_blocked()
        await ref.tell(1)  # mailbox now full
        start = trio.current_time()
        with pytest.raises(actors.AskTimeout):
            await ref.ask(2, timeout=5)
        assert trio.current_time() - start == pytest.approx(5)
        assert ref.statistics().mailbox_depth == 1


async def test_asks_queued_or_in_flight_fail_when_the_actor_is_cancelled(autojump_clock):
    outcomes: list[str] = []

    async def asker(ref, message):
        with pytest.raises(actors.ActorStopped):
            await ref.ask(message, timeout=1000)  # ActorStopped, long before the timeout
        outcomes.append(message)

    async with actors.open_root("t") as root:
        ref = await root.start(Gated, trio.Event(), name="g")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(asker, ref, "in-flight")
            await wait_all_tasks_blocked()
            nursery.start_soon(asker, ref, "queued")
            await wait_all_tasks_blocked()
            await ref.cancel()
        assert sorted(outcomes) == ["in-flight", "queued"]
        with pytest.raises(actors.ActorStopped):
            await ref.tell("late")
        with pytest.raises(actors.ActorStopped):
            ref.tell_nowait("late")


class Deferring(actors.Actor):
    """Answers `("later", seconds)` from a child task; `"never"` is never answered."""

    def __init__(self) -> None:
        self.jobs = 0

    def handle(self, message):
        match message:
            case ("later", delay):
                reply = self.defer_reply()
                self.jobs += 1
                self.start_task(self._answer, reply, delay, name=f"answer-{self.jobs}")
                return "ignored: the reply was deferred"
            case "never":
                self.defer_reply()
            case "ping":
                return "pong"

    async def _answer(self, task, reply, delay):
        task.set_status(delay=delay)
        await trio.sleep(delay)
        reply.send(("done", delay))


async def test_deferred_reply_is_answered_by_a_child_task(autojump_clock):
    async with actors.open_root("t") as root:
        ref = await root.start(Deferring, name="d")
        start = trio.current_time()
        async with trio.open_nursery() as nursery:

            async def slow_ask():
                assert await ref.ask(("later", 3), timeout=10) == ("done", 3)
                assert trio.current_time() - start == pytest.approx(3)

            nursery.start_soon(slow_ask)
            await wait_all_tasks_blocked()
            # The actor is free while the child task works; the task is in the tree.
            assert await ref.ask("ping", timeout=1) == "pong"
            task = root.registry.snapshot().find("t/d/answer-1")
            assert task is not None and task.kind == "task" and task.status == {"delay": 3}
        assert root.registry.find("t/d/answer-1") is None


async def test_deferred_reply_fails_with_actor_stopped_when_the_actor_goes(autojump_clock):
    async with actors.open_root("t") as root:
        ref = await root.start(Deferring, name="d")
        async with trio.open_nursery() as nursery:

            async def ask_never():
                with pytest.raises(actors.ActorStopped):
                    await ref.ask("never", timeout=1000)

            nursery.start_soon(ask_never)
            await wait_all_tasks_blocked()
            await ref.cancel()


async def test_supervisor_has_no_mailbox():
    async with actors.open_root("t") as root:
        sup = await root.start_supervisor("sup")
        with pytest.raises(TypeError):
            await sup.tell("hello")
        with pytest.raises(TypeError):
            await root.ask("hello", timeout=1)


async def test_actor_runtime_methods_need_a_running_incarnation():
    with pytest.raises(RuntimeError):
        Recorder().set_status(x=1)
