"""The OpenAI Responses API on the wire, checked against the official SDK."""

from __future__ import annotations

import attrs
import pydantic
import pytest
from openai.types import responses as oai
from sdk_clients import json_reply, openai_client, sse_reply

from protocol import responses as rs
from protocol._converter import parse, structure, unstructure
from protocol.errors import ValidationFailed

MODEL = "Qwen/Qwen3-0.6B"
STREAM_EVENTS = pydantic.TypeAdapter(oai.ResponseStreamEvent)


def _error(data) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as info:
        structure(data, rs.ResponsesRequest)
    return info.value


# ------------------------------------------------------------------ requests


def test_request_sent_by_the_sdk_parses():
    with openai_client(json_reply(_completed())) as (client, sent):
        client.responses.create(
            model=MODEL,
            instructions="You are terse.",
            input=[
                {"role": "user", "content": "What's the weather in Paris?"},
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "And this?"},
                        {"type": "input_image", "image_url": "https://x/y.png", "detail": "auto"},
                        {"type": "input_file", "file_id": "file-1"},
                    ],
                },
                {
                    "type": "reasoning",
                    "id": "rs_1",
                    "summary": [{"type": "summary_text", "text": "s"}],
                },
                {
                    "type": "function_call",
                    "id": "fc_1",
                    "call_id": "call_1",
                    "name": "weather",
                    "arguments": '{"city": "Paris"}',
                    "status": "completed",
                },
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                {
                    "type": "message",
                    "id": "msg_1",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "Sunny.", "annotations": []}],
                },
            ],
            tools=[
                {
                    "type": "function",
                    "name": "weather",
                    "description": "Weather by city",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                    "strict": True,
                },
                {"type": "web_search"},
            ],
            tool_choice={"type": "function", "name": "weather"},
            parallel_tool_calls=True,
            max_output_tokens=256,
            temperature=0.3,
            top_p=0.8,
            store=False,
            reasoning={"effort": "low", "summary": "auto"},
            text={"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
            metadata={"k": "v"},
            include=["reasoning.encrypted_content"],
            extra_body={"chat_template_kwargs": {"enable_thinking": True}},
        )
    request = parse(sent.body, rs.ResponsesRequest)

    easy, typed, reasoning, call, output, replayed = request.input
    assert easy == rs.Message(role="user", content="What's the weather in Paris?")
    assert typed.type == "message"
    assert typed.content == (
        rs.InputText(text="And this?"),
        rs.InputImage(image_url="https://x/y.png", detail="auto"),
        rs.OtherContent(type="input_file", rest={"file_id": "file-1"}),
    )
    assert reasoning == rs.ReasoningItem(id="rs_1", summary=(rs.SummaryText(text="s"),))
    assert call == rs.FunctionCall(
        id="fc_1",
        call_id="call_1",
        name="weather",
        arguments='{"city": "Paris"}',
        status="completed",
    )
    assert output == rs.FunctionCallOutput(call_id="call_1", output="sunny")
    assert replayed.content == (rs.OutputText(text="Sunny."),)
    function, hosted = request.tools
    assert function.name == "weather" and function.strict is True
    assert hosted == rs.OtherTool(type="web_search")
    assert request.tool_choice == rs.ToolChoiceFunction(name="weather")
    assert request.reasoning == rs.ReasoningOptions(effort="low", summary="auto")
    assert request.text.format == rs.TextFormatJsonSchema(name="w", schema={"type": "object"})
    assert request.instructions == "You are terse."
    assert (request.max_output_tokens, request.store) == (256, False)
    assert request.chat_template_kwargs == {"enable_thinking": True}


def test_string_input_is_one_user_message():
    request = structure({"model": MODEL, "input": "hi"}, rs.ResponsesRequest)
    assert request.items == (rs.Message(role="user", content="hi"),)


def test_unknown_item_kinds_are_kept_verbatim():
    raw = {
        "type": "web_search_call",
        "id": "ws_1",
        "status": "completed",
        "action": {"type": "search", "query": "q"},
    }
    request = structure({"model": MODEL, "input": [raw]}, rs.ResponsesRequest)
    (item,) = request.input
    assert item == rs.OtherItem(
        type="web_search_call", rest={k: raw[k] for k in raw if k != "type"}
    )
    assert unstructure(item) == raw


def test_function_call_output_with_parts():
    request = structure(
        {
            "model": MODEL,
            "input": [
                {
                    "type": "function_call_output",
                    "call_id": "c",
                    "output": [{"type": "input_text", "text": "42"}],
                }
            ],
        },
        rs.ResponsesRequest,
    )
    assert request.input[0].output == (rs.InputText(text="42"),)


def test_hosted_tool_choice_is_kept():
    request = structure(
        {"model": MODEL, "input": "x", "tool_choice": {"type": "web_search_preview"}},
        rs.ResponsesRequest,
    )
    assert request.tool_choice == rs.OtherToolChoice(type="web_search_preview")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": MODEL}, "required field missing @ $.input"),
        ({"model": MODEL, "input": 3}, "expected string or array, got integer @ $.input"),
        ({"model": MODEL, "input": "x", "stream": "true"}, "expected bool, got string @ $.stream"),
        (
            {"model": MODEL, "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
            "required field missing @ $.input[0].call_id",
        ),
        (
            {"model": MODEL, "input": [{"type": "message", "role": "robot", "content": "x"}]},
            "expected one of 'user', 'assistant', 'system', 'developer', got 'robot' "
            "@ $.input[0].role",
        ),
        (
            {"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_text"}]}]},
            "required field missing @ $.input[0].content[0].text",
        ),
        (
            {
                "model": MODEL,
                "input": [
                    {"type": "function_call", "call_id": "c", "name": "f", "arguments": {"a": 1}}
                ],
            },
            "expected string, got object @ $.input[0].arguments",
        ),
        (
            {"model": MODEL, "input": [{"content": "no role"}]},
            "expected object with type 'function_call' or 'function_call_output' or 'message' "
            "or 'reasoning', got object @ $.input[0]",
        ),
        (
            {"model": MODEL, "input": "x", "tools": [{"type": "function"}]},
            "required field missing @ $.tools[0].name",
        ),
        (
            {"model": MODEL, "input": "x", "max_output_tokens": "5"},
            "expected integer or null, got string @ $.max_output_tokens",
        ),
    ],
)
def test_validation_errors_name_the_path(body, message):
    assert _error(body).message == message


# ----------------------------------------------------------------- response


def _reasoning() -> rs.ReasoningItem:
    return rs.ReasoningItem(id="rs_1", summary=(rs.SummaryText(text="thinking"),))


def _message(status="completed", text="It is sunny.") -> rs.OutputMessage:
    return rs.OutputMessage(id="msg_1", status=status, content=(rs.OutputText(text=text),))


def _call() -> rs.FunctionCall:
    return rs.FunctionCall(
        id="fc_1",
        call_id="call_1",
        name="weather",
        arguments='{"city":"Paris"}',
        status="completed",
    )


def _shell(status="in_progress", **fields) -> rs.Response:
    return rs.Response(
        id="resp_1", created_at=1_700_000_000, status=status, model=MODEL, metadata={}, **fields
    )


def _completed() -> rs.Response:
    return _shell(
        "completed",
        output=(_reasoning(), _message(), _call()),
        usage=rs.ResponseUsage.of(20, 9, cached=16, reasoning=4),
        tools=(rs.FunctionTool(name="weather", parameters={"type": "object"}),),
    )


def test_response_wire_shape():
    wire = unstructure(_completed())
    assert wire["object"] == "response"
    assert (wire["error"], wire["incomplete_details"], wire["instructions"]) == (None, None, None)
    assert wire["output"][1] == {
        "type": "message",
        "id": "msg_1",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "It is sunny.", "annotations": []}],
    }
    assert wire["usage"] == {
        "input_tokens": 20,
        "output_tokens": 9,
        "total_tokens": 29,
        "input_tokens_details": {"cached_tokens": 16, "cache_write_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 4},
    }
    assert "temperature" not in wire and "previous_response_id" not in wire
    assert _completed().output_text == "It is sunny."


@pytest.mark.parametrize(
    "response",
    [
        _completed(),
        _shell(),
        _shell(
            "incomplete",
            output=(_message("incomplete", ""),),
            incomplete_details=rs.IncompleteDetails(reason="max_output_tokens"),
        ),
        _shell("failed", error=rs.ResponseError(code="server_error", message="worker died")),
    ],
    ids=["completed", "in_progress", "incomplete", "failed"],
)
def test_response_validates_with_the_sdk(response):
    validated = oai.Response.model_validate(unstructure(response))
    assert validated.status == response.status
    assert structure(validated.model_dump(), rs.Response) == response


def test_response_reaches_the_sdk_client():
    with openai_client(json_reply(_completed())) as (client, _):
        got = client.responses.create(model=MODEL, input="weather?")
    assert got.output_text == "It is sunny."
    assert [item.type for item in got.output] == ["reasoning", "message", "function_call"]
    assert got.usage.input_tokens_details.cached_tokens == 16


# -------------------------------------------------------------------- stream


def _events() -> list:
    message = _message("in_progress", "")
    part = rs.OutputText(text="")
    call = attrs.evolve(_call(), status="in_progress", arguments="")
    text = "It is sunny."
    events = [
        rs.ResponseCreated(response=_shell()),
        rs.ResponseInProgress(response=_shell()),
        rs.OutputItemAdded(output_index=0, item=rs.ReasoningItem(id="rs_1")),
        rs.ReasoningSummaryPartAdded(
            item_id="rs_1", output_index=0, summary_index=0, part=rs.SummaryText(text="")
        ),
        rs.ReasoningSummaryTextDelta(
            item_id="rs_1", output_index=0, summary_index=0, delta="thinking"
        ),
        rs.ReasoningSummaryTextDone(
            item_id="rs_1", output_index=0, summary_index=0, text="thinking"
        ),
        rs.ReasoningSummaryPartDone(
            item_id="rs_1", output_index=0, summary_index=0, part=rs.SummaryText(text="thinking")
        ),
        rs.OutputItemDone(output_index=0, item=_reasoning()),
        rs.OutputItemAdded(output_index=1, item=message),
        rs.ContentPartAdded(item_id="msg_1", output_index=1, content_index=0, part=part),
        rs.OutputTextDelta(item_id="msg_1", output_index=1, content_index=0, delta="It is "),
        rs.OutputTextDelta(item_id="msg_1", output_index=1, content_index=0, delta="sunny."),
        rs.OutputItemAdded(output_index=2, item=call),
        rs.FunctionCallArgumentsDelta(item_id="fc_1", output_index=2, delta='{"city":"Paris"}'),
        rs.FunctionCallArgumentsDone(item_id="fc_1", output_index=2, arguments='{"city":"Paris"}'),
        rs.OutputItemDone(output_index=2, item=_call()),
        rs.OutputTextDone(item_id="msg_1", output_index=1, content_index=0, text=text),
        rs.ContentPartDone(
            item_id="msg_1", output_index=1, content_index=0, part=rs.OutputText(text=text)
        ),
        rs.OutputItemDone(output_index=1, item=_message()),
        rs.ResponseCompleted(response=_completed()),
    ]
    return [attrs.evolve(e, sequence_number=n) for n, e in enumerate(events)]


def test_stream_events_validate_with_the_sdk():
    for event in _events():
        validated = STREAM_EVENTS.validate_python(unstructure(event))
        assert validated.type == event.type
        assert validated.sequence_number == event.sequence_number
        assert structure(validated.model_dump(), rs.ResponseStreamEvent) == event


def test_sdk_client_reads_the_stream():
    with openai_client(sse_reply(_events(), named=True)) as (client, _):
        got = list(client.responses.create(model=MODEL, input="weather?", stream=True))
    assert [e.type for e in got] == [e.type for e in _events()]
    assert [e.sequence_number for e in got] == list(range(len(got)))
    assert got[-1].response.output_text == "It is sunny."


def test_terminal_and_error_events_validate():
    incomplete = _shell(
        "incomplete", incomplete_details=rs.IncompleteDetails(reason="max_output_tokens")
    )
    failed = _shell("failed", error=rs.ResponseError(code="server_error", message="boom"))
    for event in (
        rs.ResponseIncomplete(response=incomplete, sequence_number=5),
        rs.ResponseFailed(response=failed, sequence_number=6),
        rs.ErrorEvent(message="worker died", sequence_number=7),
    ):
        assert STREAM_EVENTS.validate_python(unstructure(event)).type == event.type
    assert unstructure(rs.ErrorEvent(message="m")) == {
        "type": "error",
        "message": "m",
        "code": None,
        "param": None,
        "sequence_number": 0,
    }


def test_stream_events_parse_by_type():
    for event in _events():
        assert structure(unstructure(event), rs.ResponseStreamEvent) == event
