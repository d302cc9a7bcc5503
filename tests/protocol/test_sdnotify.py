"""sd_notify over a real datagram socket: a path in a temp dir, and the abstract namespace."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from protocol import sdnotify


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


@pytest.fixture
def listener(monkeypatch) -> Iterator[socket.socket]:
    """A datagram socket bound in a short temp dir (AF_UNIX paths are ≤ 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="helexa-notify-") as tmp:
        path = str(Path(tmp) / "notify.sock")
        with _receiver(path) as sock:
            monkeypatch.setenv("NOTIFY_SOCKET", path)
            yield sock


@pytest.fixture
def abstract_listener(monkeypatch) -> Iterator[socket.socket]:
    name = f"helexa-test-notify-{os.getpid()}-{os.urandom(4).hex()}"
    with _receiver("\0" + name) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield sock


def test_ready_sends_ready_and_status(listener):
    assert sdnotify.ready("listening on http://127.0.0.1:1") is True
    assert listener.recv(4096) == b"READY=1\nSTATUS=listening on http://127.0.0.1:1"


def test_each_message(listener):
    assert sdnotify.stopping()
    assert sdnotify.status("draining")
    assert sdnotify.watchdog_ping()
    assert sdnotify.notify(STATUS="two\nlines", ERRNO=None, EXTEND_TIMEOUT_USEC=5)
    received = [listener.recv(4096) for _ in range(4)]
    assert received == [
        b"STOPPING=1",
        b"STATUS=draining",
        b"WATCHDOG=1",
        b"STATUS=two lines\nEXTEND_TIMEOUT_USEC=5",
    ]


def test_abstract_namespace(abstract_listener):
    assert sdnotify.ready()
    assert abstract_listener.recv(4096) == b"READY=1"


def test_no_socket_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready("x") is False
    assert sdnotify.watchdog_ping() is False


def test_unreachable_socket_is_logged_not_raised(monkeypatch, caplog, tmp_path):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    with caplog.at_level(logging.WARNING, logger="protocol.sdnotify"):
        assert sdnotify.ready() is False
    assert "sd_notify" in caplog.text


def test_unsupported_address_is_logged(monkeypatch, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/notify.sock")
    with caplog.at_level(logging.WARNING, logger="protocol.sdnotify"):
        assert sdnotify.ready() is False
    assert "notifications are off" in caplog.text


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # inherited by a child
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_interval(env, expected):
    assert sdnotify.watchdog_interval(env) == expected


def test_watchdog_interval_reads_the_environment(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval() == 0.5


async def test_run_watchdog_pings_every_interval(listener, monkeypatch, autojump_clock):
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")  # 10 s: a ping every 5 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    with trio.move_on_after(12):
        await sdnotify.run_watchdog()
    listener.setblocking(False)
    pings = []
    while True:
        try:
            pings.append(listener.recv(4096))
        except BlockingIOError:
            break
    assert pings == [b"WATCHDOG=1"] * 3  # at 0, 5 and 10 s


async def test_run_watchdog_returns_when_unwatched(listener, monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    with trio.fail_after(1):
        await sdnotify.run_watchdog()


async def test_run_watchdog_returns_without_a_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    with trio.fail_after(1):
        await sdnotify.run_watchdog(interval=0.1)
