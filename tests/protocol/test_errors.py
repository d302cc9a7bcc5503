"""Wire-visible errors: both envelopes, Retry-After, and rebuilding from a peer."""

from __future__ import annotations

import openai
import pytest
from anthropic import types as ant
from sdk_clients import json_reply, openai_client

from protocol import errors
from protocol._converter import structure
from protocol.errors import (
    ApiError,
    AuthenticationFailed,
    InternalError,
    InvalidRequest,
    MalformedJson,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
    ValidationFailed,
    api_error_from_envelope,
)
from protocol.openai import ChatCompletionRequest


@pytest.mark.parametrize(
    ("error", "status", "type_", "code", "anthropic_type"),
    [
        (
            InvalidRequest("x"),
            400,
            "invalid_request_error",
            "invalid_request",
            "invalid_request_error",
        ),
        (
            MalformedJson("x"),
            400,
            "invalid_request_error",
            "malformed_json",
            "invalid_request_error",
        ),
        (
            ValidationFailed("x"),
            400,
            "invalid_request_error",
            "invalid_request_body",
            "invalid_request_error",
        ),
        (
            AuthenticationFailed("x"),
            401,
            "invalid_request_error",
            "invalid_api_key",
            "authentication_error",
        ),
        (NotFound("x"), 404, "invalid_request_error", "not_found", "not_found_error"),
        (
            PayloadTooLarge("x"),
            413,
            "invalid_request_error",
            "request_too_large",
            "request_too_large",
        ),
        (RateLimited("x"), 429, "rate_limit_error", "rate_limit_exceeded", "rate_limit_error"),
        (InternalError("x"), 500, "api_error", "internal_error", "api_error"),
        (UpstreamError("x"), 502, "api_error", "upstream_error", "api_error"),
        (ServiceUnavailable("x"), 503, "api_error", "service_unavailable", "overloaded_error"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, ApiError) else None,
)
def test_each_error_renders_both_envelopes(error, status, type_, code, anthropic_type):
    assert error.status == status
    assert error.to_openai() == {
        "error": {"message": "x", "type": type_, "code": code, "param": None}
    }
    assert error.to_anthropic() == {
        "type": "error",
        "error": {"type": anthropic_type, "message": "x"},
    }


def test_extras_go_inside_the_openai_error():
    error = InvalidRequest(
        "This model's maximum context length is 4096 tokens.",
        code="context_length_exceeded",
        extra={"max": 4096, "estimated_prompt_tokens": 5000},
    )
    assert error.to_openai()["error"] == {
        "message": "This model's maximum context length is 4096 tokens.",
        "type": "invalid_request_error",
        "code": "context_length_exceeded",
        "param": None,
        "max": 4096,
        "estimated_prompt_tokens": 5000,
    }


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [(None, None), (0, "1"), (0.2, "1"), (1.0, "1"), (1.01, "2"), (2.5, "3"), (15, "15")],
)
def test_retry_after_header_is_whole_seconds_rounded_up(retry_after, header):
    error = ServiceUnavailable("busy", retry_after=retry_after)
    assert error.headers() == ({} if header is None else {"Retry-After": header})


def test_retriable():
    assert RateLimited("x", retry_after=1).retriable
    assert UpstreamError("x").retriable and ServiceUnavailable("x").retriable
    assert not RateLimited("x").retriable
    assert not InvalidRequest("x").retriable


def test_unknown_status_maps_to_a_generic_anthropic_type():
    assert ApiError("x", status=418).to_anthropic()["error"]["type"] == "invalid_request_error"
    assert ApiError("x", status=507).to_anthropic()["error"]["type"] == "api_error"


def test_overrides_per_instance():
    error = ServiceUnavailable("draining", code="shutting_down", retry_after=15)
    assert (error.status, error.code, error.type) == (503, "shutting_down", "api_error")
    assert type(error).code == "service_unavailable"
    assert repr(error) == "ServiceUnavailable(503, 'shutting_down', 'draining')"


@pytest.mark.parametrize(
    "error",
    [
        InvalidRequest(
            "too long", code="context_length_exceeded", extra={"max": 8, "prompt_len": 9}
        ),
        ServiceUnavailable(
            "no VRAM", code="insufficient_vram", extra={"free_mb": 1}, retry_after=5
        ),
        ValidationFailed("expected bool @ $.stream", param="stream"),
        AuthenticationFailed("invalid API key"),
    ],
)
def test_openai_envelope_round_trip(error):
    rebuilt = api_error_from_envelope(
        error.status, error.to_openai(), retry_after=error.retry_after
    )
    assert rebuilt.to_openai() == error.to_openai()
    assert rebuilt.headers() == error.headers()
    assert (rebuilt.status, rebuilt.param, rebuilt.extra) == (
        error.status,
        error.param,
        error.extra,
    )


def test_anthropic_envelope_round_trip():
    error = ServiceUnavailable("no healthy nodes")
    rebuilt = api_error_from_envelope(503, error.to_anthropic())
    assert rebuilt.to_anthropic() == error.to_anthropic()
    assert rebuilt.extra == {}  # the envelope's top-level `type` is not an extra
    assert rebuilt.message == "no healthy nodes"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"error": "model 'x' not loaded"}, "model 'x' not loaded"),  # neuron's flat body
        ("<html>bad gateway</html>", "upstream returned 502"),
        (None, "upstream returned 502"),
        ({"detail": "nope"}, "upstream returned 502"),
        ({"error": {"type": 5}}, "upstream returned 502"),
    ],
)
def test_non_envelope_bodies_keep_the_status(body, message):
    rebuilt = api_error_from_envelope(502, body, retry_after=3)
    assert (rebuilt.status, rebuilt.message, rebuilt.retry_after) == (502, message, 3)
    assert rebuilt.type == "api_error"


def test_validation_failure_carries_path_and_every_message():
    with pytest.raises(ValidationFailed) as info:
        structure({"model": 1, "messages": [], "stream": "no"}, ChatCompletionRequest)
    error = info.value
    assert error.param == "model"
    assert error.extra == {
        "errors": [
            "expected string, got integer @ $.model",
            "expected bool, got string @ $.stream",
        ]
    }
    assert error.to_openai()["error"]["errors"] == error.extra["errors"]


def test_the_sdk_reads_our_openai_envelope():
    error = InvalidRequest("too long", code="context_length_exceeded", extra={"max": 8})
    reply = json_reply(error.to_openai(), error.status)
    with openai_client(reply) as (client, _), pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert (info.value.code, info.value.type, info.value.param) == (
        "context_length_exceeded",
        "invalid_request_error",
        None,
    )
    assert info.value.body["max"] == 8


def test_anthropic_envelopes_validate_with_the_sdk():
    for cls in (InvalidRequest, AuthenticationFailed, NotFound, RateLimited, InternalError):
        body = cls("x").to_anthropic()
        assert ant.ErrorResponse.model_validate(body).error.type == body["error"]["type"]


def test_tree_is_rooted():
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type) and obj is not errors.ErrorCode:  # the codes, not an error
            assert issubclass(obj, errors.ProtocolError)
