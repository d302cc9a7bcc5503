"""The text pipeline's error tree and how its wire errors render."""

from __future__ import annotations

import pytest

from neuron.text import errors
from protocol.errors import ApiError, InvalidRequest

WIRE = [
    (errors.TemplateRenderFailed("boom"), 422, "template_render_failed"),
    (errors.InvalidParameter("top_p", "too big"), 400, "invalid_value"),
    (errors.UnsupportedValue("n", "one only"), 400, "unsupported_value"),
    (errors.ContextLengthExceeded(10, 8), 400, "context_length_exceeded"),
    (errors.ContentUnsupported("no audio", param="messages[0]"), 400, "unsupported_content"),
    (errors.VisionUnsupported("messages[0].content[0]"), 400, "vision_unsupported"),
    (errors.ImageNotDataUri("messages[0].content[0].image_url.url"), 400, "invalid_image_url"),
]


@pytest.mark.parametrize(("error", "status", "code"), WIRE)
def test_wire_errors_render_both_envelopes(error, status, code):
    assert isinstance(error, errors.TextError)
    assert isinstance(error, ApiError)
    body = error.to_openai()["error"]
    assert (error.status, body["type"], body["code"]) == (status, "invalid_request_error", code)
    assert error.to_anthropic() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": error.message},
    }
    assert not error.retriable


def test_400s_are_invalid_requests_and_the_load_error_is_not_wire():
    assert all(isinstance(e, InvalidRequest) for e, status, _ in WIRE if status == 400)
    assert not issubclass(errors.TokenizerLoadFailed, ApiError)
    assert issubclass(errors.TokenizerLoadFailed, errors.TextError)


def test_invalid_parameter_names_the_param():
    error = errors.InvalidParameter("temperature", "expected a value in [0, 2].")
    assert error.param == "temperature"
    assert error.to_openai()["error"]["param"] == "temperature"
    assert error.message == "Invalid 'temperature': expected a value in [0, 2]."


def test_context_length_extras():
    body = errors.ContextLengthExceeded(5000, 4096).to_openai()["error"]
    assert (body["prompt_len"], body["max"], body["param"]) == (5000, 4096, "messages")
