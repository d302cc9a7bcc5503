"""`python -m cortex.inspect` against a real gateway and neuron, and request ids in logs.

One `neuron serve` process (one CPU device, Qwen3 loaded, JSON logs) serves
the module; each test starts its own gateway in-process with two nodes:
`alpha` (the neuron) and `ghost` (a closed port: always unreachable). The
command line runs as a real subprocess (`--once`, `--json`), the live view's
feed follows the real streams and is rendered to rich's recording console,
and the terminal behaviour (q, resize) runs in a tmux pane when tmux exists.
The pure parts (the log filter, `--filter`) have plain unit tests at the end.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import trio
from rich.console import Console

import actors
from cortex.config import CortexConfig, Eviction, Fleet, Gateway, Http, Neuron
from cortex.fleet_snapshot import Catalogue, ModelProfile
from cortex.gateway import Gateway as CortexGateway
from cortex.inspect import Board, fetch_board, follow, render_board
from protocol.logs import JsonFormatter, PlainFormatter, RequestIdFilter, set_request_id
from tests.neuron.daemon_harness import (
    HTTPX_ASYNCGEN_WARNING,
    QWEN,
    RunningDaemon,
    chat_body,
    next_data,
    open_sse,
    start_daemon,
    synthesize_models,
    wait_for,
    walk_actors,
)

pytestmark = pytest.mark.filterwarnings(HTTPX_ASYNCGEN_WARNING)

REPO = Path(__file__).resolve().parents[2]
NO_EOS = {"4087": -100, "4089": -100}  # <|endoftext|>, <|im_end|>: the stream runs on
NEURON_SETTINGS = {
    "cpu": {"devices": 1, "threads": 1, "memory_mb": 2048},
    "http": {"keepalive_interval": 0.2},
    "log": {"format": "json"},
}


def real(test: Callable) -> Callable:
    """Real processes over real sockets (the suite's `slow` + `integration`)."""
    return pytest.mark.slow(pytest.mark.integration(test))


@pytest.fixture(scope="module")
def neuron(tmp_path_factory) -> Iterator[RunningDaemon]:
    models = synthesize_models(tmp_path_factory.mktemp("inspect-models"))
    daemon = start_daemon(tmp_path_factory.mktemp("inspect-neuron"), models,
                          default_models=(QWEN,), settings=NEURON_SETTINGS)  # fmt: skip
    try:
        yield daemon
    finally:
        daemon.stop()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
async def gateway(neuron, nursery) -> AsyncIterator[CortexGateway]:
    config = CortexConfig(
        models_config="",
        gateway=Gateway(listen="127.0.0.1:0", metrics_listen="127.0.0.1:0"),
        eviction=Eviction(min_residency_seconds=0),
        neurons=(Neuron(name="alpha", endpoint=neuron.url),
                 Neuron(name="ghost", endpoint=closed_port_url())),
        fleet=Fleet(poll_interval=0.3, poll_timeout=2, failure_threshold=1, backoff_max=1),
        http=Http(keepalive_interval=0.2, retries=1, drain_timeout=5),
        catalogue=Catalogue.of([ModelProfile(id=QWEN, vram_mb=4)], {}),
    )  # fmt: skip
    gw = CortexGateway(config)
    await nursery.start(gw.run)
    with trio.fail_after(15):
        while gw.fleet.nodes["alpha"].state.value != "up":
            await gw.fleet.wait_changed()
    yield gw
    gw.stop()


async def inspect_cli(*args: str, columns: int = 200) -> trio.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1"}
    return await trio.run_process([sys.executable, "-m", "cortex.inspect", *args], check=False,
                                  capture_stdout=True, capture_stderr=True, env=env,
                                  cwd=REPO)  # fmt: skip


def frame(board: Board, needle: str | None = None) -> str:
    """The view as a 200-column terminal shows it (plain text)."""
    console = Console(record=True, width=200, file=io.StringIO(), color_system=None)
    console.print(render_board(board, needle=needle))
    return console.export_text()


async def frame_until(board: Board, predicate: Callable[[str], bool], what: str) -> str:
    """Redraw on every change of the board (as the live view does) until `predicate`."""
    text = ""
    with trio.move_on_after(20):
        while True:
            seen = board.version
            text = frame(board)
            if predicate(text):
                return text
            await board.wait_changed(seen)
    raise AssertionError(f"the view never showed {what}; last frame:\n{text}")


@contextlib.asynccontextmanager
async def following(gw: CortexGateway) -> AsyncIterator[Board]:
    """The live view's feed on `gw`, stopped (its streams closed) on exit."""
    board = Board(gw.url)
    async with httpx.AsyncClient(base_url=gw.url) as client, trio.open_nursery() as nursery:
        nursery.start_soon(follow, client, board)
        yield board
        nursery.cancel_scope.cancel()


def device_line(text: str) -> str:
    return next((line for line in text.splitlines() if "cpu:0 device" in line), "")


# ------------------------------------------------------------------ the command line


@real
async def test_once_prints_the_gateway_tree_with_each_node_beneath(gateway):
    with trio.fail_after(30):  # device fields follow worker heartbeats: wait for the model
        while True:
            done = await inspect_cli("--once", "--url", gateway.url)
            assert done.returncode == 0, done.stderr
            out = done.stdout.decode()
            if f"{QWEN} (" in device_line(out):
                break
    assert out.startswith(f"helexa inspect {gateway.url}  gateway")
    assert "fleet supervisor" in out and "requests supervisor" in out
    assert "alpha node  up  polled" in out
    assert "neuron @ alpha root" in out  # the node's own tree, read through the gateway
    line = device_line(out)
    assert "restarts 0" in line and "pid " in line and f"{QWEN} (" in line, line
    assert "running 0 waiting 0" in line
    ghost = [line for line in out.splitlines() if "ghost:" in line]
    assert ghost and "unreachable" in ghost[0], out


@real
async def test_json_once_prints_the_raw_snapshots(gateway):
    done = await inspect_cli("--once", "--json", "--url", gateway.url)
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["kind"] == "gateway" and body["target"]["root"]["name"] == "cortex"
    alpha = body["nodes"]["alpha"]
    paths = {a["path"]: a for a in walk_actors(alpha["root"])}
    assert paths["neuron/devices/cpu:0"]["status"]["pid"] > 0
    assert QWEN in paths["neuron/devices/cpu:0"]["status"]["models"]
    assert "ghost unreachable" in body["nodes"]["ghost"]["error"]


@real
async def test_a_neuron_url_shows_that_node_alone(neuron):
    done = await inspect_cli("--once", "--url", neuron.url)
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert out.startswith(f"helexa inspect {neuron.url}  neuron")
    assert "neuron root" in out and "cpu:0 device" in out and "fleet" not in out
    filtered = (await inspect_cli("--once", "--url", neuron.url, "--filter", "CPU:0")).stdout
    assert "cpu:0 device" in filtered.decode() and "requests supervisor" not in filtered.decode()


@real
async def test_an_unreachable_gateway_is_one_clear_line_and_status_1():
    url = closed_port_url()
    for args in (("--once",), ("--once", "--json")):
        done = await inspect_cli(*args, "--url", url)
        assert done.returncode == 1
        assert done.stdout == b""
        lines = done.stderr.decode().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"cortex inspect: cannot read {url}")
        assert "refused" in lines[0].lower(), lines


# ------------------------------------------------------------------ the gateway's node routes


@real
async def test_node_actor_routes_relay_the_node_or_say_why_not(gateway):
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        alpha = await client.get("/admin/nodes/alpha/actors")
        assert alpha.status_code == 200 and alpha.json()["root"]["name"] == "neuron"
        unknown = await client.get("/admin/nodes/nope/actors")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "node_not_found"
        ghost = await client.get("/admin/nodes/ghost/actors/stream")
        assert ghost.status_code == 502
        assert ghost.json()["error"]["code"] == "upstream_connection_error"
        async with open_sse(client, "/admin/nodes/alpha/actors/stream", method="GET") as (
            response, lines,
        ):  # fmt: skip
            assert response.headers["content-type"].startswith("text/event-stream")
            assert json.loads(await next_data(lines))["root"]["name"] == "neuron"


# ------------------------------------------------------------------ the live view


@real
async def test_live_view_shows_a_request_while_it_streams_and_not_after(gateway):
    rid = "inspect-live-1"
    body = chat_body(max_tokens=4000, stream=True, logit_bias=NO_EOS)
    async with (
        following(gateway) as board,
        httpx.AsyncClient(base_url=gateway.url, timeout=30, headers={"x-request-id": rid}) as c,
    ):
        await frame_until(board, lambda t: "alpha root" in t, "the node's tree")
        assert rid not in frame(board)
        async with open_sse(c, "/v1/chat/completions", body) as (response, tokens):
            assert response.status_code == 200
            await next_data(tokens)
            text = await frame_until(
                board, lambda t: t.count(f"{rid} request") == 2 and " tok/s" in t,
                "the request in the gateway's and the node's trees",
            )  # fmt: skip
            gateway_line, node_line = sorted(
                (line for line in text.splitlines() if f"{rid} request" in line),
                key=lambda line: "on alpha" in line, reverse=True,
            )  # fmt: skip
            assert f"{QWEN}  on alpha  streaming" in gateway_line, gateway_line
            assert f"{QWEN}  streaming" in node_line and " tok " in node_line, node_line
            assert rid in frame(board, needle=rid[-6:])
        await frame_until(board, lambda t: rid not in t, "the request gone after the stream")


@real
async def test_live_view_shows_a_killed_worker_restart(gateway, neuron):
    async with following(gateway) as board:
        before = await frame_until(board, lambda t: "cpu:0 device" in t, "the device worker")
        devices = board.nodes["alpha"].snapshot["root"]
        worker = next(a for a in walk_actors(devices) if a["path"] == "neuron/devices/cpu:0")
        restarts, pid = worker["restarts"], worker["status"]["pid"]
        assert f"restarts {restarts}  pid {pid}" in device_line(before)
        os.kill(pid, signal.SIGKILL)
        after = await frame_until(
            board, lambda t: f"cpu:0 device restarts {restarts + 1}" in t, "the restart count up"
        )
        assert "last error: WorkerExited" in device_line(after)
        await frame_until(board, lambda t: f"{QWEN} (" in device_line(t), "the model reloaded")
    assert f"pid {pid}" not in device_line(after)
    wait_for(lambda: neuron.model_load(QWEN), what="the model serving again")


@real
@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux for a virtual terminal")
async def test_terminal_view_redraws_on_resize_and_quits_on_q(gateway, tmp_path):
    tmux = ["tmux", "-S", str(tmp_path / "tmux"), "-f", os.devnull]  # a private server
    command = (f"env -u COLUMNS -u LINES {sys.executable} -m cortex.inspect --url {gateway.url}; "
               "echo EXITED=$?; echo MODE=$(stty -a | tr ' ;' '\\n\\n' | grep -x -E -- "
               "'-?(icanon|echo)' | tr '\\n' ' '); sleep 60")  # fmt: skip

    async def run(*args: str) -> str:
        done = await trio.run_process([*tmux, *args], capture_stdout=True, cwd=REPO)
        return done.stdout.decode()

    async def screen_until(predicate: Callable[[str], bool], what: str) -> str:
        text = ""
        with trio.move_on_after(20):
            while True:  # tmux has no change notification: look again
                text = await run("capture-pane", "-p", "-t", "view")
                if predicate(text):
                    return text
                await trio.sleep(0.1)
        raise AssertionError(f"the terminal never showed {what}:\n{text}")

    await run("new-session", "-d", "-s", "view", "-x", "160", "-y", "40", command)
    try:
        await run("resize-window", "-t", "view", "-x", "160", "-y", "40")  # some tmux take 80
        wide = await screen_until(lambda s: "cpu:0 device" in s and "(q to quit)" in s, "a tree")
        assert "neuron @ alpha root" in wide
        assert device_line(wide).index("waiting 0") > 70  # one line at 160 columns
        await run("resize-window", "-t", "view", "-x", "70", "-y", "40")
        # A terminal only cuts lines of the old frame; a redraw wraps them inside the tree.
        narrow = await screen_until(
            lambda s: "waiting 0" in s and "(q to quit)" in s and "cpu:0 device" in s
            and "waiting 0" not in device_line(s), "a frame drawn for 70 columns",
        )  # fmt: skip
        assert max(map(len, narrow.splitlines())) <= 70
        await run("send-keys", "-t", "view", "q")
        after = await screen_until(lambda s: "MODE=" in s, "the view quitting")
        assert "EXITED=0" in after
        assert "MODE=icanon echo" in after  # the terminal mode was restored
    finally:
        await run("kill-server")


# ------------------------------------------------------------------ request ids in logs


@contextlib.contextmanager
def gateway_json_log() -> Iterator[io.StringIO]:
    """The in-process gateway's log lines, formatted as `cortex serve --log-format json`."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@real
async def test_one_request_id_in_both_daemons_json_logs(gateway, neuron):
    with gateway_json_log() as log:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            given = await client.post("/v1/chat/completions", json=chat_body(max_tokens=2),
                                      headers={"x-request-id": "trace-both-1"})  # fmt: skip
            fresh = await client.post("/v1/chat/completions", json=chat_body(max_tokens=2))
    assert given.status_code == fresh.status_code == 200
    assert given.headers["x-request-id"] == "trace-both-1"
    generated = fresh.headers["x-request-id"]
    assert len(generated) == 32
    for rid in ("trace-both-1", generated):
        mine = [e for e in json_lines(log.getvalue()) if e.get("request_id") == rid]
        assert any(e["logger"] == "cortex.http" and "status=200" in e["msg"] for e in mine), rid
        on_node = wait_for(
            lambda rid=rid: [e for e in json_lines(neuron.log()) if e.get("request_id") == rid],
            what=f"{rid} in the neuron's log",
        )  # fmt: skip
        assert any(e["logger"] == "neuron.http" and "status=200" in e["msg"] for e in on_node)


@real
async def test_a_cold_load_shows_in_the_tree_and_in_both_logs(gateway, neuron):
    rid = "trace-cold-1"
    async with (
        following(gateway) as board,
        httpx.AsyncClient(base_url=gateway.url, timeout=60) as client,
    ):
        await frame_until(board, lambda t: f"{QWEN} (" in device_line(t), "the model resident")
        unload = await client.post("/admin/models/unload", json={"model": QWEN})
        assert unload.status_code == 200, unload.text
        await frame_until(board, lambda t: QWEN not in device_line(t), "the model gone")
        with gateway_json_log() as log:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(
                    client.post, "/v1/chat/completions", json=chat_body(max_tokens=1),
                    headers={"x-request-id": rid},
                ))  # fmt: skip
                text = await frame_until(board, _load_line_with_phase, "the gateway's load actor")
        line = _load_line(text)
        assert QWEN in line and ("loading" in line or "waiting for node" in line), line
        await frame_until(board, lambda t: f"{QWEN} (" in device_line(t), "the model reloaded")
    started = [e for e in json_lines(log.getvalue()) if e["msg"].startswith("loading model")]
    assert started and started[0]["request_id"] == rid  # the load runs for the request
    assert any(e["msg"].startswith("model loaded") for e in json_lines(log.getvalue()))
    on_node = [e["msg"] for e in json_lines(neuron.log()) if e["logger"] == "neuron.registry"]
    assert any(m.startswith(f"loading model={QWEN}") and "weight_bytes=" in m for m in on_node)


def _load_line(text: str) -> str:
    return next((line for line in text.splitlines() if "load helexa--qwen3-tiny" in line), "")


def _load_line_with_phase(text: str) -> bool:
    """The load actor has reported what it loads (not just "starting")."""
    return QWEN in _load_line(text)


# ------------------------------------------------------------------ pure parts


async def test_request_id_reaches_records_of_the_task_and_its_children():
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    handler.addFilter(RequestIdFilter())
    log = logging.getLogger("tests.inspect.ids")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:

        async def child() -> None:
            log.info("in a child task")

        log.info("before")
        async with trio.open_nursery() as nursery:
            set_request_id("abc")
            log.info("bound")
            nursery.start_soon(child)
            log.info("given", extra={"request_id": "explicit"})
    finally:
        log.removeHandler(handler)
    ids = {r.getMessage(): getattr(r, "request_id", None) for r in records}
    assert ids == {"before": None, "bound": "abc", "in a child task": "abc", "given": "explicit"}
    plain, as_json = PlainFormatter(), JsonFormatter()
    bound = next(r for r in records if r.getMessage() == "bound")
    assert plain.format(bound).endswith("tests.inspect.ids: bound request_id=abc")
    assert json.loads(as_json.format(bound))["request_id"] == "abc"
    assert "request_id" not in plain.format(records[0])


async def test_filter_keeps_matches_with_their_ancestors_and_descendants():
    async with actors.open_root("neuron") as root:
        devices = await root.start_supervisor("devices")
        requests = await root.start_supervisor("requests")
        async with actors.open_task(devices, "cpu:0", kind="device") as device:
            device.set_status(pid=42, running=1, waiting=0)
            async with actors.open_task(requests, "r-1", kind="request") as request:
                request.set_status(model="m", phase="queued")
                board = Board("http://node")
                board.set_snapshot(board.target, root.registry.snapshot().to_dict())
                everything = frame(board)
                only_device = frame(board, needle="PID=42")
                nothing = frame(board, needle="no-such-actor")
        await root.cancel()
    assert "cpu:0 device restarts 0  pid 42  running 1 waiting 0" in everything
    assert "r-1 request  m  queued" in everything
    assert "devices supervisor" in only_device and "cpu:0 device" in only_device
    assert "requests" not in only_device and "r-1" not in only_device
    assert "no actor matches 'no-such-actor'" in nothing


@real
async def test_once_board_marks_an_unreadable_node(gateway):
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        board = await fetch_board(client, gateway.url)
    assert board.kind == "gateway" and set(board.nodes) == {"alpha", "ghost"}
    assert board.nodes["alpha"].snapshot is not None and board.nodes["ghost"].error
