"""A real `neuron serve` process for tests: start it, talk to it, stop it.

`start_daemon` writes a `neuron.toml`, runs `python -m neuron serve` on a
loopback port the OS picks (`--port 0`; the URL comes from the daemon's
"neuron listening url=" log line) and waits until its default models are
loaded. `RunningDaemon.stop` sends SIGTERM and asserts the shutdown promise:
exit status 0 within the bound, and no process the daemon started (its
device workers) outlives it.

The daemon runs with `KEEP_ACROSS_TESTS` in its environment so that one
daemon can serve a whole module or session (see tests/conftest.py); the
fixture that starts it must call `stop()`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import attrs
import httpx
import openai
import psutil
from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")

# httpx's `aiter_lines` stacks async generators (lines → text → bytes → raw) and
# closing the outer one leaves the inner ones to the garbage collector, which
# trio reports as a ResourceWarning: harmless for a stream the test left early.
HTTPX_ASYNCGEN_WARNING = "ignore:Async generator 'httpx:ResourceWarning"

KEEP_ACROSS_TESTS = "HELEXA_TEST_KEEP_ACROSS_TESTS"
START_TIMEOUT = 90.0  # spawn + two workers importing torch + default loads, on a busy box
STOP_TIMEOUT = 60.0
_LISTENING = re.compile(rb"neuron listening url=([^\s\"]+)")  # plain or JSON logs

QWEN = "helexa/qwen3-tiny"
LLAMA = "helexa/llama-tiny"


@attrs.frozen
class Models:
    """Synthesized snapshots under one model root."""

    root: Path
    qwen: str = QWEN
    llama: str = LLAMA


def synthesize_models(root: Path) -> Models:
    """A tiny Qwen3 and a tiny Llama (different names) under `root`; built once."""
    from neuron.synth import synthesize

    synthesize(root, arch="qwen3", size="tiny", name=QWEN)
    synthesize(root, arch="llama", size="tiny", name=LLAMA)
    return Models(root)


Settings = dict[str, dict[str, Any]]

# Two CPU devices, loopback, a port the OS picks; tests add or override keys.
BASE_SETTINGS: Settings = {
    "listen": {"host": "127.0.0.1", "port": 0},
    "cpu": {"devices": 2, "threads": 1, "memory_mb": 2048},
    "engine": {"max_batch_size": 8, "default_dtype": "fp32"},
    "timeouts": {"worker_ready": 60},
}


def neuron_toml(
    models: Models, default_models: Iterable[str | dict[str, Any]], settings: Settings
) -> str:
    """The config file; a default model is an id or a whole `[[models]]` table."""
    lines = [f"model_roots = [{json.dumps(str(models.root))}]"]
    for section, keys in settings.items():
        lines += ["", f"[{section}]"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    for model in default_models:
        table = {"id": model} if isinstance(model, str) else model
        lines += ["", "[[models]]"] + [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def merge(*layers: Settings) -> Settings:
    merged: Settings = {}
    for layer in layers:
        for section, keys in layer.items():
            merged.setdefault(section, {}).update(keys)
    return merged


class RunningDaemon:
    def __init__(self, process: subprocess.Popen, log_path: Path, token: str | None) -> None:
        self.process = process
        self.log_path = log_path
        self.token = token
        self.url = ""
        self.workers: list[psutil.Process] = []

    # -- clients ---------------------------------------------------------------------------

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def http(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 30.0)
        headers = {**self.headers(), **kwargs.pop("headers", {})}
        return httpx.Client(base_url=self.url, headers=headers, **kwargs)

    def async_http(self, **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault("timeout", 30.0)
        headers = {**self.headers(), **kwargs.pop("headers", {})}
        return httpx.AsyncClient(base_url=self.url, headers=headers, **kwargs)

    def openai(self, **kwargs: Any) -> openai.OpenAI:
        kwargs.setdefault("timeout", 30.0)
        kwargs.setdefault("max_retries", 0)  # a retry would hide the status under test
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.token or "none", **kwargs)

    def get(self, path: str) -> Any:
        with self.http() as client:
            response = client.get(path)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def health(self) -> dict[str, Any]:
        return self.get("/health")

    def model_load(self, model_id: str) -> dict[str, Any]:
        """This model's entry in `/health` `models`."""
        return next(m for m in self.health()["models"] if m["id"] == model_id)

    def metrics(self) -> dict[str, float]:
        """Every sample of `/metrics`, keyed `name{label="v",...}` (labels sorted)."""
        with self.http() as client:
            response = client.get("/metrics")
        assert response.status_code == 200, response.text
        samples = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}"] = sample.value
        return samples

    def request_actors(self) -> list[dict[str, Any]]:
        tree = self.get("/admin/actors")
        return [a for a in walk_actors(tree["root"]) if a["kind"] == "request"]

    def assert_serving(self) -> None:
        """A one-token chat still works: whatever the test did, the daemon keeps serving."""
        with self.http() as client:
            response = client.post("/v1/chat/completions", json=chat_body(max_tokens=1))
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] == 1

    # -- life ------------------------------------------------------------------------------

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_listening(self, timeout: float = START_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if match := _LISTENING.search(self.log_path.read_bytes()):
                self.url = match.group(1).decode()
                return self.url
            if self.process.poll() is not None:
                raise AssertionError(f"neuron exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"neuron not listening within {timeout}s:\n{self.log()}")

    def wait_ready(self, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        """Wait for activation `ready`; remember the workers to check them at stop."""
        health = wait_for(
            lambda: (h := self.health())["activation"]["state"] == "ready" and h,
            within=timeout, what="activation ready",
        )  # fmt: skip
        self._remember_workers()
        return health

    def _remember_workers(self) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            children = psutil.Process(self.process.pid).children(recursive=True)
            self.workers += [c for c in children if c not in self.workers]

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM; assert a clean exit (status 0) and that no worker outlived it."""
        if self.process.poll() is None:
            self._remember_workers()  # replacements started since `wait_ready` too
            self.signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"neuron ignored SIGTERM for {timeout}s:\n{self.log()}") from None
        survivors = [p for p in self.workers if _alive(p)]
        for process in survivors:
            process.kill()
        assert not survivors, f"workers outlived the neuron: {survivors}"
        assert code == 0, f"neuron exited with {code}:\n{self.log()[-5000:]}"
        return code

    def kill(self) -> None:
        """Last resort (a failed test): SIGKILL the daemon and its workers."""
        if self.process.poll() is None:
            self._remember_workers()
            self.process.kill()
        for process in self.workers:
            if _alive(process):
                process.kill()
        self.process.wait(timeout=10)


def start_daemon(
    tmp: Path,
    models: Models,
    *,
    default_models: Iterable[str | dict[str, Any]] = (QWEN,),
    settings: Settings | None = None,
    token: str | None = None,
    wait_ready: bool = True,
    env: dict[str, str] | None = None,
) -> RunningDaemon:
    """Run `neuron serve` with `BASE_SETTINGS` overridden by `settings`; `env` adds
    variables to its environment."""
    tmp.mkdir(parents=True, exist_ok=True)
    layers = [BASE_SETTINGS, settings or {}, {"auth": {"token": token}} if token else {}]
    config = tmp / "neuron.toml"
    config.write_text(neuron_toml(models, default_models, merge(*layers)))
    log_path = tmp / "neuron.log"
    extra = env or {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEURON_")}
    env.update({KEEP_ACROSS_TESTS: "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra})
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "neuron", "serve", "--config", str(config)],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip
    daemon = RunningDaemon(process, log_path, token)
    try:
        daemon.wait_listening()
        if wait_ready:
            daemon.wait_ready()
    except BaseException:
        daemon.kill()
        raise
    return daemon


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- helpers for the tests ---------------------------------------------------------------


def wait_for(predicate: Callable[[], T], *, within: float = 15.0, what: str = "") -> T:
    """Poll state another process drives until `predicate()` is truthy; return it."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what or predicate}")
        time.sleep(0.05)


def walk_actors(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("children", ()):
        yield from walk_actors(child)


def chat_body(content: str = "hi", *, model: str = QWEN, **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **fields}


def assert_openai_error(
    response: httpx.Response, status: int, code: str, *, type: str = "invalid_request_error"
) -> dict[str, Any]:
    """The OpenAI envelope with this status, type and code; returns `error`."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert (error["type"], error["code"]) == (type, code), error
    assert error["message"]
    return error


def assert_flat_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The management API's flat `{"error": "...", "code": "..."}` body."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert isinstance(body["error"], str) and body["error"], body
    assert body["code"] == code, body
    return body


def sse_events(lines: Iterable[str]) -> Iterator[str]:
    """The `data:` payloads and `:` comments of an SSE body, in order."""
    for line in lines:
        if line.startswith("data: "):
            yield line[len("data: ") :]
        elif line.startswith(":"):
            yield line


def counter(samples: dict[str, float], key: str) -> float:
    return samples.get(key, 0.0)


@contextlib.asynccontextmanager
async def open_sse(
    client: httpx.AsyncClient, path: str, body: dict[str, Any] | None = None, *, method="POST"
) -> AsyncIterator[tuple[httpx.Response, AsyncIterator[str]]]:
    """A streaming request and its body's lines, both closed on exit."""
    async with (
        client.stream(method, path, json=body) as response,
        contextlib.aclosing(response.aiter_lines()) as lines,
    ):
        yield response, lines


async def next_data(lines: AsyncIterator[str]) -> str:
    """The next `data:` payload (comments and blank lines skipped)."""
    async for line in lines:
        if line.startswith("data: "):
            return line[len("data: ") :]
    raise AssertionError("the stream ended")
