"""Legacy completion rendering: exact chunk sequences, the in-band failure, the
non-streaming reply, SDK conformance and stream/collect agreement."""

from __future__ import annotations

import json

import openai
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types import Completion as SdkCompletion
from openai.types import ErrorObject as SdkErrorObject

from neuron.events import ContentDelta, Failed, Finished, ReasoningDelta, Started, ToolCallParsed
from neuron.render import CompletionStream, collect_completion
from protocol._converter import unstructure
from protocol.errors import InternalError, ServiceUnavailable
from protocol.openai import CompletionId
from protocol.sse import SseDecoder
from tests.protocol.sdk_clients import Reply, openai_client

ID = CompletionId("cmpl-abc123")
MODEL = "helexa/tiny-chat"
CREATED = 1_700_000_000


def _render(events, *, include_usage: bool = True) -> bytes:
    stream = CompletionStream(ID, MODEL, CREATED, include_usage=include_usage)
    return stream.start() + b"".join(stream.feed(e) for e in events)


def _payloads(body: bytes) -> list:
    decoder = SseDecoder()
    frames = decoder.feed(body)
    decoder.close()
    assert not decoder.truncated
    return [f.data if f.is_done else json.loads(f.data) for f in frames]


def _chunk(choices: list, **extra) -> dict:
    head = {"id": ID, "object": "text_completion", "created": CREATED, "model": MODEL}
    return {**head, "choices": choices, **extra}


def _text(text: str, finish: str | None = None) -> dict:
    return _chunk([{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}])


NO_REASONING = {"reasoning_tokens": 0}


def _usage(prompt: int, completion: int, prefill_tokens: int | None = None, **extra) -> dict:
    if prefill_tokens is not None:  # a generation's usage: the cached count always
        extra.setdefault("prompt_tokens_details", {"cached_tokens": 0})
    timing = {"prefill_ms": 0.0, "decode_ms": 0.0, "prefill_tokens": prefill_tokens}
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        **extra,
        **({} if prefill_tokens is None else {"helexa_timing": timing}),
    }


def _assert_sdk_chunk(payload: dict) -> None:
    """Validates as the SDK's `Completion`, except that the SDK types
    `finish_reason` as never null (it is null in every chunk but the last) and
    does not know our in-band `"error"`."""
    try:
        SdkCompletion.model_validate(payload)
    except pydantic.ValidationError as exc:
        (choice,) = payload["choices"]
        assert choice["finish_reason"] in (None, "error")
        assert [e["loc"] for e in exc.errors()] == [("choices", 0, "finish_reason")]


def test_plain_text():
    events = [Started(4), ContentDelta("Once"), ContentDelta(" upon"), Finished("stop", 4, 2)]
    assert _payloads(_render(events)) == [
        _text("Once"),
        _text(" upon"),
        _text("", "stop"),
        _chunk([], usage=_usage(4, 2, prefill_tokens=4, completion_tokens_details=NO_REASONING)),
        "[DONE]",
    ]


def test_start_renders_nothing_and_empty_text_is_omitted():
    stream = CompletionStream(ID, MODEL, CREATED)
    assert stream.start() == b""
    assert stream.feed(Started(4)) == b""
    assert stream.feed(ContentDelta("")) == b""


def test_length():
    events = [Started(4), ContentDelta("a"), Finished("length", 4, 16)]
    assert _payloads(_render(events))[-3] == _text("", "length")


def test_stop_with_usage_details():
    finished = Finished("stop", 40, 3, cached_tokens=32, prefill_ms=1.5, decode_ms=9.0)
    usage = _payloads(_render([Started(40), finished]))[-2]["usage"]
    assert usage == {
        "prompt_tokens": 40,
        "completion_tokens": 3,
        "total_tokens": 43,
        "prompt_tokens_details": {"cached_tokens": 32},
        "completion_tokens_details": NO_REASONING,
        "helexa_timing": {"prefill_ms": 1.5, "decode_ms": 9.0, "prefill_tokens": 8},
    }


def test_fail_mid_stream_reports_in_band():
    error = ServiceUnavailable("worker exited")
    events = [Started(4), ContentDelta("Once"), Failed(error, prompt_tokens=4, completion_tokens=1)]
    assert _payloads(_render(events)) == [
        _text("Once"),
        {
            "error": {
                "message": "worker exited",
                "type": "api_error",
                "code": "service_unavailable",
                "param": None,
            }
        },
        _text("", "error"),
        _chunk([], usage=_usage(4, 1)),
        "[DONE]",
    ]


def test_include_usage_false():
    events = [Started(4), ContentDelta("a"), Finished("stop", 4, 1)]
    assert _payloads(_render(events, include_usage=False)) == [
        _text("a"),
        _text("", "stop"),
        "[DONE]",
    ]


@pytest.mark.parametrize("event", [ReasoningDelta("r"), ToolCallParsed(0, "call_1", "f", "{}")])
def test_reasoning_and_tool_calls_are_refused(event):
    with pytest.raises(TypeError, match="text only"):
        CompletionStream(ID, MODEL, CREATED).feed(event)
    with pytest.raises(TypeError, match="text only"):
        collect_completion(ID, MODEL, CREATED, [event])


def test_feeding_after_the_end_raises():
    stream = CompletionStream(ID, MODEL, CREATED)
    stream.feed(Finished("stop", 1, 1))
    with pytest.raises(RuntimeError, match="already ended"):
        stream.feed(ContentDelta("late"))


# --------------------------------------------------------------- non-streaming


def test_collect():
    events = [Started(4), ContentDelta("Once"), ContentDelta(" upon"), Finished("length", 4, 2)]
    reply = unstructure(collect_completion(ID, MODEL, CREATED, events))
    assert reply == {
        **_text("Once upon", "length"),
        "usage": _usage(4, 2, prefill_tokens=4, completion_tokens_details=NO_REASONING),
    }
    SdkCompletion.model_validate(reply)


def test_collect_failed_raises_its_error():
    error = ServiceUnavailable("worker exited")
    with pytest.raises(ServiceUnavailable) as caught:
        collect_completion(ID, MODEL, CREATED, [Started(4), Failed(error)])
    assert caught.value is error
    with pytest.raises(InternalError):
        collect_completion(ID, MODEL, CREATED, [Started(4)])


def test_sdk_client_reads_the_stream_and_the_error():
    ok = [Started(4), ContentDelta("Once"), ContentDelta(" upon"), Finished("stop", 4, 2)]
    reply = Reply(_render(ok), headers={"content-type": "text/event-stream"})
    with openai_client(reply) as (client, _):
        chunks = list(client.completions.create(model=MODEL, prompt="x", stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Once upon"
    assert chunks[-1].usage.total_tokens == 6

    failed = [Started(4), ContentDelta("Once"), Failed(ServiceUnavailable("worker exited"))]
    reply = Reply(_render(failed), headers={"content-type": "text/event-stream"})
    with openai_client(reply) as (client, _), pytest.raises(openai.APIError, match="exited"):
        list(client.completions.create(model=MODEL, prompt="x", stream=True))


_finished = st.builds(
    Finished,
    reason=st.sampled_from(["stop", "length"]),
    prompt_tokens=st.integers(0, 10_000),
    completion_tokens=st.integers(0, 10_000),
    cached_tokens=st.integers(0, 10),
    prefill_ms=st.floats(0, 1e6),
    decode_ms=st.floats(0, 1e6),
)
_failed = st.builds(Failed, error=st.builds(InternalError, st.text(max_size=5)))


@settings(max_examples=200)
@given(st.lists(st.builds(ContentDelta, st.text(max_size=6))), _finished | _failed)
def test_stream_and_collect_agree(deltas, terminal):
    events = [Started(10), *deltas, terminal]
    payloads = _payloads(_render(events))
    assert payloads[-1] == "[DONE]"
    text, finish, usage = "", None, None
    for payload in payloads[:-1]:
        if "error" in payload:
            SdkErrorObject.model_validate(payload["error"])
            continue
        _assert_sdk_chunk(payload)
        for choice in payload["choices"]:
            assert choice["text"] or choice["finish_reason"]  # no empty deltas
            text += choice["text"]
            finish = choice["finish_reason"] or finish
        usage = payload.get("usage", usage)
    if isinstance(terminal, Failed):
        assert finish == "error"
        return
    reply = unstructure(collect_completion(ID, MODEL, CREATED, events))
    (choice,) = reply["choices"]
    assert (text, finish, usage) == (choice["text"], choice["finish_reason"], reply["usage"])
