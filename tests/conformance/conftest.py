"""The conformance suite's fleet: one real neuron serving the scripted model,
and a real gateway in front of it, shared by the whole session.

The gateway runs in-process on its own thread (its own `trio.run`), so the
tests can use the official SDKs' synchronous clients, as most agents do. The
catalogue maps the model names agents send (`claude-sonnet-4-6`, `gpt-4o` …)
to the scripted model. A second gateway over the same node, set draining as
on shutdown, refuses everything: the overload errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_thread import CLAUDE_NAMES, OPENAI_NAMES, GatewayThread, gateway_config
from scripted_model import SCRIPTED, build_scripted_model

from tests.neuron.daemon_harness import Models, RunningDaemon, start_daemon

ALIASES = dict.fromkeys(CLAUDE_NAMES + OPENAI_NAMES, SCRIPTED)
NEURON_SETTINGS = {
    "cpu": {"devices": 1, "threads": 1, "memory_mb": 2048},
    # The scripted model writes its one call in the Qwen-XML form, which a JSON call
    # grammar would not let it (tests/neuron/test_daemon_structured.py covers that).
    "engine": {"constrain_tool_calls": False},
    "http": {"keepalive_interval": 0.2},
}


@pytest.fixture(scope="session")
def scripted_root(request: pytest.FixtureRequest, tmp_path_factory) -> Path:
    cache = getattr(request.config, "cache", None)
    root = Path(cache.mkdir("helexa-conformance")) if cache else tmp_path_factory.mktemp("conf")
    build_scripted_model(root)
    return root


@pytest.fixture(scope="session")
def neuron(scripted_root: Path, tmp_path_factory) -> Iterator[RunningDaemon]:
    daemon = start_daemon(tmp_path_factory.mktemp("conformance-neuron"), Models(scripted_root),
                          default_models=(SCRIPTED,), settings=NEURON_SETTINGS)  # fmt: skip
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def gateway(neuron: RunningDaemon) -> Iterator[GatewayThread]:
    with GatewayThread.running(gateway_config({"conformance": neuron.url}, ALIASES)) as gw:
        gw.wait_healthy(nodes=1)
        yield gw


@pytest.fixture(scope="session")
def draining_gateway(neuron: RunningDaemon) -> Iterator[GatewayThread]:
    """A second gateway over the same node, shutting down: it admits nothing (503)."""
    with GatewayThread.running(gateway_config({"conformance": neuron.url}, ALIASES)) as gw:
        gw.run_sync(setattr, gw.gateway, "draining", True)
        yield gw
