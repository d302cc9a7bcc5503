"""Wire-visible errors and the two envelopes they render to.

Every failure a client or a peer can see is an `ApiError` carrying its HTTP
status, OpenAI `type`, machine `code`, optional `param`, optional
`retry_after` and extra diagnostic fields. The HTTP edge of each daemon maps
an `ApiError` to a response exactly once, with `to_openai()` or
`to_anthropic()`. This module does not know about HTTP frameworks.

    ProtocolError                      anything this package raises
    ├── ApiError                       renders to an envelope; has a status
    │   ├── InvalidRequest             400 invalid_request_error
    │   │   ├── MalformedJson          400 malformed_json
    │   │   └── ValidationFailed       400 invalid_request_body, param = path
    │   ├── AuthenticationFailed       401 invalid_api_key (+ WWW-Authenticate)
    │   ├── PermissionDenied           403 permission_denied
    │   ├── NotFound                   404 (model_not_found, route_not_found…)
    │   ├── MethodNotAllowed           405 method_not_allowed (+ Allow)
    │   ├── Conflict                   409 (request_id_in_use)
    │   ├── PayloadTooLarge            413 request_too_large
    │   ├── RateLimited                429 rate_limit_exceeded (+ Retry-After)
    │   ├── QuotaExceeded              429 insufficient_quota (no Retry-After)
    │   ├── InternalError              500 api_error
    │   ├── UpstreamError              502 upstream_* (gateway → node)
    │   ├── ServiceUnavailable         503 service_unavailable (+ Retry-After)
    │   └── GatewayTimeout             504 (load_timeout, request_idle_timeout)
    ├── FrameError                     a device-worker frame is corrupt/unknown
    └── EventStreamError               an SSE stream is malformed or over a limit

Every machine `code` either daemon puts on the wire is an `ErrorCode` (a test
walks both packages to keep it so); `RETRIABLE_CODES` are the ones a node
answers when another replica may well succeed, which the gateway retries
elsewhere when nothing was sent yet.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

__all__ = [
    "RETRIABLE_CODES",
    "ApiError",
    "AuthenticationFailed",
    "Conflict",
    "ErrorCode",
    "EventStreamError",
    "FrameError",
    "GatewayTimeout",
    "InternalError",
    "InvalidRequest",
    "MalformedJson",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "ProtocolError",
    "QuotaExceeded",
    "RateLimited",
    "ServiceUnavailable",
    "UpstreamError",
    "ValidationFailed",
    "api_error_from_envelope",
]


class ErrorCode(enum.StrEnum):
    """Every wire error `code`, of both daemons (a `str`: compares equal to its text)."""

    # request shape and the HTTP edge
    INVALID_REQUEST = "invalid_request"
    MALFORMED_JSON = "malformed_json"
    INVALID_REQUEST_BODY = "invalid_request_body"
    INVALID_VALUE = "invalid_value"
    UNSUPPORTED_VALUE = "unsupported_value"
    UNSUPPORTED_PARAMETER = "unsupported_parameter"
    UNSUPPORTED_CONTENT = "unsupported_content"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    VISION_UNSUPPORTED = "vision_unsupported"
    INVALID_IMAGE_URL = "invalid_image_url"
    INVALID_IMAGE = "invalid_image"
    IMAGE_LIMIT_EXCEEDED = "image_limit_exceeded"
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    CHAINED_CONVERSATION_NOT_SUPPORTED = "chained_conversation_not_supported"
    TEMPLATE_RENDER_FAILED = "template_render_failed"
    MISSING_MODEL_FIELD = "missing_model_field"
    INVALID_MODEL_ID = "invalid_model_id"
    UNKNOWN_HARNESS = "unknown_harness"
    ROUTE_NOT_FOUND = "route_not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    REQUEST_ID_IN_USE = "request_id_in_use"
    REQUEST_TOO_LARGE = "request_too_large"
    REQUEST_TIMEOUT = "request_timeout"
    REQUEST_HEADER_FIELDS_TOO_LARGE = "request_header_fields_too_large"
    # keys
    INVALID_API_KEY = "invalid_api_key"
    PERMISSION_DENIED = "permission_denied"
    RATE_LIMIT_EXCEEDED = "rate_limit_exceeded"
    INSUFFICIENT_QUOTA = "insufficient_quota"
    # models and nodes
    MODEL_NOT_FOUND = "model_not_found"
    NO_FEASIBLE_NODE = "no_feasible_node"
    NODE_NOT_FOUND = "node_not_found"
    MODEL_ALREADY_LOADED = "model_already_loaded"
    MODEL_PINNED = "model_pinned"
    MODEL_LOADING = "model_loading"
    MODEL_RECOVERING = "model_recovering"
    MODEL_UNLOADING = "model_unloading"
    MODEL_FAILED = "model_failed"
    MODEL_POISONED = "model_poisoned"
    MODEL_UNAVAILABLE = "model_unavailable"
    LOAD_TIMEOUT = "load_timeout"
    LOAD_CANCELLED = "load_cancelled"
    WORKER_DIED = "worker_died"
    WORKER_UNAVAILABLE = "worker_unavailable"
    SHUTTING_DOWN = "shutting_down"
    REQUEST_CANCELLED = "request_cancelled"
    REQUEST_IDLE_TIMEOUT = "request_idle_timeout"
    # a worker's failure, boxed (`protocol.worker.FailureKind`)
    BAD_REQUEST = "bad_request"
    LOAD_FAILED = "load_failed"
    UNSUPPORTED_MODEL = "unsupported_model"
    CAPACITY = "capacity"
    OUT_OF_MEMORY = "out_of_memory"
    DEVICE_FAULT = "device_fault"
    INTERNAL = "internal"
    # the gateway and its upstreams
    INTERNAL_ERROR = "internal_error"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_CONNECTION_ERROR = "upstream_connection_error"
    UPSTREAM_STREAM_ERROR = "upstream_stream_error"
    UPSTREAM_BAD_REPLY = "upstream_bad_reply"
    SERVICE_UNAVAILABLE = "service_unavailable"
    TIMEOUT = "timeout"


# A node's refusal that another replica may well not give: retried elsewhere by the
# gateway when nothing was sent yet.
RETRIABLE_CODES = frozenset({
    ErrorCode.WORKER_DIED, ErrorCode.WORKER_UNAVAILABLE, ErrorCode.SHUTTING_DOWN,
    ErrorCode.MODEL_RECOVERING, ErrorCode.MODEL_UNLOADING, ErrorCode.MODEL_LOADING,
    ErrorCode.MODEL_UNAVAILABLE, ErrorCode.MODEL_NOT_FOUND,
})  # fmt: skip

# Anthropic's error `type` for each HTTP status (docs.anthropic.com "Errors").
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "api_error",
    529: "overloaded_error",
}


class ProtocolError(Exception):
    """Base of everything this package raises."""


class FrameError(ProtocolError):
    """A device-worker frame cannot be decoded or built (corrupt, unknown, too
    big, or a tensor that is not on the CPU)."""


class EventStreamError(ProtocolError):
    """A server-sent event stream broke a limit or was used after `close()`."""


class ApiError(ProtocolError):
    """An error with a wire representation.

    Subclasses fix the defaults; every field can be overridden per instance,
    so a node's error can be re-raised on the gateway with its own status and
    code intact.
    """

    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if code is not None:
            self.code = code
        self.param = param
        self.retry_after = retry_after
        self.extra = dict(extra or {})

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.status}, {self.code!r}, {self.message!r})"

    @property
    def retriable(self) -> bool:
        return self.retry_after is not None or self.status in (502, 503)

    def headers(self) -> dict[str, str]:
        """HTTP headers that belong with this error: `Retry-After`, and on a 401 the
        scheme to authenticate with (RFC 6750's `WWW-Authenticate: Bearer`)."""
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return headers

    def to_openai(self) -> dict[str, Any]:
        """`{"error": {"message", "type", "code", "param", **extra}}`."""
        code = None if self.code is None else str(self.code)  # plain text, not the enum
        body = {"message": self.message, "type": self.type, "code": code, "param": self.param}
        body.update(self.extra)
        return {"error": body}

    def to_anthropic(self) -> dict[str, Any]:
        """`{"type": "error", "error": {"type", "message"}}`."""
        kind = _ANTHROPIC_TYPES.get(
            self.status, "api_error" if self.status >= 500 else "invalid_request_error"
        )
        return {"type": "error", "error": {"type": kind, "message": self.message}}


class InvalidRequest(ApiError):
    status = 400
    type = "invalid_request_error"
    code = ErrorCode.INVALID_REQUEST


class MalformedJson(InvalidRequest):
    code = ErrorCode.MALFORMED_JSON


class ValidationFailed(InvalidRequest):
    """A body that is JSON but not of the expected shape; `param` is the path."""

    code = ErrorCode.INVALID_REQUEST_BODY


class AuthenticationFailed(ApiError):
    """No key, or one that is not known; the response names the scheme (RFC 6750)."""

    status = 401
    type = "invalid_request_error"
    code = ErrorCode.INVALID_API_KEY


class PermissionDenied(ApiError):
    """A known key that may not do this (an admin route without an admin key)."""

    status = 403
    type = "permission_error"
    code = ErrorCode.PERMISSION_DENIED


class NotFound(ApiError):
    status = 404
    type = "invalid_request_error"
    code = ErrorCode.NOT_FOUND


class MethodNotAllowed(ApiError):
    """A route that exists, asked with a method it does not serve; the response
    says which it does (RFC 9110 §15.5.6: `Allow`)."""

    status = 405
    type = "invalid_request_error"
    code = ErrorCode.METHOD_NOT_ALLOWED

    def __init__(self, message: str, *, allow: Iterable[str], **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.allow = tuple(sorted(allow))

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "Allow": ", ".join(self.allow)}


class Conflict(ApiError):
    status = 409
    type = "invalid_request_error"
    code = ErrorCode.CONFLICT


class PayloadTooLarge(ApiError):
    status = 413
    type = "invalid_request_error"
    code = ErrorCode.REQUEST_TOO_LARGE


class RateLimited(ApiError):
    status = 429
    type = "rate_limit_error"
    code = ErrorCode.RATE_LIMIT_EXCEEDED


class QuotaExceeded(ApiError):
    """A key's token budget is spent: retrying will not help until it is raised."""

    status = 429
    type = "insufficient_quota"
    code = ErrorCode.INSUFFICIENT_QUOTA


class InternalError(ApiError):
    status = 500
    type = "api_error"
    code = ErrorCode.INTERNAL_ERROR


class UpstreamError(ApiError):
    status = 502
    type = "api_error"
    code = ErrorCode.UPSTREAM_ERROR


class ServiceUnavailable(ApiError):
    status = 503
    type = "api_error"
    code = ErrorCode.SERVICE_UNAVAILABLE


class GatewayTimeout(ApiError):
    status = 504
    type = "api_error"
    code = ErrorCode.TIMEOUT


def api_error_from_envelope(
    status: int, body: Any, *, retry_after: float | None = None
) -> ApiError:
    """Rebuild an `ApiError` from a peer's error response (either envelope).

    Used by the gateway to re-raise a node's refusal with its status, code
    and extras intact. Bodies that are not an envelope become a generic error
    carrying the status.
    """
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        extra = {k: v for k, v in error.items() if k not in ("message", "type", "code", "param")}
        return ApiError(
            str(error.get("message", f"upstream returned {status}")),
            status=status,
            type=error.get("type") if isinstance(error.get("type"), str) else None,
            code=error.get("code") if isinstance(error.get("code"), str) else None,
            param=error.get("param") if isinstance(error.get("param"), str) else None,
            retry_after=retry_after,
            extra=extra if body.get("type") != "error" else None,
        )
    message = error if isinstance(error, str) else f"upstream returned {status}"
    code = body.get("code") if isinstance(body, dict) else None  # the node API's flat body
    return ApiError(message, status=status, retry_after=retry_after,
                    type="invalid_request_error" if status < 500 else None,
                    code=code if isinstance(code, str) else None)  # fmt: skip
