"""The gateway over two real neurons: cold loads, eviction, pinning (affinity and
the runtime pin API), aliases, single-flight, keepalives, disconnects, failover and metrics.

Two `neuron serve` processes (one CPU device each, a 6 MiB model budget so
that two ~3.5 MiB models cannot co-reside on a node) serve the whole module;
each test starts its own gateway in-process with the catalogue it needs and
begins from an empty fleet. Clients: the official `openai` SDK and httpx.
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest
import trio

from cortex.config import CortexConfig, Eviction, Fleet, Gateway, Http, Neuron
from cortex.fleet_snapshot import Catalogue, ModelProfile
from cortex.gateway import Gateway as CortexGateway
from tests.neuron.daemon_harness import (
    HTTPX_ASYNCGEN_WARNING,
    LLAMA,
    QWEN,
    Models,
    start_daemon,
    synthesize_models,
    walk_actors,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.filterwarnings(HTTPX_ASYNCGEN_WARNING),
]

THIRD = "helexa/qwen3-tiny-b"
EOS_BANNED = {"4087": -100, "4089": -100}  # <|endoftext|>, <|im_end|>: never stop early
NEURON_SETTINGS = {"cpu": {"devices": 1, "threads": 1, "memory_mb": 6}}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Models:
    from neuron.synth import synthesize

    root = tmp_path_factory.mktemp("fleet-models")
    built = synthesize_models(root)
    synthesize(root, arch="qwen3", size="tiny", name=THIRD, seed=1)
    return built


@pytest.fixture(scope="module")
def neurons(models, tmp_path_factory):
    started = {}
    try:
        for name in ("alpha", "beta"):
            started[name] = start_daemon(tmp_path_factory.mktemp(name), models,
                                         default_models=(), settings=NEURON_SETTINGS)  # fmt: skip
        yield started
    finally:
        for daemon in started.values():
            if daemon.process.poll() is None:
                daemon.stop()


@pytest.fixture
def empty_fleet(neurons):
    """Every test starts with nothing loaded anywhere."""
    for daemon in neurons.values():
        if daemon.process.poll() is not None:
            continue
        for model in daemon.get("/models"):
            with daemon.http() as client:
                client.post("/models/unload", json={"model_id": model["id"]})
    return neurons


def catalogue(**priorities: int) -> Catalogue:
    profiles = [
        ModelProfile(id=QWEN, vram_mb=4, residency_priority=priorities.get("qwen")),
        ModelProfile(id=LLAMA, vram_mb=4, residency_priority=priorities.get("llama")),
        ModelProfile(id=THIRD, vram_mb=4, residency_priority=priorities.get("third"),
                     pinned_on=("beta",) if priorities.get("pin_third") else ()),
    ]  # fmt: skip
    return Catalogue.of(profiles, {"fast": QWEN})


def gateway_config(neurons, cat: Catalogue, strategy: str = "lru") -> CortexConfig:
    return CortexConfig(
        models_config="",
        gateway=Gateway(listen="127.0.0.1:0", metrics_listen="127.0.0.1:0"),
        eviction=Eviction(strategy=strategy, min_residency_seconds=0),
        neurons=tuple(Neuron(name=n, endpoint=d.url) for n, d in neurons.items()),
        fleet=Fleet(poll_interval=0.3, poll_timeout=2, failure_threshold=2, backoff_max=1),
        http=Http(keepalive_interval=0.2, retries=2, drain_timeout=5),
        catalogue=cat,
    )  # fmt: skip


@pytest.fixture
async def gateway(empty_fleet, nursery):
    """Start a gateway with `start(catalogue, strategy)`; it stops after the test."""
    started: list[CortexGateway] = []

    async def start(cat: Catalogue | None = None, strategy: str = "lru") -> CortexGateway:
        gw = CortexGateway(gateway_config(empty_fleet, cat or catalogue(), strategy))
        await nursery.start(gw.run)
        started.append(gw)
        with trio.fail_after(10):  # first poll of both nodes
            while len(gw.fleet.healthy()) < len(empty_fleet):
                await gw.fleet.wait_changed()
        return gw

    yield start
    for gw in started:
        gw.stop()


def chat(model: str, **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
            **fields}  # fmt: skip


def where_loaded(gw: CortexGateway) -> dict[str, set[str]]:
    return {
        n.name: {m.id for m in n.models if m.status == "loaded"} for n in gw.fleet.nodes.values()
    }


async def post(gw: CortexGateway, body: dict) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gw.url, timeout=60) as client:
        return await client.post("/v1/chat/completions", json=body)


# ---------------------------------------------------------------------------------------------


async def test_cold_load_alias_and_catalogue(gateway):
    gw = await gateway()
    listed = {m["id"]: m for m in (await _get(gw, "/v1/models"))["data"]}
    assert {QWEN, LLAMA, THIRD, "fast"} <= set(listed)
    assert not listed[QWEN]["loaded"] and set(listed[QWEN]["feasible_on"]) == {"alpha", "beta"}

    client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)
    messages = [{"role": "user", "content": "hi"}]
    reply = await client.chat.completions.create(model="fast", max_tokens=3, messages=messages)
    await client.close()
    assert reply.model == QWEN  # the node saw the concrete id
    assert reply.usage.completion_tokens >= 1
    listed = {m["id"]: m for m in (await _get(gw, "/v1/models"))["data"]}
    assert listed[QWEN]["loaded"] and listed["fast"]["loaded"]
    assert [loc["status"] for loc in listed[QWEN]["locations"]] == ["loaded"]


async def test_single_flight_under_concurrency(gateway):
    gw = await gateway()
    results = []

    async def one():
        results.append(await post(gw, chat(LLAMA)))

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(one)
    assert [r.status_code for r in results] == [200] * 8
    assert sum(len(models) for models in where_loaded(gw).values()) == 1
    samples = await _metrics(gw)
    node = _node_of(gw, LLAMA)
    assert (
        samples[f'cortex_model_loads_total{{model="{LLAMA}",node="{node}",outcome="loaded"}}'] == 1
    )
    assert samples[f'cortex_cold_starts_total{{model="{LLAMA}",node="{_node_of(gw, LLAMA)}"}}'] == 8


async def test_keepalive_comments_during_a_cold_load(gateway):
    gw = await gateway()
    lines = []
    async with (
        httpx.AsyncClient(base_url=gw.url, timeout=60) as client,
        client.stream("POST", "/v1/chat/completions", json=chat(THIRD, stream=True)) as response,
    ):
        assert response.status_code == 200
        lines = [line async for line in response.aiter_lines() if line]
    assert lines[0].startswith(":"), lines[:3]  # a keepalive before the node even answered
    assert lines[-1] == "data: [DONE]"
    assert any('"finish_reason":"length"' in line for line in lines)


async def test_lru_eviction(gateway):
    gw = await gateway()
    for model in (QWEN, LLAMA):
        assert (await post(gw, chat(model))).status_code == 200
    placed = where_loaded(gw)
    assert sorted(len(m) for m in placed.values()) == [1, 1]  # one model per node
    assert (await post(gw, chat(QWEN))).status_code == 200  # QWEN is now the recent one
    assert (await post(gw, chat(THIRD))).status_code == 200
    loaded = set().union(*where_loaded(gw).values())
    assert loaded == {QWEN, THIRD}  # LLAMA, least recently used, made room


async def test_priority_eviction(gateway):
    gw = await gateway(catalogue(qwen=50, llama=200, third=100), strategy="priority")
    for model in (QWEN, LLAMA, QWEN):
        assert (await post(gw, chat(model))).status_code == 200
    assert (await post(gw, chat(THIRD))).status_code == 200
    loaded = set().union(*where_loaded(gw).values())
    assert loaded == {LLAMA, THIRD}  # the low-priority model went, recent or not


async def test_pinning(gateway):
    gw = await gateway(catalogue(pin_third=True))
    assert (await post(gw, chat(THIRD))).status_code == 200
    assert where_loaded(gw)["beta"] == {THIRD}
    assert where_loaded(gw)["alpha"] == set()


async def test_a_runtime_pin_survives_eviction_and_refuses_unload(gateway):
    gw = await gateway()
    for model in (QWEN, LLAMA):  # one on each node; QWEN is the least recently used
        assert (await post(gw, chat(model))).status_code == 200
    async with httpx.AsyncClient(base_url=gw.url, timeout=60) as client:
        pin = await client.post("/admin/models/pin", json={"model": "fast"})  # QWEN's alias
        assert pin.status_code == 200, pin.text
        assert pin.json() == {"status": "pinned", "model": QWEN, "changed": True}
        again = await client.post("/admin/models/pin", json={"model": QWEN})
        assert again.json() == {"status": "pinned", "model": QWEN, "changed": False}
        for path in ("/admin/models/pin", "/admin/models/unpin"):
            unknown = await client.post(path, json={"model": "nobody/nothing"})
            assert unknown.status_code == 404, unknown.text
            assert unknown.json()["error"]["code"] == "model_not_found"
            assert "nobody/nothing" in unknown.json()["error"]["message"]
        with_node = await client.post("/admin/models/pin", json={"model": QWEN, "node": "alpha"})
        assert (with_node.status_code, with_node.json()["error"]["param"]) == (400, "node")
        refused = await client.post("/admin/models/unload", json={"model": QWEN})
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "model_pinned"
    view = await _get(gw, "/admin/fleet")
    assert view["pins"] == [QWEN]
    pinned_on = _node_of(gw, QWEN)
    assert _fleet_model(view, pinned_on, QWEN)["pinned"] is True
    assert _fleet_model(view, _node_of(gw, LLAMA), LLAMA)["pinned"] is False

    # LRU would evict QWEN; pinned, it stays and LLAMA makes room instead
    assert (await post(gw, chat(THIRD))).status_code == 200
    assert set().union(*where_loaded(gw).values()) == {QWEN, THIRD}
    assert _node_of(gw, QWEN) == pinned_on

    async with httpx.AsyncClient(base_url=gw.url, timeout=60) as client:
        unpin = await client.post("/admin/models/unpin", json={"model": QWEN})
        assert unpin.json() == {"status": "unpinned", "model": QWEN, "changed": True}
        again = await client.post("/admin/models/unpin", json={"model": QWEN})
        assert again.json() == {"status": "unpinned", "model": QWEN, "changed": False}
        view = await _get(gw, "/admin/fleet")
        assert view["pins"] == [] and _fleet_model(view, pinned_on, QWEN)["pinned"] is False
        unload = await client.post("/admin/models/unload", json={"model": QWEN})
        assert unload.status_code == 200, unload.text


async def test_client_disconnect_frees_the_node_slot(gateway, neurons):
    gw = await gateway()
    assert (await post(gw, chat(QWEN))).status_code == 200
    node = _node_of(gw, QWEN)
    body = chat(QWEN, stream=True, max_tokens=4000, logit_bias=EOS_BANNED)
    async with (
        httpx.AsyncClient(base_url=gw.url, timeout=60) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        seen = 0
        async for line in response.aiter_lines():
            seen += line.startswith("data:")
            if seen == 3:
                break
    assert neurons[node].model_load(QWEN)["in_flight"] in (0, 1)
    deadline = time.monotonic() + 10
    while neurons[node].model_load(QWEN)["in_flight"] or _requests(gw):
        assert time.monotonic() < deadline, "the slot or the request actor was not freed"
        await trio.sleep(0.05)


async def test_metrics_after_known_traffic(gateway):
    gw = await gateway()
    usages = []
    for _ in range(3):
        response = await post(gw, chat(QWEN))
        usages.append(response.json()["usage"])
    node = _node_of(gw, QWEN)
    samples = await _metrics(gw)
    labels = f'model="{QWEN}",node="{node}",outcome="ok",route="/v1/chat/completions"'
    assert samples[f"cortex_requests_total{{{labels}}}"] == 3
    prompt = sum(u["prompt_tokens"] for u in usages)
    completion = sum(u["completion_tokens"] for u in usages)
    assert samples[f'cortex_prompt_tokens_total{{model="{QWEN}",node="{node}"}}'] == prompt
    assert samples[f'cortex_completion_tokens_total{{model="{QWEN}",node="{node}"}}'] == completion
    assert samples[f'cortex_node_up{{node="{node}"}}'] == 1


async def test_unknown_model_and_missing_model(gateway):
    gw = await gateway()
    unknown = await post(gw, chat("nobody/nothing"))
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    async with httpx.AsyncClient(base_url=gw.url) as client:
        missing = await client.post("/v1/chat/completions", json={"messages": []})
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "missing_model_field"


async def test_queue_wait_after_known_traffic(gateway):
    """Streams observe the wait for the node's head (the node starts a stream once the
    request holds a slot); non-streamed requests observe none. It is part of TTFT."""
    gw = await gateway()
    assert (await post(gw, chat(QWEN))).status_code == 200  # the cold load; no queue wait
    node = _node_of(gw, QWEN)
    async with httpx.AsyncClient(base_url=gw.url, timeout=60) as client:
        for _ in range(3):
            response = await client.post("/v1/chat/completions", json=chat(QWEN, stream=True))
            assert response.status_code == 200 and response.text.endswith("data: [DONE]\n\n")
    samples = await _metrics(gw)
    labels = f'model="{QWEN}",node="{node}"'
    assert samples[f"cortex_queue_wait_seconds_count{{{labels}}}"] == 3
    waited = samples[f"cortex_queue_wait_seconds_sum{{{labels}}}"]
    assert 0 < waited < samples[f"cortex_time_to_first_token_seconds_sum{{{labels}}}"]


async def test_drain_and_undrain_a_node(gateway):
    gw = await gateway()
    assert (await post(gw, chat(QWEN))).status_code == 200
    drained = _node_of(gw, QWEN)
    other = "beta" if drained == "alpha" else "alpha"
    body = chat(QWEN, stream=True, max_tokens=64, logit_bias=EOS_BANNED)
    async with (
        httpx.AsyncClient(base_url=gw.url, timeout=60) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as in_flight,
    ):
        lines = in_flight.aiter_lines()
        assert (await anext(lines)).startswith("data:")  # generating on `drained`
        answer = await client.post(f"/admin/nodes/{drained}/drain")
        assert answer.status_code == 200
        assert answer.json()["node"] == drained
        assert answer.json()["state"] in ("draining", "drained")  # busy as of the last poll
        assert _fleet_node(await _get(gw, "/admin/fleet"), drained)["draining"] is True
        # new requests go elsewhere: the model is loaded on the other node for them
        assert (await post(gw, chat(QWEN))).status_code == 200
        assert QWEN in where_loaded(gw)[other]
        # the request in flight on the drained node finishes normally
        rest = [line async for line in lines if line]
    assert rest[-1] == "data: [DONE]" and any('"finish_reason":"length"' in r for r in rest)
    assert QWEN in where_loaded(gw)[drained]  # draining unloads nothing

    async with httpx.AsyncClient(base_url=gw.url, timeout=60) as client:
        await client.post(f"/admin/nodes/{other}/drain")
        refused = await client.post("/v1/chat/completions", json=chat(QWEN))
        assert refused.status_code == 503, refused.text  # every node drained: a clear 503
        assert refused.headers.get("retry-after")
        await _until_idle(gw, drained)  # `in_flight` is as of the last poll
        answer = await client.post(f"/admin/nodes/{drained}/undrain")
    assert answer.json() == {"node": drained, "state": "active", "in_flight": 0}
    assert _fleet_node(await _get(gw, "/admin/fleet"), drained)["draining"] is False
    before = await _served_by(gw, drained)
    assert (await post(gw, chat(QWEN))).status_code == 200  # the undrained node serves again
    assert await _served_by(gw, drained) == before + 1


async def test_zz_node_killed_requests_go_to_the_other_node(gateway, neurons):
    """Runs last in the module: it kills alpha for good."""
    gw = await gateway(catalogue(pin_third=False))
    assert (await post(gw, chat(QWEN))).status_code == 200
    victim = _node_of(gw, QWEN)
    survivor = "beta" if victim == "alpha" else "alpha"
    neurons[victim].kill()
    response = await post(gw, chat(QWEN))
    assert response.status_code == 200, response.text
    assert QWEN in where_loaded(gw)[survivor]
    with trio.fail_after(10):
        while gw.fleet.nodes[victim].state.value != "down":
            await gw.fleet.wait_changed()


# ---------------------------------------------------------------------------------------------


async def _until_idle(gw: CortexGateway, name: str) -> None:
    """Until the gateway's view of `name` (its last poll + what was routed since) is idle."""
    node = gw.fleet.nodes[name]
    with trio.fail_after(30):
        while any(r.busy for r in node.snapshot().residencies):
            await gw.fleet.wait_changed()


async def _get(gw: CortexGateway, path: str) -> dict:
    async with httpx.AsyncClient(base_url=gw.url) as client:
        response = await client.get(path)
    assert response.status_code == 200, response.text
    return response.json()


async def _metrics(gw: CortexGateway) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{gw.metrics_url}/metrics")).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def _fleet_node(view: dict, name: str) -> dict:
    return next(n for n in view["nodes"] if n["name"] == name)


def _fleet_model(view: dict, node: str, model: str) -> dict:
    return next(m for m in _fleet_node(view, node)["models"] if m["id"] == model)


async def _served_by(gw: CortexGateway, node: str) -> float:
    labels = f'model="{QWEN}",node="{node}",outcome="ok",route="/v1/chat/completions"'
    return (await _metrics(gw)).get(f"cortex_requests_total{{{labels}}}", 0.0)


def _node_of(gw: CortexGateway, model: str) -> str:
    return next(name for name, models in where_loaded(gw).items() if model in models)


def _requests(gw: CortexGateway) -> list:
    tree = gw.root.registry.snapshot().to_dict()
    return [a for a in walk_actors(tree["root"]) if a["kind"] == "request"]
