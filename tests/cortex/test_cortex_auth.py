"""cortex.auth without a network: the keyring's rules, windows on a fake clock, the
keys file, neuron tokens and the start-up warning."""

from __future__ import annotations

import os

import httpx
import pytest
import trio

from cortex.auth import Keyring, NeuronTokens, key_hash, open_warning, presented_key, with_usage
from cortex.config import (
    ApiKey,
    ConfigError,
    CortexConfig,
    Entitlements,
    Gateway,
    Neuron,
    RateLimit,
    Window,
    load_config,
)
from cortex.fleet_snapshot import Catalogue, ModelProfile
from protocol import decode_json, encode_json
from protocol.errors import (
    AuthenticationFailed,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
)
from protocol.ids import ModelId
from protocol.models import ModelCard, ModelList

QWEN, LLAMA = ModelId("org/qwen"), ModelId("org/llama")
CATALOGUE = Catalogue.of([ModelProfile(id=QWEN), ModelProfile(id=LLAMA)], {"fast": QWEN})


def keyring(*keys: ApiKey, require_auth: bool = True) -> Keyring:
    return Keyring(Entitlements(require_auth=require_auth, keys=keys), CATALOGUE)


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


# -- presenting and matching ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ({"authorization": "Bearer k1"}, "k1"),
        ({"authorization": "bearer  k1 "}, "k1"),
        ({"x-api-key": "k2"}, "k2"),
        ({"authorization": "Bearer k1", "x-api-key": "k2"}, "k1"),
        ({"authorization": "Basic abc", "x-api-key": "k2"}, "k2"),
        ({"authorization": "Bearer"}, None),
        ({"authorization": "Basic abc"}, None),
        ({}, None),
    ],
)
def test_presented_key(headers, key):
    assert presented_key(headers) == key


def test_open_without_keys_and_require_auth():
    ring = keyring(require_auth=False)
    assert ring.authenticate({}, "/v1/chat/completions") is None
    assert ring.authenticate({}, "/admin/fleet") is None  # the quick start's inspect works


def test_require_auth_refuses_missing_and_unknown_keys():
    ring = keyring(ApiKey(key="sk-a", account_id="a"))
    with pytest.raises(AuthenticationFailed, match="missing API key"):
        ring.authenticate({}, "/v1/models")
    with pytest.raises(AuthenticationFailed, match="invalid API key") as refused:
        ring.authenticate(bearer("sk-b"), "/v1/models")
    assert refused.value.headers() == {"WWW-Authenticate": "Bearer"}
    assert "sk-" not in str(refused.value)
    assert ring.authenticate(bearer("sk-a"), "/v1/models").key_id == "a"
    assert ring.authenticate({"x-api-key": "sk-a"}, "/v1/messages").account_id == "a"
    for public in ("/health", "/", "/version"):
        assert ring.authenticate({}, public) is None


def test_a_key_that_is_a_prefix_of_another_does_not_match():
    ring = keyring(ApiKey(key="sk-abcdef", account_id="a"))
    for given in ("sk-abc", "sk-abcdefg", "SK-ABCDEF"):
        with pytest.raises(AuthenticationFailed):
            ring.authenticate(bearer(given), "/v1/models")


def test_without_require_auth_keys_are_optional_but_admin_is_not():
    ring = keyring(ApiKey(key="sk-a", account_id="a"), ApiKey(key="sk-ops", account_id="ops",
                   admin=True), require_auth=False)  # fmt: skip
    assert ring.authenticate({}, "/v1/models") is None
    assert ring.authenticate(bearer("sk-not-configured"), "/v1/models") is None
    assert ring.authenticate(bearer("sk-a"), "/v1/models").key_id == "a"
    with pytest.raises(AuthenticationFailed):
        ring.authenticate({}, "/admin/fleet")
    with pytest.raises(PermissionDenied, match="'a' may not use admin routes"):
        ring.authenticate(bearer("sk-a"), "/admin/models/load")
    assert ring.authenticate(bearer("sk-ops"), "/admin/fleet").admin
    assert ring.authenticate({}, "/administrator") is None  # not an admin route


def test_key_hash_is_a_short_digest():
    assert len(key_hash("sk-secret")) == 8 and "secret" not in key_hash("sk-secret")


# -- models --------------------------------------------------------------------------------


async def test_allowed_models_resolve_aliases_and_hide_the_rest():
    ring = keyring(ApiKey(key="sk-a", account_id="a", models=("fast",)),
                   ApiKey(key="sk-b", account_id="b"))  # fmt: skip
    narrow = ring.authenticate(bearer("sk-a"), "/v1/models")
    assert ring.admit(narrow, "fast", QWEN) is not None
    assert ring.admit(narrow, QWEN, QWEN) is not None
    with pytest.raises(NotFound) as refused:
        ring.admit(narrow, LLAMA, LLAMA)
    assert refused.value.code == "model_not_found"
    assert str(refused.value) == f"model {LLAMA!r} not found on any node and not in catalogue"
    listed = ModelList(data=tuple(ModelCard(id=m, created=0) for m in (QWEN, LLAMA, "fast")))
    assert [c.id for c in ring.visible(narrow, listed).data] == [QWEN, "fast"]
    wide = ring.authenticate(bearer("sk-b"), "/v1/models")
    assert ring.visible(wide, listed) == listed
    assert ring.visible(None, listed) == listed
    assert ring.admit(None, LLAMA, LLAMA) is None  # anonymous: no account to keep


# -- rate limits and budgets (fake clock) --------------------------------------------------


async def test_request_rate_limit_refuses_then_recovers(autojump_clock):
    ring = keyring(ApiKey(key="sk", account_id="a", rate_limit=RateLimit(requests=2, seconds=10)))
    who = ring.authenticate(bearer("sk"), "/v1/chat/completions")
    ring.admit(who, QWEN, QWEN)
    await trio.sleep(4)
    ring.admit(who, QWEN, QWEN)
    with pytest.raises(RateLimited) as limited:
        ring.admit(who, QWEN, QWEN)
    assert limited.value.headers() == {"Retry-After": "6"}
    assert limited.value.code == "rate_limit_exceeded" and limited.value.type == "rate_limit_error"
    await trio.sleep(6)
    ring.admit(who, QWEN, QWEN)  # a new window


async def test_token_rate_limit_counts_settled_usage(autojump_clock):
    ring = keyring(ApiKey(key="sk", account_id="a", rate_limit=RateLimit(tokens=100, seconds=60)))
    who = ring.authenticate(bearer("sk"), "/v1/chat/completions")
    grant = ring.admit(who, QWEN, QWEN)
    assert grant.metered
    grant.settle(60, "ok")
    grant.settle(60, "ok")  # once only
    ring.admit(who, QWEN, QWEN).settle(50, "ok")
    with pytest.raises(RateLimited, match="100 tokens per 60 s"):
        ring.admit(who, QWEN, QWEN)
    await trio.sleep(60)
    ring.admit(who, QWEN, QWEN)


async def test_a_balance_budget_is_spent_for_good(autojump_clock):
    ring = keyring(ApiKey(key="sk", account_id="a", key_id="k", hard_cap=100))
    who = ring.authenticate(bearer("sk"), "/v1/chat/completions")
    ring.admit(who, QWEN, QWEN).settle(99, "ok")
    ring.admit(who, QWEN, QWEN).settle(5, "ok")  # admitted with 1 left; may overshoot
    with pytest.raises(QuotaExceeded, match=r"'k' is spent \(104 of 100 tokens\)") as spent:
        ring.admit(who, QWEN, QWEN)
    assert (spent.value.status, spent.value.code, spent.value.headers()) == (
        429, "insufficient_quota", {})  # fmt: skip
    await trio.sleep(10**6)
    with pytest.raises(QuotaExceeded):
        ring.admit(who, QWEN, QWEN)


async def test_a_rolling_cap_is_a_token_rate(autojump_clock):
    window = Window(kind="rolling", seconds=30)
    ring = keyring(ApiKey(key="sk", account_id="a", hard_cap=10, window=window))
    who = ring.authenticate(bearer("sk"), "/v1/chat/completions")
    ring.admit(who, QWEN, QWEN).settle(10, "ok")
    with pytest.raises(RateLimited) as limited:
        ring.admit(who, QWEN, QWEN)
    assert limited.value.retry_after == 30
    await trio.sleep(30)
    ring.admit(who, QWEN, QWEN)


async def test_an_abandoned_stream_is_charged_its_prompt_estimate(autojump_clock):
    ring = keyring(ApiKey(key="sk", account_id="a", hard_cap=100))
    who = ring.authenticate(bearer("sk"), "/v1/chat/completions")
    ring.admit(who, QWEN, QWEN, estimate=60).settle(0, "cancelled")
    ring.admit(who, QWEN, QWEN, estimate=60).settle(0, "upstream_error")  # not charged
    ring.admit(who, QWEN, QWEN, estimate=60).settle(0, "stream_error")
    with pytest.raises(QuotaExceeded):
        ring.admit(who, QWEN, QWEN)


async def test_keys_keep_separate_accounts(autojump_clock):
    # two keys with the same key_id: each has its own counts and limits
    ring = keyring(
        ApiKey(key="sk-a", account_id="a", hard_cap=1), ApiKey(key="sk-b", account_id="a")
    )
    a = ring.authenticate(bearer("sk-a"), "/v1/chat/completions")
    ring.admit(a, QWEN, QWEN).settle(1, "ok")
    with pytest.raises(QuotaExceeded):
        ring.admit(a, QWEN, QWEN)
    b = ring.authenticate(bearer("sk-b"), "/v1/models")
    assert b.key_id == a.key_id == "a"
    ring.admit(b, QWEN, QWEN).settle(10, "ok")
    ring.admit(b, QWEN, QWEN)  # uncapped


def test_with_usage_turns_the_usage_chunk_back_on():
    off = encode_json({"model": "m", "stream": True, "stream_options": {"include_usage": False}})
    assert decode_json(with_usage(off))["stream_options"] == {"include_usage": True}
    on = encode_json({"model": "m", "stream": True})
    assert with_usage(on) is on


# -- neuron tokens -------------------------------------------------------------------------


def test_neuron_tokens_go_only_to_their_neuron():
    auth = NeuronTokens([Neuron(name="a", endpoint="http://A.lan:13131", token="ta"),
                         Neuron(name="b", endpoint="https://b.lan/neuron"),
                         Neuron(name="c", endpoint="http://c.lan:13131")],
                        default="fleet")  # fmt: skip

    def sent(url: str) -> str | None:
        request = httpx.Request("GET", url)
        return next(auth.auth_flow(request)).headers.get("authorization")

    assert sent("http://a.lan:13131/models") == "Bearer ta"
    assert sent("https://b.lan/neuron/v1/chat/completions") == "Bearer fleet"
    assert sent("https://b.lan/neuronx/v1") is None
    assert sent("http://c.lan:13131/health") == "Bearer fleet"
    assert sent("http://a.lan:13132/models") is None
    assert sent("https://a.lan:13131/models") is None
    assert not NeuronTokens([Neuron(name="a", endpoint="http://a.lan")])


# -- the start-up warning ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "keys", "require_auth", "warned"),
    [
        ("0.0.0.0:31313", (), False, "no API key configured"),
        ("[::]:31313", (), False, "no API key configured"),
        ("gw.lan:31313", (), False, "no API key configured"),
        ("0.0.0.0:31313", (ApiKey(key="k", account_id="a"),), False, "require_auth off"),
        ("0.0.0.0:31313", (ApiKey(key="k", account_id="a"),), True, None),
        ("127.0.0.1:31313", (), False, None),
        ("[::1]:31313", (), False, None),
        ("localhost:31313", (), False, None),
    ],
)
def test_open_warning(listen, keys, require_auth, warned):
    entitlements = Entitlements(require_auth=require_auth, keys=keys)
    gateway = Gateway(listen=listen, metrics_listen="127.0.0.1:9")
    config = CortexConfig(gateway=gateway, entitlements=entitlements)
    warning = open_warning(config, "http://x:1")
    if warned is None:
        assert warning is None
    else:
        assert warned in warning and f"listen={listen}" in warning


# -- configuration -------------------------------------------------------------------------


def write(path, text: str, mode: int = 0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_keys_file_adds_keys_and_world_readable_files_are_warned_about(tmp_path):
    write(tmp_path / "keys.toml", """
[[keys]]
key = "sk-file"
account_id = "team"
models = ["fast"]
rate_limit = { requests = 5, tokens = 1000, seconds = 30 }
""", 0o644)  # fmt: skip
    cortex = write(tmp_path / "cortex.toml", """
[entitlements]
require_auth = true
keys_file = "keys.toml"

[[entitlements.keys]]
key = "sk-inline"
account_id = "ops"
admin = true

[fleet]
neuron_token = "fleet-token"

[[neurons]]
name = "a"
endpoint = "http://a.lan:13131"
token = "a-token"
""", 0o600)  # fmt: skip
    config = load_config(cortex, {}, catalogue=False)
    inline, added = config.entitlements.keys
    assert (inline.admin, inline.key_id) == (True, "ops")
    assert (added.key, added.key_id, added.models) == ("sk-file", "team", ("fast",))
    assert added.rate_limit == RateLimit(requests=5, tokens=1000, seconds=30)
    assert config.entitlements.keys_file == str(tmp_path / "keys.toml")
    assert config.neurons[0].token == "a-token" and config.fleet.neuron_token == "fleet-token"
    readable = [n for n in config.notes if "readable by every user" in n]
    assert len(readable) == 1 and "keys.toml" in readable[0] and "0644" in readable[0]
    for secret in ("sk-file", "sk-inline", "fleet-token", "a-token"):
        assert secret not in repr(config) and secret not in " ".join(config.notes)
    os.chmod(cortex, 0o644)
    notes = load_config(cortex, {}, catalogue=False).notes
    assert any("cortex.toml: readable by every user" in n for n in notes)


def test_keys_file_problems_name_the_file(tmp_path):
    write(tmp_path / "keys.toml", '[[keys]]\nkey = "sk-x"\naccount_id = "a"\n'
          'window = { kind = "rolling" }\n[[keys]]\nkey = "sk-x"\naccount_id = "b"\n')  # fmt: skip
    cortex = write(tmp_path / "cortex.toml", '[entitlements]\nkeys_file = "keys.toml"\n')
    with pytest.raises(ConfigError) as bad:
        load_config(cortex, {}, catalogue=False)
    assert f"{tmp_path / 'keys.toml'}: [[keys]] #2 key: the same as #1" in bad.value.problems
    assert any("#1 window.seconds: required" in p for p in bad.value.problems)
    assert "sk-x" not in str(bad.value)


def test_a_key_in_both_places_and_a_missing_file_are_errors(tmp_path):
    write(tmp_path / "keys.toml", '[[keys]]\nkey = "sk-x"\naccount_id = "a"\n')
    cortex = write(tmp_path / "cortex.toml", '[entitlements]\nkeys_file = "keys.toml"\n'
                   '[[entitlements.keys]]\nkey = "sk-x"\naccount_id = "b"\n')  # fmt: skip
    with pytest.raises(ConfigError, match="the same as a key in"):
        load_config(cortex, {}, catalogue=False)
    env = {"CORTEX_ENTITLEMENTS_KEYS_FILE": str(tmp_path / "nope.toml")}
    with pytest.raises(ConfigError, match=r"nope\.toml: no such file"):
        load_config(None, env, catalogue=False)


def test_token_settings_from_the_environment(tmp_path):
    env = {"CORTEX_FLEET_NEURON_TOKEN": "env-token", "CORTEX_ENTITLEMENTS_REQUIRE_AUTH": "yes"}
    config = load_config(None, env, catalogue=False)
    assert config.fleet.neuron_token == "env-token" and config.entitlements.require_auth
    assert "env-token" not in repr(config)


def test_bad_limits_are_refused(tmp_path):
    cortex = write(tmp_path / "cortex.toml", '[[entitlements.keys]]\nkey = "k"\n'
                   'account_id = "a"\nrate_limit = { requests = 0, seconds = -1 }\n')  # fmt: skip
    with pytest.raises(ConfigError) as bad:
        load_config(cortex, {}, catalogue=False)
    assert len(bad.value.problems) == 2
