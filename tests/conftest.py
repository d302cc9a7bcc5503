"""Suite-wide rules: offline Hugging Face, one torch thread, and no zombies.

Every test must leave no child process behind: real-process tests start
neurons, gateways and device workers, and the promise "no zombies, ever"
(DESIGN.md §3) is asserted after each test rather than trusted.
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


def _live_children() -> list:
    psutil = pytest.importorskip("psutil")
    children = psutil.Process().children(recursive=True)
    return [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


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
