"""The worker's end of its socketpair: frames in and out, heartbeats, exit codes.

This module is for what the worker's serving loop (`neuron.worker.service`)
needs from its process around it: a thread-safe `FrameChannel`, the heartbeat
thread's loop, the versions `WorkerReady` reports, and the exit code of a
device fault. It is not for starting the process or pinning the device
(`neuron.worker.main`), nor for the parent's side (`neuron.devices`).
"""

from __future__ import annotations

import platform
import select
import socket
import threading
from collections.abc import Callable

__all__ = ["EXIT_DEVICE_FAULT", "FrameChannel", "run_heartbeats", "versions"]

EXIT_DEVICE_FAULT = 75


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
