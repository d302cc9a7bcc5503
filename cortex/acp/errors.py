"""What can go wrong between the bridge and its endpoint, and how an editor sees it.

    AcpBridgeError                 anything this package raises
    └── EndpointError              the OpenAI-compatible endpoint failed a request
        ├── EndpointUnreachable    no HTTP answer at all (refused, timed out, reset)
        └── EndpointRefused        an error status or an in-band error event; carries
                                   the endpoint's own `message`, `type` and `code`

Every one reaches the editor once, at the ACP edge (`to_request_error`), as a
JSON-RPC error whose `message` is the endpoint's message, so the user reads what
the gateway said ("model 'x' is not served", "rate limit exceeded") rather than
"Internal error".
"""

from __future__ import annotations

from typing import Any

from acp import RequestError

__all__ = [
    "ENDPOINT_ERROR_CODE",
    "AcpBridgeError",
    "EndpointError",
    "EndpointRefused",
    "EndpointUnreachable",
    "to_request_error",
]

# A JSON-RPC "server error" code (the -32000..-32099 band is the implementation's);
# -32000 itself is ACP's "authentication required", so the endpoint's errors use -32001.
ENDPOINT_ERROR_CODE = -32001


class AcpBridgeError(Exception):
    """Anything this package raises."""


class EndpointError(AcpBridgeError):
    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code

    def data(self) -> dict[str, Any]:
        fields = {"status": self.status, "type": self.type, "code": self.code}
        return {key: value for key, value in fields.items() if value is not None}


class EndpointUnreachable(EndpointError):
    pass


class EndpointRefused(EndpointError):
    @classmethod
    def from_body(cls, status: int | None, body: Any, fallback: str) -> EndpointRefused:
        """From an OpenAI `{"error": {...}}`, an Anthropic one, or a flat `{"error": "..."}`."""
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, str):
            return cls(error, status=status, code=_str(body.get("code")))
        if not isinstance(error, dict):
            return cls(fallback, status=status)
        message = _str(error.get("message")) or fallback
        return cls(
            message, status=status, type=_str(error.get("type")), code=_str(error.get("code"))
        )


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def to_request_error(exc: EndpointError) -> RequestError:
    return RequestError(ENDPOINT_ERROR_CODE, exc.message, exc.data() or None)
