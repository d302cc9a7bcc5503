"""Fleet-size benchmark: what one request's routing and the polling cost at 1, 10, 50 nodes.

Two measurements per fleet size N (`--nodes`, default 1, 10 and 50), each node a
lightweight fake neuron serving MODELS models, one of them (`bench/shared`) on every
node and the others on that node only:

    routing   in this process, the gateway's own `Fleet` over N `Node`s in the state a
              poll leaves them: µs per request for `Fleet.capabilities` and
              `Fleet.acquire` (what a request pays to be placed), for the shared model
              (N replicas: prefix affinity chooses) and for a model only one node has.
              Pure CPU, best of `--repeats`: stable on a busy box.
    gateway   a real gateway (`python -m cortex serve`, `[fleet] poll_interval`
              `--poll-interval`) in front of N fake neurons (one trio process, one
              loopback port each, `/discovery` `/models` `/health` and a canned chat
              completion): its CPU while idle (the polls: ms of CPU per second, and µs per
              node poll) and its CPU per request in a closed loop at concurrency 1, the
              polls' share taken out.

Each figure is printed with its ratio to the N=1 line of the same run: flat means ~1.
Not a test: compare lines of one run.

    python bench/fleet_scale.py
    python bench/fleet_scale.py --nodes 1,10,50,100 --skip-gateway
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway as bench  # bench/gateway.py: the static upstream's pieces

from cortex.affinity import PrefixAffinity, prefix_key
from cortex.eviction import EvictionPolicy
from cortex.fleet import Fleet
from cortex.fleet_snapshot import Catalogue
from cortex.node import Node, PollSettings
from protocol import node as wire
from protocol.ids import ModelId, NodeName

SHARED = "bench/shared"
MODELS = 4  # per node: the shared one and three of its own


def _own(node: int, j: int) -> str:
    return f"bench/n{node}-m{j}"


def node_bodies(index: int) -> tuple[dict, list[dict], dict]:
    """(/discovery, /models, /health) of fake node `index`: one 80 GiB device."""
    ids = [SHARED] + [_own(index, j) for j in range(1, MODELS)]
    discovery = {"hostname": f"fake{index}", "harnesses": ["static"],
                 "devices": [{"index": 0, "name": "static", "vram_total_mb": 81920}]}  # fmt: skip
    models = [{"id": m, "harness": "static", "status": "loaded", "devices": [0],
               "vram_used_mb": 1024, "servable": {"ok": True}} for m in ids]  # fmt: skip
    health = {"uptime_secs": 1, "devices": [{"index": 0, "vram_used_mb": 4096,
                                             "vram_free_mb": 77824}],
              "models": [{"id": m, "in_flight": 0, "queue_depth": 0} for m in ids]}  # fmt: skip
    return discovery, models, health


# -- routing, in process ---------------------------------------------------------------------


def polled_fleet(n: int) -> Fleet:
    """The gateway's `Fleet` over `n` nodes in the state their first good poll leaves."""
    settings = PollSettings()
    nodes = []
    for i in range(n):
        endpoint = f"http://127.0.0.1:{9000 + i}"  # never asked: no client
        node = Node(NodeName(f"node{i:03d}"), endpoint, None, settings)  # type: ignore[arg-type]
        discovery, models, health = node_bodies(i)
        node.discovery = wire.parse_response(json.dumps(discovery).encode(), wire.Discovery)
        node._polled(tuple(wire.parse_response(json.dumps(models).encode(),
                                               list[wire.ModelInfo])),
                     wire.parse_response(json.dumps(health).encode(), wire.Health))  # fmt: skip
        nodes.append(node)
    fleet = Fleet(nodes, Catalogue(), EvictionPolicy())
    fleet.affinity = PrefixAffinity()  # `[routing] prefix_affinity`, on by default
    return fleet


async def route_cost(n: int, model: str, iterations: int, repeats: int) -> float:
    """Best-of-`repeats` µs per request: the model's capabilities (the vision check) and
    `Fleet.acquire(model)`, as the HTTP layer and the relay ask."""
    fleet = polled_fleet(n)
    path = "/v1/chat/completions"
    best = float("inf")
    for r in range(repeats):
        body = json.dumps({"model": model, "messages": [
            {"role": "user", "content": f"prompt {r} " * 20}]}).encode()  # fmt: skip
        started = time.perf_counter()
        for _ in range(iterations):
            prefix = functools.cache(functools.partial(prefix_key, path, body,
                                                       fleet.prefix_chars))  # fmt: skip
            fleet.capabilities(fleet.resolve(model))  # as `cortex.http` asks, per request
            await fleet.acquire(ModelId(model), prefix=prefix)
        best = min(best, (time.perf_counter() - started) / iterations)
        for node in fleet.nodes.values():  # a poll: the routed counts are in `health` now
            node._polled(node.models, node.health)
    return best * 1e6


# -- the fake neurons, in a process of their own ---------------------------------------------


async def _serve_nodes(n: int) -> None:
    canned = []
    for i in range(n):
        discovery, models, health = node_bodies(i)
        canned.append({path: bench._http("200 OK", json.dumps(body).encode())
                       for path, body in ((b"/discovery", discovery), (b"/models", models),
                                          (b"/health", health))})  # fmt: skip
    completion = bench._canned_json()[bench.ROUTE]
    not_found = bench._http("404 Not Found", b'{"error":"not found","code":"route_not_found"}')

    def handler(answers: dict[bytes, bytes]):
        async def connection(conn: trio.SocketStream) -> None:
            reader = bench._Reader(conn)
            try:
                while (request := await reader.request()) is not None:
                    path, _ = request
                    answer = completion if path == bench.ROUTE else answers.get(path, not_found)
                    await conn.send_all(answer)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        return connection

    async with trio.open_nursery() as nursery:
        ports = []
        for answers in canned:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            ports.append(listeners[0].socket.getsockname()[1])
            nursery.start_soon(trio.serve_listeners, handler(answers), listeners)
        print(" ".join(map(str, ports)), flush=True)


def start_nodes(n: int) -> tuple[subprocess.Popen, list[int]]:
    process = subprocess.Popen([sys.executable, __file__, "_nodes", str(n)],
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    return process, [int(p) for p in process.stdout.readline().split()]


def start_gateway(ports: list[int], workdir: Path,
                  poll_interval: float) -> tuple[subprocess.Popen, int]:  # fmt: skip
    port, metrics = bench._free_port(), bench._free_port()
    neurons = "".join(f'[[neurons]]\nname = "node{i:03d}"\nendpoint = "http://127.0.0.1:{p}"\n'
                      for i, p in enumerate(ports))  # fmt: skip
    config = workdir / "cortex.toml"
    config.write_text(
        f'models_config = "{workdir / "models.toml"}"\n'
        f'[gateway]\nlisten = "127.0.0.1:{port}"\nmetrics_listen = "127.0.0.1:{metrics}"\n'
        f"[fleet]\npoll_interval = {poll_interval}\n{neurons}"
    )  # fmt: skip
    (workdir / "models.toml").write_text("")
    log = (workdir / "cortex.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "cortex", "serve", "--config", str(config)],
                               stdout=log, stderr=subprocess.STDOUT, cwd=bench.REPO)  # fmt: skip
    return process, port


async def wait_all_up(port: int, process: subprocess.Popen, n: int) -> None:
    with trio.fail_after(60):
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the gateway exited with {process.returncode}")
            try:
                async with await trio.open_tcp_stream("127.0.0.1", port) as conn:
                    await conn.send_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
                    status, body, _ = await bench._Reader(conn).response()
                if status == 200 and json.loads(body)["nodes"]["healthy"] == n:
                    return
            except OSError:
                pass
            await trio.sleep(0.2)


def gateway_costs(n: int, args: argparse.Namespace) -> dict:
    nodes, ports = start_nodes(n)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-fleet-") as workdir:
            gateway, port = start_gateway(ports, Path(workdir), args.poll_interval)
            try:
                trio.run(wait_all_up, port, gateway, n)
                time.sleep(args.poll_interval)  # every node polled once more, settled
                idle = []
                for _ in range(args.repeats):
                    before = bench._cpu_seconds(gateway.pid)
                    time.sleep(args.idle)
                    idle.append((bench._cpu_seconds(gateway.pid) - before) / args.idle)
                polls_per_s = n / args.poll_interval  # each: GET /models and GET /health
                idle_rate = statistics.median(idle)  # CPU seconds per second
                loaded = []
                for _ in range(args.repeats):
                    result = trio.run(_measure_shared, port, args.duration, gateway.pid)
                    busy = max(0.0, result.cpu - idle_rate * args.duration)
                    loaded.append(busy / max(1, result.requests))
            finally:
                bench.stop(gateway)
    finally:
        bench.stop(nodes)
    return {
        "poll_cpu_ms_per_s": idle_rate * 1000,
        "poll_cpu_us_per_node_poll": idle_rate / polls_per_s * 1e6,
        "request_cpu_ms": statistics.median(loaded) * 1000,
        "request_cpu_ms_range": [min(loaded) * 1000, max(loaded) * 1000],
    }


async def _measure_shared(port: int, duration: float, pid: int) -> bench.Result:
    """`bench.measure` with the shared model in the body: N replicas to choose from."""
    original = bench.MODEL
    bench.MODEL = SHARED
    try:
        return await bench.measure(port, False, 1, duration, 0.3, pid)
    finally:
        bench.MODEL = original


# -- the run ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=bench._int_list, default=[1, 10, 50])
    parser.add_argument("--iterations", type=int, default=2000, help="acquires per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--poll-interval", type=float, default=0.5,
                        help="the gateway's [fleet] poll_interval")  # fmt: skip
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of idle CPU per repeat")
    parser.add_argument("--duration", type=float, default=3.0,
                        help="seconds of requests per repeat")  # fmt: skip
    parser.add_argument("--skip-gateway", action="store_true", help="the routing part only")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_nodes"]:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        trio.run(_serve_nodes, int(argv[1]))
        return
    args = parse_args(argv)
    rows = []
    for n in args.nodes:
        row: dict = {"nodes": n}
        row["route_us_shared"] = trio.run(route_cost, n, SHARED, args.iterations, args.repeats)
        row["route_us_single"] = trio.run(route_cost, n, _own(0, 1), args.iterations,
                                          args.repeats)  # fmt: skip
        if not args.skip_gateway:
            row.update(gateway_costs(n, args))
        rows.append(row)
        if not args.json:
            _print_row(row, rows[0], header=len(rows) == 1, gateway=not args.skip_gateway)
    if args.json:
        print(json.dumps({"rows": rows, "poll_interval": args.poll_interval}, indent=2))


def _print_row(row: dict, first: dict, header: bool, gateway: bool) -> None:
    def cell(key: str, width: int = 8) -> str:
        ratio = row[key] / first[key] if first[key] else float("nan")
        return f"{row[key]:>{width}.1f} {ratio:>5.2f}x"

    if header:
        print(f"cores: {os.cpu_count()}; ratios to the first line")
        line = f"{'nodes':>5} | {'route µs shared':>15} | {'route µs single':>15}"
        if gateway:
            line += f" | {'poll CPU ms/s':>14} | {'µs/node poll':>14} | {'req CPU ms':>14}"
        print(line)
    line = f"{row['nodes']:>5} | {cell('route_us_shared', 9)} | {cell('route_us_single', 9)}"
    if gateway:
        line += (f" | {cell('poll_cpu_ms_per_s')} | {cell('poll_cpu_us_per_node_poll')} | "
                 f"{cell('request_cpu_ms')}")  # fmt: skip
    print(line, flush=True)


if __name__ == "__main__":
    main()
