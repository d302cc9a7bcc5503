"""Errors of the neuron parent process (daemon side, no torch).

    protocol.errors.ApiError
    ├── WorkerDied               503 worker_died, retriable: the worker holding
    │                            the sequence or job exited or was killed
    ├── WorkerUnavailable        503 worker_unavailable: no live worker for the
    │                            device right now (starting or restarting)
    ├── SequenceFailed           a worker refused or failed a sequence; status
    │                            from its FailureKind
    └── JobFailed                a worker failed a job (load, unload, …)
    WorkerStartFailed            (not wire) a worker did not become ready

Errors raised inside a worker process live in `neuron.worker.errors`; they
reach the parent boxed as `SequenceFailed`/`JobFailed` frames and become the
classes here.
"""

from __future__ import annotations

from protocol.errors import ApiError, ServiceUnavailable
from protocol.worker import FailureKind

# How a worker's FailureKind shows on the wire: (status, type, code).
_FAILURE_STATUS: dict[str, tuple[int, str]] = {
    "bad_request": (400, "invalid_request_error"),
    "not_found": (404, "invalid_request_error"),
    "load_failed": (422, "invalid_request_error"),
    "unsupported_model": (422, "invalid_request_error"),
    "capacity": (503, "rate_limit_error"),
    "out_of_memory": (503, "api_error"),
    "device_fault": (503, "api_error"),
    "internal": (500, "api_error"),
}


class WorkerDied(ServiceUnavailable):
    code = "worker_died"

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after=1)


class WorkerUnavailable(ServiceUnavailable):
    code = "worker_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after=2)


class _BoxedFailure(ApiError):
    def __init__(self, kind: FailureKind, message: str, *, retriable: bool) -> None:
        status, type_ = _FAILURE_STATUS.get(kind, (500, "api_error"))
        super().__init__(
            message, status=status, type=type_, code=kind,  # an ErrorCode (tested)
            retry_after=1 if retriable else None,
        )  # fmt: skip
        self.kind = kind


class SequenceFailed(_BoxedFailure):
    """A worker ended a sequence with an error."""


class JobFailed(_BoxedFailure):
    """A worker failed a job."""


class WorkerStartFailed(Exception):
    """A worker process exited or stayed silent before saying `WorkerReady`."""
