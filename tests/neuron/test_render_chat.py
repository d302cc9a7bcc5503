"""Chat completion rendering: exact chunk sequences, the in-band failure, the
non-streaming reply, conformance with the official SDK, and stream/collect
agreement for any event sequence."""

from __future__ import annotations

import json

import openai
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types import ErrorObject as SdkErrorObject
from openai.types.chat import ChatCompletion as SdkChatCompletion
from openai.types.chat import ChatCompletionChunk as SdkChunk

from neuron.events import (
    ContentDelta,
    Failed,
    Finished,
    ReasoningDelta,
    Started,
    ToolCallParsed,
)
from neuron.render import ChatStream, collect_chat
from neuron.render.template import SEQUENCE, TEXT, DeltaTemplate
from protocol._converter import unstructure
from protocol.errors import InternalError, ServiceUnavailable
from protocol.openai import ChatCompletionChunk, ChoiceDelta, CompletionId
from protocol.responses import OutputTextDelta
from protocol.sse import SseDecoder, encode_json_event
from tests.protocol.sdk_clients import Reply, json_reply, openai_client

ID = CompletionId("chatcmpl-abc123")
MODEL = "helexa/tiny-chat"
CREATED = 1_700_000_000
CALL = ToolCallParsed(0, "call_1", "get_weather", '{"city":"Paris"}')
CALL2 = ToolCallParsed(1, "call_2", "get_time", "{}")


def _render(events, *, include_usage: bool = True) -> bytes:
    stream = ChatStream(ID, MODEL, CREATED, include_usage=include_usage)
    return stream.start() + b"".join(stream.feed(e) for e in events)


def _payloads(body: bytes) -> list:
    """Every frame's data, JSON-decoded; `[DONE]` kept as the string."""
    decoder = SseDecoder()
    frames = decoder.feed(body)
    decoder.close()
    assert not decoder.truncated
    return [f.data if f.is_done else json.loads(f.data) for f in frames]


def _chunk(choices: list | None = None, **extra) -> dict:
    head = {"id": ID, "object": "chat.completion.chunk", "created": CREATED, "model": MODEL}
    return {**head, "choices": choices if choices is not None else [], **extra}


def _delta(**delta) -> dict:
    return _chunk([{"index": 0, "delta": delta, "finish_reason": None}])


def _final(reason: str) -> dict:
    return _chunk([{"index": 0, "delta": {}, "finish_reason": reason}])


NO_REASONING = {"reasoning_tokens": 0}
NOT_CACHED = {"cached_tokens": 0}  # always present: a prefix cache miss


def _usage_chunk(prompt: int, completion: int, **details) -> dict:
    details.setdefault("prompt_tokens_details", NOT_CACHED)
    if details["prompt_tokens_details"] is None:  # a failure's usage: counts only
        del details["prompt_tokens_details"]
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    return _chunk(usage={**usage, "total_tokens": prompt + completion, **details})


def _timing(prefill_ms=0.0, decode_ms=0.0, prefill_tokens=0) -> dict:
    return {
        "helexa_timing": {
            "prefill_ms": prefill_ms,
            "decode_ms": decode_ms,
            "prefill_tokens": prefill_tokens,
        }
    }


ROLE = _delta(role="assistant", content="")


def _assert_sdk_chunk(payload: dict) -> None:
    """Validates as the SDK's chunk; only our in-band `"error"` finish is outside it."""
    try:
        SdkChunk.model_validate(payload)
    except pydantic.ValidationError as exc:
        assert payload["choices"][0]["finish_reason"] == "error"
        assert [e["loc"] for e in exc.errors()] == [("choices", 0, "finish_reason")]


# ------------------------------------------------------------ exact sequences


def test_plain_content():
    events = [Started(5), ContentDelta("Hel"), ContentDelta("lo."), Finished("stop", 5, 2)]
    assert _payloads(_render(events)) == [
        ROLE,
        _delta(content="Hel"),
        _delta(content="lo."),
        _final("stop"),
        _usage_chunk(5, 2, completion_tokens_details=NO_REASONING, **_timing(prefill_tokens=5)),
        "[DONE]",
    ]


def test_reasoning_then_content():
    events = [
        Started(5),
        ReasoningDelta("Let me"),
        ReasoningDelta(" think."),
        ContentDelta("Answer"),
        Finished("stop", 5, 9, reasoning_tokens=6),
    ]
    assert _payloads(_render(events))[:-3] == [
        ROLE,
        _delta(reasoning_content="Let me"),
        _delta(reasoning_content=" think."),
        _delta(content="Answer"),
    ]
    usage = _payloads(_render(events))[-2]["usage"]
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 6}


def test_tool_calls_finish_with_tool_calls():
    events = [Started(5), ContentDelta("Checking."), CALL, CALL2, Finished("stop", 5, 20)]
    assert _payloads(_render(events))[:-2] == [
        ROLE,
        _delta(content="Checking."),
        _delta(
            tool_calls=[
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ]
        ),
        _delta(
            tool_calls=[
                {
                    "index": 1,
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": "{}"},
                }
            ]
        ),
        _final("tool_calls"),
    ]


def test_length_stays_length_even_after_a_tool_call():
    events = [Started(5), CALL, ContentDelta("and then"), Finished("length", 5, 16)]
    assert _payloads(_render(events))[-3] == _final("length")


def test_stop_with_usage_details():
    finished = Finished(
        "stop",
        prompt_tokens=40,
        completion_tokens=12,
        reasoning_tokens=4,
        cached_tokens=32,
        prefill_ms=12.5,
        decode_ms=250.0,
    )
    tail = _payloads(_render([Started(40), ContentDelta("ok"), finished]))[-3:]
    assert tail == [
        _final("stop"),
        _usage_chunk(
            40,
            12,
            prompt_tokens_details={"cached_tokens": 32},
            completion_tokens_details={"reasoning_tokens": 4},
            **_timing(12.5, 250.0, prefill_tokens=8),
        ),
        "[DONE]",
    ]


def test_the_stop_string_that_matched_is_reported_streamed_and_collected():
    """helexa's `stop_sequence` extra, so a translation to Anthropic can report it."""
    events = [Started(5), ContentDelta("Hi"), Finished("stop", 5, 2, stop_sequence="END")]
    final = _final("stop")
    final["choices"][0]["stop_sequence"] = "END"
    assert _payloads(_render(events))[2] == final
    choice = _collect(events)["choices"][0]
    assert (choice["finish_reason"], choice["stop_sequence"]) == ("stop", "END")
    SdkChatCompletion.model_validate(_collect(events))


def test_fail_mid_stream_reports_in_band():
    error = ServiceUnavailable("worker exited", code="worker_crashed")
    events = [Started(5), ContentDelta("Hel"), Failed(error, prompt_tokens=5, completion_tokens=1)]
    assert _payloads(_render(events)) == [
        ROLE,
        _delta(content="Hel"),
        {
            "error": {
                "message": "worker exited",
                "type": "api_error",
                "code": "worker_crashed",
                "param": None,
            }
        },
        _final("error"),
        _usage_chunk(5, 1, prompt_tokens_details=None),
        "[DONE]",
    ]


def test_include_usage_false_has_no_usage_chunk():
    events = [Started(5), ContentDelta("Hi"), Finished("stop", 5, 1)]
    assert _payloads(_render(events, include_usage=False)) == [
        ROLE,
        _delta(content="Hi"),
        _final("stop"),
        "[DONE]",
    ]
    failed = [Started(5), Failed(InternalError("boom"))]
    assert _payloads(_render(failed, include_usage=False))[-2:] == [_final("error"), "[DONE]"]


def test_started_and_empty_deltas_render_nothing():
    stream = ChatStream(ID, MODEL, CREATED)
    assert [stream.feed(e) for e in (Started(5), ContentDelta(""), ReasoningDelta(""))] == [
        b"",
        b"",
        b"",
    ]


def test_each_delta_is_one_frame():
    stream = ChatStream(ID, MODEL, CREATED)
    frame = stream.feed(ContentDelta("line\none\r\n"))
    assert frame.count(b"\n\n") == 1 and frame.endswith(b"\n\n")
    assert _payloads(frame) == [_delta(content="line\none\r\n")]


def test_feeding_after_the_end_raises():
    stream = ChatStream(ID, MODEL, CREATED)
    stream.feed(Finished("stop", 1, 1))
    assert stream.ended
    for event in (ContentDelta("late"), Finished("stop", 1, 1), Failed(InternalError("x"))):
        with pytest.raises(RuntimeError, match="already ended"):
            stream.feed(event)


# --------------------------------------------------------------- non-streaming


def _collect(events) -> dict:
    return unstructure(collect_chat(ID, MODEL, CREATED, events))


def test_collect_plain_content():
    reply = _collect([Started(5), ContentDelta("Hel"), ContentDelta("lo."), Finished("stop", 5, 2)])
    assert reply == {
        "id": ID,
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello."},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 5,
            "completion_tokens": 2,
            "total_tokens": 7,
            "prompt_tokens_details": NOT_CACHED,  # present, as when streamed
            "completion_tokens_details": NO_REASONING,  # present, as when streamed
            **_timing(prefill_tokens=5),
        },
    }
    SdkChatCompletion.model_validate(reply)


def test_collect_reasoning_and_tool_calls_only():
    events = [Started(5), ReasoningDelta("Need weather."), CALL, Finished("stop", 5, 9)]
    reply = _collect(events)
    assert reply["choices"][0] == {
        "index": 0,
        "message": {
            "role": "assistant",
            "content": None,
            "reasoning_content": "Need weather.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        "finish_reason": "tool_calls",
    }
    validated = SdkChatCompletion.model_validate(reply)
    assert validated.choices[0].message.tool_calls[0].function.name == "get_weather"


def test_collect_length_keeps_empty_content():
    reply = _collect([Started(5), ReasoningDelta("hmm"), Finished("length", 5, 8)])
    assert reply["choices"][0]["message"] == {
        "role": "assistant",
        "content": "",
        "reasoning_content": "hmm",
    }
    assert reply["choices"][0]["finish_reason"] == "length"


def test_collect_failed_raises_its_error():
    error = ServiceUnavailable("worker exited")
    with pytest.raises(ServiceUnavailable) as caught:
        collect_chat(ID, MODEL, CREATED, [Started(5), ContentDelta("x"), Failed(error)])
    assert caught.value is error


def test_collect_without_a_result_is_an_internal_error():
    with pytest.raises(InternalError, match="without a result"):
        collect_chat(ID, MODEL, CREATED, [Started(5), ContentDelta("x")])


# ------------------------------------------------------- the official SDK client


def _sse(body: bytes) -> Reply:
    return Reply(body, headers={"content-type": "text/event-stream"})


def test_sdk_stream_helper_accumulates_the_stream():
    events = [Started(5), ReasoningDelta("hm"), ContentDelta("Hi"), CALL, Finished("stop", 5, 7)]
    with (
        openai_client(_sse(_render(events))) as (client, _),
        client.chat.completions.stream(model=MODEL, messages=[]) as stream,
    ):
        final = stream.get_final_completion()
    expected = collect_chat(ID, MODEL, CREATED, events)
    assert final.choices[0].message.content == "Hi"
    assert final.choices[0].message.tool_calls[0].function.arguments == '{"city":"Paris"}'
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.usage.model_dump(exclude_none=True) == unstructure(expected.usage)


def test_sdk_client_raises_the_in_band_error():
    events = [Started(5), ContentDelta("Hel"), Failed(ServiceUnavailable("worker exited"))]
    got = []
    with openai_client(_sse(_render(events))) as (client, _):
        chunks = client.chat.completions.create(model=MODEL, messages=[], stream=True)
        with pytest.raises(openai.APIError, match="worker exited"):
            got.extend(chunk.choices[0].delta.content for chunk in chunks)
    assert got == ["", "Hel"]
    SdkErrorObject.model_validate(_payloads(_render(events))[2]["error"])


def test_sdk_client_reads_the_non_streaming_reply():
    events = [Started(5), ContentDelta("Hi"), Finished("stop", 5, 1)]
    with openai_client(json_reply(collect_chat(ID, MODEL, CREATED, events))) as (client, _):
        got = client.chat.completions.create(model=MODEL, messages=[])
    assert got.choices[0].message.content == "Hi"
    assert got.usage.total_tokens == 6


# ------------------------------------------------------------------ properties

_texts = st.text(max_size=6)
_finished = st.builds(
    Finished,
    reason=st.sampled_from(["stop", "length", "tool_calls"]),
    prompt_tokens=st.integers(0, 10_000),
    completion_tokens=st.integers(0, 10_000),
    reasoning_tokens=st.integers(0, 100),
    cached_tokens=st.just(0) | st.integers(0, 10),
    prefill_ms=st.floats(0, 1e6),
    decode_ms=st.floats(0, 1e6),
)
_failed = st.builds(
    Failed,
    error=st.builds(ServiceUnavailable, _texts, code=st.sampled_from([None, "worker_crashed"])),
    prompt_tokens=st.integers(0, 100),
    completion_tokens=st.integers(0, 100),
)


@st.composite
def generations(draw, terminal=_finished | _failed) -> list:
    """Started, a random mix of outputs (empty texts included), one terminal event."""
    events: list = [Started(draw(st.integers(0, 100)))]
    calls = 0
    for kind, text in draw(
        st.lists(st.tuples(st.sampled_from(["content", "reasoning", "tool"]), _texts))
    ):
        if kind == "content":
            events.append(ContentDelta(text))
        elif kind == "reasoning":
            events.append(ReasoningDelta(text))
        else:
            args = json.dumps({"q": text}, ensure_ascii=False)
            events.append(ToolCallParsed(calls, f"call_{calls}", f"fn_{calls}", args))
            calls += 1
    return [*events, draw(terminal)]


def _join(payloads: list) -> dict:
    """What a client rebuilds from the chunks: the message, finish reason, usage."""
    content, reasoning, calls, finish, usage = "", "", [], None, None
    for chunk in payloads[1:-1]:
        if "error" in chunk:
            continue
        assert chunk["choices"] or chunk["usage"]
        for choice in chunk["choices"]:
            delta = choice["delta"]
            content += delta.get("content", "")
            reasoning += delta.get("reasoning_content", "")
            calls += [
                {k: c[k] for k in ("id", "type", "function")} for c in delta.get("tool_calls", [])
            ]
            finish = choice["finish_reason"] or finish
        usage = chunk.get("usage", usage)
    message = {"role": "assistant", "content": None if calls and not content else content}
    message |= {"reasoning_content": reasoning} if reasoning else {}
    message |= {"tool_calls": calls} if calls else {}
    return {"message": message, "finish_reason": finish, "usage": usage}


@settings(max_examples=300)
@given(generations(), st.integers(1, 64))
def test_stream_and_collect_agree(events, split):
    body = _render(events)
    decoder = SseDecoder()
    frames = [f for i in range(0, len(body), split) for f in decoder.feed(body[i : i + split])]
    assert [f.data for f in frames] == [f.data for f in SseDecoder().feed(body)]
    payloads = _payloads(body)
    assert payloads[0] == ROLE and payloads[-1] == "[DONE]"
    for payload in payloads[:-1]:
        if "error" in payload:
            SdkErrorObject.model_validate(payload["error"])
        else:
            _assert_sdk_chunk(payload)
    # Empty deltas are never sent.
    assert all(d for p in payloads[1:-1] for c in p.get("choices", []) for d in c["delta"].values())
    joined = _join(payloads)
    if isinstance(events[-1], Failed):
        assert joined["finish_reason"] == "error"
        with pytest.raises(ServiceUnavailable):
            collect_chat(ID, MODEL, CREATED, events)
        return
    reply = _collect(events)
    SdkChatCompletion.model_validate(reply)
    (choice,) = reply["choices"]
    assert joined == {
        "message": choice["message"],
        "finish_reason": choice["finish_reason"],
        "usage": reply["usage"],
    }


@given(st.text())
def test_delta_template_matches_the_converter(text):
    def chunk(value):
        return ChatCompletionChunk.of_delta(
            ChoiceDelta(content=value), id=ID, created=CREATED, model=MODEL
        )

    assert DeltaTemplate(chunk(TEXT)).render(text) == encode_json_event(chunk(text))
    event = OutputTextDelta(
        item_id="msg_1", output_index=3, content_index=0, delta=TEXT, sequence_number=SEQUENCE
    )
    real = OutputTextDelta(
        item_id="msg_1", output_index=3, content_index=0, delta=text, sequence_number=41
    )
    rendered = DeltaTemplate(event, event=event.type).render(text, 41)
    assert rendered == encode_json_event(real, event=real.type)


def test_delta_template_needs_its_slot():
    with pytest.raises(ValueError, match="exactly one"):
        DeltaTemplate(ChatCompletionChunk.of_delta(ChoiceDelta(), id=ID, created=1, model=MODEL))
