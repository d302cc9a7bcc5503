"""A node actor's loads: what it sends, and how they end as its observer sees them."""

from __future__ import annotations

import json

import httpx
import pytest
import trio

import actors
from cortex.node import Node, NodeActor, PollSettings
from protocol.errors import ApiError
from protocol.ids import ModelId, NodeName
from protocol.node import Discovery

MODEL = ModelId("org/m")


class QuietNodeActor(NodeActor):
    """The node actor without its poller: these tests drive loads only."""

    async def on_start(self) -> None:
        self.node.actor = self


class Outcomes:
    def __init__(self) -> None:
        self.seen: list[tuple[str, ...]] = []

    def loaded(self, node: str, model: str, seconds: float) -> None:
        self.seen.append(("loaded", model))

    def load_failed(self, node: str, model: str, seconds: float, outcome: str) -> None:
        self.seen.append((outcome, model))


def node_answering(load) -> Node:
    async def handler(request: httpx.Request) -> httpx.Response:
        return await load(request)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return Node(NodeName("n"), "http://n.invalid", client, PollSettings(load_timeout=5))


async def loaded_ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"status": "loaded", "model_id": MODEL})


async def too_slow(request: httpx.Request) -> httpx.Response:
    await trio.sleep(60)
    return await loaded_ok(request)


async def refused(request: httpx.Request) -> httpx.Response:
    return httpx.Response(404, json={"error": "model 'org/m' not found", "code": "model_not_found"})


@pytest.mark.parametrize(
    ("load", "outcome", "error"),
    [
        (loaded_ok, "loaded", None),
        (too_slow, "timeout", (504, "load_timeout", "took longer than load_timeout (5 s)")),
        (refused, "failed", (404, "model_not_found", "not found")),
    ],
    ids=["loaded", "timeout", "failed"],
)
async def test_a_load_ends_as_loaded_timeout_or_failed(autojump_clock, load, outcome, error):
    node, observer = node_answering(load), Outcomes()
    node.observer = observer
    async with actors.open_root("t") as root, node.client:
        await root.start(QuietNodeActor, node, name="n")
        try:
            await node.ensure_loaded(MODEL, (), ())
        except ApiError as exc:
            assert (exc.status, exc.code) == error[:2] and error[2] in exc.message
        else:
            assert error is None
    assert observer.seen == [(outcome, MODEL)]


async def test_a_load_cancelled_by_shutdown_is_counted_and_fails_its_waiters(autojump_clock):
    node, observer = node_answering(too_slow), Outcomes()
    node.observer = observer
    errors: list[BaseException] = []

    async def wait_for_the_load() -> None:
        try:
            await node.ensure_loaded(MODEL, (), ())
        except Exception as exc:
            errors.append(exc)

    async with node.client, trio.open_nursery() as outside, actors.open_root("t") as root:
        await root.start(QuietNodeActor, node, name="n")
        outside.start_soon(wait_for_the_load)
        await trio.sleep(1)
        await root.cancel()
    assert observer.seen == [("cancelled", MODEL)]
    [error] = errors
    assert "cancelled" in str(error)


@pytest.mark.parametrize(("harnesses", "sent"), [(("candle",), "candle"), ((), None)])
async def test_a_load_names_the_first_harness_the_node_lists(autojump_clock, harnesses, sent):
    """Upstream's neuron refuses a load without `harness`; ours defaults it."""
    bodies: list[dict] = []

    async def recording(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return await loaded_ok(request)

    node = node_answering(recording)
    node.discovery = Discovery(hostname="h", harnesses=harnesses)
    async with actors.open_root("t") as root, node.client:
        await root.start(QuietNodeActor, node, name="n")
        await node.ensure_loaded(MODEL, (0,), ())
    [body] = bodies
    assert (body["model_id"], body.get("harness"), body["devices"]) == (MODEL, sent, [0])


async def test_a_load_over_several_devices_asks_for_tensor_parallelism(autojump_clock):
    """Upstream's rule: `min_devices` devices placed means `tensor_parallel` that many."""
    bodies: list[dict] = []

    async def recording(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return await loaded_ok(request)

    node = node_answering(recording)
    async with actors.open_root("t") as root, node.client:
        await root.start(QuietNodeActor, node, name="n")
        await node.ensure_loaded(MODEL, (1, 0), ())
    [body] = bodies
    assert (body["devices"], body["tensor_parallel"]) == ([1, 0], 2)


async def test_no_load_starts_while_no_node_actor_runs(autojump_clock):
    """Between incarnations (a crash's backoff) or before the first: a 503 to retry."""
    node = node_answering(loaded_ok)
    async with actors.open_root("t") as root, node.client:
        with pytest.raises(ApiError) as before:
            await node.ensure_loaded(MODEL, (), ())
        ref = await root.start(QuietNodeActor, node, name="n")
        await ref.cancel()  # its on_stop: the node has no actor again
        with pytest.raises(ApiError) as after:
            await node.ensure_loaded(MODEL, (), ())
    for refused_load in (before.value, after.value):
        assert (refused_load.status, refused_load.retry_after) == (503, 1)
        assert "restarting its poller" in refused_load.message
