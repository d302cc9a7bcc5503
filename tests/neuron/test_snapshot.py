"""Snapshot resolution and inspection: both layouts, refusals, and no torch in sight."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from neuron.worker.errors import InvalidSnapshot, ModelNotFound, UnsafeModelId
from neuron.worker.snapshot import (
    available_model_ids,
    inspect_model,
    resolve_snapshot,
    snapshot_at,
)


def _fake_snapshot(path: Path, **config) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "qwen3", **config}))
    (path / "model.safetensors").write_bytes(b"\0" * 16)
    return path


def test_resolves_the_plain_layout(demo_models):
    found = resolve_snapshot("helexa/tiny-chat", [demo_models.plain_root])
    assert found.layout == "plain"
    assert found.path == demo_models.plain_path.resolve()
    assert found.root == demo_models.plain_root.resolve()
    assert found.revision is None


def test_resolves_the_hf_cache_layout(demo_models):
    found = resolve_snapshot("helexa/tiny-chat", [demo_models.hf_cache_root])
    assert found.layout == "hf-cache"
    assert found.path == demo_models.hf_cache_path.resolve()
    assert found.revision == demo_models.hf_cache_path.name


def test_roots_are_tried_in_order(demo_models):
    roots = [demo_models.hf_cache_root, demo_models.plain_root]
    assert resolve_snapshot("helexa/tiny-chat", roots).layout == "hf-cache"
    assert resolve_snapshot("helexa/tiny-chat", roots[::-1]).layout == "plain"


def test_hf_cache_honours_refs_main_else_newest(tmp_path):
    snapshots = tmp_path / "models--org--m" / "snapshots"
    old = _fake_snapshot(snapshots / "aaa")
    new = _fake_snapshot(snapshots / "bbb")
    os.utime(old, (1_000, 1_000))
    os.utime(new, (2_000, 2_000))
    assert resolve_snapshot("org/m", [tmp_path]).revision == "bbb"
    refs = tmp_path / "models--org--m" / "refs"
    refs.mkdir()
    (refs / "main").write_text("aaa\n")
    assert resolve_snapshot("org/m", [tmp_path]).revision == "aaa"
    (refs / "main").write_text("gone")  # a dangling ref falls back to the newest
    assert resolve_snapshot("org/m", [tmp_path]).revision == "bbb"


def test_single_segment_ids_resolve(tmp_path):
    _fake_snapshot(tmp_path / "gpt2")
    assert resolve_snapshot("gpt2", [tmp_path]).path == (tmp_path / "gpt2").resolve()


@pytest.mark.parametrize(
    ("model_id", "reason"),
    [
        ("../x", "'..' path segment"),
        ("org/../../etc", "'..' path segment"),
        ("org/./name", "'.' or '..'"),
        ("/etc", "absolute paths are not allowed"),
        ("org\\name", "backslash"),
        ("org/na\0me", "NUL byte"),
        ("", "empty"),
        ("a/b/c", "expected 'name' or 'org/name'"),
        ("org//name", "empty path segment"),
        ("org/na me", "not a valid repository name"),
        ("org/a--b", "not a valid repository name"),
    ],
)
def test_unsafe_ids_are_refused_by_name(tmp_path, model_id, reason):
    with pytest.raises(UnsafeModelId) as caught:
        resolve_snapshot(model_id, [tmp_path])
    message = str(caught.value)
    assert repr(model_id) in message
    assert reason in message


def test_symlink_out_of_the_root_is_refused(tmp_path):
    outside = _fake_snapshot(tmp_path / "elsewhere" / "model")
    root = tmp_path / "models"
    (root / "org").mkdir(parents=True)
    (root / "org" / "name").symlink_to(outside)
    with pytest.raises(UnsafeModelId, match=r"'org/name'.*outside the model root"):
        resolve_snapshot("org/name", [root])


def test_file_symlink_out_of_the_root_is_refused(tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    root = tmp_path / "models"
    snapshot = _fake_snapshot(root / "org" / "name")
    (snapshot / "tokenizer.json").symlink_to(secret)
    with pytest.raises(UnsafeModelId, match=r"tokenizer\.json resolves to .*secret\.json"):
        resolve_snapshot("org/name", [root])


def test_hf_cache_symlinks_out_of_the_root_are_refused(tmp_path):
    outside = _fake_snapshot(tmp_path / "elsewhere")
    snapshots = tmp_path / "models" / "models--org--m" / "snapshots"
    snapshots.mkdir(parents=True)
    (snapshots / "rev").symlink_to(outside)
    with pytest.raises(UnsafeModelId, match="outside the model root"):
        resolve_snapshot("org/m", [tmp_path / "models"])


def test_symlinks_inside_the_root_are_fine(tmp_path):
    real = _fake_snapshot(tmp_path / "store" / "real")
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "alias").symlink_to(real)
    assert resolve_snapshot("org/alias", [tmp_path]).path == real.resolve()


def test_absolute_paths_only_when_allowed(demo_models):
    path = str(demo_models.plain_path)
    with pytest.raises(UnsafeModelId, match="absolute paths are not allowed"):
        resolve_snapshot(path, [])
    found = resolve_snapshot(path, [], allow_absolute=True)
    assert (found.layout, found.root, found.path) == ("absolute", None, Path(path).resolve())


def test_absolute_paths_still_refuse_dot_dot(demo_models):
    sneaky = f"{demo_models.plain_path}/../tiny-chat"
    with pytest.raises(UnsafeModelId, match=r"'\.\.' path segment"):
        resolve_snapshot(sneaky, [], allow_absolute=True)


def test_a_worker_takes_the_parents_path_as_given(demo_models, tmp_path):
    found = snapshot_at("helexa/tiny-chat", demo_models.hf_cache_path)
    assert (found.model_id, found.path) == ("helexa/tiny-chat", demo_models.hf_cache_path.resolve())
    with pytest.raises(ModelNotFound, match=r"'org/m': no config\.json"):
        snapshot_at("org/m", tmp_path)


def test_missing_models_name_the_id_and_roots(tmp_path):
    with pytest.raises(ModelNotFound, match=rf"'org/absent' not found .*{tmp_path}"):
        resolve_snapshot("org/absent", [tmp_path])


def test_inspects_a_demo_snapshot(demo_models):
    info = inspect_model("helexa/tiny-chat", [demo_models.hf_cache_root])
    assert info.model_type == "qwen3"
    assert info.architectures == ("Qwen3ForCausalLM",)
    assert info.declared_dtype == "float32"
    assert info.vocab_size == 4096
    assert info.max_position_embeddings == 4096
    assert info.eos_token_ids == (4087, 4089)  # <|endoftext|>, <|im_end|>
    assert (info.bos_token_id, info.pad_token_id) == (4087, 4087)
    assert info.chat_template_file is not None
    assert info.chat_template_file.name == "chat_template.jinja"
    assert info.has_tokenizer
    assert info.weight_bytes == (demo_models.plain_path / "model.safetensors").stat().st_size
    assert info.generation.temperature == pytest.approx(0.6)
    assert (info.generation.top_k, info.generation.do_sample) == (20, True)
    assert info.kv_bytes_per_token(2) == 2 * 2 * 2 * 32 * 2  # K+V, layers, kv heads, dim


def test_unreadable_config_is_an_invalid_snapshot(tmp_path):
    snapshot = _fake_snapshot(tmp_path / "org" / "m")
    (snapshot / "config.json").write_text("{not json")
    with pytest.raises(InvalidSnapshot, match=r"config\.json is unreadable"):
        inspect_model("org/m", [tmp_path])


def test_snapshot_without_safetensors_is_invalid(tmp_path, demo_models):
    snapshot = tmp_path / "org" / "m"
    shutil.copytree(demo_models.plain_path, snapshot)
    (snapshot / "model.safetensors").unlink()
    with pytest.raises(InvalidSnapshot, match=r"no \.safetensors weights"):
        inspect_model("org/m", [tmp_path])


def test_the_parent_side_never_imports_torch():
    code = (
        "import sys, neuron.worker, neuron.worker.snapshot, neuron.worker.errors\n"
        "heavy = {'torch', 'transformers', 'tokenizers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_missing_models_suggest_near_misses(demo_models, tmp_path):
    plain = tmp_path / "acme" / "Llama-Tiny"
    plain.mkdir(parents=True)
    (plain / "config.json").write_text("{}")
    roots = [demo_models.hf_cache_root, tmp_path]
    assert available_model_ids(roots) == ["acme/Llama-Tiny", "helexa/tiny-chat"]
    cases = {
        "helexa/tiny-caht": "'helexa/tiny-chat'",  # a typo
        "acme/llama-tiny": "'acme/Llama-Tiny'",  # case
        "tiny-chat": "'helexa/tiny-chat'",  # the org left out
        "other/Llama-Tiny": "'acme/Llama-Tiny'",  # the wrong org
    }
    for wrong, suggestion in cases.items():
        with pytest.raises(ModelNotFound) as caught:
            resolve_snapshot(wrong, roots)
        assert str(caught.value).endswith(f"; did you mean {suggestion}?"), wrong
    with pytest.raises(ModelNotFound) as caught:
        resolve_snapshot("org/unrelated", roots)
    assert "did you mean" not in str(caught.value)


def test_listing_ignores_hidden_entries_and_unreadable_roots(tmp_path):
    (tmp_path / ".cache" / "x").mkdir(parents=True)
    (tmp_path / ".cache" / "x" / "config.json").write_text("{}")
    (tmp_path / "models--org--empty" / "snapshots").mkdir(parents=True)
    assert available_model_ids([tmp_path, tmp_path / "absent"]) == []
