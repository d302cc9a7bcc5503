"""Loading snapshots onto the CPU: dtypes, measured memory, and memory given back."""

from __future__ import annotations

import gc
import json
import shutil
import weakref

import pytest

from neuron.synth import synthesize
from neuron.worker.errors import LoadFailed, ModelNotLoaded
from neuron.worker.snapshot import resolve_snapshot

torch = pytest.importorskip("torch")
loader = pytest.importorskip("neuron.worker.loader")

TINY_PARAMETERS = 918_272  # embeddings tied with lm_head, counted once


@pytest.mark.parametrize("layout", ["plain", "hf-cache"])
def test_loads_both_layouts_and_reports(demo_models, layout):
    root = demo_models.plain_root if layout == "plain" else demo_models.hf_cache_root
    loaded = loader.load_model(resolve_snapshot("helexa/tiny-chat", [root]), dtype="fp32")
    report = loaded.report
    assert (report.model_id, report.device, report.dtype) == ("helexa/tiny-chat", "cpu", "float32")
    assert report.num_parameters == TINY_PARAMETERS
    buffers = sum(b.numel() * b.element_size() for b in loaded.model.buffers())
    assert report.tensor_bytes == TINY_PARAMETERS * 4 + buffers
    assert report.load_seconds > 0
    assert report.after.rss_bytes > 0
    assert report.cuda_allocated_delta_bytes is None  # CPU: no allocator figures
    assert loaded.info.snapshot.layout == layout
    loaded.unload()


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [("auto", torch.float32), ("fp32", torch.float32), ("bf16", torch.bfloat16),
     ("fp16", torch.float16), ("bfloat16", torch.bfloat16)],
)  # fmt: skip
def test_loads_in_the_requested_dtype(demo_models, dtype, expected):
    snapshot = resolve_snapshot("helexa/tiny-chat", [demo_models.plain_root])
    loaded = loader.load_model(snapshot, dtype=dtype)
    assert {p.dtype for p in loaded.model.parameters()} == {expected}
    assert loaded.report.dtype == str(expected).removeprefix("torch.")
    loaded.unload()


def test_rejects_unknown_dtypes(demo_models):
    snapshot = resolve_snapshot("helexa/tiny-chat", [demo_models.plain_root])
    with pytest.raises(ValueError, match="dtype must be one of"):
        loader.load_model(snapshot, dtype="int4")


def test_weights_do_not_stay_mapped_from_the_snapshot_file(demo_models):
    psutil = pytest.importorskip("psutil")
    snapshot = resolve_snapshot("helexa/tiny-chat", [demo_models.plain_root])
    loaded = loader.load_model(snapshot, dtype="fp32")
    maps = [m.path for m in psutil.Process().memory_maps() if m.path.endswith(".safetensors")]
    assert maps == []
    assert loaded.model.lm_head.weight is loaded.model.model.embed_tokens.weight
    loaded.unload()


def test_unload_gives_the_memory_back(demo_cache_dir):
    # The 4.2M-parameter model (17 MB in fp32) stands well clear of allocator noise.
    root = demo_cache_dir / "loader"
    synthesize(root, name="helexa/small-chat", size="small")
    snapshot = resolve_snapshot("helexa/small-chat", [root])
    loader.load_model(snapshot, dtype="fp32").unload()  # warm imports and allocator
    loaded = loader.load_model(snapshot, dtype="fp32")
    size = loaded.report.tensor_bytes
    assert size == pytest.approx(4.2e6 * 4, rel=0.05)
    assert loaded.report.rss_delta_bytes > 0.8 * size
    model_ref = weakref.ref(loaded.model)
    weight_ref = weakref.ref(loaded.model.lm_head.weight)
    report = loaded.unload()
    gc.collect()
    assert model_ref() is None
    assert weight_ref() is None
    assert report.tensor_bytes_released == size
    assert report.rss_delta_bytes < -0.8 * size
    assert not loaded.loaded
    with pytest.raises(ModelNotLoaded, match="small-chat"):
        _ = loaded.model
    with pytest.raises(ModelNotLoaded, match="already unloaded"):
        loaded.unload()


def test_corrupt_weights_fail_with_the_model_id(tmp_path, demo_models):
    shutil.copytree(demo_models.plain_path, tmp_path / "org" / "broken")
    weights = tmp_path / "org" / "broken" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(LoadFailed, match=r"could not load 'org/broken' .*deserializing header"):
        loader.load_model(resolve_snapshot("org/broken", [tmp_path]))


def test_unknown_architecture_fails_with_the_model_id(tmp_path, demo_models):
    shutil.copytree(demo_models.plain_path, tmp_path / "org" / "alien")
    config_file = tmp_path / "org" / "alien" / "config.json"
    config = json.loads(config_file.read_text())
    config.update(model_type="not-a-real-arch", architectures=["Nope"])
    config_file.write_text(json.dumps(config))
    with pytest.raises(LoadFailed, match=r"could not load 'org/alien' .*not-a-real-arch"):
        loader.load_model(resolve_snapshot("org/alien", [tmp_path]))
