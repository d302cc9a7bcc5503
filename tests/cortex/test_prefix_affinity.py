"""Prefix-aware routing (#13): a conversation stays on the replica that holds its
prefix, unless that replica is over its load bound; new prefixes spread.

Two fake nodes answer their polls and requests from an `httpx.MockTransport`
(a node's load is whatever its `/health` says); requests go through the
relay's `open_upstream`, as the gateway sends them (its client's `post` over the
same mock transport).
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from cortex.affinity import PrefixAffinity, prefix_key
from cortex.eviction import EvictionPolicy
from cortex.fleet import Fleet
from cortex.fleet_snapshot import Catalogue, ModelProfile
from cortex.node import Node, PollSettings
from cortex.relay import open_upstream
from protocol.ids import ModelId, NodeName

MODEL = ModelId("org/m")
CHAT = "/v1/chat/completions"
TOOLS = [{"type": "function", "function": {"name": f"tool_{i}", "parameters": {}}}
         for i in range(3)]  # fmt: skip


def conversation(turns: int, first: str = "Fix the failing test.", system: str = "You code."):
    messages = [{"role": "system", "content": system}, {"role": "user", "content": first}]
    for turn in range(1, turns):
        messages += [{"role": "assistant", "content": f"answer {turn}"},
                     {"role": "user", "content": f"follow-up {turn}"}]  # fmt: skip
    return {"model": MODEL, "messages": messages, "tools": TOOLS, "stream": False}


def key(body: dict, path: str = CHAT, chars: int = 4096) -> bytes | None:
    return prefix_key(path, json.dumps(body).encode(), chars)


# ------------------------------------------------------------------ the key


def test_a_conversation_keeps_its_key_turn_after_turn():
    keys = {key(conversation(turns)) for turns in range(1, 21)}
    assert len(keys) == 1 and None not in keys


def test_the_key_is_the_tools_system_and_first_user_message():
    base = key(conversation(3))
    assert key(conversation(3, first="Another task.")) != base
    assert key(conversation(3, system="You review.")) != base
    assert key({**conversation(3), "tools": TOOLS[:1]}) != base
    assert key({**conversation(3), "model": "org/other"}) != base
    # a shared head longer than `chars` is one prefix, whatever follows it
    long = "You are a coding agent. " * 400
    assert key(conversation(2, system=long, first="a")) == key(conversation(2, system=long,
                                                                            first="b"))  # fmt: skip


def test_completions_responses_and_unreadable_bodies():
    prompt = {"model": MODEL, "prompt": "x" * 100 + "tail one"}
    assert key(prompt, "/v1/completions", 100) == key(
        {**prompt, "prompt": "x" * 100 + "tail two"}, "/v1/completions", 100
    )
    responses = {"model": MODEL, "instructions": "Be brief.", "input": "Hello"}
    turn_two = {**responses, "input": [{"role": "user", "content": "Hello"},
                                       {"role": "assistant", "content": "Hi"},
                                       {"role": "user", "content": "More"}]}  # fmt: skip
    assert key(responses, "/v1/responses") == key(turn_two, "/v1/responses")
    assert prefix_key(CHAT, b"{not json", 10) is None
    assert prefix_key(CHAT, b"[1, 2]", 10) is None
    assert key({"model": MODEL, "messages": []}) is None


# ------------------------------------------------------------------ the choice


def test_the_load_bound():
    affinity = PrefixAffinity(load_factor=1.5, load_slack=4)
    a, b = NodeName("alpha"), NodeName("beta")
    affinity.served(MODEL, b"k", a)
    assert affinity.pick(MODEL, b"k", [(0, b), (3, a)]) == (a, "hit")  # within the slack
    assert affinity.pick(MODEL, b"k", [(0, b), (5, a)]) == (b, "overloaded")
    assert affinity.pick(MODEL, b"k", [(6, b), (10, a)]) == (a, "hit")  # under 1.5 x mean
    assert affinity.pick(MODEL, b"k", [(0, b)]) == (b, "miss")  # its replica is gone


def test_remembered_prefixes_are_bounded():
    affinity = PrefixAffinity(max_keys=3)
    for n in range(10):
        affinity.served(MODEL, bytes([n]), NodeName("alpha"))
    assert len(affinity._last) == 3


# ------------------------------------------------------------------ through the relay


class FakeNode:
    """A node serving MODEL: polls report `load` in flight; requests are counted."""

    def __init__(self, name: str) -> None:
        self.name, self.load, self.requests = name, 0, 0

    async def answer(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == CHAT:
            self.requests += 1
            return httpx.Response(200, json={"ok": True})
        if path == "/discovery":
            devices = [{"index": 0, "name": "cpu", "vram_total_mb": 64}]
            return httpx.Response(200, json={"hostname": self.name, "devices": devices})
        if path == "/models":
            return httpx.Response(200, json=[{"id": MODEL, "harness": "transformers",
                                              "status": "loaded", "devices": [0]}])  # fmt: skip
        load = {"id": MODEL, "in_flight": self.load, "queue_depth": 0}
        return httpx.Response(200, json={"uptime_secs": 1, "models": [load]})


class TwoReplicas:
    def __init__(self) -> None:
        self.fakes = {name: FakeNode(name) for name in ("alpha", "beta")}
        transport = httpx.MockTransport(self._route)
        self.client = httpx.AsyncClient(transport=transport)
        nodes = [Node(NodeName(n), f"http://{n}.invalid", self.client, PollSettings())
                 for n in self.fakes]  # fmt: skip
        catalogue = Catalogue.of([ModelProfile(id=MODEL, vram_mb=4)])
        self.fleet = Fleet(nodes, catalogue, EvictionPolicy())
        self.fleet.affinity = PrefixAffinity(load_factor=1.5, load_slack=4)
        self.outcomes: list[str] = []
        self.fleet.on_affinity = lambda model, outcome: self.outcomes.append(outcome)

    async def _route(self, request: httpx.Request) -> httpx.Response:
        return await self.fakes[request.url.host.removesuffix(".invalid")].answer(request)

    async def post(self, url: str, headers: dict, body: bytes) -> httpx.Response:
        """What the relay asks of its client (`cortex.upstream_http.Client.post`)."""
        request = self.client.build_request("POST", url, headers=headers, content=body)
        return await self.client.send(request, stream=True)

    async def send(self, body: dict) -> str:
        """One request, as the gateway relays it, after a fresh poll; the node it went to."""
        await self.fleet.repoll()
        client: Any = self  # the relay's client, over the mock transport
        acquired, response = await open_upstream(
            self.fleet, MODEL, CHAT, json.dumps(body).encode(), {}, client, retries=0
        )
        await response.aclose()
        return acquired.node.name


async def test_a_twenty_turn_conversation_stays_on_one_replica():
    replicas = TwoReplicas()
    placed = [await replicas.send(conversation(turn)) for turn in range(1, 21)]
    assert len(set(placed)) == 1
    assert replicas.outcomes == ["miss"] + ["hit"] * 19
    home = placed[0]
    assert replicas.fakes[home].requests == 20


async def test_over_its_load_bound_the_conversation_moves_and_then_stays():
    replicas = TwoReplicas()
    home = await replicas.send(conversation(1))
    other = next(name for name in replicas.fakes if name != home)
    replicas.fakes[home].load = 3  # busy, but within the slack: stay
    assert await replicas.send(conversation(2)) == home
    replicas.fakes[home].load = 12  # a hot node: over 1.5 x the mean and the slack
    assert await replicas.send(conversation(3)) == other
    replicas.fakes[home].load = 0  # the prefix now lives on `other` too: it follows
    assert [await replicas.send(conversation(t)) for t in range(4, 8)] == [other] * 4
    assert replicas.outcomes == ["miss", "hit", "overloaded"] + ["hit"] * 4


async def test_new_prefixes_spread_over_the_replicas():
    replicas = TwoReplicas()
    placed = [await replicas.send(conversation(1, first=f"task {n}")) for n in range(16)]
    assert set(placed) == {"alpha", "beta"}  # hashed, not all on the first by name
    assert replicas.outcomes == ["miss"] * 16


async def test_without_affinity_the_least_busy_replica_serves():
    replicas = TwoReplicas()
    replicas.fleet.affinity = None
    replicas.fakes["alpha"].load = 1
    assert [await replicas.send(conversation(t)) for t in (1, 2, 3)] == ["beta"] * 3
    assert replicas.outcomes == []


async def test_with_one_replica_the_body_is_not_read():
    replicas = TwoReplicas()
    await replicas.fleet.repoll()

    def unread() -> bytes:
        raise AssertionError("the prefix key was computed with no choice to make")

    acquired = await replicas.fleet.acquire(MODEL, exclude=frozenset({"beta"}), prefix=unread)
    assert acquired.node.name == "alpha" and replicas.outcomes == []
