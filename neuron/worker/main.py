"""The device-worker process: one per compute device, spawned by the neuron.

`python -m neuron.worker --fd N --device cpu:0` pins itself to its device
before torch initialises (`CUDA_VISIBLE_DEVICES` for `cuda:N`, a torch thread
count for `cpu:N`), announces itself with `WorkerReady` on the socketpair
fd it inherited, and then serves jobs: it loads models, runs one
continuous-batching `Engine` per model, and sends every engine step's new
tokens back in one `StepTokens` frame.

The loop is single-threaded and blocking: it drains whatever jobs have
arrived, runs one step of each busy engine, and blocks on the socket only
when nothing is running. A second thread sends a `Heartbeat` every interval,
so a stopped or wedged process is visible to the parent as silence (a
stopped process sends nothing; a wedged step stops the engine statistics
from moving, which the parent's step watchdog sees). EOF on the socket means
the parent is gone: the worker exits.

Exit codes: 0 after `Shutdown` or EOF; `EXIT_DEVICE_FAULT`
(`neuron.worker.channel`) after a device fault (the parent replaces the
worker). This module is not imported by the parent; the parent's side is
`neuron.devices`. The serving loop is `neuron.worker.service`, imported only
once the device is pinned.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys

log = logging.getLogger("neuron.worker")


def _pin_device(device: str, threads: int) -> str:
    """Environment for the device, before torch is imported; the torch device."""
    kind, _, index = device.partition(":")
    if kind == "cuda":
        os.environ["CUDA_VISIBLE_DEVICES"] = index
        return "cuda:0"
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    return "cpu"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m neuron.worker")
    parser.add_argument("--fd", type=int, required=True, help="inherited socketpair fd")
    parser.add_argument("--device", required=True, help="cpu:N or cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (cpu devices)")
    parser.add_argument("--heartbeat-interval", type=float, default=0.5)
    parser.add_argument("--max-batch-size", type=int, default=16)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    # A terminal's Ctrl-C reaches the whole process group; the parent decides
    # when a worker stops (shutdown frame, then SIGTERM/SIGKILL), not the key.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch_device = _pin_device(args.device, args.threads)
    logging.basicConfig(
        level=os.environ.get("NEURON_WORKER_LOG_LEVEL", "WARNING"),
        format=f"%(asctime)s worker[{args.device}] %(levelname)s %(name)s: %(message)s",
    )
    sock = socket.socket(fileno=args.fd)
    from neuron.worker.service import WorkerService  # imports torch: after pinning

    service = WorkerService(sock, args.device, torch_device, args.threads, args.max_batch_size)
    return service.run(args.heartbeat_interval)


if __name__ == "__main__":
    sys.exit(main())
