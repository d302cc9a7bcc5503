"""GGUF files in the model roots: their converted snapshots, made once and cached.

A model root may hold `name.gguf` (or `org/name.gguf`) files beside snapshot
directories; the id is the path without `.gguf`. Before such a model's first load the
parent runs `python -m neuron.worker.gguf_convert` in a child process, which writes a
safetensors snapshot (config, tokenizer and chat template from the file, dequantized
weights) into the cache; later loads read that snapshot like any other. The cache entry
is keyed by the file's identity (device, inode), size and modification time, so a
replaced file is converted again and hard links to one file share an entry. Entries
appear atomically (written under a temporary name, then renamed), so two neurons
converting the same file at once both end up with one whole entry.

Cache directory: `$HELEXA_GGUF_CACHE`, else systemd's `$CACHE_DIRECTORY/gguf`, else
`$XDG_CACHE_HOME/helexa/gguf` (default `~/.cache/helexa/gguf`).

Not for: reading GGUF contents (`gguf_convert`, which imports torch). Torch-free: the
neuron parent imports this.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from neuron.worker.errors import InvalidSnapshot, UnsupportedModel

log = logging.getLogger(__name__)

SUFFIX = ".gguf"
CONVERT_TIMEOUT = 1800.0  # seconds; a 7B file takes minutes on a small host
_EXIT_UNSUPPORTED = 3  # gguf_convert.EXIT_UNSUPPORTED (not imported: that module needs torch)
FORMAT = 2  # of the converted snapshots; part of the cache key, so a change converts anew


def cache_dir(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("HELEXA_GGUF_CACHE"):
        return Path(env["HELEXA_GGUF_CACHE"])
    if env.get("CACHE_DIRECTORY"):  # systemd's CacheDirectory=
        return Path(env["CACHE_DIRECTORY"].split(":")[0]) / "gguf"
    base = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "helexa" / "gguf"


def entry_for(gguf: Path, cache: Path) -> Path:
    """The cache entry that holds (or will hold) `gguf`'s converted snapshot."""
    stat = Path(os.path.realpath(gguf)).stat()
    # The file's identity, not its name: hard links to one file share one entry.
    identity = f"{FORMAT}\0{stat.st_dev}\0{stat.st_ino}\0{stat.st_size}\0{stat.st_mtime_ns}"
    return cache / hashlib.sha256(identity.encode()).hexdigest()[:24]


def converted(gguf: Path, cache: Path | None = None) -> Path:
    """The converted snapshot directory for `gguf`, converting it first if needed.

    Raises UnsupportedModel (architecture or quantization transformers cannot read)
    or InvalidSnapshot (unreadable, truncated or corrupt file).
    """
    cache = cache_dir() if cache is None else cache
    try:
        entry = entry_for(gguf, cache)
    except OSError as exc:
        raise InvalidSnapshot(f"{gguf}: {exc.strerror or exc}") from exc
    if (entry / "config.json").is_file():
        return entry
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f".{entry.name}.{os.getpid()}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        _run_converter(gguf, partial)
        _publish(partial, entry)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return entry


def _run_converter(gguf: Path, destination: Path) -> None:
    command = [sys.executable, "-m", "neuron.worker.gguf_convert", str(gguf), str(destination)]
    log.info("converting gguf=%s into=%s", gguf, destination.parent)
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CONVERT_TIMEOUT,
                              stdin=subprocess.DEVNULL, check=False)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise InvalidSnapshot(f"{gguf}: conversion took over {CONVERT_TIMEOUT:.0f} s") from exc
    if done.returncode == 0:
        log.info("converted gguf=%s seconds=%.1f", gguf, time.perf_counter() - started)
        return
    lines = done.stderr.strip().splitlines()
    reason = lines[-1] if lines else f"the converter exited with status {done.returncode}"
    if done.returncode == _EXIT_UNSUPPORTED:
        raise UnsupportedModel(f"{gguf.name}: {reason.removeprefix('unsupported: ')}")
    raise InvalidSnapshot(f"{gguf.name} is not a readable GGUF file: "
                          f"{reason.removeprefix('unreadable: ')}")  # fmt: skip


def _publish(partial: Path, entry: Path) -> None:
    try:
        partial.rename(entry)
    except OSError:
        if not (entry / "config.json").is_file():  # not a concurrent converter's entry
            raise
