"""neuron.config: defaults, TOML, environment overrides, and errors that say where."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neuron.config import (
    ENV_VARS,
    ConfigError,
    NeuronConfig,
    default_model_roots,
    find_config_path,
    load_config,
)
from neuron.devices import DeviceSpec, WorkerTimeouts
from neuron.discovery import HostResources

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
GIB = 1024**3
HOST = HostResources(cores=8, memory_bytes=32 * GIB)


def write(tmp_path: Path, text: str, name: str = "neuron.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(path: Path | None, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env or {})
    return list(info.value.problems)


# ------------------------------------------------------------------ defaults


def test_defaults_without_a_file():
    config = load_config(None, {})
    assert (config.listen.host, config.listen.port) == ("0.0.0.0", 13131)
    assert config.devices == "auto" and config.models == ()
    assert config.allow_absolute_model_paths is False
    assert config.auth.enabled is False
    assert (config.log.format, config.log.level) == ("plain", "info")
    assert config.limits.default_max_tokens == 8192
    assert config.limits.max_prompt_tokens == 16384
    assert config.http.keepalive_interval == 1.0
    assert config.admission.max_in_flight is None  # → the device's max_batch_size
    assert config.model_roots[0] == "/var/lib/neuron/models"
    assert config.source is None


def test_public_listen_without_auth_is_a_note_and_loopback_is_not():
    assert any("without an auth token" in note for note in load_config(None, {}).notes)
    quiet = load_config(None, {"NEURON_LISTEN_HOST": "127.0.0.1"})
    assert not any("auth token" in note for note in quiet.notes)
    guarded = load_config(None, {"NEURON_AUTH_TOKEN": "s3cret"})
    assert guarded.auth.enabled and not guarded.notes


def test_default_model_roots_add_the_hub_cache_only_when_present(tmp_path):
    hub = tmp_path / "hub"
    assert default_model_roots({"HF_HUB_CACHE": str(hub)}) == ("/var/lib/neuron/models",)
    hub.mkdir()
    assert default_model_roots({"HF_HUB_CACHE": str(hub)})[1] == str(hub)
    assert default_model_roots({"HF_HOME": str(tmp_path)})[1] == str(hub)
    (tmp_path / ".cache" / "huggingface" / "hub").mkdir(parents=True)
    home_hub = default_model_roots({"HOME": str(tmp_path)})[1]
    assert home_hub == str(tmp_path / ".cache" / "huggingface" / "hub")


def test_worker_timeouts_come_from_the_timeouts_section(tmp_path):
    path = write(tmp_path, "[timeouts]\nworker_ready = 30\nworker_step = 7.5\nload = 60\n")
    timeouts = load_config(path, {}).worker_timeouts()
    assert timeouts == WorkerTimeouts(ready=30, step=7.5, load=60)
    assert load_config(None, {}).worker_timeouts() == WorkerTimeouts()


# ------------------------------------------------------------------ the file

FULL = """
model_roots = ["models", "~/more", "/srv/models"]
allow_absolute_model_paths = true

[[devices]]
id = "cpu:1"
threads = 2
memory_mb = 4096

[[devices]]
id = "cpu:0"
threads = 1
max_batch_size = 4

[[models]]
id = "Qwen/Qwen3-0.6B"
dtype = "bf16"
devices = ["cpu:1"]
pinned = true

[[models]]
id = "org/other"
devices = [0]
max_in_flight = 2

[listen]
host = "10.0.0.5"
port = 14000

[auth]
token = "s3cret"

[log]
format = "json"
level = "debug"

[http]
max_body_bytes = 1048576
keepalive_interval = 2.5

[limits]
default_max_tokens = 1024
max_prompt_tokens = 4096

[engine]
max_batch_size = 8
default_dtype = "fp32"

[admission]
max_in_flight = 4
max_queue_depth = 0
queue_timeout = 5

[timeouts]
request_idle = 90
drain = 10
"""


def test_every_section_is_read(tmp_path):
    path = write(tmp_path, FULL)
    config = load_config(path, {"HOME": "/home/op"})
    assert config.model_roots == (str(tmp_path / "models"), "/home/op/more", "/srv/models")
    assert config.allow_absolute_model_paths is True
    assert [d.id for d in config.devices] == ["cpu:1", "cpu:0"]
    assert config.models[0].pinned and config.models[0].dtype == "bf16"
    assert config.models[1].devices == (0,) and config.models[1].max_in_flight == 2
    assert (config.listen.host, config.listen.port) == ("10.0.0.5", 14000)
    assert config.auth.token == "s3cret"
    assert (config.log.format, config.log.level) == ("json", "debug")
    assert (config.http.max_body_bytes, config.http.keepalive_interval) == (1048576, 2.5)
    assert (config.limits.default_max_tokens, config.limits.max_prompt_tokens) == (1024, 4096)
    assert (config.engine.max_batch_size, config.engine.default_dtype) == (8, "fp32")
    assert config.admission.max_in_flight == 4 and config.admission.max_queue_depth == 0
    assert config.admission.queue_timeout == 5.0
    assert (config.timeouts.request_idle, config.timeouts.drain) == (90.0, 10.0)
    assert config.source == str(path) and config.notes == ()


def test_explicit_devices_become_specs_in_index_order(tmp_path):
    config = load_config(write(tmp_path, FULL), {})
    specs = config.device_specs(host=HOST)
    assert specs == [
        DeviceSpec("cpu:0", threads=1, memory_budget_bytes=16 * GIB, max_batch_size=4),
        DeviceSpec("cpu:1", threads=2, memory_budget_bytes=4096 * 2**20, max_batch_size=8),
    ]
    resolved = config.model_devices(specs)
    assert [(m.id, devices) for m, devices in resolved] == [
        ("Qwen/Qwen3-0.6B", (1,)),
        ("org/other", (0,)),
    ]


def test_devices_may_be_a_list_of_ids(tmp_path):
    """What `cortex up --devices cpu:0,cpu:1` writes and operators type."""
    config = load_config(write(tmp_path, 'devices = ["cpu:1", "cpu:0"]\n'), {})
    tables_text = "[[devices]]\nid = 'cpu:1'\n[[devices]]\nid = 'cpu:0'\n"
    tables = load_config(write(tmp_path, tables_text), {})
    assert config.devices == tables.devices
    assert [spec.id for spec in config.device_specs(host=HOST)] == ["cpu:0", "cpu:1"]


def test_model_devices_that_do_not_exist_name_the_entry(tmp_path):
    path = write(tmp_path, '[[models]]\nid = "a"\ndevices = ["cuda:3", 7]\n')
    config = load_config(path, {})
    with pytest.raises(ConfigError) as info:
        config.model_devices(config.device_specs(host=HOST))
    assert info.value.problems == (
        f"{path}: [[models]] #1 devices: no device 'cuda:3' (this node has cpu:0)",
        f"{path}: [[models]] #1 devices: no device 7 (this node has cpu:0)",
    )


def test_tensor_parallel_or_upstreams_min_devices_gives_the_ranks(tmp_path):
    text = ("devices = ['cpu:0', 'cpu:1']\n[[models]]\nid = 'a'\ntensor_parallel = 2\n"
            "[[models]]\nid = 'b'\nmin_devices = 2\n[[models]]\nid = 'c'\n"
            "[[default_models]]\nmodel_id = 'd'\ntensor_parallel = 2\n")  # fmt: skip
    config = load_config(write(tmp_path, text), {})
    assert [(m.id, m.ranks) for m in config.models] == [("a", 2), ("b", 2), ("c", 1), ("d", 2)]
    path = write(tmp_path, "[[models]]\nid = 'a'\ntensor_parallel = 2\ndevices = ['cpu:0']\n")
    config = load_config(path, {})
    with pytest.raises(ConfigError) as info:
        config.model_devices(config.device_specs(host=HOST))
    assert info.value.problems == (
        f"{path}: [[models]] #1 devices: tensor_parallel = 2 needs one device per rank",
    )


# ------------------------------------------------------------------ errors in the file


def test_a_wrong_type_names_file_section_and_key(tmp_path):
    path = write(tmp_path, '[admission]\nmax_in_flight = "8"\n', name="neuron.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value) == f"{path}: [admission] max_in_flight: expected integer, got string"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[listen]\nport = 70000\n", "[listen] port: must be a port number 0-65535, got 70000"),
        ("[log]\nformat = 'xml'\n", "[log] format: expected one of 'plain', 'json', got 'xml'"),
        ("[engine]\ndefault_dtype = 'int8'\n", "[engine] default_dtype: must be one of"),
        ("[cpu]\ndevices = 0\n", "[cpu] devices: must be at least 1, got 0"),
        ("[timeouts]\ndrain = -1\n", "[timeouts] drain: must be greater than 0, got -1"),
        ("[auth]\ntoken = 'a b'\n", "[auth] token: must not contain whitespace"),
        ("listen = 5\n", "listen: expected table, got integer"),
        ("devices = 'gpu'\n", "devices: expected one of 'auto'"),
        ("devices = []\n", 'devices: needs at least one [[devices]] entry, or "auto"'),
        ("[[devices]]\nid = 'gpu:0'\n", "[[devices]] #1 id: must be 'cpu:N' or 'cuda:N'"),
        ("[[devices]]\nthreads = 2\n", "[[devices]] #1 id: required field missing"),
        ("devices = ['cpu:0', 'gpu:1']\n", "[[devices]] #2 id: must be 'cpu:N' or 'cuda:N'"),
        ("devices = ['cpu:0', 3]\n", "devices[1]: expected table, got integer"),
        ("[[devices]]\nid = 'cpu:0'\n[[devices]]\nid = 'cpu:0'\n",
         "[[devices]] #2 id: 'cpu:0' appears more than once"),
        ("[[models]]\nid = 'a'\ndevices = [1.5]\n",
         "[[models]] #1 devices[0]: expected integer or string, got number"),
        ("model_roots = ['a', 3]\n", "model_roots[1]: expected string, got integer"),
        ("[timeouts]\nworker_heartbeat_interval = 5\n",
         "[timeouts] worker_heartbeat_interval: must be less than worker_heartbeat (5), got 5"),
    ],
)  # fmt: skip
def test_bad_values_name_their_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    (problem,) = problems(path)
    assert problem.startswith(f"{path}: {expected}")


def test_unknown_keys_are_refused_with_a_suggestion(tmp_path):
    path = write(
        tmp_path,
        "max_prompt_token = 5\n[admission]\nmax_inflight = 3\n"
        "[[devices]]\nid = 'cpu:0'\nthread = 2\n[bogus]\nx = 1\n",
    )
    assert problems(path) == [
        f"{path}: max_prompt_token: unknown key",
        f"{path}: [admission] max_inflight: unknown key (did you mean 'max_in_flight'?)",
        f"{path}: [[devices]] #1 thread: unknown key (did you mean 'threads'?)",
        f"{path}: bogus: unknown key",
    ]


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(tmp_path, "[admission]\nmax_inflight = 3\nqueue_timeout = 'soon'\n")
    found = problems(path, {"NEURON_LISTEN_PORT": "http"})
    assert len(found) == 3
    with pytest.raises(ConfigError, match=r"^3 configuration problems:\n  NEURON_LISTEN_PORT"):
        load_config(path, {"NEURON_LISTEN_PORT": "http"})


def test_invalid_toml_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "[listen]\nport = \n")
    (problem,) = problems(path)
    assert problem.startswith(f"{path}: invalid TOML: ") and "line 2" in problem


def test_a_missing_file_is_an_error(tmp_path):
    assert problems(tmp_path / "absent.toml") == [f"{tmp_path / 'absent.toml'}: no such file"]


def test_find_config_path(tmp_path):
    assert find_config_path({"NEURON_CONFIG": str(tmp_path / "x.toml")}) == tmp_path / "x.toml"
    assert find_config_path({}) in (None, Path("/etc/neuron/neuron.toml"))


# ------------------------------------------------------------------ the environment


def test_environment_wins_over_the_file(tmp_path):
    path = write(tmp_path, "[listen]\nport = 14000\nhost = '10.0.0.1'\n[admission]\n"
                           "max_queue_depth = 3\n")  # fmt: skip
    env = {
        "NEURON_LISTEN_PORT": "15000",
        "NEURON_ADMISSION__MAX_QUEUE_DEPTH": "9",  # upstream's figment spelling
        "NEURON_LOG_FORMAT": "json",
        "NEURON_AUTH_TOKEN": "tok",
        "NEURON_MAX_PROMPT_TOKENS": "2048",  # upstream's runtime variable
        "NEURON_ALLOW_ABSOLUTE_MODEL_PATHS": "yes",
        "NEURON_TIMEOUTS_DRAIN": "2.5",
        "NEURON_MODEL_ROOTS": os.pathsep.join(["/a", "", "rel"]),
    }
    config = load_config(path, env)
    assert (config.listen.host, config.listen.port) == ("10.0.0.1", 15000)
    assert config.admission.max_queue_depth == 9
    assert config.log.format == "json" and config.auth.token == "tok"
    assert config.limits.max_prompt_tokens == 2048
    assert config.allow_absolute_model_paths is True
    assert config.timeouts.drain == 2.5
    assert config.model_roots == ("/a", str(Path.cwd() / "rel"))  # env: relative to cwd


def test_device_and_model_lists_from_the_environment():
    env = {"NEURON_DEVICES": "cpu:0, cpu:1", "NEURON_MODELS": "org/a,org/b"}
    config = load_config(None, env)
    assert [d.id for d in config.devices] == ["cpu:0", "cpu:1"]
    assert [m.id for m in config.models] == ["org/a", "org/b"]
    assert load_config(None, {"NEURON_DEVICES": "auto"}).devices == "auto"


def test_empty_variables_count_as_unset():
    assert load_config(None, {"NEURON_LISTEN_PORT": "", "NEURON_AUTH_TOKEN": " "}) == (
        load_config(None, {})
    )


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("NEURON_LISTEN_PORT", "http", "NEURON_LISTEN_PORT: expected integer, got 'http'"),
        ("NEURON_PORT", "1.5", "NEURON_PORT: expected integer, got '1.5'"),
        ("NEURON_ADMISSION_QUEUE_TIMEOUT", "inf",
         "NEURON_ADMISSION_QUEUE_TIMEOUT: expected number, got 'inf'"),
        ("NEURON_ALLOW_ABSOLUTE_MODEL_PATHS", "maybe",
         "NEURON_ALLOW_ABSOLUTE_MODEL_PATHS: expected true/false"),
        ("NEURON_LISTEN_PORT", "99999",
         "NEURON_LISTEN_PORT: must be a port number 0-65535, got 99999"),
        ("NEURON_LOG_LEVEL", "loud", "NEURON_LOG_LEVEL: expected one of 'debug'"),
        ("NEURON_DEVICES", "gpu0", "NEURON_DEVICES: must be 'cpu:N' or 'cuda:N'"),
    ],
)  # fmt: skip
def test_bad_environment_values_name_the_variable(name, value, expected):
    (problem,) = problems(None, {name: value})
    assert problem.startswith(expected)


def test_a_misspelt_variable_is_noted_and_others_are_left_alone():
    config = load_config(None, {"NEURON_LISTEN_PROT": "1", "NEURON_BATCHING": "0"})
    typo = [note for note in config.notes if "NEURON_LISTEN_PROT" in note]
    assert typo == ["NEURON_LISTEN_PROT is not a neuron setting (did you mean NEURON_LISTEN_PORT?)"]
    assert not any("NEURON_BATCHING" in note for note in config.notes)


def test_environment_names_are_unique_and_cover_every_scalar_key():
    assert all(re.fullmatch(r"NEURON_[A-Z0-9_]+", name) for name in ENV_VARS)
    paths = {path for path, _ in ENV_VARS.values()}
    assert ("listen", "port") in paths and ("model_roots",) in paths and ("devices",) in paths
    assert len(paths) == len({name for name in ENV_VARS if "__" not in name}) - 2  # 2 aliases


# ------------------------------------------------------------------ upstream's neuron.toml

UPSTREAM = """
port = 13131

[[harnesses]]
name = "candle"

[[default_models]]
model_id = "Qwen/Qwen3-8B"
harness = "candle"
devices = [0]

[harness.candle]
hf_cache = "/var/lib/neuron/hf"

[harness.candle.admission]
max_in_flight = 8
max_queue_depth = 24
max_wait_secs = 60
max_per_principal = 2

[harness.candle.prefix_cache]
enabled = true
"""


def test_upstream_keys_are_translated(tmp_path):
    path = write(tmp_path, UPSTREAM)
    config = load_config(path, {"HF_HUB_CACHE": str(tmp_path / "none")})
    assert config.listen.port == 13131
    assert [(m.id, m.devices) for m in config.models] == [("Qwen/Qwen3-8B", (0,))]
    assert (config.admission.max_in_flight, config.admission.max_queue_depth) == (8, 24)
    assert config.admission.queue_timeout == 60.0
    assert config.model_roots == ("/var/lib/neuron/models", "/var/lib/neuron/hf")
    notes = "\n".join(config.notes)
    assert "[[harnesses]] has no effect" in notes
    assert "[harness.candle.admission] max_per_principal has no effect" in notes
    assert "[harness.candle] prefix_cache has no effect" in notes


def test_upstream_errors_name_the_upstream_key(tmp_path):
    path = write(
        tmp_path,
        "[[default_models]]\nmodel_id = 'a'\nquant = 'q4k'\n"
        "[harness.candle.admission]\nmax_wait_secs = 'long'\n",
    )
    assert problems(path) == [
        f"{path}: [[default_models]] #1 quant: quantised loading is not supported by this "
        "neuron; load the dense weights",
        f"{path}: [harness.candle.admission] max_wait_secs: expected number, got string",
    ]


def test_our_spelling_wins_over_upstreams(tmp_path):
    path = write(tmp_path, "port = 1\n[listen]\nport = 2\n")
    assert load_config(path, {}).listen.port == 2


# ------------------------------------------------------------------ devices


def test_auto_on_a_cpu_host_gives_one_device_with_every_core_but_one():
    specs = load_config(None, {}).device_specs(host=HOST)
    assert specs == [DeviceSpec("cpu:0", threads=7, memory_budget_bytes=32 * GIB)]


def test_auto_splits_cores_and_memory_between_cpu_devices():
    specs = load_config(None, {"NEURON_CPU_DEVICES": "3"}).device_specs(host=HOST)
    assert [s.id for s in specs] == ["cpu:0", "cpu:1", "cpu:2"]
    assert {s.threads for s in specs} == {2}  # 3 x 2 <= 8 - 1
    assert {s.memory_budget_bytes for s in specs} == {32 * GIB // 3}


def test_auto_with_gpus_gives_one_device_per_gpu():
    config = load_config(None, {"NEURON_ENGINE_MAX_BATCH_SIZE": "32"})
    specs = config.device_specs(gpus=[1, 0], host=HOST)
    assert specs == [DeviceSpec("cuda:0", 1, None, 32), DeviceSpec("cuda:1", 1, None, 32)]


def test_cpu_section_sets_defaults_for_every_cpu_device():
    env = {"NEURON_CPU_THREADS": "3", "NEURON_CPU_MEMORY_MB": "1024", "NEURON_DEVICES": "cpu:0"}
    (spec,) = load_config(None, env).device_specs(host=HOST)
    assert (spec.threads, spec.memory_budget_bytes) == (3, 1024 * 2**20)


def test_default_device_specs_detect_the_host():
    (spec,) = NeuronConfig().device_specs()
    assert spec.id == "cpu:0" and spec.threads >= 1 and spec.memory_budget_bytes > 0


@given(cores=st.integers(1, 256), devices=st.integers(1, 64))
def test_default_cpu_threads_never_oversubscribe_the_cores(cores, devices):
    config = load_config(None, {"NEURON_CPU_DEVICES": str(devices)})
    specs = config.device_specs(host=HostResources(cores, 64 * GIB))
    assert len(specs) == devices and all(s.threads >= 1 for s in specs)
    assert sum(s.threads for s in specs) <= max(cores, devices)


# ------------------------------------------------------------------ the reference


def test_the_reference_documents_every_key_and_variable():
    text = DOCS.read_text()
    for name, (path, _) in ENV_VARS.items():
        if "__" not in name:
            assert name in text, f"{name} missing from docs/configuration.md"
        assert f"`{path[-1]}`" in text, f"key {path} missing from docs/configuration.md"


def test_a_model_given_by_path_is_served_under_its_last_part_or_its_alias(tmp_path):
    text = (
        '[[models]]\nid = "/srv/models/SmolLM2-135M-Instruct"\n'
        '[[models]]\nid = "/srv/gguf/tiny.gguf"\n'
        '[[models]]\nid = "/srv/other/tiny"\nalias = "org/tiny-2"\n'
        '[[models]]\nid = "org/name"\n'
    )
    config = load_config(write(tmp_path, text), {})
    served = [m.served_id for m, _ in config.model_devices(config.device_specs(host=HOST))]
    assert served == ["SmolLM2-135M-Instruct", "tiny", "org/tiny-2", "org/name"]


def test_two_models_served_under_one_id_or_a_bad_alias_are_refused(tmp_path):
    path = write(tmp_path, '[[models]]\nid = "/a/x"\n[[models]]\nid = "/b/x.gguf"\n')
    config = load_config(path, {})
    with pytest.raises(ConfigError) as info:
        config.model_devices(config.device_specs(host=HOST))
    assert info.value.problems == (
        f"{path}: [[models]] #2 is served as 'x', like #1; give one of them an `alias`",
    )
    bad = write(tmp_path, '[[models]]\nid = "/a/x"\nalias = "../x"\n')
    assert problems(bad) == [f"{bad}: [[models]] #1 alias: it contains a '.' or '..' path segment"]
