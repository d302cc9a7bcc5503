"""The prefix cache across the worker boundary (#13): the budget a load names reaches
the engine (0 turns it off), the parent's `TokenStream` learns each sequence's cached
prompt tokens from `PrefixReused`, heartbeats carry the cache's figures, and a worker
that is killed comes back with an empty cache.

One real CPU worker process serves the tiny demo model twice, under two ids: with
the cache sized by the worker (the default), and with it off.
"""

from __future__ import annotations

import os
import signal

import pytest
import trio

import actors
from neuron.devices import Device, DeviceSpec, ModelPlacement, WorkerTimeouts, start_devices
from protocol import worker as wire

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TIMEOUTS = WorkerTimeouts(ready=60, heartbeat_interval=0.2, heartbeat=3, step=20)
GREEDY = wire.SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
PROMPT = tuple((7 * j) % 3000 + 10 for j in range(60))


async def generate(device: Device, model: str) -> tuple[list[int], int]:
    """One greedy sequence: its tokens and the prompt tokens its worker reused."""
    stream = await device.generate(model, PROMPT, GREEDY)
    tokens = [t async for step in stream for t in step.token_ids]
    return tokens, stream.cached_tokens


async def heartbeat(device: Device, model: str, check) -> wire.EngineStatistics:
    """The worker's statistics for `model` once `check(stats)` holds."""
    with trio.fail_after(20):
        while True:
            stats = device.worker.statistics.get(model) if device.worker else None
            if stats is not None and check(stats):
                return stats
            await trio.sleep(0.05)


async def test_budget_reuse_off_and_a_restarted_worker_starts_empty(demo_models):
    model, uncached = demo_models.model_id, "helexa/uncached"
    path = str(demo_models.plain_path)
    async with actors.open_root("neuron") as root:
        on = Device(DeviceSpec("cpu:0", max_batch_size=4), TIMEOUTS)
        await start_devices(root, [on])
        loaded_on = await on.load(ModelPlacement(model, path, dtype="fp32"))
        loaded_off = await on.load(ModelPlacement(uncached, path, "fp32", prefix_cache_bytes=0))
        assert loaded_on.prefix_cache_bytes > 0 and loaded_off.prefix_cache_bytes == 0

        cold, cold_cached = await generate(on, model)
        warm, warm_cached = await generate(on, model)
        assert (cold_cached, warm_cached) == (0, len(PROMPT) - 1) and warm == cold
        stats = await heartbeat(on, model, lambda s: s.prefix_cache_lookups == 2)
        assert stats.prefix_cache_hit_tokens == len(PROMPT) - 1
        assert 0 < stats.prefix_cache_bytes <= loaded_on.prefix_cache_bytes

        assert [await generate(on, uncached) for _ in range(2)] == [(cold, 0)] * 2
        stats = await heartbeat(on, uncached, lambda s: s.steps_total > 0)
        assert (stats.prefix_cache_lookups, stats.prefix_cache_bytes) == (0, 0)

        os.kill(on.worker.pid, signal.SIGKILL)
        with trio.fail_after(60):
            while not (on.incarnations == 2 and {model, uncached} <= set(on.resident)):  # noqa: ASYNC110
                await trio.sleep(0.05)  # the replacement worker reloads both
        assert await generate(on, model) == (cold, 0)  # the new worker's cache is empty
        assert await generate(on, model) == (cold, len(PROMPT) - 1)
        await root.cancel()
