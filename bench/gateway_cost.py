"""The gateway's cost per relayed request, counted rather than timed.

`bench/gateway.py` times the gateway, and on a shared box its req/s moves by ±10 %
from run to run, more than most single changes to the hot path are worth. This counts
instead, for one relayed JSON chat completion (`bench/gateway.py`'s static upstream
and request, one keep-alive connection, each request sent when the last answer ended):

    instructions   CPU instructions the gateway process executed per request, under
                   valgrind's callgrind (counting only while requests run; a run of a
                   few hundred requests repeats to within ~0.5 %)
    task steps     trio task steps per request (each resumption of a task)
    loop turns     trips of trio's event loop (each with an epoll_wait) per request
    task starts    tasks started per request

The gateway runs in-process (`cortex.config.load_config` +
`cortex.__main__._serve_until_signal`, its default settings, logging to a file) so that
trio's instrument API sees its scheduling; the load generator and the upstream are
processes of their own and are not counted. `--baseline DIR` counts another checkout
(e.g. `git archive main | tar -x -C DIR`) in the same invocation and prints ratios.
Needs `valgrind` for the instruction count (the scheduling counts run without it).

    python bench/gateway_cost.py
    python bench/gateway_cost.py --baseline /tmp/main --requests 500
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WARMUP = 100  # answered requests before counting starts


# -- the side under test (a child process: `gateway_cost.py _gateway N`) -------------------


def _gateway_side(requests: int, callgrind: bool) -> None:
    """Run the upstream, the load generator and, in this process, the gateway; print the
    counts as JSON."""
    import trio
    import trio.abc

    sys.path.insert(0, str(BENCH))
    import gateway as bench

    from cortex.__main__ import _serve_until_signal  # the checkout on PYTHONPATH
    from cortex.config import load_config
    from protocol.logs import configure_logging

    class Scheduling(trio.abc.Instrument):
        def __init__(self) -> None:
            self.on = False
            self.counts: collections.Counter[str] = collections.Counter()

        def before_task_step(self, task) -> None:
            if self.on:
                self.counts["task steps"] += 1

        def task_spawned(self, task) -> None:
            if self.on:
                self.counts["task starts"] += 1

        def before_io_wait(self, timeout) -> None:
            if self.on:
                self.counts["loop turns"] += 1

    upstream, upstream_port = bench.start_upstream()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-cost-"))
    port, metrics = bench._free_port(), bench._free_port()
    (workdir / "cortex.toml").write_text(
        f'models_config = "{workdir / "models.toml"}"\n'
        f'[gateway]\nlisten = "127.0.0.1:{port}"\nmetrics_listen = "127.0.0.1:{metrics}"\n'
        f'[[neurons]]\nname = "static"\nendpoint = "http://127.0.0.1:{upstream_port}"\n'
    )  # fmt: skip
    (workdir / "models.toml").write_text("")
    client = subprocess.Popen([sys.executable, __file__, "_client", str(port), str(requests)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    configure_logging("plain")
    log = (workdir / "cortex.log").open("w")
    import logging

    logging.getLogger().handlers[0].stream = log  # type: ignore[attr-defined]
    config = load_config(workdir / "cortex.toml")
    scheduling = Scheduling()
    out: dict[str, float] = {}

    def callgrind_collect(on: bool) -> None:
        if callgrind:
            subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())],
                           capture_output=True, check=True)  # fmt: skip

    async def drive() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serve_until_signal, config)
            await trio.to_thread.run_sync(client.stdout.readline)  # warmed up
            callgrind_collect(True)
            scheduling.on = True
            client.stdin.write("go\n")
            client.stdin.flush()
            line = await trio.to_thread.run_sync(client.stdout.readline)
            scheduling.on = False
            callgrind_collect(False)
            out["wall µs"] = float(line.split()[1])
            nursery.cancel_scope.cancel()

    try:
        trio.run(drive, instruments=[] if callgrind else [scheduling])
    finally:
        upstream.kill()
        client.kill()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
    out.update({name: n / requests for name, n in scheduling.counts.items()})
    print(json.dumps(out))


def _client(port: int, requests: int) -> None:
    """Sequential keep-alive JSON requests; a new connection when the server closes one.
    Waits until the gateway answers 200 `WARMUP` times, says so, then on a line from
    stdin sends `requests` and prints the mean µs per exchange."""
    sys.path.insert(0, str(BENCH))
    import gateway as bench

    request = bench._request(port, False)
    conn: socket.socket | None = None

    def exchange() -> bytes:
        nonlocal conn
        while True:
            if conn is None:
                try:
                    conn = socket.create_connection(("127.0.0.1", port))
                except OSError:
                    time.sleep(0.2)
                    continue
            conn.sendall(request)
            data = b""
            while True:
                chunk = conn.recv(1 << 16)
                if not chunk:
                    conn.close()
                    conn = None
                    break  # the server closed it (keep-alive limit): again, anew
                data += chunk
                head, sep, body = data.partition(b"\r\n\r\n")
                if sep:
                    lengths = [line.split(b":", 1)[1] for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")]  # fmt: skip
                    if lengths and len(body) >= int(lengths[0]):
                        return head[9:12]

    answered = 0
    while answered < WARMUP:
        if exchange() == b"200":
            answered += 1
        else:
            time.sleep(0.2)  # not routable yet
    print("warm", flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    for _ in range(requests):
        if exchange() != b"200":
            raise SystemExit("a request failed while counting")
    print("done", (time.perf_counter() - started) / requests * 1e6, flush=True)


# -- the driver --------------------------------------------------------------------------


def count(checkout: Path, requests: int) -> dict[str, float]:
    """The counts for the gateway of `checkout`."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    side = [sys.executable, str(Path(__file__).resolve()), "_gateway", str(requests)]
    result = json.loads(_run([*side, "schedule"], env, checkout))
    if shutil.which("valgrind") is None:
        print("valgrind not found: no instruction count", file=sys.stderr)
        return result
    with tempfile.TemporaryDirectory() as tmp:
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                   f"--callgrind-out-file={tmp}/callgrind.%p", *side, "callgrind"]  # fmt: skip
        completed = subprocess.run(command, env=env, cwd=checkout, capture_output=True,
                                   text=True, timeout=1800)  # fmt: skip
    collected = [line for line in completed.stderr.splitlines() if "Collected :" in line]
    if completed.returncode != 0 or not collected:
        raise SystemExit(f"callgrind run failed:\n{completed.stderr[-3000:]}")
    result["instructions"] = int(collected[-1].split(":")[-1]) / requests
    return result


def _run(command: list[str], env: dict[str, str], cwd: Path) -> str:
    completed = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True,
                               timeout=600)  # fmt: skip
    if completed.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    return completed.stdout.strip().splitlines()[-1]


COLUMNS = ("instructions", "task steps", "loop turns", "task starts")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="requests counted per side")
    parser.add_argument("--baseline", type=Path, help="another checkout, counted alongside")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    args = parser.parse_args(argv)
    sides = {"cortex": REPO}
    if args.baseline is not None:
        sides["baseline"] = args.baseline.resolve()
    results = {name: count(path, args.requests) for name, path in sides.items()}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"per relayed JSON request ({args.requests} requests, one connection, sequential)")
    print(f"{'':10}" + "".join(f"{c:>14}" for c in COLUMNS))
    for name, result in results.items():
        print(f"{name:10}" + "".join(f"{result.get(c, float('nan')):14,.1f}" for c in COLUMNS))
    if "baseline" in results:
        ratios = [results["cortex"].get(c, float("nan")) / results["baseline"].get(c, float("nan"))
                  for c in COLUMNS]  # fmt: skip
        print(f"{'÷ baseline':10}" + "".join(f"{r:13.3f}x" for r in ratios))


if __name__ == "__main__":
    if sys.argv[1:2] == ["_gateway"]:
        _gateway_side(int(sys.argv[2]), sys.argv[3] == "callgrind")
    elif sys.argv[1:2] == ["_client"]:
        _client(int(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
