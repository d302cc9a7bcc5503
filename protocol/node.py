"""The neuron's management API bodies, with upstream helexa's field names.

`/version` → `BuildInfo`, `/discovery` → `Discovery`, `/health` → `Health`,
`/models` → a JSON array of `ModelInfo`, `/models/load` takes a `ModelSpec`
and answers `LoadResult`, `/models/unload` takes an `UnloadRequest` and
answers `UnloadResult`, `/models/{id}/endpoint` → `Endpoint`,
`/models/{id}/capabilities` → `Capabilities`, `/v1/chat/tokenize` (ours)
→ `TokenCount`, and failures are the flat
`ErrorBody` (`{"error": "..."}`). Names and shapes match upstream so the
upstream gateway, CLI and bench can drive our neuron and ours can read
theirs; our additions are optional fields that upstream readers ignore.

Which converter reads what:

* Responses (everything the node *produces*) are read leniently —
  `parse_response` drops unknown keys, because a newer node may add fields
  and a gateway must keep routing through version skew. Enum-like strings
  (`ModelInfo.status`, `Activation.state`) are plain `str` for the same
  reason; `ModelStatus` and `ActivationState` name the values we produce.
  Fields a reader cannot do without are required; the rest default.
* Requests (`ModelSpec`, `UnloadRequest`, what the node *consumes*) are read
  strictly — `parse_request` refuses unknown keys, so an operator's typo
  (`tensor_paralel`) is a 400 naming the key rather than a silently
  different load.

Sizes are MiB (`*_mb`) like upstream, except `memory_bytes`, which is our
measured figure. This module holds no serving logic and knows no routes.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import attrs

from protocol._converter import parse
from protocol.ids import ModelId

__all__ = [
    "ACCOUNT_ID_HEADER",
    "GATEWAY_HEADERS",
    "KEY_ID_HEADER",
    "Activation",
    "ActivationFailure",
    "ActivationState",
    "BuildInfo",
    "Capabilities",
    "DeviceHealth",
    "DeviceInfo",
    "Discovery",
    "Endpoint",
    "ErrorBody",
    "Health",
    "LoadResult",
    "ModelInfo",
    "ModelLimit",
    "ModelLoad",
    "ModelSpec",
    "ModelStatus",
    "Servable",
    "TokenCount",
    "UnloadRequest",
    "UnloadResult",
    "parse_request",
    "parse_response",
]

T = TypeVar("T")

# What our neuron reports; an upstream gateway reads unknown values as "loaded".
ModelStatus = Literal["loaded", "loading", "recovering", "failed", "poisoned", "unloading"]
ActivationState = Literal["pre_warming", "ready"]


def parse_response(raw: bytes | str, cls: type[T]) -> T:
    """Read a node's response body, tolerating fields this version lacks."""
    return parse(raw, cls)


def parse_request(raw: bytes | str, cls: type[T]) -> T:
    """Read a management request body; unknown keys are refused."""
    return parse(raw, cls, internal=True)


# ------------------------------------------------------------------ /version


@attrs.frozen
class BuildInfo:
    package_version: str
    git_sha: str = "unknown"
    git_sha_long: str | None = None
    git_dirty: bool | None = None
    build_timestamp: str | None = None
    # ours
    python_version: str | None = None
    torch_version: str | None = None
    transformers_version: str | None = None
    # upstream's (a Rust build); absent from ours
    rustc_version: str | None = None
    profile: str | None = None
    target: str | None = None
    features: tuple[str, ...] = ()
    candle_version: str | None = None


# ---------------------------------------------------------------- /discovery


@attrs.frozen
class DeviceInfo:
    """A compute device. `index` is unique per node (a CUDA device keeps its
    ordinal); `id` ("cuda:0", "cpu:0") and `kind` are ours. For a CPU device
    `vram_total_mb` is its memory budget, so upstream placement sees a
    meaningful capacity."""

    index: int
    name: str
    vram_total_mb: int
    compute_capability: str | None = None
    # ours
    id: str | None = None
    kind: str | None = None  # "cuda" | "cpu"
    memory_budget_mb: int | None = None  # what models may use on this device


@attrs.frozen
class Discovery:
    hostname: str
    os: str = ""
    kernel: str = ""
    cuda_version: str | None = None
    driver_version: str | None = None
    devices: tuple[DeviceInfo, ...] = ()
    harnesses: tuple[str, ...] = ()
    cuda_unavailable_reason: str | None = None  # set → the GPUs are unusable (driver mismatch)
    max_prompt_tokens: int = 0  # upstream's poller re-fetches until this is > 0


# ------------------------------------------------------------------- /health


@attrs.frozen
class DeviceHealth:
    index: int
    vram_used_mb: int | None = None
    vram_free_mb: int | None = None
    utilization_pct: int | None = None
    temp_c: int | None = None
    # ours
    id: str | None = None
    worker_state: str | None = None  # "starting", "ready", "restarting", "failed"
    worker_restarts: int | None = None


@attrs.frozen
class ActivationFailure:
    model_id: ModelId
    error: str


@attrs.frozen
class Activation:
    """Loading of the configured default models after start-up."""

    state: str  # ActivationState
    pending: tuple[ModelId, ...] = ()
    in_progress: ModelId | None = None
    completed: tuple[ModelId, ...] = ()
    failed: tuple[ActivationFailure, ...] = ()


@attrs.frozen
class ModelLoad:
    """Admission and throughput figures for one loaded model."""

    id: ModelId
    in_flight: int = 0
    queue_depth: int = 0
    max_in_flight: int = 0
    max_queue_depth: int = 0
    rejected_queue_full: int = 0
    rejected_timeout: int = 0
    rejected_per_principal: int = 0
    anon_in_flight: int = 0
    anon_max_in_flight: int = 0
    rejected_anon_yield: int = 0
    rejected_kv_timeout: int = 0
    rejected_kv_unservable: int = 0
    kv_budget_mb: int | None = None
    kv_available_mb: int | None = None
    tok_s_prefill: float | None = None
    tok_s_decode: float | None = None


@attrs.frozen
class Health:
    uptime_secs: int
    devices: tuple[DeviceHealth, ...] = ()
    activation: Activation | None = None
    models: tuple[ModelLoad, ...] = ()


# ------------------------------------------------------------------- /models


@attrs.frozen
class ModelLimit:
    """Token limits: `context` = `input` + `output` when all are known."""

    context: int
    input: int | None = None
    output: int | None = None


@attrs.frozen
class Servable:
    """Whether a minimal request fits now; absent means no opinion."""

    ok: bool
    reason: str | None = None  # e.g. "insufficient_vram"
    detail: str | None = None


@attrs.frozen
class ModelInfo:
    """One model on this node. Ours besides upstream's fields: `prefix_cache_bytes`,
    the model's prefix cache budget (0: off), and `prefix_cache_used_bytes`, what its
    cached prompt prefixes hold now (absent until the worker's first heartbeat)."""

    id: ModelId
    harness: str
    status: str  # ModelStatus
    devices: tuple[int, ...] = ()  # DeviceInfo.index values
    vram_used_mb: int | None = None
    capabilities: tuple[str, ...] | None = None  # "text", "vision", "image"
    limit: ModelLimit | None = None
    tool_call: bool = False
    reasoning: bool = False
    servable: Servable | None = None
    # ours
    memory_bytes: int | None = None  # measured after load
    dtype: str | None = None
    error: str | None = None  # why the status is "failed" or "poisoned"
    pinned: bool = False  # the node's config pins it: its API refuses to unload it
    prefix_cache_bytes: int | None = None  # the prefix cache's budget (0: off)
    prefix_cache_used_bytes: int | None = None  # held by cached prompt prefixes now
    path: str | None = None  # the snapshot directory or GGUF file it was loaded from
    # Measured bytes on each of `devices`, in that order (a tensor-parallel model's ranks).
    device_memory_bytes: tuple[int, ...] | None = None


@attrs.frozen
class ModelSpec:
    """Body of `POST /models/load`. Upstream requires `harness`; we default it."""

    model_id: ModelId
    harness: str | None = None
    quant: str | None = None
    tensor_parallel: int | None = None
    devices: tuple[int, ...] | None = None
    dtype: str | None = None  # ours: "bfloat16", "float16", "float32", "auto"


@attrs.frozen
class UnloadRequest:
    model_id: ModelId


@attrs.frozen
class LoadResult:
    status: Literal["loaded"] = "loaded"
    # ours
    model_id: ModelId | None = None
    memory_bytes: int | None = None
    load_seconds: float | None = None


@attrs.frozen
class UnloadResult:
    status: Literal["unloaded"] = "unloaded"
    model_id: ModelId | None = None  # ours


@attrs.frozen
class Endpoint:
    url: str


@attrs.frozen
class Capabilities:
    capabilities: tuple[str, ...]


@attrs.frozen
class TokenCount:
    """`POST /v1/chat/tokenize` (ours): the prompt tokens a chat request costs,
    rendered and tokenised exactly as generation would; `max_context` is the
    model's context length. The gateway's Anthropic `count_tokens` reads it."""

    model: ModelId
    count: int
    max_context: int | None = None


@attrs.frozen
class ErrorBody:
    """The management API's flat error: `{"error": "model 'x' not loaded"}`.

    Upstream's preflight failures put an object in `error` (`{"kind":
    "quant_not_found", ...}`) and some refusals add a `code`.
    """

    error: str | dict[str, Any]
    code: str | None = None


# Headers only the gateway may set on a request it relays to a node: which of its
# API keys the request came with. A node honours them only from a caller that
# proved it holds the node's token (see neuron.http); the gateway never relays a
# client's own copy.
KEY_ID_HEADER = "x-helexa-key-id"
ACCOUNT_ID_HEADER = "x-helexa-account-id"
GATEWAY_HEADERS = (KEY_ID_HEADER, ACCOUNT_ID_HEADER)
