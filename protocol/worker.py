"""Device-worker frames: the closed set of messages between the neuron parent
and a device worker, and their codec.

The parent sends jobs (`LoadModel`, `UnloadModel`, `Generate`,
`CancelSequence`, `Shutdown`); the worker sends
replies and events (`WorkerReady` first, then `ModelLoaded`,
`ModelUnloaded`, `StepTokens`, `StepLogprobs`, `PrefixReused`, `SequenceFailed`, `JobFailed`,
`Heartbeat`). Jobs that expect an answer carry a
`job_id` the answer echoes; generation is keyed by `seq_id`. Every sequence
ends exactly once: with a `StepTokens` entry whose `finish_reason` is set,
or with `SequenceFailed`. A `CancelSequence` for a sequence that already
ended is ignored (the race is harmless).

Frame layout (all integers little-endian)::

    u32 length          bytes after this field (kind + body), ≤ max_frame_bytes
    u8  kind            message type (table `KINDS`); jobs < 0x40 ≤ replies
    ... body            per kind:
      control messages  compact JSON via the INTERNAL converter (unknown keys
                        are an error)
      StepTokens        u64 step, u32 n, u64[n] seq_id, u32[n] token count,
                        u8[n] finish (0 none, 1 stop, 2 length, 3 cancelled,
                        4 error), i32[sum of counts] token ids
      Generate          u32 header length, header JSON (everything but the
                        token ids and tensor bytes, plus tensor specs),
                        i32[n] prompt token ids, then each tensor's raw bytes

Tensors (`RawTensor`: dtype name, shape, raw bytes) ride only in
`Generate.inputs` today and are never pickled. `raw_tensor_from_torch` and
`RawTensor.to_torch` import torch lazily; the former refuses a tensor that
is not on the CPU. The codec is sans-IO (`encode`, `encode_buffers`,
`FrameDecoder`); thin helpers serve the blocking worker (`send_frame`,
`recv_frame`) and the trio parent (`send_message`, `MessageReader`).
Importing this module loads neither torch nor trio. The types live in
`_worker_messages`, the codec in `_frames`, the tensor value in `_tensors`;
this module is their public face.
"""

from __future__ import annotations

from protocol._frames import (
    HEADER_SIZE,
    MAX_FRAME_BYTES,
    FrameDecoder,
    MessageReader,
    encode,
    encode_buffers,
    recv_frame,
    send_frame,
    send_message,
)
from protocol._tensors import DTYPE_SIZES, RawTensor, raw_tensor_from_torch
from protocol._worker_messages import (
    JOBS,
    KINDS,
    PROTOCOL_VERSION,
    REPLIES,
    CancelSequence,
    EngineStatistics,
    FailureKind,
    FinishReason,
    Generate,
    Heartbeat,
    Job,
    JobFailed,
    JobId,
    LoadModel,
    Message,
    ModelLoaded,
    ModelUnloaded,
    PrefixReused,
    Reply,
    SamplingParams,
    SeqId,
    SequenceFailed,
    SequenceTokens,
    Shutdown,
    StepLogprobs,
    StepTokens,
    TensorParallel,
    TokenLogprobs,
    UnloadModel,
    WorkerReady,
)

__all__ = [
    "DTYPE_SIZES",
    "HEADER_SIZE",
    "JOBS",
    "KINDS",
    "MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "REPLIES",
    "CancelSequence",
    "EngineStatistics",
    "FailureKind",
    "FinishReason",
    "FrameDecoder",
    "Generate",
    "Heartbeat",
    "Job",
    "JobFailed",
    "JobId",
    "LoadModel",
    "Message",
    "MessageReader",
    "ModelLoaded",
    "ModelUnloaded",
    "PrefixReused",
    "RawTensor",
    "Reply",
    "SamplingParams",
    "SeqId",
    "SequenceFailed",
    "SequenceTokens",
    "Shutdown",
    "StepLogprobs",
    "StepTokens",
    "TensorParallel",
    "TokenLogprobs",
    "UnloadModel",
    "WorkerReady",
    "encode",
    "encode_buffers",
    "raw_tensor_from_torch",
    "recv_frame",
    "send_frame",
    "send_message",
]
