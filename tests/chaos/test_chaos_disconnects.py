"""Chaos: clients that go away at random points, many times, through the gateway.

Each client sends one long request — a chat stream, a chat reply, an
Anthropic `/v1/messages` stream, or a completions stream; some with a long
prompt so that prefill takes a while — and hangs up after a random delay:
before the gateway's headers, while the request waits in a neuron's queue or
prefills, or mid-stream. More clients run at once than the two neurons have
slots, so some are queued when they leave. Afterwards nothing may be held
anywhere (`assert_quiescent`: admission slots and queue entries, engine
sequences per the workers' heartbeats, request actors on both neurons and
on the gateway, in-flight gauges), and the gateway must have counted every
request it accepted exactly once (`cortex_requests_total`).

The delays come from a seeded generator: the seed is printed, and
`HELEXA_CHAOS_SEED` replays a run. CI sends 40 requests; the long version
(`HELEXA_CHAOS_LONG=1`) 200.
"""

from __future__ import annotations

import os
import random

import httpx
import pytest
import trio

from tests.chaos.chaos_fleet import (
    EOS_BANNED,
    assert_quiescent,
    figure,
    gateway_metrics,
    total,
    wait_until,
    where_loaded,
)
from tests.neuron.daemon_harness import HTTPX_ASYNCGEN_WARNING, QWEN

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.filterwarnings(HTTPX_ASYNCGEN_WARNING),
]

CONCURRENCY = 24  # clients at once: more than the 16 slots of two neurons
LONG_PROMPT = "the quick brown fox jumps over the lazy dog " * 120  # ~1000 tokens of prefill
# Where a client hangs up, in seconds after sending: (low, high) per phase.
PHASES = {
    "before_headers": (0.0, 0.15),  # the gateway sends its head within a keepalive (0.2 s)
    "queued_or_prefill": (0.15, 1.0),
    "mid_stream": (1.0, 4.0),
}


async def test_clients_leaving_at_random_points_leak_nothing(gateway, fleet):
    gw = await gateway()
    for name in ("alpha", "beta"):
        fleet.load(name, QWEN)
    await wait_until(_seen_on_both(gw), within=10, what="QWEN on both nodes")
    seed = int(os.environ.get("HELEXA_CHAOS_SEED") or random.randrange(1 << 30))
    print(f"disconnect chaos: seed={seed}")
    rng = random.Random(seed)
    plan = [_client_plan(rng) for _ in range(figure(40, 200))]
    before = total(await gateway_metrics(gw), "cortex_requests_total")

    limit = trio.CapacityLimiter(CONCURRENCY)
    outcomes: dict[str, int] = {}
    async with trio.open_nursery() as nursery:
        for kind, _phase, delay, long_prompt in plan:
            nursery.start_soon(_client, gw.url, limit, kind, delay, long_prompt, outcomes)
    print(f"disconnect chaos: {len(plan)} clients, phases "
          f"{_count(p for _, p, _, _ in plan)}, outcomes {outcomes}")  # fmt: skip

    await assert_quiescent(gw, fleet.urls().values())
    # A client that hangs up before the gateway has read its request was never
    # accepted; every one that got an answer's head must be counted, once.
    answered = sum(n for outcome, n in outcomes.items() if "before headers" not in outcome)
    counted = total(await gateway_metrics(gw), "cortex_requests_total") - before
    assert answered <= counted <= len(plan), (answered, counted, outcomes)


# ---------------------------------------------------------------------------------------------


def _seen_on_both(gw):
    async def check() -> bool:
        return all(QWEN in models for models in where_loaded(gw).values())

    return check


def _client_plan(rng: random.Random) -> tuple[str, str, float, bool]:
    kind = rng.choice(("chat_stream", "chat", "messages_stream", "completions_stream"))
    phase = rng.choice(tuple(PHASES))
    delay = rng.uniform(*PHASES[phase])
    return kind, phase, delay, rng.random() < 0.3


def _request(kind: str, long_prompt: bool) -> tuple[str, dict]:
    text = LONG_PROMPT if long_prompt else "hi"
    if kind == "messages_stream":
        return "/v1/messages", {"model": QWEN, "max_tokens": 2000, "stream": True,
                                "messages": [{"role": "user", "content": text}]}  # fmt: skip
    if kind == "completions_stream":
        return "/v1/completions", {"model": QWEN, "prompt": text, "max_tokens": 2000,
                                   "stream": True, "logit_bias": EOS_BANNED}  # fmt: skip
    return "/v1/chat/completions", {
        "model": QWEN, "messages": [{"role": "user", "content": text}], "max_tokens": 2000,
        "logit_bias": EOS_BANNED, "stream": kind == "chat_stream",
    }  # fmt: skip


async def _client(url: str, limit: trio.CapacityLimiter, kind: str, delay: float,
                  long_prompt: bool, outcomes: dict[str, int]) -> None:  # fmt: skip
    """Send the request, read what comes, and hang up after `delay` (closing the socket)."""
    path, body = _request(kind, long_prompt)
    stage = "before headers"
    async with limit, httpx.AsyncClient(base_url=url, timeout=60) as client:
        with trio.move_on_after(delay) as hang_up:
            async with client.stream("POST", path, json=body) as response:
                stage = "after headers"
                async for _ in response.aiter_raw():
                    stage = "mid body"
    outcome = f"left {stage}" if hang_up.cancelled_caught else f"finished {response.status_code}"
    outcomes[outcome] = outcomes.get(outcome, 0) + 1


def _count(items) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts
