"""Exceptions raised by the code that runs inside a device worker process.

    WorkerError
    ├── ModelError
    │   ├── ModelNotFound          no snapshot for the id under any model root
    │   ├── UnsafeModelId          the id is malformed or escapes the model roots
    │   ├── InvalidSnapshot        a snapshot was found but its files are unusable
    │   ├── LoadFailed             transformers could not load the snapshot
    │   │   └── UnsupportedModel   loaded, but the engine cannot drive it
    │   └── ModelNotLoaded         the model handle was already unloaded
    ├── DeviceFault                the device failed; the worker must be restarted
    │   └── DeviceOutOfMemory
    └── EngineError
        ├── InvalidRequest         (also ValueError) the request can never succeed
        │   ├── InvalidSamplingParams
        │   ├── PromptTooLong
        │   ├── RequestTooLarge    needs more KV than the whole budget
        │   └── DuplicateSequence
        ├── CapacityExceeded       retriable: the engine is full right now
        │   ├── BatchFull
        │   └── KvBudgetExceeded
        └── EngineClosed

Not for: wire envelopes. The worker's IPC layer boxes these for the parent, which maps
them to HTTP errors once, at its edge; `code` and `retriable` are there to help it.
This module imports nothing heavy, so the torch-free parent can import it.
"""

from __future__ import annotations

from typing import ClassVar


class WorkerError(Exception):
    """Root of everything the worker's compute core raises on purpose."""

    code: ClassVar[str] = "worker_error"
    retriable: ClassVar[bool] = False


class ModelError(WorkerError):
    code = "model_error"


class ModelNotFound(ModelError):
    code = "model_not_found"


class UnsafeModelId(ModelError):
    code = "unsafe_model_id"


class InvalidSnapshot(ModelError):
    code = "invalid_snapshot"


class LoadFailed(ModelError):
    code = "load_failed"


class UnsupportedModel(LoadFailed):
    code = "unsupported_model"


class ModelNotLoaded(ModelError):
    code = "model_not_loaded"


class DeviceFault(WorkerError):
    code = "device_fault"
    retriable = True


class DeviceOutOfMemory(DeviceFault):
    code = "device_out_of_memory"


class EngineError(WorkerError):
    code = "engine_error"


class InvalidRequest(EngineError, ValueError):
    code = "invalid_request"


class InvalidSamplingParams(InvalidRequest):
    code = "invalid_sampling_params"


class PromptTooLong(InvalidRequest):
    code = "context_length_exceeded"


class RequestTooLarge(InvalidRequest):
    code = "request_too_large_for_kv_budget"


class DuplicateSequence(InvalidRequest):
    code = "duplicate_sequence"


class CapacityExceeded(EngineError):
    code = "capacity_exceeded"
    retriable = True


class BatchFull(CapacityExceeded):
    code = "batch_full"


class KvBudgetExceeded(CapacityExceeded):
    code = "kv_budget_exceeded"


class EngineClosed(EngineError):
    code = "engine_closed"
