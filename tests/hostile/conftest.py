"""One real neuron and one real gateway in front of it, shared by the hostile-input tests.

The neuron (one CPU device, the tiny Qwen3 loaded) keeps every default limit
of its `[http]` section, so the tests prove the defaults; completions are
capped at a few tokens so that a fuzzed body that happens to be valid stays
cheap. The gateway is a `cortex serve` process cataloguing both tiny models,
with the alias `fast`. Both are stopped with SIGTERM at the end of the
session, which asserts a clean exit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from tests.hostile.hostile_harness import RunningGateway, start_gateway
from tests.neuron.daemon_harness import (
    LLAMA,
    QWEN,
    Models,
    RunningDaemon,
    start_daemon,
    synthesize_models,
)

NEURON_SETTINGS = {
    "cpu": {"devices": 1, "threads": 1, "memory_mb": 2048},
    "limits": {"default_max_tokens": 4},
}


@attrs.frozen
class Fleet:
    neuron: RunningDaemon
    gateway: RunningGateway


@pytest.fixture(scope="session")
def hostile_models(request: pytest.FixtureRequest, tmp_path_factory) -> Models:
    cache = getattr(request.config, "cache", None)
    root = Path(cache.mkdir("helexa-demo-models")) if cache else tmp_path_factory.mktemp("m")
    return synthesize_models(root / "daemon")


@pytest.fixture(scope="session")
def fleet(hostile_models: Models, tmp_path_factory) -> Iterator[Fleet]:
    neuron = start_daemon(tmp_path_factory.mktemp("hostile-neuron"), hostile_models,
                          settings=NEURON_SETTINGS)  # fmt: skip
    try:
        gateway = start_gateway(tmp_path_factory.mktemp("hostile-cortex"),
                                {"alpha": neuron.url}, {QWEN: 4, LLAMA: 4},
                                aliases={"fast": QWEN})  # fmt: skip
        try:
            yield Fleet(neuron, gateway)
        finally:
            gateway.stop()
    finally:
        neuron.stop()
