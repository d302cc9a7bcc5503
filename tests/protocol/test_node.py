"""Node API bodies: upstream-shaped samples parse, extras where documented."""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, get_args, get_origin

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import node
from protocol._converter import encode_json
from protocol.errors import ValidationFailed
from protocol.node import (
    Activation,
    BuildInfo,
    Capabilities,
    Discovery,
    Endpoint,
    ErrorBody,
    Health,
    LoadResult,
    ModelInfo,
    ModelSpec,
    UnloadRequest,
    UnloadResult,
    parse_request,
    parse_response,
)

# ---------------------------------------------------- strategies from types

_json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


def strategy_for(tp: Any) -> st.SearchStrategy:
    """Values of a wire type: JSON-representable and finite."""
    while hasattr(tp, "__supertype__"):  # NewType
        tp = tp.__supertype__
    origin, args = get_origin(tp), get_args(tp)
    if attrs.has(tp):
        hints = typing.get_type_hints(tp)
        fields = {a.name: strategy_for(hints[a.name]) for a in attrs.fields(tp)}
        return st.builds(tp, **fields)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(strategy_for(a) for a in args))
    if origin is Literal:
        return st.sampled_from(args)
    if origin is tuple:
        return st.lists(strategy_for(args[0]), max_size=3).map(tuple)
    if origin in (dict, Mapping):
        return st.dictionaries(st.text(max_size=5), strategy_for(args[1]), max_size=3)
    simple = {
        type(None): st.none(),
        bool: st.booleans(),
        int: st.integers(),
        float: st.floats(allow_nan=False, allow_infinity=False),
        str: st.text(max_size=10),
    }
    return simple.get(tp, _json_values)


NODE_TYPES = [getattr(node, name) for name in node.__all__ if attrs.has(getattr(node, name))]
RESPONSES = [t for t in NODE_TYPES if t not in (ModelSpec, UnloadRequest)]


@pytest.mark.parametrize("cls", NODE_TYPES, ids=lambda c: c.__name__)
@given(data=st.data())
def test_round_trip_through_json(cls, data):
    value = data.draw(strategy_for(cls))
    raw = encode_json(value)
    assert parse_response(raw, cls) == value
    assert parse_request(raw, cls) == value  # the strict reader: we emit no stray keys


@pytest.mark.parametrize("cls", RESPONSES, ids=lambda c: c.__name__)
@given(data=st.data())
def test_responses_tolerate_fields_from_a_newer_node(cls, data):
    value = data.draw(strategy_for(cls))
    body = json.loads(encode_json(value))
    body["added_in_a_later_version"] = {"anything": [1, 2]}
    assert parse_response(json.dumps(body), cls) == value


# ------------------------------------------------- upstream-shaped samples

UPSTREAM_VERSION = {
    "package_version": "0.1.16",
    "git_sha": "a1b2c3d",
    "git_sha_long": "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678",
    "git_dirty": False,
    "build_timestamp": "2025-06-01T12:00:00Z",
    "rustc_version": "1.87.0",
    "profile": "release",
    "target": "x86_64-unknown-linux-gnu",
    "features": ["cuda", "flash-attn"],
    "candle_version": "0.9.1",
}

UPSTREAM_DISCOVERY = {
    "hostname": "beast",
    "os": "Linux",
    "kernel": "6.14.0-29-generic",
    "cuda_version": "12.8",
    "driver_version": "570.172.08",
    "devices": [
        {"index": 0, "name": "NVIDIA GeForce RTX 5090", "vram_total_mb": 32607,
         "compute_capability": "12.0"},
        {"index": 1, "name": "NVIDIA GeForce RTX 4090", "vram_total_mb": 24564,
         "compute_capability": "8.9"},
    ],
    "harnesses": ["candle"],
    "max_prompt_tokens": 28672,
}  # fmt: skip

UPSTREAM_HEALTH = {
    "uptime_secs": 86400,
    "devices": [
        {"index": 0, "vram_used_mb": 20480, "vram_free_mb": 12127, "utilization_pct": 87,
         "temp_c": 64},
    ],
    "activation": {
        "state": "pre_warming",
        "pending": ["Qwen/Qwen3-8B"],
        "in_progress": "Qwen/Qwen3-32B",
        "completed": ["Qwen/Qwen3-0.6B"],
        "failed": [{"model_id": "bogus/model", "error": "repo fetch failed: 404"}],
    },
    "models": [
        {"id": "Qwen/Qwen3-0.6B", "in_flight": 2, "queue_depth": 1, "max_in_flight": 4,
         "max_queue_depth": 32, "rejected_queue_full": 0, "rejected_timeout": 1,
         "rejected_per_principal": 0, "anon_in_flight": 0, "anon_max_in_flight": 1,
         "rejected_anon_yield": 0, "rejected_kv_timeout": 0, "rejected_kv_unservable": 0,
         "kv_budget_mb": 4096, "kv_available_mb": 3000, "tok_s_prefill": 5123.4,
         "tok_s_decode": 88.2},
    ],
}  # fmt: skip

UPSTREAM_MODELS = [
    {
        "id": "Qwen/Qwen3-0.6B",
        "harness": "candle",
        "status": "loaded",
        "devices": [0],
        "vram_used_mb": None,
        "capabilities": ["text"],
        "limit": {"context": 32768, "input": 24576, "output": 8192},
        "tool_call": True,
        "reasoning": True,
        "servable": {"ok": False, "reason": "insufficient_vram",
                     "detail": "312 MiB free, need at least 1024 MiB"},
    },
    {"id": "Qwen/Qwen3-8B", "harness": "candle", "status": "poisoned", "devices": [0, 1],
     "vram_used_mb": None, "tool_call": False, "reasoning": False},
]  # fmt: skip


def test_upstream_version():
    info = parse_response(json.dumps(UPSTREAM_VERSION), BuildInfo)
    assert info.git_sha == "a1b2c3d" and info.features == ("cuda", "flash-attn")
    assert info.torch_version is None


def test_upstream_discovery_and_no_gpu_host():
    found = parse_response(json.dumps(UPSTREAM_DISCOVERY), Discovery)
    assert [d.vram_total_mb for d in found.devices] == [32607, 24564]
    assert found.devices[1].compute_capability == "8.9" and found.devices[1].id is None
    bare = {"hostname": "ci", "os": "Linux", "kernel": "6.1", "cuda_version": None,
            "driver_version": None, "devices": [], "harnesses": ["candle"],
            "cuda_unavailable_reason": "Driver/library version mismatch",
            "max_prompt_tokens": 0}  # fmt: skip
    assert parse_response(json.dumps(bare), Discovery).cuda_unavailable_reason


def test_our_cpu_device_reads_as_an_upstream_device():
    ours = node.DeviceInfo(0, "cpu", 8192, id="cpu:0", kind="cpu", memory_budget_mb=8192)
    body = json.loads(encode_json(Discovery("host", devices=(ours,))))
    assert body["devices"][0] == {
        "index": 0, "name": "cpu", "vram_total_mb": 8192,
        "id": "cpu:0", "kind": "cpu", "memory_budget_mb": 8192,
    }  # fmt: skip
    assert body["max_prompt_tokens"] == 0 and "cuda_version" not in body


def test_upstream_health():
    health = parse_response(json.dumps(UPSTREAM_HEALTH), Health)
    assert health.activation == Activation(
        "pre_warming",
        ("Qwen/Qwen3-8B",),
        "Qwen/Qwen3-32B",
        ("Qwen/Qwen3-0.6B",),
        (node.ActivationFailure("bogus/model", "repo fetch failed: 404"),),
    )
    (load,) = health.models
    assert load.rejected_timeout == 1 and load.tok_s_decode == 88.2


def test_upstream_models_list():
    models = parse_response(json.dumps(UPSTREAM_MODELS), tuple[ModelInfo, ...])
    assert models[0].limit == node.ModelLimit(32768, 24576, 8192)
    assert models[0].servable == node.Servable(
        False, "insufficient_vram", "312 MiB free, need at least 1024 MiB"
    )
    assert models[1].status == "poisoned" and models[1].capabilities is None


def test_unknown_status_from_a_newer_node_still_parses():
    body = [{**UPSTREAM_MODELS[1], "status": "draining"}]
    assert parse_response(json.dumps(body), tuple[ModelInfo, ...])[0].status == "draining"


def test_management_bodies():
    spec = parse_request(b'{"model_id": "Qwen/Qwen3-0.6B", "harness": "candle"}', ModelSpec)
    assert spec == ModelSpec("Qwen/Qwen3-0.6B", harness="candle")
    assert parse_request(b'{"model_id": "m"}', ModelSpec).harness is None  # optional for us
    full = b'{"model_id":"m","quant":"Q4_K_M","tensor_parallel":2,"devices":[0,1]}'
    assert parse_request(full, ModelSpec).devices == (0, 1)
    assert parse_request(b'{"model_id": "m"}', UnloadRequest) == UnloadRequest("m")
    assert parse_response(b'{"status":"loaded"}', LoadResult) == LoadResult()
    assert parse_response(b'{"status":"unloaded"}', UnloadResult) == UnloadResult()
    assert parse_response(b'{"url":"http://localhost:13131"}', Endpoint).url.endswith("13131")
    assert parse_response(b'{"capabilities":["text","vision"]}', Capabilities).capabilities == (
        "text",
        "vision",
    )


@pytest.mark.parametrize(
    ("raw", "cls", "problem"),
    [
        (b'{"model_id": "m", "tensor_paralel": 2}', ModelSpec, "tensor_paralel"),
        (b'{"model_id": "m", "force": true}', UnloadRequest, "force"),
        (b'{"harness": "candle"}', ModelSpec, r"required field missing @ \$\.model_id"),
        (b'{"model_id": "m", "devices": "0"}', ModelSpec, "expected array"),
    ],
)
def test_requests_are_read_strictly(raw, cls, problem):
    with pytest.raises(ValidationFailed, match=problem):
        parse_request(raw, cls)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"error":"model \'x\' not loaded"}', ErrorBody("model 'x' not loaded")),
        (
            b'{"error":"driver mismatch","code":"cuda_unavailable"}',
            ErrorBody("driver mismatch", "cuda_unavailable"),
        ),
        (
            b'{"error":{"kind":"quant_not_found","available":["Q8_0"],"nearest":"Q8_0"}}',
            ErrorBody({"kind": "quant_not_found", "available": ["Q8_0"], "nearest": "Q8_0"}),
        ),
    ],
)
def test_error_bodies(raw, expected):
    assert parse_response(raw, ErrorBody) == expected
