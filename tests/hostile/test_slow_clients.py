"""Slow and idle clients over raw trio sockets, and model symlinks that leave the roots.

A neuron and a gateway of their own (the shared fleet keeps the default
timeouts) with `[http] body_timeout` and `idle_timeout` of 2 s: a client
that dribbles its request head byte by byte, or never finishes its body, or
sits idle on a keep-alive connection is cut off within those bounds, while
other clients are served meanwhile. The neuron's model root holds two
entries that escape it through symlinks; loading either is refused.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import attrs
import httpx
import pytest
import trio

from tests.hostile.hostile_harness import RunningGateway, check_envelope, start_gateway
from tests.neuron.daemon_harness import QWEN, Models, RunningDaemon, start_daemon

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TIMEOUT = 2.0  # body_timeout and idle_timeout of both daemons here
SLACK = 4.0  # scheduling on a busy CI box
SHORT = {"body_timeout": TIMEOUT, "idle_timeout": TIMEOUT}


@attrs.frozen
class SlowFleet:
    neuron: RunningDaemon
    gateway: RunningGateway

    def __getitem__(self, daemon: str) -> str:
        return self.neuron.url if daemon == "neuron" else self.gateway.url


@pytest.fixture(scope="module")
def slow_fleet(hostile_models: Models, tmp_path_factory) -> Iterator[SlowFleet]:
    root = tmp_path_factory.mktemp("roots")
    outside = tmp_path_factory.mktemp("outside") / "model"
    shutil.copytree(hostile_models.root / QWEN, outside)
    (root / "escape").mkdir()
    (root / "escape" / "outside").symlink_to(outside, target_is_directory=True)
    leaky = root / "leaky" / "model"
    leaky.mkdir(parents=True)
    for file in outside.iterdir():  # a real directory whose files all point outside
        (leaky / file.name).symlink_to(file)
    settings = {"cpu": {"devices": 1, "threads": 1, "memory_mb": 1024}, "http": SHORT}
    neuron = start_daemon(tmp_path_factory.mktemp("slow-neuron"), Models(root),
                          default_models=(), settings=settings)  # fmt: skip
    gateway: RunningGateway | None = None
    try:
        gateway = start_gateway(tmp_path_factory.mktemp("slow-cortex"), {"alpha": neuron.url},
                                {QWEN: 4}, http=SHORT)  # fmt: skip
        yield SlowFleet(neuron, gateway)
    finally:
        if gateway is not None:
            gateway.stop()
        neuron.stop()


async def connect(url: str) -> trio.SocketStream:
    parts = urlsplit(url)
    return await trio.open_tcp_stream(parts.hostname, parts.port)


async def until_closed(stream: trio.SocketStream, within: float) -> bytes:
    """Everything the server sends until it closes the connection (fails after `within`)."""
    received = b""
    with trio.fail_after(within):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:  # reset: closed too
                return received
            if not data:
                return received
            received += data


async def served_quickly(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        started = time.monotonic()
        response = await client.get("/health")
    assert response.status_code == 200
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("daemon", ["neuron", "cortex"])
async def test_a_head_sent_byte_by_byte_is_cut_off_and_others_are_served(slow_fleet, daemon):
    url = slow_fleet[daemon]
    stream = await connect(url)
    await stream.send_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    started = time.monotonic()
    closed = trio.Event()

    async def dribble() -> None:
        try:
            while not closed.is_set():
                await stream.send_all(b"a")
                await trio.sleep(0.1)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(dribble)
        await served_quickly(url)  # while the slow head is dribbling
        received = await until_closed(stream, TIMEOUT + SLACK)
        closed.set()
    await stream.aclose()
    assert received == b""  # nothing was ever routed
    assert time.monotonic() - started < TIMEOUT + SLACK


@pytest.mark.parametrize("daemon", ["neuron", "cortex"])
async def test_many_slow_heads_hold_no_request_slot(slow_fleet, daemon):
    url = slow_fleet[daemon]
    streams = []
    for _ in range(100):
        stream = await connect(url)
        await stream.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Never: ")
        streams.append(stream)
    for _ in range(5):
        await served_quickly(url)
    async with trio.open_nursery() as nursery:
        for stream in streams:
            nursery.start_soon(until_closed, stream, TIMEOUT + SLACK * 2)
    for stream in streams:
        await stream.aclose()
    await served_quickly(url)


BODY_ROUTES = [
    ("neuron", "/v1/chat/completions", "openai"),
    ("neuron", "/models/load", "flat"),
    ("cortex", "/v1/chat/completions", "openai"),
    ("cortex", "/v1/messages", "anthropic"),
    ("cortex", "/admin/models/load", "openai"),
]


@pytest.mark.parametrize(("daemon", "path", "dialect"), BODY_ROUTES)
async def test_a_body_that_never_finishes_gets_408(slow_fleet, daemon, path, dialect):
    stream = await connect(slow_fleet[daemon])
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\n\r\n")  # fmt: skip
    await stream.send_all(head.encode() + b'{"model": ')
    started = time.monotonic()
    with trio.fail_after(TIMEOUT + SLACK):
        raw = b""
        while b"\r\n\r\n" not in raw or not _complete(raw):
            data = await stream.receive_some(65536)
            if not data:
                break
            raw += data
    await stream.aclose()
    assert time.monotonic() - started >= TIMEOUT * 0.9
    response = _parse(raw)
    assert response.status_code == 408, raw[:500]
    check_envelope(response, dialect)


def _complete(raw: bytes) -> bool:
    head, _, body = raw.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def _parse(raw: bytes) -> httpx.Response:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(line.split(":", 1)) for line in lines]
    request = httpx.Request("POST", "http://raw/")
    return httpx.Response(int(status_line.split()[1]), headers=[(k, v.strip()) for k, v in headers],
                          content=body, request=request)  # fmt: skip


HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
# the gateway's fast path (`cortex.fast_path`) answers this one, outside Quart
NO_MODEL = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"


@pytest.mark.parametrize(("daemon", "request_", "status"),
                         [("neuron", HEALTH, 200), ("cortex", HEALTH, 200),
                          ("cortex", NO_MODEL, 400)])  # fmt: skip
async def test_an_idle_keep_alive_connection_is_closed(slow_fleet, daemon, request_, status):
    stream = await connect(slow_fleet[daemon])
    await stream.send_all(request_)
    started = time.monotonic()
    received = await until_closed(stream, TIMEOUT + SLACK)
    await stream.aclose()
    assert received.startswith(b"HTTP/1.1 %d" % status)
    assert TIMEOUT * 0.9 <= time.monotonic() - started < TIMEOUT + SLACK


@pytest.mark.parametrize("model_id", ["escape/outside", "leaky/model"])
def test_model_symlinks_out_of_the_roots_are_refused(slow_fleet, model_id):
    neuron = slow_fleet.neuron
    with neuron.http() as client:
        response = client.post("/models/load", json={"model_id": model_id})
    assert response.status_code == 400, response.text
    body = check_envelope(response, "flat")
    assert body["code"] == "invalid_model_id" and "outside the model root" in body["error"]
    assert neuron.get("/models") == []
