"""A relayed stream that breaks ends in-band, as a neuron ends one that fails.

An error event, then (chat and completions) a final chunk with
`finish_reason: "error"` under the stream's own id, then `[DONE]`.
"""

from __future__ import annotations

import json

import pytest

from cortex.http import _in_band
from protocol.errors import UpstreamError

BROKE = UpstreamError("node alpha stream failed: RemoteProtocolError",
                      code="upstream_stream_error")  # fmt: skip


def events(body: bytes) -> list:
    lines = body.decode().split("\n\n")
    payloads = [line.removeprefix("data: ") for line in lines if line]
    return [p if p == "[DONE]" else json.loads(p) for p in payloads]


@pytest.mark.parametrize(
    ("route", "stream_id", "object_", "choice"),
    [
        ("/v1/chat/completions", b"chatcmpl-abc", "chat.completion.chunk",
         {"index": 0, "delta": {}, "finish_reason": "error"}),
        ("/v1/completions", b"cmpl-abc", "text_completion",
         {"index": 0, "text": "", "finish_reason": "error", "logprobs": None}),
    ],
)  # fmt: skip
def test_a_broken_stream_ends_with_an_error_then_a_final_chunk(route, stream_id, object_, choice):
    error, final, done = events(_in_band(BROKE, route, "org/m", stream_id))
    assert error["error"]["code"] == "upstream_stream_error"
    assert (final["id"], final["object"], final["model"]) == (stream_id.decode(), object_, "org/m")
    assert final["choices"] == [choice]
    assert done == "[DONE]"


def test_before_any_chunk_the_final_chunk_gets_an_id_of_its_own():
    _, final, _ = events(_in_band(BROKE, "/v1/chat/completions", "org/m", None))
    assert final["id"].startswith("chatcmpl-") and final["choices"][0]["finish_reason"] == "error"


def test_a_responses_stream_ends_with_its_error_event():
    assert [e if e == "[DONE]" else "error" for e in events(
        _in_band(BROKE, "/v1/responses", "org/m", None))] == ["error", "[DONE]"]  # fmt: skip
