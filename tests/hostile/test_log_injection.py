"""What a client sends cannot forge a log line, reach the terminal as a control
character, or come back unescaped in an error message — on both daemons. And a
wrong method is answered 405 with the `Allow` header RFC 9110 requires."""

from __future__ import annotations

import uuid

import httpx
import pytest

from protocol.logs import printable
from tests.hostile.hostile_harness import check_envelope

pytestmark = [pytest.mark.slow, pytest.mark.integration]

FORGED = "1999-01-01 00:00:00,000 INFO cortex.http: FORGED"


def _forged_path(marker: str) -> tuple[str, str]:
    """(the URL path as sent, the path the server decodes)."""
    return (f"/v1/nope-{marker}%0A{FORGED.replace(' ', '%20')}%0D%1B%5B31mred",
            f"/v1/nope-{marker}\n{FORGED}\r\x1b[31mred")  # fmt: skip


def _daemons(fleet) -> list[tuple[str, object]]:
    return [("cortex", fleet.gateway), ("neuron", fleet.neuron)]


def _assert_log_clean(log: str, marker: str) -> None:
    mine = [line for line in log.splitlines() if marker in line]
    assert mine, f"nothing logged about {marker}"
    assert not any(line.startswith(FORGED) for line in log.splitlines())
    assert all(line.isprintable() for line in mine), mine


@pytest.mark.parametrize("which", ["cortex", "neuron"])
def test_a_path_with_control_characters_cannot_forge_a_log_line(fleet, which):
    daemon = dict(_daemons(fleet))[which]
    marker = uuid.uuid4().hex[:12]
    sent, decoded = _forged_path(marker)
    with daemon.http() as client:
        response = client.send(httpx.Request("GET", client.base_url.copy_with(
            raw_path=sent.encode())))  # fmt: skip
    assert response.status_code == 404
    message = check_envelope(response, "openai")["error"]["message"]
    assert printable(decoded) in message and "\n" not in message and "\x1b" not in message
    _assert_log_clean(daemon.log(), marker)


def test_a_model_id_with_control_characters_is_logged_escaped(fleet):
    marker = uuid.uuid4().hex[:12]
    model = f"m-{marker}\n{FORGED}\x1b[2K"
    with fleet.gateway.http() as client:
        response = client.post("/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
        anthropic = client.post("/v1/messages", json={"model": model, "max_tokens": 1,
                                "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    assert response.status_code == anthropic.status_code == 404
    _assert_log_clean(fleet.gateway.log(), marker)


@pytest.mark.parametrize(
    ("which", "method", "path", "allowed"),
    [("cortex", "POST", "/health", {"GET"}), ("cortex", "GET", "/v1/chat/completions", {"POST"}),
     ("cortex", "DELETE", "/v1/messages", {"POST"}), ("neuron", "POST", "/health", {"GET"}),
     ("neuron", "GET", "/models/load", {"POST"}), ("neuron", "PUT", "/v1/completions", {"POST"})],
)  # fmt: skip
def test_a_wrong_method_is_405_with_allow(fleet, which, method, path, allowed):
    daemon = dict(_daemons(fleet))[which]
    with daemon.http() as client:
        response = client.request(method, path)
    assert response.status_code == 405
    allow = {m.strip() for m in response.headers["allow"].split(",")}
    assert allowed <= allow and method not in allow
    dialect = {"/v1/messages": "anthropic", "/models/load": "flat"}.get(path, "openai")
    check_envelope(response, dialect)
