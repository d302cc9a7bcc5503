"""Load: bursts of concurrent mixed requests over two neurons, fully reconciled.

Each burst sends every request at once: OpenAI chat and Anthropic
`/v1/messages`, streamed and not, over one model loaded on both neurons
(16 slots in all, so most requests queue). Request `i` has its own prompt
length (`i + 1` repetitions of a word), so its prompt token count — the
model's own, asked beforehand from `/v1/chat/tokenize` and
`/v1/messages/count_tokens` — identifies it among the requests of its
dialect: a response carrying another request's count would be a crossed
wire. Chat requests ban EOS, so their completion count is their `max_tokens`.

Checked: zero lost (every request answered 200 and complete), zero
duplicated or crossed (ids unique, each usage matches its request), the
gateway's `cortex_requests_total` / token counters and the neurons'
`neuron_request_success_total` / token counters reconcile with what the
clients saw, both neurons served, nothing is held afterwards, and the RSS of
both neurons (parent + worker) after the later bursts stays near the
baseline measured after the first.

CI: 3 bursts of 60 requests; `HELEXA_CHAOS_LONG=1`: 4 bursts of 200.
"""

from __future__ import annotations

import attrs
import httpx
import psutil
import pytest
import trio

from tests.chaos.chaos_fleet import (
    EOS_BANNED,
    assert_quiescent,
    figure,
    gateway_metrics,
    neuron_get,
    read_stream,
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

KINDS = ("chat", "chat_stream", "messages", "messages_stream")
BURST_WITHIN = 240.0  # a whole burst, on a busy 2-core box; a hang fails here
RSS_SLACK = 1.25  # after the later bursts: at most 25% above the baseline ...
RSS_SLACK_BYTES = 48 << 20  # ... plus 48 MiB (allocator and import noise)


@attrs.frozen
class Planned:
    index: int
    kind: str
    max_tokens: int
    prompt_tokens: int  # the model's own count for this request's prompt

    @property
    def anthropic(self) -> bool:
        return self.kind.startswith("messages")

    @property
    def stream(self) -> bool:
        return self.kind.endswith("stream")

    def body(self) -> dict:
        messages = [{"role": "user", "content": _prompt(self.index)}]
        body = {"model": QWEN, "messages": messages, "max_tokens": self.max_tokens}
        if self.stream:
            body["stream"] = True
        if not self.anthropic:
            body.update(logit_bias=EOS_BANNED, seed=self.index)
        return body


@attrs.frozen
class Answered:
    id: str
    prompt_tokens: int
    completion_tokens: int


async def test_bursts_of_mixed_requests_reconcile(gateway, fleet):
    gw = await gateway()
    for name in ("alpha", "beta"):
        fleet.load(name, QWEN)
    await wait_until(_on_both(gw), within=10, what="QWEN on both nodes")
    size, bursts = figure(60, 200), figure(3, 4)
    async with httpx.AsyncClient(base_url=gw.url, timeout=BURST_WITHIN,
                                 limits=httpx.Limits(max_connections=None)) as client:  # fmt: skip
        plan = await _plan(client, fleet.urls()["alpha"], size)
        rss: list[dict[str, int]] = []
        for _ in range(bursts):
            await _burst(gw, fleet, client, plan)
            rss.append(_rss(fleet))
    print(f"load: {bursts} bursts of {size}; RSS (MiB) after each: "
          f"{[{n: v >> 20 for n, v in r.items()} for r in rss]}")  # fmt: skip
    baseline = rss[0]
    for name, value in rss[-1].items():
        assert value <= baseline[name] * RSS_SLACK + RSS_SLACK_BYTES, (name, rss)


# ---------------------------------------------------------------------------------------------


def _on_both(gw):
    async def check() -> bool:
        return all(QWEN in models for models in where_loaded(gw).values())

    return check


def _prompt(index: int) -> str:
    return "apple " * (index + 1)


async def _plan(client: httpx.AsyncClient, neuron: str, size: int) -> list[Planned]:
    """Each request and its expected prompt tokens (asked before any traffic)."""
    plan = []
    async with httpx.AsyncClient(base_url=neuron, timeout=30) as direct:
        for index in range(size):
            kind = KINDS[index % len(KINDS)]
            messages = [{"role": "user", "content": _prompt(index)}]
            body = {"model": QWEN, "messages": messages}
            if kind.startswith("messages"):
                response = await client.post("/v1/messages/count_tokens", json=body)
                count = response.json()["input_tokens"]
            else:
                response = await direct.post("/v1/chat/tokenize", json=body)
                count = response.json()["count"]
            assert response.status_code == 200, response.text
            plan.append(Planned(index, kind, 3 + index % 6, count))
    for anthropic in (False, True):  # a dialect's responses cannot cross to the other
        counts = [p.prompt_tokens for p in plan if p.anthropic == anthropic]
        assert len(set(counts)) == len(counts), "prompt counts must identify requests"
    return plan


async def _burst(gw, fleet, client: httpx.AsyncClient, plan: list[Planned]) -> None:
    urls = fleet.urls().values()
    gw_before = await gateway_metrics(gw)
    nodes_before = [await neuron_get(url, "/metrics") for url in urls]
    answers: dict[int, Answered] = {}

    async def one(planned: Planned) -> None:
        answers[planned.index] = await _send(client, planned)

    with trio.fail_after(BURST_WITHIN):
        async with trio.open_nursery() as nursery:
            for planned in plan:
                nursery.start_soon(one, planned)
    await assert_quiescent(gw, urls)

    assert len(answers) == len(plan)  # none lost
    assert len({a.id for a in answers.values()}) == len(plan)  # none duplicated
    for planned in plan:
        answer = answers[planned.index]
        assert answer.prompt_tokens == planned.prompt_tokens, (planned, answer)  # not crossed
        if planned.anthropic:
            assert 1 <= answer.completion_tokens <= planned.max_tokens, (planned, answer)
        else:
            assert answer.completion_tokens == planned.max_tokens, (planned, answer)
    _reconcile(gw_before, await gateway_metrics(gw), nodes_before,
               [await neuron_get(url, "/metrics") for url in urls], plan, answers)  # fmt: skip


async def _send(client: httpx.AsyncClient, planned: Planned) -> Answered:
    path = "/v1/messages" if planned.anthropic else "/v1/chat/completions"
    if not planned.stream:
        response = await client.post(path, json=planned.body())
        assert response.status_code == 200, response.text
        body = response.json()
        usage = body["usage"]
        if planned.anthropic:
            return Answered(body["id"], _anthropic_input(usage), usage["output_tokens"])
        return Answered(body["id"], usage["prompt_tokens"], usage["completion_tokens"])
    result = await read_stream(client, path, planned.body())
    assert result.status == 200, result.body
    assert not result.errors, result.errors
    events = [d for d in result.data if isinstance(d, dict)]
    if planned.anthropic:
        assert events[-1]["type"] == "message_stop", events[-3:]
        start = events[0]["message"]
        final = next(e for e in events if e["type"] == "message_delta")["usage"]
        return Answered(start["id"], _anthropic_input(final), final["output_tokens"])
    assert result.done, result.data[-3:]
    assert len({e["id"] for e in events}) == 1, "one completion id per stream"
    usage = events[-1]["usage"]
    return Answered(events[0]["id"], usage["prompt_tokens"], usage["completion_tokens"])


def _anthropic_input(usage: dict) -> int:
    """The whole prompt: Anthropic's `input_tokens` leaves out what the cache served."""
    return usage["input_tokens"] + (usage.get("cache_read_input_tokens") or 0)


def _reconcile(gw_before, gw_after, nodes_before, nodes_after, plan, answers) -> None:
    """The gateway's and the neurons' counters moved by exactly what the clients saw."""

    def gw_delta(name: str, **labels: str) -> float:
        return total(gw_after, name, **labels) - total(gw_before, name, **labels)

    def nodes_delta(name: str, **labels: str) -> list[float]:
        return [total(a, name, **labels) - total(b, name, **labels)
                for b, a in zip(nodes_before, nodes_after, strict=True)]  # fmt: skip

    prompt = sum(a.prompt_tokens for a in answers.values())
    completion = sum(a.completion_tokens for a in answers.values())
    per_route = {"/v1/messages": sum(p.anthropic for p in plan)}
    per_route["/v1/chat/completions"] = len(plan) - per_route["/v1/messages"]
    for route, count in per_route.items():
        assert gw_delta("cortex_requests_total", route=route, outcome="ok") == count, route
    assert gw_delta("cortex_requests_total") == len(plan)
    assert gw_delta("cortex_prompt_tokens_total") == prompt
    assert gw_delta("cortex_completion_tokens_total") == completion
    served = nodes_delta("neuron_request_success_total")
    assert sum(served) == len(plan), served
    assert all(n > 0 for n in served), f"one neuron served nothing: {served}"
    assert sum(nodes_delta("neuron_prompt_tokens_total")) == prompt
    assert sum(nodes_delta("neuron_generation_tokens_total")) == completion
    by_node = {n: gw_delta("cortex_requests_total", node=n) for n in ("alpha", "beta")}
    assert list(by_node.values()) == served, (by_node, served)


def _rss(fleet) -> dict[str, int]:
    """Resident bytes of each neuron: the daemon and its worker."""
    out = {}
    for name, daemon in fleet.daemons.items():
        processes = [psutil.Process(daemon.process.pid), *fleet.workers(name)]
        out[name] = sum(p.memory_info().rss for p in processes)
    return out
