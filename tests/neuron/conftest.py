"""Shared fixtures for the device-worker compute core: one demo model per session.

The demo model is `neuron.synth`'s tiny Qwen3 (`helexa/tiny-chat`, seed 0), built
once into pytest's cache directory (kept across runs; the builder's marker makes
reuse safe) or, with the cache provider disabled, into a session temp dir. Tests that
are about building itself build into `tmp_path`.

`synth_snapshot(arch)` / `synth_model(arch)` build (once) and load (once, by the
production loader) one tiny model of any `neuron.synth` family, for tests that run
every family.

`daemon_models` adds a tiny Qwen3 and a tiny Llama under one model root, and
`neuron_daemon` is one real `neuron serve` process shared by the daemon test
modules (tests/neuron/daemon_harness.py), stopped with SIGTERM at the end of
the session — which asserts a clean exit and no surviving worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from daemon_harness import QWEN, Models, RunningDaemon, start_daemon, synthesize_models

from neuron.synth import DemoModels, ensure_demo_models

# The shared daemon: small limits so the edge cases are cheap to reach.
SHARED_DAEMON_SETTINGS = {
    "http": {"max_body_bytes": 256 * 1024, "keepalive_interval": 0.2},
    "timeouts": {"unload_drain": 3},
}


@pytest.fixture(scope="session")
def demo_cache_dir(request: pytest.FixtureRequest, tmp_path_factory) -> Path:
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("helexa-demo-models"))
    return tmp_path_factory.mktemp("helexa-demo-models")


@pytest.fixture(scope="session")
def demo_models(demo_cache_dir: Path) -> DemoModels:
    """The tiny demo model, in both the plain and the HF cache layout."""
    return ensure_demo_models(demo_cache_dir)


@pytest.fixture(scope="session")
def daemon_models(demo_cache_dir: Path) -> Models:
    return synthesize_models(demo_cache_dir / "daemon")


@pytest.fixture(scope="session")
def neuron_daemon(daemon_models: Models, tmp_path_factory) -> Iterator[RunningDaemon]:
    """One `neuron serve` (2 CPU devices, Qwen3 loaded and pinned at start) for the session."""
    daemon = start_daemon(
        tmp_path_factory.mktemp("neuron-shared"),
        daemon_models,
        default_models=({"id": QWEN, "pinned": True},),
        settings=SHARED_DAEMON_SETTINGS,
    )
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def tiny_model(demo_models: DemoModels):
    """The tiny demo model loaded once in fp32 on CPU; tests must not unload it."""
    torch = pytest.importorskip("torch")
    from neuron.worker.loader import load_model
    from neuron.worker.snapshot import resolve_snapshot

    torch.set_num_threads(1)
    snapshot = resolve_snapshot(demo_models.model_id, [demo_models.plain_root])
    return load_model(snapshot, dtype="fp32")


@pytest.fixture(scope="session")
def synth_archs_root(demo_cache_dir: Path) -> Path:
    """Where `synth_snapshot` builds one model of each `neuron.synth` family."""
    return demo_cache_dir / "archs"


@pytest.fixture(scope="session")
def synth_snapshot(synth_archs_root: Path) -> Callable[..., Path]:
    """`synth_snapshot(arch, size="tiny")`: that family's synthetic snapshot, built once."""
    from neuron.synth import synthesize

    def build(arch: str, size: str = "tiny") -> Path:
        return synthesize(synth_archs_root, arch=arch, size=size)

    return build


@pytest.fixture(scope="session")
def synth_model(synth_snapshot, synth_archs_root: Path) -> Callable[..., object]:
    """`synth_model(arch, size="tiny")`: that family's model loaded by the production
    loader in fp32 on CPU, once per session (a `LoadedModel`; tests must not unload it)."""
    torch = pytest.importorskip("torch")
    from neuron.synth import default_name
    from neuron.worker.loader import load_model
    from neuron.worker.snapshot import resolve_snapshot

    torch.set_num_threads(1)
    loaded: dict[tuple[str, str], object] = {}

    def load(arch: str, size: str = "tiny"):
        if (arch, size) not in loaded:
            synth_snapshot(arch, size)
            snapshot = resolve_snapshot(default_name(arch, size), [synth_archs_root])
            loaded[arch, size] = load_model(snapshot, dtype="fp32")
        return loaded[arch, size]

    return load


@pytest.fixture
def run_engine(tiny_model) -> Callable[..., dict]:
    """Drive an engine to completion: `{seq_id: (tokens, finish_reason, first_step)}`.

    `requests` is an iterable of `(seq_id, prompt, params)` added before the first
    step; `joins` maps a step number to more requests added just before that step.
    """
    from neuron.worker.engine import Engine, EngineConfig

    def run(
        requests: Iterable[tuple],
        config: EngineConfig | None = None,
        joins: dict[int, list[tuple]] | None = None,
    ) -> dict:
        engine = Engine(tiny_model, config or EngineConfig(max_batch_size=8, max_seq_len=512))
        results: dict = {}
        for seq_id, prompt, params in requests:
            engine.add(seq_id, prompt, params)
        step = 0
        while engine.has_work or (joins and any(s >= step for s in joins)):
            for seq_id, prompt, params in (joins or {}).get(step, []):
                engine.add(seq_id, prompt, params)
            for output in engine.step().outputs:
                tokens, _, first = results.get(output.seq_id, ([], None, step))
                results[output.seq_id] = (
                    tokens + list(output.token_ids),
                    output.finish_reason,
                    first,
                )
            step += 1
        assert engine.statistics().kv_bytes_allocated == 0
        engine.close()
        return results

    return run
