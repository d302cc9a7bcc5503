"""A real `cortex serve` process in front of real neurons, and checks of error envelopes.

`start_gateway` writes a `cortex.toml` and a catalogue, runs `python -m cortex
serve` on a loopback port the OS picks (the URL comes from its "cortex
listening url=" log line) and waits until it has polled every neuron.
`RunningGateway.stop` sends SIGTERM and asserts a clean exit. Like the
neuron harness (tests/neuron/daemon_harness.py), the process runs with
`KEEP_ACROSS_TESTS` so that one gateway can serve a whole module.

`check_envelope` asserts that a refusal carries the error body of its
route's dialect: OpenAI's `{"error": {"message", "type", "code", ...}}`,
Anthropic's `{"type": "error", "error": {"type", "message"}}`, or the node
API's flat `{"error": "...", "code": "..."}`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from tests.neuron.daemon_harness import KEEP_ACROSS_TESTS, wait_for

START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
_LISTENING = re.compile(rb"cortex listening url=([^\s\"]+)")
# Where a crash would show even when the client got an answer (a stream's in-band error).
CRASH_MARKERS = ("Traceback (most recent call last)", "unexpected error", "internal_error")


class RunningGateway:
    def __init__(self, process: subprocess.Popen, log_path: Path) -> None:
        self.process = process
        self.log_path = log_path
        self.url = ""

    def http(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 30.0)
        return httpx.Client(base_url=self.url, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise AssertionError(f"cortex ignored SIGTERM:\n{self.log()[-5000:]}") from None
        assert code == 0, f"cortex exited with {code}:\n{self.log()[-5000:]}"


def _toml_table(name: str, keys: Mapping[str, Any]) -> list[str]:
    return ["", f"[{name}]", *(f"{k} = {json.dumps(v)}" for k, v in keys.items())]


def start_gateway(
    tmp: Path,
    neurons: Mapping[str, str],
    models: Mapping[str, int],
    *,
    aliases: Mapping[str, str] | None = None,
    http: Mapping[str, Any] | None = None,
) -> RunningGateway:
    """`cortex serve` over `neurons` (name → url), cataloguing `models` (id → MiB)."""
    tmp.mkdir(parents=True, exist_ok=True)
    catalogue = []
    for model_id, vram_mb in models.items():
        catalogue += ["", "[[models]]", f"id = {json.dumps(model_id)}", f"vram_mb = {vram_mb}"]
    catalogue += _toml_table("aliases", aliases or {})
    (tmp / "models.toml").write_text("\n".join(catalogue) + "\n")
    lines = [f"models_config = {json.dumps(str(tmp / 'models.toml'))}"]
    # Port 0 twice would be "the same address": metrics on a port picked here.
    metrics = f"127.0.0.1:{_free_port()}"
    lines += _toml_table("gateway", {"listen": "127.0.0.1:0", "metrics_listen": metrics})
    lines += _toml_table("eviction", {"min_residency_seconds": 0})
    lines += _toml_table("fleet", {"poll_interval": 0.5, "failure_threshold": 2})
    lines += _toml_table("http", {"keepalive_interval": 0.2, **(http or {})})
    for name, url in neurons.items():
        lines += ["", "[[neurons]]", f"name = {json.dumps(name)}", f"endpoint = {json.dumps(url)}"]
    config = tmp / "cortex.toml"
    config.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
    env[KEEP_ACROSS_TESTS] = "1"
    log_path = tmp / "cortex.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "cortex", "serve", "--config", str(config)],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip
    gateway = RunningGateway(process, log_path)
    try:
        gateway.url = _wait_listening(gateway)
        wait_for(lambda: _nodes_up(gateway, len(neurons)), within=START_TIMEOUT,
                 what="the gateway's first poll of every neuron")  # fmt: skip
    except BaseException:
        process.kill()
        process.wait(timeout=10)
        raise
    return gateway


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(gateway: RunningGateway) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if match := _LISTENING.search(gateway.log_path.read_bytes()):
            return match.group(1).decode()
        if gateway.process.poll() is not None:
            raise AssertionError(f"cortex exited early:\n{gateway.log()}")
        time.sleep(0.05)
    raise AssertionError(f"cortex not listening within {START_TIMEOUT}s:\n{gateway.log()}")


def _nodes_up(gateway: RunningGateway, count: int) -> bool:
    with gateway.http() as client:
        health = client.get("/health").json()
    return health["nodes"]["healthy"] == count


# -- envelopes -------------------------------------------------------------------------------


def check_envelope(response: httpx.Response, dialect: str) -> dict[str, Any]:
    """The error body of `dialect` (`openai`, `anthropic`, `flat`); returns it."""
    where = f"{response.request.method} {response.request.url.path} -> {response.status_code}"
    assert response.headers.get("content-type", "").startswith("application/json"), (
        where, response.headers, response.text[:500])  # fmt: skip
    body = response.json()
    if dialect == "anthropic":
        assert body.get("type") == "error", (where, body)
        error = body.get("error")
        assert isinstance(error, dict) and isinstance(error.get("type"), str), (where, body)
        message = error.get("message")
    elif dialect == "flat":
        assert isinstance(body.get("code"), str), (where, body)
        message = body.get("error")
    else:
        error = body.get("error")
        assert isinstance(error, dict) and isinstance(error.get("type"), str), (where, body)
        assert "code" in error, (where, body)
        message = error.get("message")
    assert isinstance(message, str) and message, (where, body)
    return body


def assert_no_crash_logged(*logs: str) -> None:
    for text in logs:
        for marker in CRASH_MARKERS:
            assert marker not in text, f"{marker!r} in a log:\n{_around(text, marker)}"


def _around(text: str, marker: str, width: int = 3000) -> str:
    at = text.index(marker)
    return text[max(0, at - width // 3) : at + width]
