"""The device-worker messages: a closed set of frozen value types.

Jobs go from the neuron parent to a device worker; replies and events come
back. Each type has a one-byte frame kind in `KINDS`; the wire layout lives
in `protocol._frames`, and `protocol.worker` is the public face of both.
These types hold no serialization rule and import neither torch nor trio.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, NewType, TypeAlias

import attrs

from protocol._tensors import RawTensor
from protocol.ids import ModelId

PROTOCOL_VERSION = 1

SeqId = NewType("SeqId", int)  # u64, assigned by the parent
JobId = NewType("JobId", int)  # echoed by the reply to a job

FinishReason = Literal["stop", "length", "cancelled", "error"]
FailureKind = Literal[
    "bad_request",  # the job or sequence is invalid (e.g. a token id out of range)
    "not_found",  # no such model loaded in this worker
    "load_failed",  # weights/config could not be loaded
    "unsupported_model",  # loaded, but the engine cannot serve it exactly (a layer kind)
    "capacity",  # the engine is full right now (retriable)
    "out_of_memory",  # the device ran out of memory
    "device_fault",  # the device is unusable; the worker should be restarted
    "peer_lost",  # a tensor-parallel rank failed: the group is restarted (as a worker death)
    "internal",  # a bug in the worker
]

# ------------------------------------------------------------------- jobs


@attrs.frozen
class TensorParallel:
    """This worker's place in a tensor-parallel group (rank 0 leads)."""

    rank: int
    world_size: int
    init_method: str  # torch.distributed rendezvous, e.g. "tcp://127.0.0.1:29500"


@attrs.frozen
class LoadModel:
    job_id: JobId
    model_id: ModelId
    path: str  # local snapshot directory
    dtype: str = "auto"  # torch dtype name, or "auto" for the checkpoint's own
    max_sequences: int | None = None  # engine batch slots; None lets the worker size it
    kv_cache_bytes: int | None = None  # KV cache budget; None lets the worker size it
    tensor_parallel: TensorParallel | None = None
    # Prefix cache budget: None lets the worker size it, 0 turns the cache off.
    prefix_cache_bytes: int | None = None


@attrs.frozen
class UnloadModel:
    job_id: JobId
    model_id: ModelId


@attrs.frozen
class SamplingParams:
    """How to pick each token. `None` / neutral defaults switch a knob off."""

    max_tokens: int
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int | None = None
    min_p: float = 0.0
    seed: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Mapping[int, float] = attrs.field(factory=dict)  # token id → bias
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    # Report each sampled token's log-probability and this many most likely
    # alternatives (0-20) in a `StepLogprobs` reply; None: no logprobs.
    logprobs: int | None = None
    # Constrained decoding: an llguidance grammar (its JSON text) every token must
    # follow; the parent has validated it. None: unconstrained.
    grammar: str | None = None


@attrs.frozen
class Generate:
    """Start a sequence. `inputs` are extra forward() tensors by argument
    name (e.g. `pixel_values`), always CPU, sent as raw bytes."""

    seq_id: SeqId
    model_id: ModelId
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams
    inputs: Mapping[str, RawTensor] = attrs.field(factory=dict)


@attrs.frozen
class CancelSequence:
    seq_id: SeqId


@attrs.frozen
class Shutdown:
    """Stop generating, release the device and exit; the reply is EOF."""


# --------------------------------------------------------- replies, events


@attrs.frozen
class WorkerReady:
    """The worker's first frame: it owns its device and awaits jobs."""

    pid: int
    device: str  # "cpu:0", "cuda:1"
    protocol_version: int
    python_version: str
    torch_version: str | None = None
    transformers_version: str | None = None


@attrs.frozen
class ModelLoaded:
    job_id: JobId
    model_id: ModelId
    memory_bytes: int  # measured after load (allocator reading), not estimated
    load_seconds: float
    max_sequences: int | None = None
    kv_cache_tokens: int | None = None  # KV capacity in tokens, if the engine knows it
    prefix_cache_bytes: int = 0  # the prefix cache's byte budget (0: off)


@attrs.frozen
class ModelUnloaded:
    job_id: JobId
    model_id: ModelId
    freed_bytes: int | None = None


@attrs.frozen
class SequenceTokens:
    """One sequence's new tokens in one engine step (may be empty when it
    only finishes, e.g. on cancel)."""

    seq_id: SeqId
    token_ids: tuple[int, ...]
    finish_reason: FinishReason | None = None


@attrs.frozen
class StepTokens:
    """Every sequence that advanced (or ended) in one engine step: the hot path."""

    step: int
    sequences: tuple[SequenceTokens, ...]


@attrs.frozen
class TokenLogprobs:
    """One sampled token's log-probability and its `top` alternatives (token id,
    log-probability), most likely first."""

    seq_id: SeqId
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@attrs.frozen
class StepLogprobs:
    """The logprobs of one engine step's tokens, for the sequences that asked
    (`SamplingParams.logprobs`); sent just before that step's `StepTokens`, and only
    when a sequence in the step asked, so the hot path does not change."""

    entries: tuple[TokenLogprobs, ...]


@attrs.frozen
class PrefixReused:
    """A sequence's prompt started from the prefix cache: `cached_tokens` of its
    prompt were not computed again. Sent once, before the `StepTokens` with its
    first token, and only on a hit (no message means 0)."""

    seq_id: SeqId
    cached_tokens: int


@attrs.frozen
class SequenceFailed:
    seq_id: SeqId
    kind: FailureKind
    message: str
    retriable: bool = False


@attrs.frozen
class JobFailed:
    job_id: JobId
    kind: FailureKind
    message: str
    retriable: bool = False


@attrs.frozen
class EngineStatistics:
    model_id: ModelId
    running: int  # sequences in the batch
    waiting: int  # admitted, not yet scheduled
    steps_total: int
    prompt_tokens_total: int
    generated_tokens_total: int
    tok_s_prefill: float | None = None
    tok_s_decode: float | None = None
    kv_cache_used_tokens: int | None = None
    kv_cache_tokens: int | None = None
    prefix_cache_bytes: int = 0  # held by cached prefixes now
    prefix_cache_entries: int = 0
    prefix_cache_lookups: int = 0  # cumulative: prompts looked up
    prefix_cache_hit_lookups: int = 0  # cumulative: lookups that reused a prefix
    prefix_cache_hit_tokens: int = 0  # cumulative: prompt tokens reused


@attrs.frozen
class Heartbeat:
    """Sent periodically, also while idle: silence means a hung worker."""

    models: tuple[EngineStatistics, ...] = ()


Job: TypeAlias = LoadModel | UnloadModel | Generate | CancelSequence | Shutdown
Reply: TypeAlias = (
    WorkerReady
    | ModelLoaded
    | ModelUnloaded
    | StepTokens
    | PrefixReused
    | StepLogprobs
    | SequenceFailed
    | JobFailed
    | Heartbeat
)
Message: TypeAlias = Job | Reply

KINDS: dict[int, type] = {
    0x01: LoadModel,
    0x02: UnloadModel,
    0x03: Generate,
    0x04: CancelSequence,
    # 0x05, 0x06, 0x46, 0x47: retired (QueryMemory, Ping, MemoryReport, Pong had no sender)
    0x07: Shutdown,
    0x40: WorkerReady,
    0x41: ModelLoaded,
    0x42: ModelUnloaded,
    0x43: StepTokens,
    0x44: SequenceFailed,
    0x45: JobFailed,
    0x48: Heartbeat,
    0x49: PrefixReused,
    0x4A: StepLogprobs,
}
JOBS: tuple[type, ...] = tuple(cls for kind, cls in KINDS.items() if kind < 0x40)
REPLIES: tuple[type, ...] = tuple(cls for kind, cls in KINDS.items() if kind >= 0x40)
