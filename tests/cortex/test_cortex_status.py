"""cortex status and the /admin/fleet body: rendering, fetching, failures, JSON."""

from __future__ import annotations

import json
import socket

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from cortex import status
from cortex.fleet_view import DeviceView, FleetView, ModelView, NodeView
from cortex.status import StatusError, fetch, main, render_status, run

HEALTH = {
    "status": "impaired",
    "nodes": {"healthy": 1, "total": 2},
    "unservable": [
        {"node": "beast", "model": "org/big", "reason": "insufficient_vram", "detail": "[x]"}
    ],
}

FLEET = FleetView(
    status="impaired",
    nodes=(
        NodeView(
            name="beast", endpoint="http://beast:13131", state="up", last_poll_age_s=1.25,
            devices=(DeviceView(index=0, id="cuda:0", total_mb=24576, free_mb=4096),
                     DeviceView(index=1, id="cuda:1", total_mb=24576, free_mb=20480)),
            models=(ModelView(id="Qwen/Qwen3-8B", status="loaded", in_flight=2, queued=1,
                              memory_mb=17000),
                    ModelView(id="org/big", status="loading")),
        ),
        NodeView(
            name="benjy", endpoint="http://benjy:13131", state="down", draining=True,
            error="connection refused",
            models=(ModelView(id="Qwen/Qwen3-8B", status="loaded", in_flight=1,
                              memory_mb=16000),),
        ),
    ),
)  # fmt: skip


def rendered(health: dict, fleet: FleetView | None) -> str:
    console = Console(record=True, width=140, color_system=None)
    render_status(health, fleet, console)
    return console.export_text()


def gateway(health: object = HEALTH, fleet: object = None, fleet_status: int = 200):
    """A MockTransport standing in for a gateway."""
    fleet = FLEET.to_dict() if fleet is None else fleet

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200, json=health)
        if request.url.path == "/admin/fleet":
            return httpx.Response(fleet_status, json=fleet)
        return httpx.Response(404)

    return httpx.MockTransport(handle)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------ rendering


def test_rendering_shows_health_nodes_and_models():
    text = rendered(HEALTH, FLEET)
    assert "fleet impaired  1/2 nodes healthy" in text
    assert "unservable: org/big on beast: insufficient_vram [x]" in text
    for expected in ("beast", "benjy", "up", "down, draining", "connection refused",
                     "cuda:0, cuda:1", "1.2 s ago", "never"):  # fmt: skip
        assert expected in text
    assert "24.0 GiB / 24.0 GiB" in text  # beast: used / free, over both devices
    assert "Qwen/Qwen3-8B (loaded)" in text and "org/big (loading)" in text


def test_the_models_table_adds_up_the_copies():
    text = rendered(HEALTH, FLEET)
    (row,) = [line for line in text.splitlines() if "beast (loaded), benjy (loaded)" in line]
    assert row.split("│")[3:6] == ["         3 ", "      1 ", " 32.2 GiB "]


def test_pinned_copies_and_runtime_pins_are_shown():
    pinned = ModelView(id="org/kept", status="loaded", pinned=True)
    node = NodeView(name="beast", endpoint="http://beast:13131", state="up", models=(pinned,))
    text = rendered(HEALTH, FleetView(status="ok", nodes=(node,), pins=("org/kept", "org/off")))
    assert "org/kept (loaded, pinned)" in text  # the nodes table
    assert "beast (loaded, pinned)" in text  # the models table
    assert "pinned at runtime: org/kept, org/off" in text
    assert "pinned at runtime" not in rendered(HEALTH, FLEET)


def test_rendering_without_admin_fleet_still_shows_health():
    text = rendered({"status": "degraded", "nodes": {"healthy": 0, "total": 0}}, None)
    assert "fleet degraded  0/0 nodes healthy" in text
    assert "no /admin/fleet" in text


def test_rendering_an_empty_fleet():
    text = rendered({"status": "degraded"}, FleetView(status="degraded"))
    assert "fleet degraded" in text and "nodes" in text and "models" in text


# ------------------------------------------------------------------ fetching


def test_fetch_reads_both_bodies():
    health, fleet = fetch("http://gw", transport=gateway())
    assert health == HEALTH and fleet == FLEET


def test_fetch_sends_the_api_key():
    seen: list[str | None] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(
            200, json=HEALTH if request.url.path == "/health" else FLEET.to_dict()
        )

    fetch("http://gw", api_key="sk-1", transport=httpx.MockTransport(handle))
    assert seen == ["Bearer sk-1", "Bearer sk-1"]


def test_a_gateway_without_admin_fleet_gives_none():
    assert fetch("http://gw", transport=gateway(fleet_status=404))[1] is None


@pytest.mark.parametrize(
    ("transport", "expected"),
    [
        (gateway(fleet_status=401), "GET http://gw/admin/fleet: HTTP 401: pass --api-key"),
        (gateway(fleet_status=500), "GET http://gw/admin/fleet: HTTP 500"),
        (gateway(health=[1, 2]), "GET http://gw/health: expected a JSON object"),
        (gateway(fleet={"status": "fine"}), "GET http://gw/admin/fleet: unexpected body"),
        (httpx.MockTransport(lambda r: httpx.Response(200, text="<html>")), "not JSON"),
    ],
)
def test_bad_answers_are_one_line_errors(transport, expected):
    with pytest.raises(StatusError) as info:
        fetch("http://gw", transport=transport)
    assert str(info.value).startswith(expected) or expected in str(info.value)
    assert "\n" not in str(info.value)


def test_a_silent_gateway_times_out():
    def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(StatusError, match=r"no answer in 0\.5s"):
        fetch("http://gw", timeout=0.5, transport=httpx.MockTransport(handle))


# ------------------------------------------------------------------ the command


def test_an_unreachable_gateway_is_exit_1_with_one_line(capsys):
    url = f"http://127.0.0.1:{closed_port()}"
    assert main(["--url", url]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"cortex status: cannot reach the gateway at {url}: ")


def test_a_url_without_scheme_means_http(capsys):
    port = closed_port()
    assert run(f"127.0.0.1:{port}/") == 1
    assert f"at http://127.0.0.1:{port}: " in capsys.readouterr().err


def test_json_output(monkeypatch, capsys):
    real = fetch
    monkeypatch.setattr(status, "fetch", lambda url, **kw: real(url, transport=gateway(), **kw))
    assert main(["-e", "http://gw", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["health"] == HEALTH and FleetView.from_dict(body["fleet"]) == FLEET


def test_table_output(monkeypatch):
    real = fetch
    monkeypatch.setattr(status, "fetch", lambda url, **kw: real(url, transport=gateway(), **kw))
    console = Console(record=True, width=140, color_system=None)
    assert run("http://gw", console=console) == 0
    assert "benjy" in console.export_text()


def test_url_and_api_key_defaults(monkeypatch):
    seen = {}

    def fake_run(url, **kwargs):
        seen.update(kwargs, url=url)
        return 0

    monkeypatch.setattr(status, "run", fake_run)
    monkeypatch.delenv("CORTEX_URL", raising=False)
    monkeypatch.setenv("CORTEX_API_KEY", "sk-env")
    assert main([]) == 0
    assert seen["url"] == "http://localhost:31313" and seen["api_key"] == "sk-env"
    monkeypatch.setenv("CORTEX_URL", "http://gw:1")
    assert main([]) == 0 and seen["url"] == "http://gw:1"
    assert main(["--url", "http://other:2", "--api-key", "sk-arg"]) == 0
    assert seen["url"] == "http://other:2" and seen["api_key"] == "sk-arg"


# ------------------------------------------------------------------ the wire shape


def test_the_admin_fleet_shape_keeps_nulls():
    view = NodeView(name="a", endpoint="http://a", state="up",
                    devices=(DeviceView(index=0, total_mb=1, free_mb=1),),
                    models=(ModelView(id="m", status="loaded"),))  # fmt: skip
    node = FleetView(status="ok", nodes=(view,)).to_dict()["nodes"][0]
    assert node["last_poll_age_s"] is None and node["error"] is None
    assert node["devices"][0]["id"] is None and node["models"][0]["memory_mb"] is None
    assert set(node) == {"name", "endpoint", "state", "draining", "last_poll_age_s", "error",
                         "devices", "models"}  # fmt: skip


names = st.text(min_size=1, max_size=8)
counts = st.integers(min_value=0, max_value=10**6)
devices = st.builds(DeviceView, index=counts, id=st.none() | names, total_mb=counts,
                    free_mb=counts)  # fmt: skip
models = st.builds(ModelView, id=names, status=st.sampled_from(["loaded", "loading", "failed"]),
                   in_flight=counts, queued=counts, memory_mb=st.none() | counts,
                   pinned=st.booleans())  # fmt: skip
nodes = st.builds(
    NodeView, name=names, endpoint=names, state=st.sampled_from(["up", "suspect", "down"]),
    draining=st.booleans(),
    last_poll_age_s=st.none() | st.floats(min_value=0, max_value=1e6, allow_nan=False),
    error=st.none() | names, devices=st.lists(devices, max_size=3).map(tuple),
    models=st.lists(models, max_size=3).map(tuple),
)  # fmt: skip
fleets = st.builds(FleetView, status=st.sampled_from(["ok", "impaired", "degraded"]),
                   nodes=st.lists(nodes, max_size=3).map(tuple),
                   pins=st.lists(names, max_size=3).map(tuple))  # fmt: skip


@given(fleets)
def test_fleet_view_round_trips_through_json(view):
    assert FleetView.from_dict(json.loads(json.dumps(view.to_dict()))) == view
