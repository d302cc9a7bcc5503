"""`cortex up`: a whole local fleet from one command, as a newcomer runs it.

The slow test starts the real command (a neuron child process with two CPU
device workers, the gateway in the command's own process) on two synthesized
models, talks to it over loopback, pastes the banner's status line into a
shell, and stops it the way a terminal's Ctrl-C does: SIGINT to the whole
foreground process group. The fast tests cover the banner's command line.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from cortex import up
from tests.neuron.daemon_harness import LLAMA, QWEN, synthesize_models

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 240.0  # two workers import torch and load a model each, on a busy box
STOP_TIMEOUT = 60.0


# ------------------------------------------------------------------ the banner's command


def test_the_status_line_names_this_environments_cortex(monkeypatch, tmp_path):
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "cortex").write_text("#!/bin/sh\n")
    (bin_dir / "cortex").chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.chdir(tmp_path)
    assert up.cortex_command() == "venv/bin/cortex"  # what works pasted where `make up` ran
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert up.cortex_command() == str(bin_dir / "cortex")
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    assert up.cortex_command() == "cortex"  # PATH finds this very script
    assert "cortex status --url http://127.0.0.1:31313\n" in up._banner(
        "http://127.0.0.1:31313", "m"
    )


def test_without_the_console_script_the_status_line_runs_the_module(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "my python"))
    assert up.cortex_command() == f"'{tmp_path}/my python' -m cortex"


# ------------------------------------------------------------------ the real command


def _free_port_pair() -> tuple[int, int]:
    """A free port whose successor is free too (the gateway's and its metrics')."""
    for _ in range(50):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port, port + 1
    raise RuntimeError("no two adjacent free ports")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_banner(process: subprocess.Popen, out: Path, url: str) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        text = out.read_text()
        if "helexa is up" in text and f" status --url {url}\n" in text:
            return text
        if process.poll() is not None:
            pytest.fail(f"cortex up exited {process.returncode}:\n{text}")
        time.sleep(0.2)
    pytest.fail(f"no banner within {START_TIMEOUT} s:\n{out.read_text()}")


@pytest.mark.slow
@pytest.mark.integration
def test_up_with_two_cpu_devices_serves_on_both_and_stops_on_ctrl_c(tmp_path):
    models = synthesize_models(tmp_path / "models")
    port, _ = _free_port_pair()
    neuron_port = _free_port()
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "HF_HUB_CACHE": str(tmp_path / "no-hub"), "HF_HUB_OFFLINE": "1"}  # fmt: skip
    command = [sys.executable, "-m", "cortex", "up", "--devices", "cpu:0,cpu:1",
               "--model", str(models.root / QWEN), "--model", str(models.root / LLAMA),
               "--port", str(port), "--neuron-port", str(neuron_port)]  # fmt: skip
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        # A session of its own: its process group stands for a terminal's foreground job.
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=stdout, stderr=stderr,
                                   stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        banner = _wait_for_banner(process, out, url)
        for model in (QWEN, LLAMA):
            # Served under the path's last part (`[[models]] alias`), not the whole path.
            body = {"model": model.split("/")[-1], "max_tokens": 3,
                    "messages": [{"role": "user", "content": "Hello!"}]}  # fmt: skip
            reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
            assert reply.status_code == 200, reply.text
            assert reply.json()["usage"]["completion_tokens"] >= 1
        loaded = httpx.get(f"http://127.0.0.1:{neuron_port}/models", timeout=10).json()
        assert sorted(d for m in loaded for d in m["devices"]) == [0, 1]  # one model on each

        # The banner's status line works as printed, pasted where `cortex up` ran.
        (status_line,) = [line for line in banner.splitlines() if " status --url " in line]
        status = subprocess.run(status_line, shell=True, cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=60)  # fmt: skip
        assert status.returncode == 0, status.stdout + status.stderr
        assert "local" in status.stdout

        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
        assert process.wait(timeout=STOP_TIMEOUT) == 0
    finally:
        if process.poll() is None:  # the neuron has a process group of its own
            for child in [*psutil.Process(process.pid).children(recursive=True), process]:
                child.kill()
            process.wait()
    logs = err.read_text()
    assert "synthesizing" not in out.read_text()  # models were given: nothing to build
    # The neuron heard one signal: cortex up's SIGTERM, not also the terminal's SIGINT.
    assert logs.count("received SIGTERM: shutting down") == 1, logs
    assert "SIGINT" not in logs, logs
    # A finished request is routine: not logged at INFO.
    assert "actor exited path=neuron/requests" not in logs, logs
