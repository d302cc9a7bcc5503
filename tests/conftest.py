"""Suite-wide rules: offline Hugging Face, one torch thread, and no zombies.

Every test must leave no child process behind: real-process tests start
neurons, gateways and device workers, and the promise "no zombies, ever"
(DESIGN.md §3) is asserted after each test rather than trusted.

A daemon shared by several tests (a module- or session-scoped fixture) runs
with `KEEP_ACROSS_TESTS` in its environment, which its workers inherit; the
per-test check skips those processes, and the fixture that started them
asserts at its own teardown that the daemon exited cleanly and left nothing.
"""

from __future__ import annotations

import os
import time

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHILD_EXIT_TIMEOUT = 10.0
KEEP_ACROSS_TESTS = "HELEXA_TEST_KEEP_ACROSS_TESTS"


def _live_children() -> list:
    psutil = pytest.importorskip("psutil")
    children = psutil.Process().children(recursive=True)
    return [c for c in children if _alive(c, psutil) and not _kept_across_tests(c, psutil)]


def _alive(child, psutil) -> bool:
    try:
        return child.is_running() and child.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kept_across_tests(child, psutil) -> bool:
    """Started by a shared fixture, which checks it at its own teardown."""
    try:
        return KEEP_ACROSS_TESTS in child.environ()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


@pytest.fixture(autouse=True)
def no_child_survives():
    """Fail the test if it leaves a child process running; reap what it left."""
    yield
    deadline = time.monotonic() + CHILD_EXIT_TIMEOUT
    survivors = _live_children()
    while survivors and time.monotonic() < deadline:
        time.sleep(0.05)
        survivors = _live_children()
    for child in survivors:
        child.kill()
    for child in survivors:
        child.wait(timeout=5)
    _reap_zombies()
    assert not survivors, f"test left child processes running: {survivors}"


def _reap_zombies() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
