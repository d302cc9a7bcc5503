"""GGUF files in the model roots: found under their short ids, kept inside the roots,
converted by a child process into a cached snapshot, and refused clearly when they are
not GGUF or name an architecture transformers cannot build. (The real SmolLM2 file is
converted, loaded and served in tests/realmodel.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from neuron.worker import gguf
from neuron.worker.errors import InvalidSnapshot, UnsafeModelId, UnsupportedModel
from neuron.worker.snapshot import available_model_ids, inspect_model, resolve_snapshot


def _gguf_file(path: Path, arch: str = "helexa-nope") -> Path:
    """A well-formed GGUF file (header, one tensor) naming `arch`."""
    import numpy as np
    from gguf import GGUFWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_files_are_listed_and_resolved_by_their_short_ids(tmp_path):
    root = tmp_path / "models"
    _gguf_file(root / "tiny.gguf")
    _gguf_file(root / "org" / "other.gguf")
    (root / ".hidden.gguf").write_bytes(b"")
    assert available_model_ids([root]) == ["org/other", "tiny"]
    found = resolve_snapshot("tiny", [root])
    assert (found.layout, found.path, found.root) == ("gguf", root / "tiny.gguf", root)
    assert resolve_snapshot("org/other", [root]).path == root / "org" / "other.gguf"


def test_an_absolute_gguf_path_resolves_where_absolute_paths_are_allowed(tmp_path):
    file = _gguf_file(tmp_path / "x.gguf")
    found = resolve_snapshot(str(file), [], allow_absolute=True)
    assert (found.layout, found.path, found.model_id) == ("gguf", file, str(file))
    with pytest.raises(UnsafeModelId):
        resolve_snapshot(str(file), [])


def test_a_gguf_link_leaving_the_root_is_refused(tmp_path):
    outside = _gguf_file(tmp_path / "elsewhere" / "secret.gguf")
    root = tmp_path / "models"
    root.mkdir()
    (root / "sneaky.gguf").symlink_to(outside)
    with pytest.raises(UnsafeModelId, match="outside the model root"):
        resolve_snapshot("sneaky", [root])


def test_the_cache_entry_follows_the_file_not_its_name(tmp_path):
    source = _gguf_file(tmp_path / "a.gguf")
    os.link(source, tmp_path / "b.gguf")
    cache = tmp_path / "cache"
    assert gguf.entry_for(source, cache) == gguf.entry_for(tmp_path / "b.gguf", cache)
    _gguf_file(tmp_path / "c.gguf")
    assert gguf.entry_for(tmp_path / "c.gguf", cache) != gguf.entry_for(source, cache)


def test_the_cache_directory_honours_the_environment(tmp_path):
    assert gguf.cache_dir({"HELEXA_GGUF_CACHE": "/x"}) == Path("/x")
    assert gguf.cache_dir({"CACHE_DIRECTORY": "/var/cache/neuron"}) == Path(
        "/var/cache/neuron/gguf"
    )
    assert gguf.cache_dir({"XDG_CACHE_HOME": "/c"}) == Path("/c/helexa/gguf")


@pytest.mark.slow
def test_an_unknown_architecture_is_unsupported_model(tmp_path):
    root = tmp_path / "models"
    _gguf_file(root / "nope.gguf")
    cache = tmp_path / "cache"
    with pytest.raises(UnsupportedModel, match="architecture helexa-nope is not supported"):
        gguf.converted(root / "nope.gguf", cache)
    assert not any(cache.iterdir())  # no partial entry left behind


@pytest.mark.slow
def test_a_file_that_is_not_gguf_is_an_invalid_snapshot(tmp_path, monkeypatch):
    root = tmp_path / "models"
    root.mkdir()
    (root / "junk.gguf").write_bytes(b"this is not a model\n" * 10)
    monkeypatch.setenv("HELEXA_GGUF_CACHE", str(tmp_path / "cache"))
    with pytest.raises(InvalidSnapshot, match=r"junk\.gguf is not a readable GGUF file"):
        inspect_model("junk", [root])
