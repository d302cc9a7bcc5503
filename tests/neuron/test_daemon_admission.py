"""Auth and admission of a real `neuron serve` process configured tight.

One daemon for the module: an `[auth] token`, and one request in flight per
model with one more allowed to wait (`max_in_flight = 1`, `max_queue_depth =
1`, `queue_timeout = 4`), so queue-full, queue-timeout and a queued stream are
cheap to reach.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import trio
from daemon_harness import (
    HTTPX_ASYNCGEN_WARNING,
    QWEN,
    assert_flat_error,
    assert_openai_error,
    chat_body,
    counter,
    next_data,
    open_sse,
    sse_events,
    start_daemon,
    wait_for,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.filterwarnings(HTTPX_ASYNCGEN_WARNING),
]

TOKEN = "s3cret-token"
QUEUE_TIMEOUT = 4
NO_EOS = {"4089": -100, "4087": -100}
SETTINGS = {
    "admission": {"max_in_flight": 1, "max_queue_depth": 1, "queue_timeout": QUEUE_TIMEOUT},
    "http": {"keepalive_interval": 0.2},
}


@pytest.fixture(scope="module")
def daemon(daemon_models, tmp_path_factory):
    daemon = start_daemon(
        tmp_path_factory.mktemp("neuron-tight"), daemon_models, settings=SETTINGS, token=TOKEN
    )
    try:
        yield daemon
    finally:
        daemon.stop()


# -- auth ------------------------------------------------------------------------------------

ROUTES = [
    ("GET", "/discovery", None),
    ("GET", "/version", None),
    ("GET", "/models", None),
    ("GET", f"/models/{QWEN}/endpoint", None),
    ("POST", "/models/load", {"model_id": QWEN}),
    ("POST", "/models/unload", {"model_id": QWEN}),
    ("GET", "/metrics", None),
    ("GET", "/admin/actors", None),
    ("GET", "/admin/actors/stream", None),
    ("GET", "/v1/models", None),
    ("POST", "/v1/chat/completions", chat_body(max_tokens=1)),
    ("POST", "/v1/completions", {"model": QWEN, "prompt": "x", "max_tokens": 1}),
    ("POST", "/v1/responses", {"model": QWEN, "input": "x", "max_output_tokens": 1}),
]
BAD_KEYS = [
    {},
    {"Authorization": "Bearer wrong"},
    {"x-api-key": "wrong"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": "Bearer"},
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_every_route_but_health_needs_the_key(daemon, method, path, body):
    with httpx.Client(base_url=daemon.url, timeout=30) as client:
        for headers in BAD_KEYS:
            response = client.request(method, path, json=body, headers=headers)
            if path.startswith("/models"):
                assert_flat_error(response, 401, "invalid_api_key")
            else:
                assert_openai_error(response, 401, "invalid_api_key")
            assert response.headers["x-request-id"]
    assert {m["id"] for m in daemon.get("/models")} == {QWEN}  # the unload was refused


def test_health_needs_no_key(daemon):
    with httpx.Client(base_url=daemon.url, timeout=30) as client:
        response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["activation"]["state"] == "ready"


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {TOKEN}"},
        {"authorization": f"bearer {TOKEN}"},
        {"x-api-key": TOKEN},
    ],
)
def test_bearer_and_x_api_key_are_accepted(daemon, headers):
    with httpx.Client(base_url=daemon.url, timeout=30, headers=headers) as client:
        assert client.get("/models").status_code == 200
        reply = client.post("/v1/chat/completions", json=chat_body(max_tokens=2))
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 2


def test_the_sdk_sends_its_api_key(daemon):
    with daemon.openai() as client:
        reply = client.completions.create(model=QWEN, prompt="hi", max_tokens=1)
    assert reply.usage.completion_tokens == 1
    wrong = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="wrong", max_retries=0)
    with wrong, pytest.raises(openai.AuthenticationError) as refused:
        wrong.models.list()
    assert refused.value.code == "invalid_api_key"


def test_refusals_are_counted_by_reason(daemon):
    before = daemon.metrics()
    with httpx.Client(base_url=daemon.url, timeout=30) as client:
        client.post("/v1/chat/completions", json=chat_body())
    with daemon.http() as client:
        client.post("/v1/chat/completions", json=chat_body(n=300))
    after = daemon.metrics()
    for reason, model in (("unauthorized", "other"), ("bad_request", QWEN)):
        key = f'neuron_request_rejected_total{{model="{model}",reason="{reason}"}}'
        assert counter(after, key) == counter(before, key) + 1, key


# -- admission ---------------------------------------------------------------------------------


async def test_queue_full_and_queue_timeout_are_fast_503s(daemon):
    """One runs, one waits, the next is refused at once; the waiter gives up after
    `queue_timeout`. Both refusals are 503 `rate_limit_exceeded` with Retry-After."""
    before = daemon.model_load(QWEN)
    waited: list[httpx.Response] = []
    long = chat_body(max_tokens=3000, stream=True, logit_bias=NO_EOS)

    async def wait_in_queue(client: httpx.AsyncClient) -> None:
        waited.append(await client.post("/v1/chat/completions", json=chat_body(max_tokens=2)))

    async with (
        daemon.async_http(timeout=30) as client,
        open_sse(client, "/v1/chat/completions", long) as (_, lines),
        trio.open_nursery() as nursery,
    ):
        await next_data(lines)  # the one slot is taken
        nursery.start_soon(wait_in_queue, client)
        await wait_until(lambda: daemon.model_load(QWEN)["queue_depth"] == 1)
        with trio.fail_after(2):  # refused at once, not after the queue timeout
            full = await client.post("/v1/chat/completions", json=chat_body(max_tokens=2))
        error = assert_openai_error(full, 503, "rate_limit_exceeded", type="rate_limit_error")
        assert "busy" in error["message"]
        assert int(full.headers["retry-after"]) >= 1
    [timed_out] = waited
    error = assert_openai_error(timed_out, 503, "rate_limit_exceeded", type="rate_limit_error")
    assert f"{QUEUE_TIMEOUT}s" in error["message"]
    assert int(timed_out.headers["retry-after"]) >= 1
    after = daemon.model_load(QWEN)
    assert after["rejected_queue_full"] == before["rejected_queue_full"] + 1
    assert after["rejected_timeout"] == before["rejected_timeout"] + 1
    samples = daemon.metrics()
    for reason in ("queue_full", "queue_timeout"):
        assert samples[f'neuron_request_rejected_total{{model="{QWEN}",reason="{reason}"}}'] >= 1
    wait_for(lambda: daemon.model_load(QWEN)["in_flight"] == 0, within=10, what="slot free")
    daemon.assert_serving()


async def test_a_queued_stream_is_answered_once_admitted(daemon):
    """A stream waiting for a slot gets no headers yet (so a refusal can still be a
    real 503); once admitted it streams as usual."""
    first = chat_body(max_tokens=400, stream=True, logit_bias=NO_EOS)
    second = chat_body(max_tokens=5, stream=True)
    answered: list[int] = []
    second_lines: list[str] = []

    async def queued(client: httpx.AsyncClient) -> None:
        async with open_sse(client, "/v1/chat/completions", second) as (response, lines):
            answered.append(response.status_code)  # the headers are here
            second_lines.extend([line async for line in lines])

    async with (
        daemon.async_http(timeout=30) as client,
        trio.open_nursery() as nursery,
        open_sse(client, "/v1/chat/completions", first) as (_, lines),
    ):
        await next_data(lines)
        nursery.start_soon(queued, client)
        await wait_until(lambda: daemon.model_load(QWEN)["queue_depth"] == 1)
        assert not answered  # waiting in the queue, and no 200 committed to yet
        # leaving the block closes the first stream: its slot goes to the queued one
        # (a slow box would otherwise let the queued one time out)
    assert answered == [200]
    events = list(sse_events(second_lines))
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["usage"]["completion_tokens"] <= 5


async def wait_until(predicate, within: float = 10) -> None:
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 - the state lives in another process
            await trio.sleep(0.02)
