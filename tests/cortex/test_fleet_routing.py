"""Routing a burst: requests placed between two polls spread over the replicas.

Nodes answer their polls from an `httpx.MockTransport` (idle: nothing in
flight); no request is sent to them, only placed.
"""

from __future__ import annotations

import httpx

from cortex.eviction import EvictionPolicy
from cortex.fleet import Fleet
from cortex.fleet_snapshot import Catalogue, ModelProfile
from cortex.node import Node, PollSettings
from protocol.ids import ModelId, NodeName

MODEL = ModelId("org/m")
IDLE = {
    "/discovery": {"hostname": "h", "devices": [{"index": 0, "name": "cpu", "vram_total_mb": 64}]},
    "/models": [{"id": MODEL, "harness": "transformers", "status": "loaded", "devices": [0]}],
    "/health": {"uptime_secs": 1, "models": [{"id": MODEL, "in_flight": 0, "queue_depth": 0}]},
}


def idle_node(name: str) -> Node:
    async def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=IDLE[request.url.path])

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    return Node(NodeName(name), f"http://{name}.invalid", client, PollSettings())


async def test_a_burst_between_polls_alternates_between_idle_replicas():
    nodes = [idle_node("alpha"), idle_node("beta")]
    fleet = Fleet(nodes, Catalogue.of([ModelProfile(id=MODEL, vram_mb=4)]), EvictionPolicy())
    await fleet.repoll()
    placed = [(await fleet.acquire(MODEL)).node.name for _ in range(6)]
    assert sorted(placed) == ["alpha"] * 3 + ["beta"] * 3  # not all six on "alpha"

    await fleet.repoll()  # the nodes' own figures now count what was sent to them
    assert [n.routed for n in nodes] == [{}, {}]
    assert (await fleet.acquire(MODEL)).node.name == "alpha"  # idle again: ties by name


async def test_a_node_snapshot_is_reused_until_the_node_changes():
    """Every request places over every node's snapshot: an unchanged node's is reused,
    and each kind of change shows in the next one."""
    node = idle_node("alpha")
    await node.poll_once()
    first = node.snapshot()
    assert node.snapshot() is first

    node.routed_here(MODEL)
    routed = node.snapshot()
    assert routed is not first and routed.residency(MODEL).in_flight == 1

    node.draining = True
    assert node.snapshot().draining

    await node.poll_once()  # a new poll: the routed request is in the node's own figures
    polled = node.snapshot()
    assert polled.residency(MODEL).in_flight == 0 and polled.draining
    node.mark_unreachable(OSError("refused"))
    assert node.snapshot().state.value == "suspect"


async def test_capabilities_follow_what_the_nodes_report():
    """Worked out once per model, again after a poll changes a node's model list."""
    reported = {"capabilities": ["text", "vision"]}

    async def answer(request: httpx.Request) -> httpx.Response:
        body = IDLE[request.url.path]
        if request.url.path == "/models":
            body = [{**body[0], **reported}]
        return httpx.Response(200, json=body)

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    node = Node(NodeName("alpha"), "http://alpha.invalid", client, PollSettings())
    fleet = Fleet([node], Catalogue.of([ModelProfile(id=MODEL, vram_mb=4)]), EvictionPolicy())
    assert fleet.capabilities(MODEL) == ()
    await fleet.repoll()
    assert fleet.capabilities(MODEL) == ("text", "vision")
    reported["capabilities"] = ["text"]
    await fleet.repoll()
    assert fleet.capabilities(MODEL) == ("text",)
    assert fleet.capabilities(ModelId("nobody/knows")) == ()
