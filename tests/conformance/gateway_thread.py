"""A real cortex gateway on a background thread, for tests with synchronous clients.

`GatewayThread.running(config)` starts `Gateway.run` under its own
`trio.run` on a thread and yields once it listens; leaving the block stops it
(`Gateway.stop` through the trio token) and joins the thread.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping, Sequence

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families
from scripted_model import SCRIPTED

from cortex.config import CortexConfig, Eviction, Fleet, Gateway, Http, Neuron
from cortex.fleet_snapshot import Catalogue, ModelProfile
from cortex.gateway import Gateway as CortexGateway

START_TIMEOUT = 30.0
# Model names agents send, all aliases of the scripted model in the catalogue.
CLAUDE_NAMES = (
    "claude-sonnet-4-6", "claude-opus-4-8", "claude-haiku-4-5-20251001",
    "claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "claude-opus-4-1-20250805",
)  # fmt: skip
OPENAI_NAMES = ("gpt-4o", "gpt-4.1-mini")


def gateway_config(
    neurons: Mapping[str, str],
    aliases: Mapping[str, str],
    profiles: Sequence[ModelProfile] = (ModelProfile(id=SCRIPTED, vram_mb=4),),
) -> CortexConfig:
    """A test gateway over `neurons` (name → URL) that polls fast and retries once."""
    return CortexConfig(
        models_config="",
        gateway=Gateway(listen="127.0.0.1:0", metrics_listen="127.0.0.1:0"),
        eviction=Eviction(min_residency_seconds=0),
        neurons=tuple(Neuron(name=name, endpoint=url) for name, url in neurons.items()),
        fleet=Fleet(poll_interval=0.3, poll_timeout=2, failure_threshold=1, backoff_max=1),
        http=Http(keepalive_interval=0.2, retries=1, drain_timeout=5),
        catalogue=Catalogue.of(list(profiles), dict(aliases)),
    )  # fmt: skip


class GatewayThread:
    def __init__(self, config: CortexConfig) -> None:
        self.gateway = CortexGateway(config)
        self.url = ""
        self._token: trio.lowlevel.TrioToken | None = None
        self._listening = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="cortex-gateway", daemon=True)

    @classmethod
    @contextlib.contextmanager
    def running(cls, config: CortexConfig) -> Iterator[GatewayThread]:
        gw = cls(config)
        gw._thread.start()
        if not gw._listening.wait(START_TIMEOUT) or gw._error is not None:
            raise AssertionError(f"the gateway did not start: {gw._error!r}")
        try:
            yield gw
        finally:
            trio.from_thread.run_sync(gw.gateway.stop, trio_token=gw._token)
            gw._thread.join(START_TIMEOUT)
            assert not gw._thread.is_alive(), "the gateway did not stop"

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
            self._listening.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self.url = await nursery.start(self.gateway.run)
            self._listening.set()

    # -- for the tests -------------------------------------------------------------------

    def run_sync(self, fn, *args):
        """Call `fn(*args)` in the gateway's trio thread (its state has one owner)."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def http(self, **kwargs) -> httpx.Client:
        kwargs.setdefault("timeout", 60.0)
        return httpx.Client(base_url=self.url, **kwargs)

    def wait_healthy(self, *, nodes: int, within: float = 15.0) -> None:
        deadline = time.monotonic() + within
        with self.http() as client:
            while client.get("/health").json()["nodes"]["healthy"] < nodes:
                assert time.monotonic() < deadline, "the gateway never saw its nodes"
                time.sleep(0.05)

    def metrics(self) -> dict[str, float]:
        """Every sample of the metrics listener, keyed `name{label="v",...}`."""
        text = httpx.get(f"{self.gateway.metrics_url}/metrics", timeout=10).text
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}"] = sample.value
        return samples
