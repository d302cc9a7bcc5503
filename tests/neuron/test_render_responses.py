"""Responses API rendering: the event order with sequence numbers, items opened
and closed by output kind, the incomplete and failed endings, the
non-streaming reply (function calls included), SDK conformance and
stream/collect agreement for any event sequence."""

from __future__ import annotations

import json

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types import responses as oai

from neuron.events import (
    ContentDelta,
    Failed,
    Finished,
    LogprobsDelta,
    ReasoningDelta,
    Started,
    TokenLogprob,
    ToolCallParsed,
)
from neuron.render import ResponsesStream, collect_response
from protocol._converter import structure, unstructure
from protocol.errors import InternalError, RateLimited, ServiceUnavailable
from protocol.responses import ResponseId, ResponsesRequest
from protocol.sse import SseDecoder
from tests.protocol.sdk_clients import Reply, json_reply, openai_client

ID = ResponseId("resp_abc")
MODEL = "helexa/tiny-chat"
CREATED = 1_700_000_000
CALL = ToolCallParsed(0, "call_1", "get_weather", '{"city":"Paris"}')
CALL2 = ToolCallParsed(1, "call_2", "get_time", "{}")
STREAM_EVENTS = pydantic.TypeAdapter(oai.ResponseStreamEvent)


def _render(events, *, request: ResponsesRequest | None = None) -> bytes:
    stream = ResponsesStream(ID, MODEL, CREATED, request=request)
    return stream.start() + b"".join(stream.feed(e) for e in events)


def _events(body: bytes) -> list[dict]:
    """The payloads, checked: named by their type, numbered 0, 1, …, valid for the SDK."""
    decoder = SseDecoder()
    frames = decoder.feed(body)
    decoder.close()
    assert not decoder.truncated
    payloads = [json.loads(f.data) for f in frames]
    assert [f.event for f in frames] == [p["type"] for p in payloads]
    assert [p["sequence_number"] for p in payloads] == list(range(len(payloads)))
    for payload in payloads:
        STREAM_EVENTS.validate_python(payload)
    return payloads


def _brief(payload: dict) -> tuple:
    """An event in short: its type without the prefix, and what it is about."""
    kind = payload["type"].removeprefix("response.")
    if "item" in payload:
        return (kind, payload["output_index"], payload["item"]["type"], payload["item"]["status"])
    for key in ("delta", "text", "arguments"):
        if key in payload:
            return (kind, payload[key])
    if "response" in payload:
        return (kind, payload["response"]["status"])
    return (kind,)


def _shell(status: str = "in_progress", **extra) -> dict:
    return {
        "id": ID,
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "model": MODEL,
        "output": [],
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        **extra,
    }


def _usage(input: int, output: int, *, cached: int = 0, reasoning: int = 0) -> dict:
    return {
        "input_tokens": input,
        "output_tokens": output,
        "total_tokens": input + output,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": reasoning},
    }


# ------------------------------------------------------------ exact sequences


def test_plain_content():
    events = [Started(5), ContentDelta("Hel"), ContentDelta("lo."), Finished("stop", 5, 2)]
    where = {"item_id": "msg_abc_0", "output_index": 0, "content_index": 0}
    message = {"type": "message", "id": "msg_abc_0", "role": "assistant"}
    done_message = {
        **message,
        "status": "completed",
        "content": [{"type": "output_text", "text": "Hello.", "annotations": []}],
    }
    final = _shell("completed", output=[done_message], usage=_usage(5, 2))
    assert _events(_render(events)) == [
        {"type": "response.created", "response": _shell(), "sequence_number": 0},
        {"type": "response.in_progress", "response": _shell(), "sequence_number": 1},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {**message, "status": "in_progress", "content": []},
            "sequence_number": 2,
        },
        {
            "type": "response.content_part.added",
            **where,
            "part": {"type": "output_text", "text": "", "annotations": []},
            "sequence_number": 3,
        },
        {
            "type": "response.output_text.delta",
            **where,
            "delta": "Hel",
            "logprobs": [],
            "sequence_number": 4,
        },
        {
            "type": "response.output_text.delta",
            **where,
            "delta": "lo.",
            "logprobs": [],
            "sequence_number": 5,
        },
        {
            "type": "response.output_text.done",
            **where,
            "text": "Hello.",
            "logprobs": [],
            "sequence_number": 6,
        },
        {
            "type": "response.content_part.done",
            **where,
            "part": {"type": "output_text", "text": "Hello.", "annotations": []},
            "sequence_number": 7,
        },
        {
            "type": "response.output_item.done",
            "output_index": 0,
            "item": done_message,
            "sequence_number": 8,
        },
        {"type": "response.completed", "response": final, "sequence_number": 9},
    ]


def test_reasoning_then_content():
    events = [
        Started(5),
        ReasoningDelta("Let me"),
        ReasoningDelta(" think."),
        ContentDelta("Answer"),
        Finished("stop", 5, 9, reasoning_tokens=6),
    ]
    payloads = _events(_render(events))
    assert [_brief(p) for p in payloads] == [
        ("created", "in_progress"),
        ("in_progress", "in_progress"),
        ("output_item.added", 0, "reasoning", "in_progress"),
        ("reasoning_summary_part.added",),
        ("reasoning_summary_text.delta", "Let me"),
        ("reasoning_summary_text.delta", " think."),
        ("reasoning_summary_text.done", "Let me think."),
        ("reasoning_summary_part.done",),
        ("output_item.done", 0, "reasoning", "completed"),
        ("output_item.added", 1, "message", "in_progress"),
        ("content_part.added",),
        ("output_text.delta", "Answer"),
        ("output_text.done", "Answer"),
        ("content_part.done",),
        ("output_item.done", 1, "message", "completed"),
        ("completed", "completed"),
    ]
    assert payloads[3]["part"] == {"type": "summary_text", "text": ""}
    assert payloads[7]["part"] == {"type": "summary_text", "text": "Let me think."}
    assert payloads[8]["item"] == {
        "type": "reasoning",
        "id": "rs_abc_0",
        "summary": [{"type": "summary_text", "text": "Let me think."}],
        "status": "completed",
    }
    assert payloads[-1]["response"]["usage"] == _usage(5, 9, reasoning=6)


def test_tool_calls_follow_the_message():
    events = [Started(5), ContentDelta("Checking."), CALL, CALL2, Finished("stop", 5, 20)]
    payloads = _events(_render(events))
    assert [_brief(p) for p in payloads[2:]] == [
        ("output_item.added", 0, "message", "in_progress"),
        ("content_part.added",),
        ("output_text.delta", "Checking."),
        ("output_text.done", "Checking."),
        ("content_part.done",),
        ("output_item.done", 0, "message", "completed"),
        ("output_item.added", 1, "function_call", "in_progress"),
        ("function_call_arguments.delta", '{"city":"Paris"}'),
        ("function_call_arguments.done", '{"city":"Paris"}'),
        ("output_item.done", 1, "function_call", "completed"),
        ("output_item.added", 2, "function_call", "in_progress"),
        ("function_call_arguments.delta", "{}"),
        ("function_call_arguments.done", "{}"),
        ("output_item.done", 2, "function_call", "completed"),
        ("completed", "completed"),
    ]
    assert payloads[8]["item"] == {
        "type": "function_call",
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": "",
        "id": "fc_abc_1",
        "status": "in_progress",
    }
    assert payloads[10]["name"] == "get_weather"
    call = {**payloads[8]["item"], "arguments": '{"city":"Paris"}', "status": "completed"}
    assert payloads[11]["item"] == call
    assert payloads[-1]["response"]["output"][1] == call


def test_content_after_a_tool_call_opens_a_new_message():
    events = [Started(5), CALL, ContentDelta("Done."), Finished("stop", 5, 20)]
    output = _events(_render(events))[-1]["response"]["output"]
    assert [(item["type"], item["id"]) for item in output] == [
        ("function_call", "fc_abc_0"),
        ("message", "msg_abc_1"),
    ]


def test_length_is_incomplete():
    events = [Started(5), ReasoningDelta("hmm"), ContentDelta("The ans"), Finished("length", 5, 8)]
    payloads = _events(_render(events))
    assert [_brief(p) for p in payloads[-4:]] == [
        ("output_text.done", "The ans"),
        ("content_part.done",),
        ("output_item.done", 1, "message", "incomplete"),
        ("incomplete", "incomplete"),
    ]
    response = payloads[-1]["response"]
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert [item["status"] for item in response["output"]] == ["completed", "incomplete"]


def test_usage_details():
    finished = Finished("stop", 40, 12, reasoning_tokens=4, cached_tokens=32, prefill_ms=3.0)
    response = _events(_render([Started(40), ContentDelta("ok"), finished]))[-1]["response"]
    assert response["usage"] == _usage(40, 12, cached=32, reasoning=4)


def test_fail_mid_stream_reports_in_band():
    error = ServiceUnavailable("worker exited", code="worker_crashed")
    events = [Started(5), ContentDelta("Hel"), Failed(error, prompt_tokens=5, completion_tokens=1)]
    payloads = _events(_render(events))
    assert [_brief(p) for p in payloads[-3:]] == [
        ("output_text.delta", "Hel"),
        ("error",),
        ("failed", "failed"),
    ]
    assert payloads[-2] == {
        "type": "error",
        "message": "worker exited",
        "code": "worker_crashed",
        "param": None,
        "sequence_number": len(payloads) - 2,
    }
    partial = {
        "type": "message",
        "id": "msg_abc_0",
        "role": "assistant",
        "status": "incomplete",
        "content": [{"type": "output_text", "text": "Hel", "annotations": []}],
    }
    assert payloads[-1]["response"] == _shell(
        "failed",
        output=[partial],
        usage=_usage(5, 1),
        error={"code": "server_error", "message": "worker exited"},
    )


def test_fail_maps_rate_limits():
    events = [Started(5), Failed(RateLimited("slow down"))]
    assert _events(_render(events))[-1]["response"]["error"] == {
        "code": "rate_limit_exceeded",
        "message": "slow down",
    }


def test_request_fields_are_echoed():
    request = structure(
        {
            "model": MODEL,
            "input": "hi",
            "instructions": "Be brief.",
            "tools": [{"type": "function", "name": "get_time", "parameters": {}}],
            "temperature": 0.5,
            "max_output_tokens": 64,
            "metadata": {"k": "v"},
        },
        ResponsesRequest,
    )
    payloads = _events(_render([Started(5), Finished("stop", 5, 0)], request=request))
    echoed = {
        "instructions": "Be brief.",
        "tools": [{"type": "function", "name": "get_time", "parameters": {}}],
        "temperature": 0.5,
        "max_output_tokens": 64,
        "metadata": {"k": "v"},
    }
    assert payloads[0]["response"] == _shell(**echoed)
    assert payloads[-1]["response"] == _shell("completed", usage=_usage(5, 0), **echoed)


def test_misuse_raises():
    stream = ResponsesStream(ID, MODEL, CREATED)
    with pytest.raises(RuntimeError, match="start"):
        stream.feed(ContentDelta("early"))
    stream.start()
    with pytest.raises(RuntimeError, match="already started"):
        stream.start()
    assert stream.feed(ContentDelta("")) == b""
    stream.feed(Finished("stop", 1, 1))
    assert stream.ended and stream.response.status == "completed"
    for event in (ContentDelta("late"), CALL, Finished("stop", 1, 1), Failed(InternalError("x"))):
        with pytest.raises(RuntimeError, match="already ended"):
            stream.feed(event)


# --------------------------------------------------------------- non-streaming


def test_collect_includes_function_calls():
    events = [Started(5), ReasoningDelta("Need data."), ContentDelta("Checking."), CALL]
    response = collect_response(ID, MODEL, CREATED, [*events, Finished("stop", 5, 20)])
    assert response.status == "completed"
    assert response.output_text == "Checking."
    reply = unstructure(response)
    assert [item["type"] for item in reply["output"]] == ["reasoning", "message", "function_call"]
    assert reply["output"][2] == {
        "type": "function_call",
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": '{"city":"Paris"}',
        "id": "fc_abc_2",
        "status": "completed",
    }
    validated = oai.Response.model_validate(reply)
    assert validated.output[2].name == "get_weather"


def test_collect_failed_raises_its_error():
    error = ServiceUnavailable("worker exited")
    with pytest.raises(ServiceUnavailable) as caught:
        collect_response(ID, MODEL, CREATED, [Started(5), ContentDelta("x"), Failed(error)])
    assert caught.value is error
    with pytest.raises(InternalError, match="without a result"):
        collect_response(ID, MODEL, CREATED, [Started(5), ContentDelta("x")])


# ------------------------------------------------------- the official SDK client


def _sse(body: bytes) -> Reply:
    return Reply(body, headers={"content-type": "text/event-stream"})


def test_sdk_stream_helper_accumulates_the_stream():
    events = [
        Started(5),
        ReasoningDelta("hm"),
        ContentDelta("It is "),
        ContentDelta("sunny."),
        CALL,
        Finished("stop", 5, 7),
    ]
    with (
        openai_client(_sse(_render(events))) as (client, _),
        client.responses.stream(model=MODEL, input="weather?") as stream,
    ):
        final = stream.get_final_response()
    assert final.output_text == "It is sunny."
    expected = unstructure(collect_response(ID, MODEL, CREATED, events))
    assert final.model_dump(mode="json", exclude_none=True) == {
        **{k: v for k, v in expected.items() if v is not None},
        "created_at": float(CREATED),
    }


def test_sdk_client_reads_a_failed_stream_and_a_reply():
    events = [Started(5), ContentDelta("Hel"), Failed(ServiceUnavailable("worker exited"))]
    with openai_client(_sse(_render(events))) as (client, _):
        got = list(client.responses.create(model=MODEL, input="x", stream=True))
    assert [e.type for e in got[-2:]] == ["error", "response.failed"]
    assert got[-1].response.error.code == "server_error"

    reply = collect_response(ID, MODEL, CREATED, [Started(5), CALL, Finished("stop", 5, 9)])
    with openai_client(json_reply(reply)) as (client, _):
        got = client.responses.create(model=MODEL, input="x")
    assert [item.type for item in got.output] == ["function_call"]


# ------------------------------------------------------------------ properties

_texts = st.text(max_size=6)
_finished = st.builds(
    Finished,
    reason=st.sampled_from(["stop", "length", "tool_calls"]),
    prompt_tokens=st.integers(0, 10_000),
    completion_tokens=st.integers(0, 10_000),
    reasoning_tokens=st.integers(0, 100),
    cached_tokens=st.integers(0, 10),
)
_failed = st.builds(
    Failed,
    error=st.builds(ServiceUnavailable, _texts) | st.builds(RateLimited, _texts),
    prompt_tokens=st.integers(0, 100),
    completion_tokens=st.integers(0, 100),
)


@st.composite
def generations(draw) -> list:
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
            args = "" if text == "" else json.dumps({"q": text}, ensure_ascii=False)
            events.append(ToolCallParsed(calls, f"call_{calls}", f"fn_{calls}", args))
            calls += 1
    return [*events, draw(_finished | _failed)]


_TEXT_KEY = {"output_text": "text", "reasoning_summary_text": "text", "function_call": "arguments"}


def _replay(payloads: list[dict]) -> list[dict]:
    """Rebuild the output from the events as a client would, checking the protocol:
    one item open at a time, indices in order, each `.done` text the joined deltas."""
    items: list[dict] = []
    open_index, text = None, ""
    for p in payloads[2:-1]:
        kind = p["type"].removeprefix("response.")
        if kind == "output_item.added":
            assert open_index is None and p["output_index"] == len(items)
            items.append(p["item"])
            open_index, text = p["output_index"], ""
        elif kind.endswith(".delta"):
            assert p["output_index"] == open_index and p["delta"]
            text += p["delta"]
        elif kind in ("output_text.done", "reasoning_summary_text.done"):
            assert p["text"] == text
        elif kind == "function_call_arguments.done":
            assert p["arguments"] == text
        elif kind == "output_item.done":
            assert p["output_index"] == open_index
            item = p["item"]
            field = {"message": "content", "reasoning": "summary"}.get(item["type"])
            assert (item[field][0]["text"] if field else item["arguments"]) == text
            items[open_index], open_index = item, None
        elif kind == "error":
            assert p is payloads[-2]
    return items


@settings(max_examples=300)
@given(generations(), st.integers(1, 64))
def test_stream_and_collect_agree(events, split):
    body = _render(events)
    decoder = SseDecoder()
    frames = [f for i in range(0, len(body), split) for f in decoder.feed(body[i : i + split])]
    assert [f.data for f in frames] == [f.data for f in SseDecoder().feed(body)]
    payloads = _events(body)
    assert [p["type"] for p in payloads[:2]] == ["response.created", "response.in_progress"]
    items = _replay(payloads)
    response = payloads[-1]["response"]
    oai.Response.model_validate(response)
    if isinstance(events[-1], Failed):
        assert payloads[-1]["type"] == "response.failed"
        assert payloads[-2]["type"] == "error"
        assert [i["id"] for i in response["output"]] == [i["id"] for i in items]
        with pytest.raises(type(events[-1].error)):
            collect_response(ID, MODEL, CREATED, events)
        return
    assert response["output"] == items
    assert response == unstructure(collect_response(ID, MODEL, CREATED, events))
    cut = events[-1].reason == "length"
    assert payloads[-1]["type"] == ("response.incomplete" if cut else "response.completed")


# -- include: message.output_text.logprobs --------------------------------------------------


def _logprob(token: str, value: float, *top: tuple[str, float]):
    alternatives = tuple(TokenLogprob(t, v, tuple(t.encode())) for t, v in top)
    return TokenLogprob(token, value, tuple(token.encode()), alternatives)


def test_output_text_logprobs_when_included():
    request = ResponsesRequest(model=MODEL, input="hi", include=("message.output_text.logprobs",))
    think, there = _logprob("<think>", -0.5), _logprob("there", -0.25)
    hi = _logprob("Hi", -0.1, ("Hi", -0.1), ("Yo", -2.0))
    events = [
        Started(prompt_tokens=3),
        LogprobsDelta((think,)),
        ReasoningDelta("hmm"),
        LogprobsDelta((hi,)),
        ContentDelta("Hi"),
        LogprobsDelta((_logprob(" ", -1.0),)),  # held back by the parser until "there"
        LogprobsDelta((there,)),
        ContentDelta(" there"),
        LogprobsDelta((_logprob("<tool_call>", -3.0),)),
        CALL,
        Finished("tool_calls", 3, 5),
    ]
    payloads = _events(_render(events, request=request))
    deltas = [p for p in payloads if p["type"] == "response.output_text.delta"]
    assert [[e["token"] for e in d["logprobs"]] for d in deltas] == [["Hi"], [" ", "there"]]
    assert deltas[0]["logprobs"][0] == {
        "token": "Hi",
        "logprob": -0.1,
        "top_logprobs": [{"token": "Hi", "logprob": -0.1}, {"token": "Yo", "logprob": -2.0}],
    }
    [done] = [p for p in payloads if p["type"] == "response.output_text.done"]
    assert [e["token"] for e in done["logprobs"]] == ["Hi", " ", "there"]
    reply = collect_response(ID, MODEL, CREATED, events, request=request)
    [part] = reply.output[1].content
    assert [(e["token"], e["logprob"]) for e in part.logprobs] == [
        ("Hi", -0.1), (" ", -1.0), ("there", there.logprob),
    ]  # fmt: skip
    assert part.logprobs[0]["bytes"] == [72, 105]
    assert part.logprobs[0]["top_logprobs"][1] == {
        "token": "Yo",
        "bytes": [89, 111],
        "logprob": -2.0,
    }
    parsed = oai.Response.model_validate(json.loads(json.dumps(unstructure(reply))))
    assert parsed.output[1].content[0].logprobs[2].token == "there"
    # Not included: no logprobs on the part, empty lists on the events.
    plain = collect_response(
        ID, MODEL, CREATED, events, request=ResponsesRequest(model=MODEL, input="hi")
    )
    assert plain.output[1].content[0].logprobs is None
