"""systemd's service notification protocol (sd_notify), without a systemd dependency.

A `Type=notify` unit passes `$NOTIFY_SOCKET`, a datagram socket (a path, or
`@name` in the abstract namespace); the daemon sends newline-separated
`KEY=value` lines to it: `READY=1` once it serves, `STATUS=…` for
`systemctl status`, `STOPPING=1` when it begins to shut down, and
`WATCHDOG=1` keepalives when the unit sets `WatchdogSec=` (systemd then
passes `$WATCHDOG_USEC`, and `$WATCHDOG_PID` naming the process it watches).
Everything here is a no-op returning False when the variables are unset, so
the daemons call it unconditionally. A failed send is logged, never raised:
a notification is not worth stopping a daemon for. Sends never block (the
socket is non-blocking; a full receive queue drops the message).

Not for: socket activation, file-descriptor passing, or journald logging.
It needs only the standard library (trio, for `run_watchdog`, is imported
when that is called).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = [
    "notify",
    "ready",
    "run_watchdog",
    "status",
    "stopping",
    "watchdog_interval",
    "watchdog_ping",
]

log = logging.getLogger(__name__)


def notify(**fields: object) -> bool:
    """Send `KEY=value` lines (`notify(READY=1, STATUS="…")`; None values are
    left out). True if sent; False with no `$NOTIFY_SOCKET` or on failure."""
    where = os.environ.get("NOTIFY_SOCKET", "")
    lines = [f"{key}={_one_line(value)}" for key, value in fields.items() if value is not None]
    if not where or not lines:
        return False
    address = _address(where)
    if address is None:
        log.warning("NOTIFY_SOCKET=%s: not a path or @name; notifications are off", where)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto("\n".join(lines).encode(), address)
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", where, exc.strerror or exc)
        return False
    return True


def ready(status: str | None = None) -> bool:
    """`READY=1`: the daemon serves (start-up is over for systemd)."""
    return notify(READY=1, STATUS=status)


def stopping(status: str | None = None) -> bool:
    """`STOPPING=1`: the daemon has begun its shutdown."""
    return notify(STOPPING=1, STATUS=status)


def status(text: str) -> bool:
    """`STATUS=…`: one line shown by `systemctl status`."""
    return notify(STATUS=text)


def watchdog_ping() -> bool:
    """`WATCHDOG=1`: the daemon is alive (only meaningful under `WatchdogSec=`)."""
    return notify(WATCHDOG=1)


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between keepalives — half systemd's `WatchdogSec` — or None
    when this process is not watched (no `$WATCHDOG_USEC`, or `$WATCHDOG_PID`
    names another process: a child that inherited the environment)."""
    env = os.environ if env is None else env
    try:
        period = int(env.get("WATCHDOG_USEC", ""))
        pid = int(env.get("WATCHDOG_PID") or os.getpid())
    except ValueError:
        return None
    if period <= 0 or pid != os.getpid():
        return None
    return period / 2 / 1_000_000


async def run_watchdog(interval: float | None = None) -> None:
    """Send `WATCHDOG=1` now and every `interval` seconds (default
    `watchdog_interval()`) until cancelled; return at once when unwatched.
    It runs on the event loop it guards, so a wedged loop stops the pings."""
    import trio

    interval = interval or watchdog_interval()
    if interval is None or not os.environ.get("NOTIFY_SOCKET"):
        return
    while True:
        watchdog_ping()
        await trio.sleep(interval)


def _address(where: str) -> str | None:
    if where.startswith("@"):
        return "\0" + where[1:]  # the abstract namespace
    return where if where.startswith("/") else None


def _one_line(value: object) -> str:
    return " ".join(str(value).splitlines())
