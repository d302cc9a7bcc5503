"""Gateway API keys over the wire: a real gateway in front of a real neuron with a token.

One `neuron serve` (one CPU device, the tiny Qwen loaded, `[auth] token`)
serves the module; each test starts its own gateway in-process with the keys
it needs. Clients: the official `openai` and `anthropic` SDKs and httpx.
"A refused request never reaches a node" is checked on the neuron's own log,
which has one `answered method=POST` line per request it served.
"""

from __future__ import annotations

import logging

import anthropic
import httpx
import openai
import pytest
import trio

from cortex.config import (
    ApiKey,
    CortexConfig,
    Entitlements,
    Eviction,
    Fleet,
    Gateway,
    Http,
    Neuron,
    RateLimit,
)
from cortex.fleet_snapshot import Catalogue, ModelProfile
from cortex.gateway import Gateway as CortexGateway
from tests.neuron.daemon_harness import (
    HTTPX_ASYNCGEN_WARNING,
    LLAMA,
    QWEN,
    start_daemon,
    synthesize_models,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.filterwarnings(HTTPX_ASYNCGEN_WARNING),
]

NEURON_TOKEN = "neuron-t0ken-9f8e7d"
ADMIN = "sk-admin-5b1c0d7e2f"
FULL = "sk-full-8a9b0c1d2e"
NARROW = "sk-narrow-3f4a5b6c"
LIMITED = "sk-limited-7d8e9f0a"
BUDGET = "sk-budget-1b2c3d4e"
SECRETS = (NEURON_TOKEN, ADMIN, FULL, NARROW, LIMITED, BUDGET)
WINDOW = 3  # seconds of LIMITED's rate window
KEYS = (
    ApiKey(key=ADMIN, account_id="ops", admin=True),
    ApiKey(key=FULL, account_id="team", key_id="team-full"),
    ApiKey(key=NARROW, account_id="team", key_id="team-narrow", models=("fast",)),
    ApiKey(key=LIMITED, account_id="team", key_id="team-limited",
           rate_limit=RateLimit(requests=2, seconds=WINDOW)),
    ApiKey(key=BUDGET, account_id="team", key_id="team-budget", hard_cap=5),
)  # fmt: skip
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def neuron(tmp_path_factory):
    models = synthesize_models(tmp_path_factory.mktemp("auth-models"))
    settings = {"cpu": {"devices": 1, "threads": 1, "memory_mb": 64}}
    daemon = start_daemon(tmp_path_factory.mktemp("auth-neuron"), models, settings=settings,
                          token=NEURON_TOKEN)  # fmt: skip
    try:
        yield daemon
    finally:
        daemon.stop()


def config(neuron, *, keys=KEYS, require_auth=True, listen="127.0.0.1:0",
           token: str | None = NEURON_TOKEN) -> CortexConfig:  # fmt: skip
    return CortexConfig(
        models_config="",
        gateway=Gateway(listen=listen, metrics_listen="127.0.0.1:0"),
        eviction=Eviction(min_residency_seconds=0),
        neurons=(Neuron(name="n1", endpoint=neuron.url, token=token),),
        fleet=Fleet(poll_interval=0.3, poll_timeout=2, failure_threshold=2, backoff_max=1),
        http=Http(keepalive_interval=0.2, retries=0, drain_timeout=5),
        entitlements=Entitlements(require_auth=require_auth, keys=keys),
        catalogue=Catalogue.of([ModelProfile(id=QWEN, vram_mb=4), ModelProfile(id=LLAMA,
                                                                               vram_mb=4)],
                               {"fast": QWEN}),
    )  # fmt: skip


@pytest.fixture
async def gateway(neuron, nursery):
    """`await gateway(**config_overrides)`: a running gateway whose node is up."""
    started: list[CortexGateway] = []

    async def start(*, wait_healthy: bool = True, **overrides) -> CortexGateway:
        gw = CortexGateway(config(neuron, **overrides))
        await nursery.start(gw.run)
        started.append(gw)
        with trio.fail_after(10):
            while wait_healthy and not gw.fleet.healthy():
                await gw.fleet.wait_changed()
        return gw

    yield start
    for gw in started:
        gw.stop()


def oai(gw: CortexGateway, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)


def claude(gw: CortexGateway, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)


async def request(gw: CortexGateway, method: str, path: str, **kwargs) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gw.url, timeout=60) as client:
        return await client.request(method, path, **kwargs)


def served(neuron) -> int:
    """POSTs the neuron has answered (its log has one line for each)."""
    return neuron.log().count("answered method=POST")


def chat(model: str = QWEN, max_tokens: int = 2) -> dict:
    return {"model": model, "messages": MESSAGES, "max_tokens": max_tokens}


# -- who may call --------------------------------------------------------------------------


async def test_a_missing_or_wrong_key_is_401_in_each_dialect(gateway, neuron):
    gw = await gateway()
    before = served(neuron)
    async with oai(gw, "sk-wrong") as client:
        with pytest.raises(openai.AuthenticationError) as refused:
            await client.chat.completions.create(model=QWEN, messages=MESSAGES, max_tokens=2)
    assert refused.value.code == "invalid_api_key"
    assert refused.value.response.headers["www-authenticate"] == "Bearer"
    missing = await request(gw, "POST", "/v1/chat/completions", json=chat())  # the SDKs
    assert missing.status_code == 401  # always send one
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert "missing API key" in missing.json()["error"]["message"]
    missing_an = await request(gw, "POST", "/v1/messages", json=chat("fast"))
    assert missing_an.status_code == 401
    assert missing_an.json() == {
        "type": "error",
        "error": {"type": "authentication_error", "message": missing.json()["error"]["message"]},
    }
    async with claude(gw, "sk-wrong") as client:
        with pytest.raises(anthropic.AuthenticationError) as refused_an:
            await client.messages.create(model="fast", max_tokens=2, messages=MESSAGES)
    assert refused_an.value.body["error"]["type"] == "authentication_error"
    assert refused_an.value.response.headers["www-authenticate"] == "Bearer"
    for path in ("/v1/models", "/v1/responses", "/v1/completions", "/v1/messages/count_tokens"):
        method = "GET" if path == "/v1/models" else "POST"
        response = await request(gw, method, path, json=chat())
        assert response.status_code == 401, (path, response.text)
    assert served(neuron) == before  # nothing reached the node


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {FULL}"},
        {"authorization": f"bearer {FULL}"},
        {"x-api-key": FULL},
        {"Authorization": "Basic Zm9vOmJhcg==", "x-api-key": FULL},
    ],
)
async def test_bearer_and_x_api_key_are_both_accepted(gateway, headers):
    gw = await gateway()
    response = await request(gw, "POST", "/v1/chat/completions", json=chat(), headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 2


async def test_the_sdks_send_their_keys(gateway):
    gw = await gateway()
    async with oai(gw, FULL) as client:
        reply = await client.chat.completions.create(model="fast", messages=MESSAGES,
                                                     max_tokens=2)  # fmt: skip
    assert reply.usage.completion_tokens == 2
    async with claude(gw, FULL) as client:  # x-api-key
        message = await client.messages.create(model="fast", max_tokens=2, messages=MESSAGES)
    assert message.usage.output_tokens == 2


async def test_without_require_auth_an_unknown_key_is_served_anonymously(gateway):
    gw = await gateway(require_auth=False)
    for headers in ({}, {"Authorization": "Bearer sk-not-configured"}):
        response = await request(gw, "POST", "/v1/chat/completions", json=chat(),
                                 headers=headers)  # fmt: skip
        assert response.status_code == 200, response.text
    # ... but the admin routes still need an admin key once keys exist
    assert (await request(gw, "GET", "/admin/fleet")).status_code == 401


async def test_health_and_version_are_public_and_admin_needs_an_admin_key(gateway):
    gw = await gateway()
    for path in ("/health", "/", "/version"):
        assert (await request(gw, "GET", path)).status_code == 200, path
    for path in ("/admin/fleet", "/admin/actors", "/admin/nodes/n1/actors"):
        missing = await request(gw, "GET", path)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        user = await request(gw, "GET", path, headers={"Authorization": f"Bearer {FULL}"})
        assert user.status_code == 403, path
        assert user.json()["error"]["type"] == "permission_error"
        admin = await request(gw, "GET", path, headers={"x-api-key": ADMIN})
        assert admin.status_code == 200, (path, admin.text)
    unload = await request(gw, "POST", "/admin/models/unload", json={"model": QWEN},
                           headers={"x-api-key": FULL})  # fmt: skip
    assert unload.status_code == 403
    assert QWEN in {m.id for m in gw.fleet.nodes["n1"].models}
    for path in ("/admin/models/pin", "/admin/models/unpin"):
        missing = await request(gw, "POST", path, json={"model": QWEN})
        assert missing.status_code == 401, path
        user = await request(gw, "POST", path, json={"model": QWEN}, headers={"x-api-key": FULL})
        assert user.status_code == 403, path
        assert gw.fleet.pins == set()  # refused: nothing changed
    pin = await request(gw, "POST", "/admin/models/pin", json={"model": QWEN},
                        headers={"x-api-key": ADMIN})  # fmt: skip
    assert pin.status_code == 200 and gw.fleet.pins == {QWEN}


# -- which models --------------------------------------------------------------------------


async def test_a_key_sees_and_uses_only_its_models(gateway, neuron):
    gw = await gateway()
    async with oai(gw, NARROW) as client:
        listed = {m.id for m in (await client.models.list()).data}
        assert listed == {QWEN, "fast"}  # the alias allows its model under either name
        reply = await client.chat.completions.create(model=QWEN, messages=MESSAGES,
                                                     max_tokens=2)  # fmt: skip
        assert reply.model == QWEN
        before = served(neuron)
        with pytest.raises(openai.NotFoundError) as refused:
            await client.chat.completions.create(model=LLAMA, messages=MESSAGES, max_tokens=2)
    assert refused.value.code == "model_not_found"
    async with claude(gw, NARROW) as client:
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.create(model=LLAMA, max_tokens=2, messages=MESSAGES)
    assert served(neuron) == before  # never reached the node
    assert LLAMA not in {m.id for m in gw.fleet.nodes["n1"].models}  # nor loaded it
    async with oai(gw, FULL) as client:
        assert LLAMA in {m.id for m in (await client.models.list()).data}


# -- how much ------------------------------------------------------------------------------


async def test_a_rate_limit_is_429_with_retry_after_then_recovers(gateway, neuron):
    gw = await gateway()
    async with oai(gw, LIMITED) as client:
        for _ in range(2):
            await client.chat.completions.create(model=QWEN, messages=MESSAGES, max_tokens=1)
        before = served(neuron)
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model=QWEN, messages=MESSAGES, max_tokens=1)
        assert limited.value.code == "rate_limit_exceeded"
        retry_after = int(limited.value.response.headers["retry-after"])
        assert 1 <= retry_after <= WINDOW
        async with claude(gw, LIMITED) as an:
            with pytest.raises(anthropic.RateLimitError) as limited_an:
                await an.messages.create(model="fast", max_tokens=1, messages=MESSAGES)
        assert limited_an.value.body["error"]["type"] == "rate_limit_error"
        assert "retry-after" in limited_an.value.response.headers
        assert served(neuron) == before
        await trio.sleep(retry_after + 0.2)
        reply = await client.chat.completions.create(model=QWEN, messages=MESSAGES, max_tokens=1)
    assert reply.usage.completion_tokens == 1


async def test_a_spent_budget_is_429_insufficient_quota(gateway, neuron):
    gw = await gateway()
    async with oai(gw, BUDGET) as client:
        # admitted with budget left; the usage it reports (well over 5 tokens) spends it
        body = {**chat(), "stream": True, "stream_options": {"include_usage": False}}
        streamed = await request(gw, "POST", "/v1/chat/completions", json=body,
                                 headers={"x-api-key": BUDGET})  # fmt: skip
        assert streamed.status_code == 200
        assert '"usage":{' in streamed.text.replace(" ", "")  # a metered key's stream counts
        before = served(neuron)
        with pytest.raises(openai.RateLimitError) as spent:
            await client.chat.completions.create(model=QWEN, messages=MESSAGES, max_tokens=1)
    assert spent.value.code == "insufficient_quota"
    assert spent.value.type == "insufficient_quota"
    assert "retry-after" not in spent.value.response.headers
    async with claude(gw, BUDGET) as an:
        with pytest.raises(anthropic.RateLimitError):
            await an.messages.create(model="fast", max_tokens=1, messages=MESSAGES)
    assert served(neuron) == before
    async with oai(gw, FULL) as client:  # other keys are not affected
        await client.chat.completions.create(model=QWEN, messages=MESSAGES, max_tokens=1)


# -- secrets and trust ---------------------------------------------------------------------


async def test_keys_never_reach_the_logs_and_the_node_hears_only_the_key_name(
    gateway, neuron, caplog
):
    caplog.set_level(logging.DEBUG)
    gw = await gateway()
    spoof = {"x-helexa-key-id": "spoofed-name", "x-helexa-account-id": "spoofed-account"}
    for headers in ({"Authorization": f"Bearer {FULL}", **spoof}, {"x-api-key": "sk-wrong"},
                    {"x-api-key": NARROW}):  # fmt: skip
        await request(gw, "POST", "/v1/chat/completions", json=chat(), headers=headers)
    await request(gw, "GET", "/admin/fleet", headers={"x-api-key": ADMIN})
    logged = caplog.text + neuron.log()
    for secret in (*SECRETS, "sk-wrong"):
        assert secret not in logged
    assert "key=team-full" in caplog.text  # keys are named by their id
    assert "key_hash=" in caplog.text  # an unknown one by a digest prefix
    node_lines = [line for line in neuron.log().splitlines() if "answered method=POST" in line]
    assert "key=team-full" in node_lines[-2]  # the gateway's header, trusted with the token
    assert "spoofed" not in neuron.log()  # the client's own copy was never relayed


async def test_the_gateway_needs_the_neuron_token(gateway, neuron):
    gw = await gateway(token=None, wait_healthy=False)
    await trio.sleep(1.5)  # several polls
    node = gw.fleet.nodes["n1"]
    assert not gw.fleet.healthy()
    assert "401" in (node.last_error or "")
    response = await request(gw, "POST", "/v1/chat/completions", json=chat(),
                             headers={"x-api-key": FULL})  # fmt: skip
    assert response.status_code != 200  # the node is unusable without its token


async def test_a_gateway_open_beyond_loopback_warns_naming_its_address(gateway, caplog):
    caplog.set_level(logging.WARNING, logger="cortex")
    await gateway(keys=(), require_auth=False, listen="0.0.0.0:0", wait_healthy=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("beyond loopback" in w and "listen=0.0.0.0:0" in w and "no API key" in w
               for w in warnings), warnings  # fmt: skip
    caplog.clear()
    await gateway(listen="0.0.0.0:0", wait_healthy=False)  # keys, require_auth
    await gateway(keys=(), require_auth=False, wait_healthy=False)  # loopback
    assert not [r for r in caplog.records if "beyond loopback" in r.getMessage()]


def test_the_neuron_trusts_gateway_headers_only_with_its_token(neuron):
    body = chat()
    with httpx.Client(base_url=neuron.url, timeout=30) as client:
        headers = {"x-helexa-key-id": "spoofed-admin", "x-request-id": "trust-check-1"}
        refused = client.post("/v1/chat/completions", json=body, headers=headers)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        headers = {**headers, "x-helexa-key-id": "via-gateway", "x-request-id": "trust-check-2",
                   "Authorization": f"Bearer {NEURON_TOKEN}"}  # fmt: skip
        assert client.post("/v1/chat/completions", json=body, headers=headers).status_code == 200
    lines = neuron.log().splitlines()
    assert "spoofed-admin" not in neuron.log()
    trusted = [line for line in lines if "trust-check-2" in line and "answered" in line]
    assert len(trusted) == 1 and "key=via-gateway" in trusted[0]
