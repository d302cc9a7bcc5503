"""Gateway overhead benchmark: client → upstream against client → cortex → upstream.

Starts a fast static upstream (a neuron look-alike in its own process: raw trio sockets
answering the node endpoints the gateway polls — `/discovery`, `/models`, `/health` —
and `/v1/chat/completions` with a canned JSON body or a canned 100-chunk SSE stream,
each chunk its own write), then a real gateway (`python -m cortex serve --config …`, its
default settings, logging to a file) with that upstream as its only neuron. The same
load generator then measures, in one invocation, each workload straight at the upstream
(the baseline) and through the gateway:

    JSON   a non-streamed chat completion
    SSE    a streamed one: 100 chunks and `data: [DONE]`

at each concurrency (`--concurrency`, default 1 and 32: that many keep-alive
connections, each sending its next request when the last one ended). It prints req/s,
p50 and p99 of the whole exchange (request written → last body byte), the gateway's
throughput as a fraction of the baseline's, and the p50 it adds.

`--peer litellm` adds a third side: a LiteLLM proxy (`litellm[proxy]==LITELLM_VERSION`,
installed on first use into its own venv under ~/.cache/helexa, never into the
project's) in front of the same upstream, measured in the same rounds, and the ratios
cortex ÷ LiteLLM (req/s) and LiteLLM's added p50 ÷ cortex's.

The load generator is pure Python too (raw trio sockets, a minimal HTTP/1.1 reader that
checks every answer), so it runs wherever the project does; it is cheap next to the
gateway, but on a 2-core box all three processes share the cores: the baseline is a
ceiling of this machine, not of the upstream. Every cell runs `--rounds` times, direct
and gateway alternating, and reports medians. Not a test: compare lines of one run.

    python bench/gateway.py
    python bench/gateway.py --duration 5 --rounds 5 --json
    python bench/gateway.py --profile gateway.html     # the gateway under pyinstrument
    python bench/gateway.py --peer litellm             # + a LiteLLM proxy, side by side
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import attrs
import trio

MODEL = "bench/static"
CHUNKS = 100
ROUTE = b"/v1/chat/completions"
LITELLM_VERSION = "1.108.5"  # 1.108.6-14 pin proxy extras that the index lacks
PEER_VENVS = Path.home() / ".cache" / "helexa"
REPO = Path(__file__).resolve().parent.parent
_STREAMED = re.compile(rb'"stream"\s*:\s*true')  # however the client spelled its JSON

# -- the upstream: canned answers --------------------------------------------------------


def _http(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: " + content_type +
            b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip


def _canned_json() -> dict[bytes, bytes]:
    discovery = {"hostname": "bench", "devices": [{"index": 0, "name": "static",
                                                   "vram_total_mb": 81920}]}  # fmt: skip
    models = [{"id": MODEL, "harness": "static", "status": "loaded", "devices": [0],
               "servable": {"ok": True}}]  # fmt: skip
    health = {"uptime_secs": 1, "devices": [{"index": 0, "vram_used_mb": 0,
                                             "vram_free_mb": 81920}],
              "models": [{"id": MODEL}]}  # fmt: skip
    completion = {
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000,
        "model": MODEL, "choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": "The quick brown fox jumps over the lazy dog. " * 4}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52},
    }  # fmt: skip
    return {path: _http("200 OK", json.dumps(body, separators=(",", ":")).encode())
            for path, body in ((b"/discovery", discovery), (b"/models", models),
                               (b"/health", health), (ROUTE, completion))}  # fmt: skip


def _canned_stream() -> list[bytes]:
    """The head, then CHUNKS chunked-encoding writes; the last also ends the body."""

    def event(delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
        chunk = {"id": "chatcmpl-bench", "object": "chat.completion.chunk",
                 "created": 1700000000, "model": MODEL,
                 "choices": [] if usage else [{"index": 0, "delta": delta,
                                               "finish_reason": finish}]}  # fmt: skip
        if usage:
            chunk["usage"] = usage
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

    events = [event({"role": "assistant", "content": ""})]
    events += [event({"content": f" word{i}"}) for i in range(CHUNKS - 3)]
    events.append(event({}, "stop"))
    usage = {"prompt_tokens": 12, "completion_tokens": CHUNKS - 3, "total_tokens": CHUNKS + 9}
    events.append(event({}, usage=usage) + b"data: [DONE]\n\n")
    writes = [b"%x\r\n%s\r\n" % (len(e), e) for e in events]
    writes[-1] += b"0\r\n\r\n"
    head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")  # fmt: skip
    return [head, *writes]


async def _serve_upstream() -> None:
    canned, stream = _canned_json(), _canned_stream()
    not_found = _http("404 Not Found", b'{"error":"not found","code":"route_not_found"}')

    async def connection(conn: trio.SocketStream) -> None:
        reader = _Reader(conn)
        try:
            while (request := await reader.request()) is not None:
                path, body = request
                if path == ROUTE and _STREAMED.search(body):
                    for write in stream:
                        await conn.send_all(write)
                else:
                    await conn.send_all(canned.get(path, not_found))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)
    await trio.serve_listeners(connection, listeners)


# -- HTTP/1.1, the little both ends need -----------------------------------------------------


class _Reader:
    """Reads requests (upstream side) or responses (client side) off one connection."""

    def __init__(self, conn: trio.SocketStream) -> None:
        self.conn, self.buf = conn, bytearray()

    async def _fill(self) -> bool:
        data = await self.conn.receive_some(65536)
        self.buf += data
        return bool(data)

    async def _head(self) -> bytes | None:
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            if not await self._fill():
                return None
        head = bytes(self.buf[:end]).lower()
        del self.buf[: end + 4]
        return head

    async def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not await self._fill():
                raise ConnectionError("connection closed mid-body")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    async def request(self) -> tuple[bytes, bytes] | None:
        head = await self._head()
        if head is None:
            return None
        path = head.split(b" ", 2)[1]
        return path, await self._exactly(_content_length(head))

    async def response(self) -> tuple[int, bytes, bool]:
        """(status, body, whether the server keeps the connection open)."""
        head = await self._head()
        if head is None:
            raise ConnectionError("connection closed before the response")
        status, keep = int(head[9:12]), b"connection: close" not in head
        if b"transfer-encoding: chunked" in head:
            return status, await self._chunked(), keep
        return status, await self._exactly(_content_length(head)), keep

    async def _chunked(self) -> bytes:
        parts = []
        while True:
            while (end := self.buf.find(b"\r\n")) < 0:
                if not await self._fill():
                    raise ConnectionError("connection closed mid-chunk")
            size = int(bytes(self.buf[:end]).split(b";")[0], 16)
            del self.buf[: end + 2]
            data = await self._exactly(size + 2)
            if size == 0:
                return b"".join(parts)
            parts.append(data[:-2])


def _content_length(head: bytes) -> int:
    at = head.find(b"content-length:")
    if at < 0:
        return 0
    end = head.find(b"\r\n", at)
    return int(head[at + 15 : end if end >= 0 else len(head)])


# -- the load generator ----------------------------------------------------------------------


@attrs.frozen
class Result:
    requests: int
    seconds: float
    latencies: tuple[float, ...]  # seconds, sorted
    cpu: float | None = None  # the gateway's CPU seconds meanwhile (None: direct, or no /proc)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return math.nan  # nothing ended within the measurement
        return self.latencies[min(len(self.latencies) - 1, int(p * len(self.latencies)))]


def _request(port: int, stream: bool) -> bytes:
    body = json.dumps({"model": MODEL, "stream": stream, "max_tokens": CHUNKS,
                       "messages": [{"role": "user", "content": "Say something."}]},
                      separators=(",", ":")).encode()  # fmt: skip
    return (b"POST " + ROUTE + b" HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (port, len(body), body))  # fmt: skip


def _check(status: int, body: bytes, stream: bool, exact: bool) -> None:
    """A complete answer; `exact`: the upstream's bytes (a relay), else its content
    (a peer that re-encodes what it relays)."""
    if status != 200:
        raise RuntimeError(f"answered {status}: {body[:300]!r}")
    if stream and (len(_WORDS.findall(body)) != CHUNKS - 3 or not body.endswith(b"[DONE]\n\n")
                   or (exact and body.count(b"data: ") != CHUNKS + 1)):  # fmt: skip
        raise RuntimeError(f"incomplete stream: {body[-300:]!r}")
    if not stream and not (body.rstrip().endswith(b"}") and b"quick brown fox" in body):
        raise RuntimeError(f"unexpected body: {body[:300]!r}")


_WORDS = re.compile(rb'" word\d+"')  # the streamed deltas' content


async def measure(port: int, stream: bool, concurrency: int, duration: float,
                  warmup: float, pid: int | None = None, exact: bool = True) -> Result:  # fmt: skip
    """`concurrency` keep-alive connections in closed loop; the exchanges that ended in
    the `duration` after `warmup` (a slow side's may have begun in the warmup), and the
    CPU time process `pid` used meanwhile."""
    request = _request(port, stream)
    latencies: list[float] = []
    start = trio.current_time() + warmup
    stop = start + duration
    cpu: list[float | None] = []

    async def clock() -> None:
        await trio.sleep_until(start)
        cpu.append(_cpu_seconds(pid))
        await trio.sleep_until(stop)
        cpu.append(_cpu_seconds(pid))

    async def client() -> None:
        while trio.current_time() < stop:  # a new connection when the server closes one
            async with await trio.open_tcp_stream("127.0.0.1", port) as conn:
                reader, keep = _Reader(conn), True
                while keep and (sent := trio.current_time()) < stop:
                    await conn.send_all(request)
                    status, body, keep = await reader.response()
                    _check(status, body, stream, exact)
                    if start <= (ended := trio.current_time()) <= stop:  # ended in the window
                        latencies.append(ended - sent)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(clock)
        for _ in range(concurrency):
            nursery.start_soon(client)
    used = None if None in cpu else cpu[1] - cpu[0]  # type: ignore[operator]
    return Result(len(latencies), duration, tuple(sorted(latencies)), used)


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of process `pid` (Linux), else None."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- processes -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_upstream() -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen([sys.executable, __file__, "_upstream"], stdout=subprocess.PIPE,
                               text=True)  # fmt: skip
    return process, int(process.stdout.readline())


def start_gateway(upstream: int, workdir: Path, profile: Path | None,
                  repo: Path = REPO) -> tuple[subprocess.Popen, int]:  # fmt: skip
    port, metrics = _free_port(), _free_port()
    config = workdir / "cortex.toml"
    config.write_text(
        f'models_config = "{workdir / "models.toml"}"\n'
        f'[gateway]\nlisten = "127.0.0.1:{port}"\nmetrics_listen = "127.0.0.1:{metrics}"\n'
        f'[[neurons]]\nname = "static"\nendpoint = "http://127.0.0.1:{upstream}"\n'
    )  # fmt: skip
    (workdir / "models.toml").write_text("")
    command = [sys.executable, "-m", "cortex", "serve", "--config", str(config)]
    if profile is not None and profile.suffix == ".prof":  # cProfile, on CPU time
        command[1:3] = ["-c", _CPROFILE, str(profile.resolve())]
    elif profile is not None:  # pyinstrument's own command line, then the gateway's
        renderer = "html" if profile.suffix == ".html" else "text"
        command[1:1] = ["-m", "pyinstrument", "-r", renderer, "-o", str(profile)]
    log = (workdir / "cortex.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=repo)
    return process, port


# `python -c _CPROFILE OUT serve …`: `python -m cortex serve …` under cProfile, timed by
# the process's CPU clock (time descheduled on a busy box is not counted), stats to OUT;
# on from SIGUSR1 (the measurements start) to SIGUSR2, so start-up is not in it.
_CPROFILE = """
import cProfile, runpy, signal, sys, time
out = sys.argv[1]
sys.argv = ["cortex", *sys.argv[2:]]
profiler = cProfile.Profile(time.process_time)
signal.signal(signal.SIGUSR1, lambda *_: profiler.enable())
signal.signal(signal.SIGUSR2, lambda *_: profiler.disable())
try:
    runpy.run_module("cortex", run_name="__main__", alter_sys=True)
finally:
    profiler.disable()
    profiler.dump_stats(out)
"""


async def wait_routable(port: int, process: subprocess.Popen) -> None:
    """Until the gateway lists the upstream's model as loaded (its first poll went well)."""
    with trio.fail_after(30):
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the gateway exited with {process.returncode}")
            try:
                conn = await trio.open_tcp_stream("127.0.0.1", port)
                async with conn:
                    await conn.send_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
                    status, body, _ = await _Reader(conn).response()
                if status == 200 and any(m["id"] == MODEL and m["loaded"]
                                         for m in json.loads(body)["data"]):  # fmt: skip
                    return
            except OSError:
                pass
            await trio.sleep(0.1)


def litellm_python(version: str = LITELLM_VERSION) -> Path:
    """The Python of a venv with `litellm[proxy]==version`, made on first use (minutes)."""
    venv = PEER_VENVS / f"litellm-{version}"
    python, done = venv / "bin" / "python", venv / ".installed"
    if done.exists():
        return python
    print(f"installing litellm[proxy]=={version} into {venv} (once) …", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"litellm[proxy]=={version}"],
                   check=True)  # fmt: skip
    done.write_text(version + "\n")
    return python


def start_litellm(upstream: int, workdir: Path) -> tuple[subprocess.Popen, int]:
    """A LiteLLM proxy (one worker, no database, its log in a file) with the upstream as an
    OpenAI-compatible deployment of MODEL."""
    port = _free_port()
    config = workdir / "litellm.yaml"
    config.write_text(
        f"model_list:\n  - model_name: {MODEL}\n    litellm_params:\n"
        f"      model: openai/{MODEL}\n      api_base: http://127.0.0.1:{upstream}/v1\n"
        f"      api_key: bench\n"
        f"litellm_settings:\n  telemetry: false\n"
        # no key, as the bench's cortex has none: neither side authenticates
        f"general_settings:\n  dangerously_permit_weak_or_unset_master_key: true\n"
    )  # fmt: skip
    command = [str(litellm_python().parent / "litellm"), "--config", str(config), "--host",
               "127.0.0.1", "--port", str(port), "--num_workers", "1"]  # fmt: skip
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
           "LITELLM_TELEMETRY": "False", "NO_DOCS": "True"}  # fmt: skip
    log = (workdir / "litellm.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                               cwd=workdir)  # fmt: skip
    return process, port


async def wait_answering(port: int, process: subprocess.Popen, seconds: float = 180) -> bool:
    """Until a chat completion through `port` comes back whole (a peer's start is slow);
    False if the process exited meanwhile."""
    request = _request(port, stream=False)
    with trio.fail_after(seconds):
        while True:
            if process.poll() is not None:
                return False
            try:
                async with await trio.open_tcp_stream("127.0.0.1", port) as conn:
                    await conn.send_all(request)
                    status, body, _ = await _Reader(conn).response()
                _check(status, body, stream=False, exact=False)
                return True
            except (OSError, ConnectionError, RuntimeError):
                pass
            await trio.sleep(0.5)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- the run ---------------------------------------------------------------------------------


@attrs.frozen
class Side:
    name: str  # "direct", "gateway" (cortex) or the peer's
    port: int
    pid: int | None = None  # whose CPU time to measure
    exact: bool = True  # relays the upstream's bytes as they are


async def run(args: argparse.Namespace, sides: list[Side]) -> list[dict]:
    rows = []
    others = [side.name for side in sides[2:]]  # compared with cortex: baseline, peer
    for stream in [w == "sse" for w in args.workloads]:
        for concurrency in args.concurrency:
            results: dict[str, list[Result]] = {side.name: [] for side in sides}
            for round_ in range(args.rounds):
                shift = round_ % len(sides)  # every side goes first in turn
                for side in sides[shift:] + sides[:shift]:
                    results[side.name].append(await measure(
                        side.port, stream, concurrency, args.duration, args.warmup, side.pid,
                        side.exact))  # fmt: skip
            rows.append(_row("SSE" if stream else "JSON", concurrency, results, others))
            if not args.json:
                _print_row(rows[-1], others, header=len(rows) == 1)
    return rows


def _row(workload: str, concurrency: int, sides: dict[str, list[Result]],
         others: list[str]) -> dict:  # fmt: skip
    row: dict = {"workload": workload, "concurrency": concurrency}
    for side, results in sides.items():
        row[side] = {
            "req_s": statistics.median(r.rate for r in results),
            "p50_ms": statistics.median(r.percentile(0.5) for r in results) * 1000,
            "p99_ms": statistics.median(r.percentile(0.99) for r in results) * 1000,
            "requests": sum(r.requests for r in results),
        }
        if side == "direct":
            continue
        cpu = [r.cpu / r.requests for r in results if r.cpu is not None and r.requests]
        row[side]["cpu_ms_per_req"] = statistics.median(cpu) * 1000 if cpu else None
        row[side]["throughput_ratio"] = row[side]["req_s"] / row["direct"]["req_s"]
        row[side]["added_p50_ms"] = row[side]["p50_ms"] - row["direct"]["p50_ms"]
    row["throughput_ratio"] = row["gateway"]["throughput_ratio"]
    row["added_p50_ms"] = row["gateway"]["added_p50_ms"]
    row["vs"] = {}
    for other in others:  # cortex ÷ the other, per round (the rounds ran side by side)
        pairs = zip(sides["gateway"], sides[other], strict=True)
        ratios = [g.rate / o.rate for g, o in pairs if o.rate] or [math.nan]
        mine, theirs = row["gateway"]["cpu_ms_per_req"], row[other]["cpu_ms_per_req"]
        row["vs"][other] = {"req_s_ratio": statistics.median(ratios),
                            "req_s_ratio_range": [min(ratios), max(ratios)],
                            "cpu_ratio": theirs / mine if mine and theirs else None}  # fmt: skip
    return row


def _print_row(row: dict, others: list[str], header: bool) -> None:
    columns = ["gateway", *others]
    if header:
        line = f"{'workload':>8} {'c':>3} | {'direct req/s':>12} {'p50':>7} |"
        for side in columns:
            name = "cortex" if side == "gateway" else side
            line += (f" {name + ' req/s':>14} {'p50':>7} {'p99':>7} {'CPU ms':>6} "
                     f"{'/direct':>7} {'+p50 ms':>8} |")  # fmt: skip
        for other in others:
            line += f" {'cortex/' + other:>16} {'range':>11} {'CPU':>6} |"
        print(line)
    d = row["direct"]
    line = f"{row['workload']:>8} {row['concurrency']:>3} | {d['req_s']:>12.0f} "
    line += f"{d['p50_ms']:>7.2f} |"
    for side in columns:
        g = row[side]
        cpu = "-" if g["cpu_ms_per_req"] is None else f"{g['cpu_ms_per_req']:.2f}"
        line += (f" {g['req_s']:>14.0f} {g['p50_ms']:>7.2f} {g['p99_ms']:>7.2f} {cpu:>6} "
                 f"{g['throughput_ratio']:>7.3f} {g['added_p50_ms']:>8.2f} |")  # fmt: skip
    for other in others:
        vs = row["vs"][other]
        low, high = vs["req_s_ratio_range"]
        cpu_ratio = "-" if vs["cpu_ratio"] is None else f"{vs['cpu_ratio']:.2f}x"
        line += f" {vs['req_s_ratio']:>15.2f}x {low:>5.2f}-{high:<5.2f} {cpu_ratio:>6} |"
    print(line, flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds before each one")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per cell and side")
    parser.add_argument("--concurrency", type=_int_list, default=[1, 32])
    parser.add_argument(
        "--workloads",
        type=_workloads,
        default=["json", "sse"],
        help="json, sse or both (comma-separated)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="run the gateway under a profiler: FILE.prof cProfile (CPU time; read it with "
        "pstats), else pyinstrument (wall time; .html or text)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also measure the cortex of another checkout (e.g. `git archive main`), same "
        "config: before/after in one run",
    )
    parser.add_argument(
        "--peer",
        choices=["litellm"],
        help=f"also measure a LiteLLM proxy ({LITELLM_VERSION}, in its own venv under "
        f"{PEER_VENVS}, installed on first use) in front of the same upstream",
    )
    return parser.parse_args(argv)


def _workloads(text: str) -> list[str]:
    values = [v.strip().lower() for v in text.split(",")]
    if not values or not set(values) <= {"json", "sse"}:
        raise argparse.ArgumentTypeError("expected json, sse or json,sse")
    return values


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive integers, comma-separated")
    return values


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_upstream"]:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        trio.run(_serve_upstream)
        return
    args = parse_args(argv)
    if args.peer:
        litellm_python()  # the install, before anything runs
    upstream, upstream_port = start_upstream()
    processes = [upstream]
    try:
        with tempfile.TemporaryDirectory(prefix="bench-gateway-") as workdir:
            gateway, gateway_port = start_gateway(upstream_port, Path(workdir), args.profile)
            processes.append(gateway)
            sides = [Side("direct", upstream_port), Side("gateway", gateway_port, gateway.pid)]
            trio.run(wait_routable, gateway_port, gateway)
            if args.baseline:
                other = Path(workdir) / "baseline"
                other.mkdir()
                base, base_port = start_gateway(upstream_port, other, None, args.baseline)
                processes.append(base)
                trio.run(wait_routable, base_port, base)
                sides.append(Side("baseline", base_port, base.pid))
            if args.peer:
                peer, peer_port = start_litellm(upstream_port, Path(workdir))
                processes.append(peer)
                if not trio.run(wait_answering, peer_port, peer):
                    tail = (Path(workdir) / "litellm.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"litellm exited with {peer.returncode}:\n{tail}")
                sides.append(Side(args.peer, peer_port, peer.pid, exact=False))
            if not args.json:
                pids = ", ".join(f"{s.name} pid {s.pid}" for s in sides if s.pid)
                print(f"{pids} → static upstream pid {upstream.pid}; {args.rounds} x "
                      f"{args.duration:g} s per cell and side, medians; "
                      f"cores: {os.cpu_count()}", flush=True)  # fmt: skip
            started = time.monotonic()
            cprofile = args.profile is not None and args.profile.suffix == ".prof"
            if cprofile:
                gateway.send_signal(signal.SIGUSR1)
            rows = trio.run(run, args, sides)
            if cprofile:
                gateway.send_signal(signal.SIGUSR2)
    finally:
        for process in reversed(processes):
            stop(process)
    if args.json:
        print(json.dumps({"rows": rows, "duration": args.duration, "rounds": args.rounds,
                          "peer": args.peer and {"name": args.peer,
                                                 "version": LITELLM_VERSION}},
                         indent=2))  # fmt: skip
    else:
        print(f"({time.monotonic() - started:.0f} s)")
        if args.profile:
            print(f"profile: {args.profile}")


if __name__ == "__main__":
    main()
