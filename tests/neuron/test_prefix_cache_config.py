"""The prefix cache's settings: `[cache]`, the `[[models]]` overrides, the
budget each load sends its worker, and the worker's default size (#13)."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuron.config import ConfigError, load_config
from neuron.registry import LoadRequest, RegistryLimits, prefix_cache_budget
from neuron.worker.service import default_prefix_cache_bytes
from protocol.ids import ModelId

MIB = 1 << 20
GIB = 1 << 30


def config_of(tmp_path: Path, text: str, env: dict[str, str] | None = None):
    path = tmp_path / "neuron.toml"
    path.write_text(text)
    return load_config(path, env or {})


def budget(config, model_index: int | None = None) -> int | None:
    """What the daemon sends for a `[[models]]` entry (or an API load: None)."""
    cache = config.cache
    limits = RegistryLimits(
        model_roots=(),
        prefix_cache=cache.prefix_cache,
        prefix_cache_bytes=cache.prefix_cache_mb and cache.prefix_cache_mb * MIB,
    )
    request = LoadRequest(ModelId("m"))
    if model_index is not None:
        model = config.models[model_index]
        mb = model.prefix_cache_mb
        request = LoadRequest(
            ModelId(model.id), prefix_cache=model.prefix_cache,
            prefix_cache_bytes=mb and mb * MIB,
        )  # fmt: skip
    return prefix_cache_budget(limits, request)


def test_on_by_default_and_sized_by_the_worker():
    config = load_config(None, {})
    assert config.cache.prefix_cache is True and config.cache.prefix_cache_mb is None
    assert budget(config) is None  # the worker sizes it from the model's KV budget


def test_a_budget_and_per_model_overrides(tmp_path):
    config = config_of(tmp_path, """
        [cache]
        prefix_cache_mb = 256
        [[models]]
        id = "a"
        [[models]]
        id = "b"
        prefix_cache = false
        [[models]]
        id = "c"
        prefix_cache_mb = 64
    """)  # fmt: skip
    assert budget(config) == 256 * MIB
    assert [budget(config, i) for i in range(3)] == [256 * MIB, 0, 64 * MIB]


def test_false_turns_it_off_everywhere_unless_a_model_turns_it_back_on(tmp_path):
    config = config_of(tmp_path, """
        [cache]
        prefix_cache = false
        [[models]]
        id = "a"
        [[models]]
        id = "b"
        prefix_cache = true
    """)  # fmt: skip
    assert budget(config) == 0
    assert [budget(config, 0), budget(config, 1)] == [0, None]


def test_environment_and_bad_values():
    config = load_config(None, {"NEURON_CACHE_PREFIX_CACHE": "off",
                                "NEURON_CACHE_PREFIX_CACHE_MB": "32"})  # fmt: skip
    assert (config.cache.prefix_cache, config.cache.prefix_cache_mb) == (False, 32)
    with pytest.raises(ConfigError, match="NEURON_CACHE_PREFIX_CACHE_MB"):
        load_config(None, {"NEURON_CACHE_PREFIX_CACHE_MB": "0"})
    with pytest.raises(ConfigError, match="NEURON_CACHE_PREFIX_CACHE: expected true/false"):
        load_config(None, {"NEURON_CACHE_PREFIX_CACHE": "maybe"})


def test_unknown_cache_key_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="prefix_cache"):
        config_of(tmp_path, "[cache]\nprefix_cach = true\n")


def test_the_worker_default_is_a_quarter_of_the_kv_budget_capped_on_cpu(monkeypatch):
    from neuron.worker import errors, service

    def per_token(size: int | None):
        def kv_bytes_per_token(loaded) -> int:
            if size is None:
                raise errors.UnsupportedModel("config lacks layer/head sizes")
            return size

        monkeypatch.setattr(service, "kv_bytes_per_token", kv_bytes_per_token)

    per_token(1024)  # 1 KiB a token
    assert default_prefix_cache_bytes(None, 4096, cpu=True) == 4096 * 1024 // 4
    per_token(256 * 1024)
    assert default_prefix_cache_bytes(None, 16 * 32768, cpu=True) == GIB
    assert default_prefix_cache_bytes(None, 16 * 32768, cpu=False) == 16 * 32768 * 256 * 1024 // 4
    per_token(None)
    assert default_prefix_cache_bytes(None, 4096, cpu=False) == GIB
