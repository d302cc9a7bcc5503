"""Device workers as real spawned processes, supervised from trio.

Each test starts real `python -m neuron.worker` processes under a real
actor root, loads the synthesized model through the production loader, and
kills, stops and cancels things to watch the supervision promises hold.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import trio

import actors
from neuron.devices import (
    Device,
    DeviceSpec,
    ModelPlacement,
    WorkerProcess,
    WorkerTimeouts,
    start_devices,
)
from neuron.errors import WorkerDied, WorkerUnavailable
from protocol import worker as wire

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TIMEOUTS = WorkerTimeouts(ready=60, heartbeat_interval=0.2, heartbeat=1.5, step=10)
GREEDY = wire.SamplingParams(max_tokens=12, temperature=0.0)


@pytest.fixture
async def cpu0(demo_models):
    """A root with one CPU device worker serving the tiny model."""
    async with actors.open_root("neuron") as root:
        device = Device(DeviceSpec("cpu:0", max_batch_size=8), TIMEOUTS)
        await start_devices(root, [device])
        await device.load(placement(demo_models))
        yield device
        await root.cancel()


def placement(demo_models, model_id=None, path=None) -> ModelPlacement:
    return ModelPlacement(
        model_id or demo_models.model_id,
        str(path or demo_models.plain_path),
        dtype="fp32",
    )


async def collect(stream) -> tuple[list[int], str | None]:
    tokens: list[int] = []
    finish = None
    async for step in stream:
        tokens.extend(step.token_ids)
        finish = step.finish_reason
    return tokens, finish


def reference_greedy(tiny_model, prompt: list[int], max_new: int) -> list[int]:
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        out = tiny_model.model.generate(
            torch.tensor([prompt]), max_new_tokens=max_new, do_sample=False,
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        )  # fmt: skip
    return out[0, len(prompt) :].tolist()


def prompts(n: int) -> list[list[int]]:
    return [[(7 * i + j * 13) % 3000 + 10 for j in range(3 + 5 * i)] for i in range(n)]


async def wait_until(predicate, *, within: float = 20.0) -> None:
    """Poll state that another process drives (heartbeats, restarts)."""
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 - the change happens in another process
            await trio.sleep(0.02)


# ---------------------------------------------------------------------- tests


async def test_greedy_matches_generate_for_one_prompt(cpu0, tiny_model):
    prompt = prompts(3)[2]
    stream = await cpu0.generate(cpu0_model(cpu0), tuple(prompt), GREEDY)
    tokens, finish = await collect(stream)
    assert tokens == reference_greedy(tiny_model, prompt, GREEDY.max_tokens)
    assert finish in ("stop", "length")


async def test_eight_concurrent_prompts_joining_at_different_steps(cpu0, tiny_model):
    all_prompts = prompts(8)
    results: dict[int, list[int]] = {}
    joined = [trio.Event() for _ in all_prompts]
    joined[0].set()

    async def run(i: int) -> None:
        await joined[i].wait()
        stream = await cpu0.generate(cpu0_model(cpu0), tuple(all_prompts[i]), GREEDY)
        tokens: list[int] = []
        async for step in stream:
            tokens.extend(step.token_ids)
            if i + 1 < len(joined) and len(tokens) == 2:
                joined[i + 1].set()  # the next prompt joins while this one decodes
        if i + 1 < len(joined):
            joined[i + 1].set()
        results[i] = tokens

    async with trio.open_nursery() as nursery:
        for i in range(len(all_prompts)):
            nursery.start_soon(run, i)
    for i, prompt in enumerate(all_prompts):
        assert results[i] == reference_greedy(tiny_model, prompt, GREEDY.max_tokens), i


async def test_seeded_sampling_is_reproducible(cpu0):
    sampling = wire.SamplingParams(max_tokens=16, temperature=1.0, seed=1234, ignore_eos=True)
    other = wire.SamplingParams(max_tokens=16, temperature=1.0, seed=99, ignore_eos=True)
    prompt = tuple(prompts(2)[1])
    first, _ = await collect(await cpu0.generate(cpu0_model(cpu0), prompt, sampling))
    second, _ = await collect(await cpu0.generate(cpu0_model(cpu0), prompt, sampling))
    third, _ = await collect(await cpu0.generate(cpu0_model(cpu0), prompt, other))
    assert first == second
    assert first != third


async def test_sigkill_fails_in_flight_fast_and_worker_comes_back(cpu0):
    old_pid = cpu0.worker.pid
    long = wire.SamplingParams(max_tokens=5000, temperature=0.0, ignore_eos=True)
    stream = await cpu0.generate(cpu0_model(cpu0), tuple(prompts(1)[0]), long)
    await stream.__anext__()  # it is generating
    os.kill(old_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    with pytest.raises(WorkerDied) as died:
        await collect(stream)
    assert time.monotonic() - killed_at < 1.0
    assert died.value.retry_after is not None and "SIGKILL" in died.value.message

    await wait_until(lambda: cpu0.worker is not None and cpu0_model(cpu0) in cpu0.resident)
    assert cpu0.worker.pid != old_pid
    assert cpu0.incarnations == 2
    tokens, finish = await collect(await cpu0.generate(cpu0_model(cpu0), (11, 12, 13), GREEDY))
    assert tokens and finish in ("stop", "length")


async def test_sigstop_is_caught_by_the_watchdog(cpu0):
    old_pid = cpu0.worker.pid
    long = wire.SamplingParams(max_tokens=5000, temperature=0.0, ignore_eos=True)
    stream = await cpu0.generate(cpu0_model(cpu0), tuple(prompts(1)[0]), long)
    await stream.__anext__()
    os.kill(old_pid, signal.SIGSTOP)
    with pytest.raises(WorkerDied, match="silent"):
        await collect(stream)
    await wait_until(lambda: cpu0.worker is not None and cpu0_model(cpu0) in cpu0.resident)
    assert cpu0.worker.pid != old_pid


async def test_a_pause_of_the_parent_is_not_a_silent_worker(cpu0):
    """The parent stopped or starved (here: its loop blocked) past the heartbeat bound:
    the worker's heartbeats wait unread in the socket; the watchdog must not kill it."""
    old_pid = cpu0.worker.pid
    long = wire.SamplingParams(max_tokens=5000, temperature=0.0, ignore_eos=True)
    stream = await cpu0.generate(cpu0_model(cpu0), tuple(prompts(1)[0]), long)
    await stream.__anext__()
    time.sleep(TIMEOUTS.heartbeat * 2)  # noqa: ASYNC251 - the point: the loop does not run
    await trio.sleep(TIMEOUTS.heartbeat)  # a few watchdog periods with the loop running
    assert (cpu0.worker.pid, cpu0.incarnations) == (old_pid, 1)
    assert (await stream.__anext__()).token_ids  # the sequence still runs
    await stream.aclose()


async def test_a_start_cancelled_before_ready_leaves_no_process():
    """Cancelled while the worker imports torch (the daemon stopping mid-restart)."""
    worker = WorkerProcess(DeviceSpec("cpu:0"), TIMEOUTS)
    with trio.move_on_after(0.3) as cancelled:
        await worker.start()
    assert cancelled.cancelled_caught
    assert worker.process is not None and worker.process.returncode is not None


async def test_cancel_frees_the_slot(cpu0):
    long = wire.SamplingParams(max_tokens=5000, temperature=0.0, ignore_eos=True)
    stream = await cpu0.generate(cpu0_model(cpu0), tuple(prompts(1)[0]), long)
    await stream.__anext__()
    await wait_until(lambda: running(cpu0) == 1)
    await stream.aclose()
    await wait_until(lambda: running(cpu0) == 0, within=5)
    assert cpu0.worker.in_flight == 0


async def test_unknown_model_and_bad_sampling_are_refused(cpu0):
    with pytest.raises(WorkerUnavailable):
        await cpu0.generate("nobody/nothing", (1, 2), GREEDY)
    bad = wire.SamplingParams(max_tokens=4, top_p=1.5)
    stream = await cpu0.generate(cpu0_model(cpu0), (1, 2, 3), bad)
    with pytest.raises(Exception, match="top_p") as refused:
        await collect(stream)
    assert refused.value.status == 400
    # and the worker keeps serving
    tokens, _ = await collect(await cpu0.generate(cpu0_model(cpu0), (1, 2, 3), GREEDY))
    assert tokens


async def test_two_cpu_devices_serve_different_models(demo_models, tmp_path):
    from neuron.synth import synthesize

    other = synthesize(tmp_path, arch="llama", name="helexa/other-chat", seed=7)
    async with actors.open_root("neuron") as root:
        devices = {d: Device(DeviceSpec(d), TIMEOUTS) for d in ("cpu:0", "cpu:1")}
        await start_devices(root, list(devices.values()))
        await devices["cpu:0"].load(placement(demo_models))
        await devices["cpu:1"].load(placement(demo_models, "helexa/other-chat", other))
        assert devices["cpu:0"].worker.pid != devices["cpu:1"].worker.pid
        outputs = {}

        async def run(device_id: str, model_id: str) -> None:
            outputs[device_id] = await collect(
                await devices[device_id].generate(model_id, (5, 6, 7, 8), GREEDY)
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "cpu:0", demo_models.model_id)
            nursery.start_soon(run, "cpu:1", "helexa/other-chat")
        assert outputs["cpu:0"][0] and outputs["cpu:1"][0]
        assert outputs["cpu:0"][0] != outputs["cpu:1"][0]  # different weights
        snapshot = root.registry.snapshot().to_dict()
        assert "cpu:1" in str(snapshot)
        await root.cancel()


def cpu0_model(device) -> str:
    return next(iter(device.desired))


def running(device) -> int:
    stats = device.worker.statistics if device.worker else {}
    return sum(s.running + s.waiting for s in stats.values())
