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

Exit codes: 0 after `Shutdown` or EOF; `EXIT_DEVICE_FAULT` after a device
fault (the parent replaces the worker). This module is not imported by the
parent; the parent's side is `neuron.devices`.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import select
import signal
import socket
import sys
import threading
from collections.abc import Callable

EXIT_DEVICE_FAULT = 75
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


class FrameChannel:
    """The worker's end of the socketpair: thread-safe sends, blocking receives."""

    def __init__(self, sock: socket.socket) -> None:
        from protocol.worker import recv_frame, send_frame

        self._sock = sock
        self._send_frame = send_frame
        self._recv_frame = recv_frame
        self._lock = threading.Lock()

    def send(self, message: object) -> None:
        with self._lock:
            self._send_frame(self._sock, message)

    def readable(self, timeout: float | None) -> bool:
        ready, _, _ = select.select([self._sock], [], [], timeout)
        return bool(ready)

    def receive(self) -> object | None:
        return self._recv_frame(self._sock)


def run_heartbeats(
    channel: FrameChannel, make: Callable[[], object], interval: float, stop: threading.Event
) -> None:
    """Send `make()` every `interval` until `stop` is set or the parent is gone."""
    while not stop.wait(interval):
        try:
            channel.send(make())
        except OSError:
            return


def versions() -> dict[str, str | None]:
    import torch
    import transformers

    return {
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }


if __name__ == "__main__":
    sys.exit(main())
