"""cortex.config: defaults, upstream's files, environment overrides, errors that
say where, unknown keys as notes, and the models.toml catalogue."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortex import config as config_module
from cortex.config import (
    ENV_VARS,
    ConfigError,
    CortexConfig,
    find_config_path,
    load_catalogue,
    load_config,
    split_listen,
)
from cortex.eviction import EvictionPolicy, EvictionStrategy
from protocol.models import ModelCost, ModelLimit

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

UPSTREAM_CORTEX_TOML = """
models_config = "models.toml"

[gateway]
listen = "0.0.0.0:31313"
metrics_listen = "0.0.0.0:31314"

[eviction]
strategy = "lru"
defrag_after_cycles = 50

[[neurons]]
name = "beast"
endpoint = "http://beast.lan:13131"

[[neurons]]
name = "benjy"
endpoint = "http://benjy.lan:13131/"

[entitlements]
require_auth = true

[[entitlements.keys]]
key = "sk-live-secret-1"
account_id = "acme"
hard_cap = 1000000
window = { kind = "rolling", seconds = 86400 }

[[entitlements.keys]]
key = "sk-live-secret-2"
account_id = "bob"
key_id = "bob-laptop"

[upstream]
enabled = false
url = "https://helexa.ai"
timeout_secs = 5
"""

UPSTREAM_MODELS_TOML = """
[[models]]
id = "Qwen/Qwen3-8B"
harness = "candle"
vram_mb = 18000
pinned_on = ["benjy"]
capabilities = ["text"]
limit = { context = 40960, output = 8192 }
cost = { input = 0.1, output = 0.3 }

[[models]]
id = "unsloth/Qwen3.6-27B-GGUF"
harness = "candle"
quant = "Q6_K"
min_devices = 2
min_device_vram_mb = 24000
residency_priority = 500
source = "huggingface"

[[models]]
id = "Tongyi-MAI/Z-Image-Turbo"
harness = "candle"
capabilities = ["image"]

[models.cost]
cache_read = 0.01

[aliases]
"qwen" = "Qwen/Qwen3-8B"
"fast" = "Qwen/Qwen3-1.7B"
"""


def write(directory: Path, text: str, name: str = "cortex.toml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def problems(path: Path | None, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env or {})
    return list(info.value.problems)


def one_problem(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    path = write(tmp_path, text)
    (found,) = problems(path, env)
    return found


# ------------------------------------------------------------------ defaults


def test_defaults_without_a_file():
    config = load_config(None, {})
    assert config.models_config == "/etc/cortex/models.toml"
    assert config.gateway.listen_address == ("0.0.0.0", 31313)
    assert config.gateway.metrics_address == ("0.0.0.0", 31314)
    assert (config.eviction.strategy, config.eviction.defrag_after_cycles) == ("lru", 0)
    assert config.eviction.min_residency_seconds == 30
    assert config.neurons == ()
    f = config.fleet
    assert (f.poll_interval, f.poll_timeout, f.failure_threshold, f.backoff_max) == (5, 5, 3, 30)
    h = config.http
    assert (h.max_body_bytes, h.keepalive_interval, h.retries) == (32 * 2**20, 1.0, 2)
    assert (h.upstream_idle_timeout, h.load_timeout) == (300, 1800)
    assert (config.log.format, config.log.level) == ("plain", "info")
    assert config.entitlements.require_auth is False and config.entitlements.keys == ()
    assert config.source is None


def test_defaults_note_what_is_missing(tmp_path):
    config = load_config(None, {"CORTEX_MODELS_CONFIG": str(tmp_path / "absent.toml")})
    assert config.catalogue.profiles == {}
    assert any("absent.toml: no such file" in n for n in config.notes)
    assert any("no [[neurons]]" in n for n in config.notes)


def test_eviction_section_becomes_the_policy():
    config = load_config(None, {"CORTEX_EVICTION_STRATEGY": "priority"}, catalogue=False)
    assert config.eviction.policy() == EvictionPolicy(strategy=EvictionStrategy.PRIORITY)


# ------------------------------------------------------------------ upstream's files


def test_upstream_cortex_toml_loads(tmp_path):
    write(tmp_path, UPSTREAM_MODELS_TOML, "models.toml")
    config = load_config(write(tmp_path, UPSTREAM_CORTEX_TOML), {})
    assert config.source == str(tmp_path / "cortex.toml")
    assert config.models_config == str(tmp_path / "models.toml")
    assert config.eviction.defrag_after_cycles == 50
    assert [(n.name, n.endpoint) for n in config.neurons] == [
        ("beast", "http://beast.lan:13131"),
        ("benjy", "http://benjy.lan:13131"),  # trailing slash dropped
    ]
    first, second = config.entitlements.keys
    assert config.entitlements.require_auth is True
    assert (first.account_id, first.key_id, first.hard_cap) == ("acme", "acme", 1000000)
    assert (first.window.kind, first.window.seconds) == ("rolling", 86400)
    assert (second.key_id, second.window.kind) == ("bob-laptop", "balance")
    assert any("[upstream] has no effect" in n for n in config.notes)
    assert "Qwen/Qwen3-8B" in config.catalogue.profiles


def test_upstream_models_toml_builds_the_catalogue(tmp_path):
    notes: list[str] = []
    catalogue = load_catalogue(write(tmp_path, UPSTREAM_MODELS_TOML, "models.toml"), notes)
    qwen = catalogue.profiles["Qwen/Qwen3-8B"]
    assert (qwen.vram_mb, qwen.pinned_on, qwen.capabilities) == (18000, ("benjy",), ("text",))
    assert qwen.limit == ModelLimit(context=40960, output=8192)
    assert qwen.cost == ModelCost(input=0.1, output=0.3)
    assert qwen.priority == 1000  # pinned, no explicit priority: upstream's rule
    big = catalogue.profiles["unsloth/Qwen3.6-27B-GGUF"]
    assert (big.min_devices, big.min_device_vram_mb, big.priority) == (2, 24000, 500)
    assert (big.source, big.cost, big.limit) == ("huggingface", None, None)  # absent ≠ free
    image = catalogue.profiles["Tongyi-MAI/Z-Image-Turbo"]
    assert image.cost == ModelCost(input=0.0, output=0.0, cache_read=0.01)  # table → 0.0
    assert dict(catalogue.aliases) == {"qwen": "Qwen/Qwen3-8B", "fast": "Qwen/Qwen3-1.7B"}
    assert any("[aliases] fast: 'Qwen/Qwen3-1.7B' is not in [[models]]" in n for n in notes)
    assert any("quant 'Q6_K' has no effect" in n for n in notes)
    assert not any("harness" in n for n in notes)  # accepted silently


def test_upstreams_obsolete_nodes_table_is_a_note(tmp_path):
    text = '[[nodes]]\nname = "beast"\nvram_mb = 24000\npinned = []\n'
    config = load_config(write(tmp_path, text), {}, catalogue=False)
    assert config.neurons == ()
    assert any("[[nodes]] is upstream's obsolete spelling" in n for n in config.notes)


# ------------------------------------------------------------------ paths


def test_relative_models_config_is_relative_to_the_file(tmp_path):
    (tmp_path / "etc").mkdir()
    path = write(tmp_path / "etc", 'models_config = "catalogue/models.toml"\n')
    config = load_config(path, {}, catalogue=False)
    assert config.models_config == str(tmp_path / "etc" / "catalogue" / "models.toml")


def test_relative_models_config_from_the_environment_is_relative_to_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, 'models_config = "elsewhere.toml"\n')
    config = load_config(path, {"CORTEX_MODELS_CONFIG": "m.toml"}, catalogue=False)
    assert config.models_config == str(tmp_path / "m.toml")


def test_find_config_path(tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", tmp_path / "etc.toml")
    assert find_config_path({"CORTEX_CONFIG": "/x/c.toml"}, tmp_path) == Path("/x/c.toml")
    assert find_config_path({}, tmp_path) is None
    write(tmp_path, "", "etc.toml")
    assert find_config_path({}, tmp_path) == tmp_path / "etc.toml"
    write(tmp_path, "")
    assert find_config_path({}, tmp_path) == tmp_path / "cortex.toml"


def test_a_named_file_must_exist(tmp_path):
    assert problems(tmp_path / "nope.toml") == [f"{tmp_path / 'nope.toml'}: no such file"]


# ------------------------------------------------------------------ environment


def test_environment_overrides_the_file_in_both_spellings(tmp_path):
    path = write(tmp_path, '[gateway]\nlisten = "127.0.0.1:1"\n[fleet]\npoll_interval = 9\n')
    env = {
        "CORTEX_GATEWAY__LISTEN": "[::]:8080",
        "CORTEX_GATEWAY_METRICS_LISTEN": "127.0.0.1:9090",
        "CORTEX_FLEET_POLL_INTERVAL": "2.5",
        "CORTEX_HTTP__RETRIES": "0",
        "CORTEX_ENTITLEMENTS_REQUIRE_AUTH": "yes",
        "CORTEX_LOG_FORMAT": "json",
        "CORTEX_FLEET_BACKOFF_MAX": "",  # empty = unset
    }
    config = load_config(path, env, catalogue=False)
    assert config.gateway.listen_address == ("::", 8080)
    assert config.gateway.metrics_listen == "127.0.0.1:9090"
    assert config.fleet.poll_interval == 2.5 and config.fleet.backoff_max == 30
    assert config.http.retries == 0
    assert config.entitlements.require_auth is True
    assert config.log.format == "json"


def test_neurons_from_the_environment_replace_the_files():
    env = {"CORTEX_NEURONS": "a=http://a:13131, b=https://b.example/"}
    config = load_config(None, env, catalogue=False)
    assert [(n.name, n.endpoint) for n in config.neurons] == [
        ("a", "http://a:13131"),
        ("b", "https://b.example"),
    ]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"CORTEX_FLEET_POLL_INTERVAL": "fast"},
            "CORTEX_FLEET_POLL_INTERVAL: expected number, got 'fast'",
        ),
        ({"CORTEX_HTTP_RETRIES": "2.5"}, "CORTEX_HTTP_RETRIES: expected integer, got '2.5'"),
        (
            {"CORTEX_ENTITLEMENTS__REQUIRE_AUTH": "maybe"},
            "CORTEX_ENTITLEMENTS__REQUIRE_AUTH: expected true/false",
        ),
        (
            {"CORTEX_EVICTION_STRATEGY": "fifo"},
            "CORTEX_EVICTION_STRATEGY: expected one of 'lru', 'priority', got 'fifo'",
        ),
        ({"CORTEX_GATEWAY_LISTEN": "31313"}, "CORTEX_GATEWAY_LISTEN: must be host:port"),
        (
            {"CORTEX_FLEET_FAILURE_THRESHOLD": "0"},
            "CORTEX_FLEET_FAILURE_THRESHOLD: must be at least 1",
        ),
        ({"CORTEX_NEURONS": "beast"}, "CORTEX_NEURONS: expected name=url items"),
        ({"CORTEX_NEURONS": "a=http://a,b=ftp://b"}, "CORTEX_NEURONS #2 endpoint: must be an http"),
    ],
)
def test_a_bad_variable_is_named(env, expected):
    (found,) = problems(None, env)
    assert found.startswith(expected), found


def test_unknown_variables_are_notes_with_a_suggestion():
    env = {"CORTEX_GATEWAY_LISTN": "x", "CORTEX_SOMETHING": "1", "CORTEX_CONFIG": "ignored"}
    notes = load_config(None, env, catalogue=False).notes
    assert "CORTEX_GATEWAY_LISTN is not a cortex setting, ignored (did you mean " in "".join(notes)
    assert any(n.startswith("CORTEX_SOMETHING is not a cortex setting") for n in notes)
    assert not any("CORTEX_CONFIG" in n for n in notes)


# ------------------------------------------------------------------ errors name the key


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[gateway]\nlisten = "31313"',
            "[gateway] listen: must be host:port (e.g. 0.0.0.0:31313), got '31313'",
        ),
        (
            '[gateway]\nmetrics_listen = "0.0.0.0:31313"',
            "[gateway] metrics_listen: must differ from listen",
        ),
        ('[gateway]\nlisten = "h:99999"', "[gateway] listen: port must be 0-65535"),
        (
            '[eviction]\nstrategy = "fifo"',
            "[eviction] strategy: expected one of 'lru', 'priority', got 'fifo'",
        ),
        (
            "[eviction]\nmin_residency_seconds = -1",
            "[eviction] min_residency_seconds: must be at least 0",
        ),
        (
            '[[neurons]]\nname = "a"\nendpoint = "beast:13131"',
            "[[neurons]] #1 endpoint: must be an http:// or https:// URL, got 'beast:13131'",
        ),
        (
            '[[neurons]]\nname = "a"\nendpoint = "http://a/?x=1"',
            "[[neurons]] #1 endpoint: must be a base URL",
        ),
        ('[[neurons]]\nname = "a"', "[[neurons]] #1 endpoint: required field missing"),
        (
            '[[neurons]]\nname = "my node"\nendpoint = "http://a"',
            "[[neurons]] #1 name: must not contain whitespace",
        ),
        ('[fleet]\npoll_interval = "5s"', "[fleet] poll_interval: expected number, got string"),
        ("[fleet]\nbackoff_max = 1", "[fleet] backoff_max: must be at least poll_interval (5)"),
        ("[http]\nretries = -1", "[http] retries: must be at least 0, got -1"),
        ("[http]\nkeepalive_interval = 0", "[http] keepalive_interval: must be greater than 0"),
        ('[log]\nlevel = "loud"', "[log] level: expected one of"),
        ("models_config = 3", "models_config: expected string, got integer"),
        ('gateway = "x"', "gateway: expected table, got string"),
        (
            '[[entitlements.keys]]\nkey = "k"',
            "[[entitlements.keys]] #1 account_id: required field missing",
        ),
        (
            '[[entitlements.keys]]\nkey = "k"\naccount_id = "a"\nwindow = { kind = "rolling" }',
            "[[entitlements.keys]] #1 window.seconds: required for a rolling window",
        ),
        (
            '[entitlements]\nrequire_auth = "yes"',
            "[entitlements] require_auth: expected bool, got string",
        ),
        ("[gateway\n", "invalid TOML"),
    ],
)
def test_a_bad_value_names_the_file_and_key(tmp_path, text, expected):
    found = one_problem(tmp_path, text)
    assert found.startswith(f"{tmp_path / 'cortex.toml'}: "), found
    assert expected in found, found


def test_duplicate_neurons_are_refused(tmp_path):
    text = '[[neurons]]\nname = "a"\nendpoint = "http://a"\n' * 2
    assert one_problem(tmp_path, text).endswith("[[neurons]] #2 name: 'a' appears twice")


def test_secrets_stay_out_of_errors_and_repr(tmp_path):
    key = '[[entitlements.keys]]\nkey = "sk-very-secret"\naccount_id = "a"\n'
    assert "sk-very-secret" not in one_problem(tmp_path, key * 2)
    assert "#2 key: the same as #1" in one_problem(tmp_path, key * 2)
    config = load_config(write(tmp_path, key), {}, catalogue=False)
    assert "sk-very-secret" not in repr(config)
    assert config.entitlements.keys[0].key == "sk-very-secret"


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(tmp_path, '[fleet]\npoll_interval = "x"\n[http]\nretries = "y"\n')
    found = problems(path, {"CORTEX_LOG_LEVEL": "x", "CORTEX_HTTP_LOAD_TIMEOUT": "z"})
    assert len(found) == 4
    assert "4 configuration problems" in str(ConfigError(found))


# ------------------------------------------------------------------ unknown keys warn


def test_unknown_keys_are_notes_not_errors(tmp_path):
    text = (
        '[gateway]\nlisen = "0.0.0.0:1"\n'
        '[[neurons]]\nname = "a"\nendpoint = "http://a"\nweight = 2\n'
        "[telemetry]\non = true\n"
    )
    config = load_config(write(tmp_path, text), {}, catalogue=False)
    where = f"{tmp_path / 'cortex.toml'}: "
    assert f"{where}[gateway] lisen: unknown key, ignored (did you mean 'listen'?)" in config.notes
    assert f"{where}[[neurons]] #1 weight: unknown key, ignored" in config.notes
    assert f"{where}telemetry: unknown key, ignored" in config.notes
    assert config.gateway.listen == "0.0.0.0:31313"


def test_auth_is_another_spelling_of_entitlements(tmp_path):
    text = '[auth]\nrequire_auth = true\n[[auth.keys]]\nkey = "k"\naccount_id = "a"\n'
    config = load_config(write(tmp_path, text), {}, catalogue=False)
    assert config.entitlements.require_auth is True
    assert config.entitlements.keys[0].account_id == "a"
    bad = one_problem(tmp_path, "[auth]\nrequire_auth = 1\n")
    assert bad.endswith("[auth] require_auth: expected bool, got integer")
    both = one_problem(tmp_path, "[auth]\n[entitlements]\n")
    assert "[auth] and [entitlements] are one section" in both


def test_advisories(tmp_path):
    write(tmp_path, '[[models]]\nid = "m"\npinned_on = ["ghost"]\n', "models.toml")
    text = (
        'models_config = "models.toml"\n[entitlements]\nrequire_auth = true\n'
        '[[neurons]]\nname = "a"\nendpoint = "http://a"\n'
    )
    notes = load_config(write(tmp_path, text), {}).notes
    assert any("require_auth is on with no keys" in n for n in notes)
    assert any("'m' pinned_on names ghost, not in [[neurons]]" in n for n in notes)


# ------------------------------------------------------------------ catalogue errors


def test_missing_catalogue_is_empty_with_a_note(tmp_path):
    notes: list[str] = []
    catalogue = load_catalogue(tmp_path / "models.toml", notes)
    assert catalogue.profiles == {} and catalogue.aliases == {}
    assert notes and "no such file" in notes[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[[models]\n", "invalid TOML"),
        (
            '[[models]]\nid = "m"\nvram_mb = "big"',
            "[[models]] #1 vram_mb: expected integer, got string",
        ),
        ("[[models]]\nvram_mb = 1", "[[models]] #1 id: required field missing"),
        ('[[models]]\nid = "m"\nmin_devices = 0', "[[models]] #1 min_devices: must be at least 1"),
        (
            '[[models]]\nid = "m"\nlimit = { output = 5 }',
            "[[models]] #1 limit.context: required field missing",
        ),
        (
            '[[models]]\nid = "m"\ncost = { input = "free" }',
            "[[models]] #1 cost.input: expected number, got string",
        ),
        (
            '[[models]]\nid = "m"\npinned_on = "beast"',
            "[[models]] #1 pinned_on: expected array, got string",
        ),
        ('[[models]]\nid = "m"\n[[models]]\nid = "m"', "[[models]] #2 id: 'm' appears twice"),
        ("[aliases]\nx = 3", "[aliases] x: expected a model id (string)"),
        ("models = 3", "models: expected array, got integer"),
    ],
)
def test_a_malformed_catalogue_is_fatal_and_named(tmp_path, text, expected):
    path = write(tmp_path, text, "models.toml")
    with pytest.raises(ConfigError) as info:
        load_catalogue(path)
    (found,) = info.value.problems
    assert found.startswith(f"{path}: ") and expected in found, found


def test_a_malformed_catalogue_stops_load_config(tmp_path):
    write(tmp_path, '[[models]]\nid = "m"\nvram_mb = "big"\n', "models.toml")
    path = write(tmp_path, 'models_config = "models.toml"\n')
    assert "vram_mb" in problems(path)[0]
    assert load_config(path, {}, catalogue=False).catalogue.profiles == {}


def test_catalogue_notes_unknown_keys_and_shadowing_aliases(tmp_path):
    text = '[[models]]\nid = "m"\nvram = 5\n[aliases]\nm = "other"\n'
    notes: list[str] = []
    catalogue = load_catalogue(write(tmp_path, text, "models.toml"), notes)
    assert any("[[models]] #1 vram: unknown key, ignored (did you mean 'vram_mb'?)" in n
               for n in notes)  # fmt: skip
    assert any("[aliases] m: is also a model id" in n for n in notes)
    assert catalogue.aliases == {}


# ------------------------------------------------------------------ small pieces


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:31313", ("0.0.0.0", 31313)),
        ("[::1]:8", ("::1", 8)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_split_listen(text, expected):
    assert split_listen(text) == expected


@pytest.mark.parametrize("text", ["31313", ":31313", "host:", "host:x", "host:70000"])
def test_split_listen_refuses(text):
    with pytest.raises(ValueError):
        split_listen(text)


def test_config_is_frozen():
    config = load_config(None, {}, catalogue=False)
    with pytest.raises(AttributeError):
        config.models_config = "x"  # type: ignore[misc]
    assert isinstance(config, CortexConfig)


def test_the_configuration_reference_lists_every_key_and_variable():
    text = DOCS.read_text()
    for name, (path, _) in ENV_VARS.items():
        if "__" not in name:
            assert name in text, f"{name} missing from docs/configuration.md"
        assert f"`{path[-1]}`" in text, f"key {path} missing from docs/configuration.md"


def test_both_listeners_may_ask_for_any_free_port(tmp_path):
    path = tmp_path / "cortex.toml"
    path.write_text('[gateway]\nlisten = "127.0.0.1:0"\nmetrics_listen = "127.0.0.1:0"\n')
    config = load_config(path, {}, catalogue=False)
    assert config.gateway.listen_address == config.gateway.metrics_address == ("127.0.0.1", 0)
