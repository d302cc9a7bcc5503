"""The chaos suites' fleet: two real neurons for the whole session, a gateway per test.

`chaos_neurons` starts two `neuron serve` processes, `alpha` and `beta` (one
CPU device each, both tiny models fitting at once), shared by every chaos
module because starting them is most of what a chaos test costs. Tests kill,
stop and restart them: before each test `fleet` brings back whatever a
previous test left dead or stopped (same port, so a gateway's endpoints stay
valid), continues anything stopped, and unloads every model; at the end of
the session each is stopped with SIGTERM, which asserts a clean exit and no
surviving worker (tests/neuron/daemon_harness.py).

`gateway` starts an in-process gateway over both neurons with short poll
intervals and timeouts, so that faults show within seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from cortex.gateway import Gateway as CortexGateway
from tests.chaos.chaos_fleet import ChaosNeurons, gateway_config
from tests.neuron.daemon_harness import Models, synthesize_models


@pytest.fixture(scope="session")
def chaos_models(request: pytest.FixtureRequest, tmp_path_factory) -> Models:
    cache = getattr(request.config, "cache", None)
    root = Path(cache.mkdir("helexa-chaos-models")) if cache else tmp_path_factory.mktemp("m")
    return synthesize_models(root)


@pytest.fixture(scope="session")
def chaos_neurons(chaos_models, tmp_path_factory) -> Iterator[ChaosNeurons]:
    neurons = ChaosNeurons(chaos_models, tmp_path_factory.mktemp("chaos-neurons"))
    try:
        neurons.start_all()
        yield neurons
    finally:
        neurons.stop_all()


@pytest.fixture
def fleet(chaos_neurons) -> Iterator[ChaosNeurons]:
    """Both neurons running, answering and empty; anything stopped is continued after."""
    chaos_neurons.revive_all()
    chaos_neurons.unload_everything()
    try:
        yield chaos_neurons
    finally:
        chaos_neurons.continue_all()


@pytest.fixture
async def gateway(fleet, nursery):
    """`await gateway(**http_overrides)`: an in-process gateway; it stops after the test."""
    started: list[CortexGateway] = []

    async def start(**http: float) -> CortexGateway:
        gw = CortexGateway(gateway_config(fleet.urls(), **http))
        await nursery.start(gw.run)
        started.append(gw)
        with trio.fail_after(15):  # the first poll of every node
            while len(gw.fleet.healthy()) < len(fleet.daemons):
                await gw.fleet.wait_changed()
        return gw

    yield start
    for gw in started:
        gw.stop()
