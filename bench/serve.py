"""Section (s) of `engine.py`: the neuron against `transformers serve`, server to server.

Starts `neuron serve` (one CPU device worker, the model loaded at start) and
`transformers serve --continuous-batching` on the same snapshot, dtype and thread
count, then drives both with the same load: N concurrent streamed chat completions
(greedy, `max_tokens` each, prompts that ask for long answers), for every N of
`--concurrency`. A cell's figure is aggregate completion tok/s: completion tokens of the
N answers (from each stream's usage chunk, else its content chunks) over the wall time
from the first request to the last answer's end. Rounds alternate which server goes
first; the table shows medians and neuron ÷ transformers.

`transformers serve` needs its serving extras (fastapi, uvicorn, accelerate), which the
project's runtime does not: they live in a separate venv, `--serve-venv` (default
`~/.cache/helexa/bench-serve-venv`), which sees the project venv's packages through a
`.pth` file and holds only the extras (pins in `SERVE_EXTRAS`). `--setup-serve-venv`
creates it. Both servers' command lines are printed.

Not for: engine internals (sections a-c of `engine.py`) or the gateway (`gateway.py`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import attrs
import httpx
import psutil
import trio

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SERVE_VENV = Path.home() / ".cache" / "helexa" / "bench-serve-venv"
SERVE_EXTRAS = ("fastapi==0.142.2", "starlette==1.7.0", "uvicorn==0.54.0", "accelerate==1.15.0")
START_TIMEOUT = 600.0
REQUEST_TIMEOUT = 900.0
TOPICS = ["the sea", "a mountain village", "the history of bread", "a lighthouse keeper",
          "autumn in a city", "how bridges are built", "a long train journey", "bees"]  # fmt: skip
_LISTENING = re.compile(r"neuron listening url=(\S+)")


@attrs.frozen
class Cell:
    tokens: int
    seconds: float

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds


@attrs.frozen
class Server:
    name: str
    url: str  # base URL, without /v1
    model: str  # the `model` field requests carry
    process: subprocess.Popen
    command: str


# -- the serve venv ----------------------------------------------------------------------


def serve_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def setup_serve_venv(venv: Path) -> None:
    """A venv that sees this one's packages (torch, transformers) plus the serving extras."""
    # The interpreter this venv was made from, so that the .pth's packages fit it.
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True)
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = subprocess.run([str(serve_python(venv)), "-c", where], check=True,
                             capture_output=True, text=True).stdout.strip()  # fmt: skip
    Path(purelib, "helexa-project.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *SERVE_EXTRAS], check=True)


def serve_venv_problem(venv: Path) -> str | None:
    python = serve_python(venv)
    if not python.exists():
        return f"no venv at {venv}"
    check = "import fastapi, uvicorn, accelerate, transformers, torch"
    done = subprocess.run([str(python), "-c", check], capture_output=True, text=True)
    return None if done.returncode == 0 else done.stderr.strip().splitlines()[-1]


# -- servers -----------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEURON_")}
    env.update({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
                "OMP_WAIT_POLICY": env.get("OMP_WAIT_POLICY", "PASSIVE"),
                "TOKENIZERS_PARALLELISM": "false"})  # fmt: skip
    return env


@contextmanager
def neuron_server(snapshot: Path, *, dtype: str, threads: int, batch: int, log_dir: Path,
                  extra: str = "") -> Iterator[Server]:  # fmt: skip
    """`extra`: more neuron.toml text (whole sections), e.g. `[cache]` settings."""
    name = snapshot.name
    config = log_dir / "neuron.toml"
    config.write_text("\n".join([
        f"model_roots = {json.dumps([str(snapshot.parent)])}",
        'devices = ["cpu:0"]',
        "[listen]", 'host = "127.0.0.1"', "port = 0",
        "[cpu]", f"threads = {threads}",
        "[engine]", f"max_batch_size = {batch}", f'default_dtype = "{dtype}"',
        "[admission]", f"max_in_flight = {batch}",
        "[timeouts]", "worker_ready = 300", "load = 600",
        extra,
        "[[models]]", f"id = {json.dumps(name)}",
    ]) + "\n")  # fmt: skip
    command = [sys.executable, "-m", "neuron", "serve", "--config", str(config)]
    log = log_dir / "neuron.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=_env(threads), stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        url = _wait_for(lambda: _neuron_url(log), process, log)
        _wait_for(lambda: _neuron_ready(url), process, log)
        yield Server("neuron", url, name, process, shlex.join(command))
    finally:
        _stop(process)


def _neuron_url(log: Path) -> str | None:
    found = _LISTENING.search(log.read_text(errors="replace"))
    return found.group(1) if found else None


def _neuron_ready(url: str) -> bool:
    health = httpx.get(f"{url}/health", timeout=10).json()
    activation = health.get("activation") or {}
    if activation.get("failed"):
        raise RuntimeError(f"the neuron could not load the model: {activation['failed']}")
    return activation.get("state") == "ready"


@contextmanager
def transformers_server(snapshot: Path, *, dtype: str, threads: int, venv: Path, log_dir: Path
                        ) -> Iterator[Server]:  # fmt: skip
    port = _free_port()
    torch_dtype = {"bf16": "bfloat16", "fp32": "float32"}[dtype]
    command = [str(serve_python(venv)), "-m", "transformers.cli.transformers", "serve",
               "--continuous-batching", "--device", "cpu", "--dtype", torch_dtype,
               # Bounded: sized from free memory on CPU it grew past 14 GB and was
               # OOM-killed on a 24 GB box. 8192 KV tokens hold 16 streams here.
               "--cb-num-blocks", "256", "--cb-block-size", "32",
               "--cb-max-batch-tokens", "2048",
               "--host", "127.0.0.1", "--port", str(port), str(snapshot)]  # fmt: skip
    log = log_dir / "transformers-serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=log_dir, env=_env(threads), stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: _http_ok(f"{url}/health"), process, log)
        yield Server("transformers serve", url, str(snapshot), process, shlex.join(command))
    finally:
        _stop(process)


def _http_ok(url: str) -> bool:
    return httpx.get(url, timeout=10).status_code == 200


def _wait_for(probe, process: subprocess.Popen, log: Path):
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{log.name}: the server exited ({process.returncode}):\n{tail}")
        try:
            found = probe()
        except (httpx.HTTPError, ValueError):
            found = None
        if found:
            return found
        time.sleep(0.5)
    raise RuntimeError(f"{log.name}: not ready within {START_TIMEOUT:.0f} s")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
            process.kill()
            process.wait()


# -- load --------------------------------------------------------------------------------


def prompts(count: int) -> list[str]:
    return [f"Write a long, detailed story about {TOPICS[i % len(TOPICS)]}." for i in range(count)]


async def run_cell(server: Server, questions: Sequence[str], max_tokens: int) -> Cell:
    counts: list[int] = []
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT) as client:
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for question in questions:
                nursery.start_soon(_one, client, server, question, max_tokens, counts)
        seconds = time.perf_counter() - started
    return Cell(sum(counts), seconds)


async def _one(client: httpx.AsyncClient, server: Server, question: str, max_tokens: int,
               counts: list[int]) -> None:  # fmt: skip
    body = {"model": server.model, "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    chunks, usage = 0, None
    async with client.stream("POST", f"{server.url}/v1/chat/completions", json=body) as reply:
        if reply.status_code != 200:
            raise RuntimeError(f"{server.name}: {reply.status_code} {(await reply.aread())[:500]}")
        async for line in reply.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line.removeprefix("data: "))
            if event.get("usage"):
                usage = event["usage"].get("completion_tokens")
            for choice in event.get("choices") or ():
                if (choice.get("delta") or {}).get("content"):
                    chunks += 1
    counts.append(usage if usage else chunks)


# -- the section -------------------------------------------------------------------------


def other_cpu(servers: Sequence[Server], busy: Server) -> float:
    """CPU seconds used so far by the server that is not being measured (it should idle)."""
    total = 0.0
    for server in servers:
        if server is busy:
            continue
        for proc in [psutil.Process(server.process.pid),
                     *psutil.Process(server.process.pid).children(recursive=True)]:  # fmt: skip
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def run_section(snapshot: Path, *, dtype: str, threads: int, concurrency: Sequence[int],
                max_tokens: int, rounds: int, venv: Path) -> None:  # fmt: skip
    print(f"\n(s) the neuron vs transformers serve --continuous-batching: {snapshot}")
    problem = serve_venv_problem(venv)
    if problem is not None:
        print(f"    skipped: transformers serve's venv is not usable ({problem}); create it "
              f"with: python bench/engine.py --setup-serve-venv")  # fmt: skip
        return
    batch = max(concurrency)
    with tempfile.TemporaryDirectory(prefix="helexa-bench-serve-") as tmp:
        log_dir = Path(tmp)
        with (
            neuron_server(snapshot, dtype=dtype, threads=threads, batch=batch,
                          log_dir=log_dir) as neuron,
            transformers_server(snapshot, dtype=dtype, threads=threads, venv=venv,
                                log_dir=log_dir) as hf,
        ):  # fmt: skip
            print(f"    neuron:             {neuron.command}")
            toml = (log_dir / "neuron.toml").read_text().strip().replace("\n", "; ")
            print(f"      with neuron.toml: {toml}")
            print(f"    transformers serve: {hf.command}")
            print(f"    threads={threads} (OMP_NUM_THREADS, both; OMP_WAIT_POLICY="
                  f"{_env(threads)['OMP_WAIT_POLICY']}), dtype={dtype}, greedy, "
                  f"max_tokens={max_tokens}, {rounds} rounds")  # fmt: skip
            load = os.getloadavg()[0]
            results = trio.run(_measure, (neuron, hf), concurrency, max_tokens, rounds)
            print(f"    box: load average {load:.1f} before the runs, "
                  f"{os.getloadavg()[0]:.1f} after")  # fmt: skip
    _report(results, concurrency)


async def _measure(servers: Sequence[Server], concurrency: Sequence[int], max_tokens: int,
                   rounds: int) -> dict[tuple[str, int], list[Cell]]:  # fmt: skip
    for server in servers:  # warm up: first-request costs are not what is measured
        await run_cell(server, prompts(2), 8)
    results: dict[tuple[str, int], list[Cell]] = {}
    idle_cpu = 0.0
    for round_ in range(rounds):
        order = servers if round_ % 2 == 0 else list(reversed(servers))
        for n in concurrency:
            for server in order:
                before = other_cpu(servers, server)
                cell = await run_cell(server, prompts(n), max_tokens)
                idle_cpu = max(idle_cpu, (other_cpu(servers, server) - before) / cell.seconds)
                results.setdefault((server.name, n), []).append(cell)
    print(f"    the idle server used at most {idle_cpu:.2f} cores while the other was measured")
    return results


def _report(results: dict[tuple[str, int], list[Cell]], concurrency: Sequence[int]) -> None:
    print(f"\n    {'streams':>7} {'neuron tok/s':>13} {'tf serve tok/s':>15} {'ratio':>7}"
          f" {'tokens (neuron/tf)':>19}")  # fmt: skip
    for n in concurrency:
        ours = results[("neuron", n)]
        theirs = results[("transformers serve", n)]
        a = statistics.median(c.tok_s for c in ours)
        b = statistics.median(c.tok_s for c in theirs)
        tokens = f"{ours[0].tokens}/{theirs[0].tokens}"
        print(f"    {n:>7} {a:13.1f} {b:15.1f} {a / b:6.2f}x {tokens:>19}")
