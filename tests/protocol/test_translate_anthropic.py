"""Anthropic Messages ⇄ OpenAI chat: requests, replies and streams.

Requests are checked against what chat can carry (a Claude Code request
field by field, then any valid request, drawn by hypothesis, against a
spec of what must survive). Replies and streams are checked with the
official SDK: replies validate as its `Message`, streams drive its
accumulator, and a stream always accumulates to the very message the
non-streaming translation gives for the same output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic as sdk
import attrs
import pytest
from anthropic import types as ant
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sdk_clients import Reply, anthropic_client
from wire_strategies import wire_values

from protocol import anthropic as an
from protocol import openai as chat
from protocol._converter import encode_json, parse, structure, unstructure
from protocol.errors import InvalidRequest, ServiceUnavailable
from protocol.translate_anthropic import (
    ChatStreamToAnthropic,
    chat_to_message,
    count_tokens_to_chat,
    messages_to_chat,
    stop_reason,
)

FIXTURES = Path(__file__).parents[1] / "conformance" / "fixtures"
MODEL = "helexa/model"
USER = [{"role": "user", "content": "hi"}]


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def translate(body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    request = parse(encode_json(body), an.MessagesRequest)
    return unstructure(messages_to_chat(request, **kwargs))


def _body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 64, "messages": USER, **fields}


# ------------------------------------------------------------------- request


def test_claude_code_request_translates_field_by_field():
    out = translate(fixture("claude_code_tool_result")["body"], model="helexa/concrete")
    assert out["model"] == "helexa/concrete"
    system, user, assistant, result_a, result_b, follow_up = out["messages"]
    assert system == {
        "role": "system",
        "content": "x-anthropic-billing-header: cc_version=2.1.160\n"
        "You are Claude Code, Anthropic's official CLI for Claude.\n\n"
        "# claudeMd\nCodebase and user instructions are shown below.",
    }
    assert user == {
        "role": "user",
        "content": [
            {"type": "text", "text": "<system-reminder>Today is 2026-11-22.</system-reminder>"},
            {"type": "text", "text": "Read notes.txt and summarise it"},
        ],
    }
    assert assistant == {
        "role": "assistant",
        "content": [{"type": "text", "text": "I'll read the file."}],
        "reasoning_content": "The user wants notes.txt.",
        "tool_calls": [
            {
                "id": "toolu_01ReadNotes",
                "type": "function",
                "function": {"name": "Read", "arguments": '{"file_path":"notes.txt"}'},
            },
            {
                "id": "toolu_01Missing",
                "type": "function",
                "function": {"name": "Read", "arguments": '{"file_path":"missing.txt"}'},
            },
        ],
    }
    assert result_a == {
        "role": "tool",
        "tool_call_id": "toolu_01ReadNotes",
        "content": [{"type": "text", "text": "     1\tbuy milk\n     2\tship helexa\n"}],
    }
    assert result_b == {
        "role": "tool",
        "tool_call_id": "toolu_01Missing",
        "content": "<tool_use_error>File does not exist.</tool_use_error>",
    }
    assert follow_up == {
        "role": "user",
        "content": [
            {"type": "text", "text": "Also: what is in the design doc?"},
            {"type": "text", "text": "Design: a gateway over neurons."},
        ],
    }
    assert [t["function"]["name"] for t in out["tools"]] == ["Read", "Bash"]  # no server tool
    read = out["tools"][0]["function"]
    assert read["parameters"]["required"] == ["file_path"]
    assert read["parameters"]["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert (out["tool_choice"], out["parallel_tool_calls"]) == ("auto", True)
    assert out["chat_template_kwargs"] == {"enable_thinking": True}
    assert (out["max_tokens"], out["temperature"], out["stream"]) == (32000, 1.0, True)
    assert out["stream_options"] == {"include_usage": True}
    assert out["user"] == "user_0f2e_account_9c1d_session_5b7a"
    assert "cache_control" not in json.dumps(out)


@pytest.mark.parametrize(
    ("choice", "expected", "parallel"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "any"}, "required", None),
        ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
        ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}, None),
        ({"type": "none"}, "none", None),
    ],
)
def test_every_tool_choice_form(choice, expected, parallel):
    tools = [{"name": "f", "input_schema": {"type": "object"}}]
    out = translate(_body(tools=tools, tool_choice=choice))
    assert out["tool_choice"] == expected
    assert out.get("parallel_tool_calls") == parallel
    assert out["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    ]


@pytest.mark.parametrize(
    ("thinking", "enabled"),
    [
        (None, False),  # Anthropic does not think unless asked
        ({"type": "enabled", "budget_tokens": 2048}, True),
        ({"type": "adaptive"}, True),
        ({"type": "disabled"}, False),
    ],
)
def test_thinking_turns_the_template_switch(thinking, enabled):
    out = translate(_body(thinking=thinking) if thinking else _body())
    assert out["chat_template_kwargs"] == {"enable_thinking": enabled}


def test_sampling_stop_sequences_and_metadata():
    out = translate(
        _body(
            temperature=0.2,
            top_p=0.9,
            top_k=40,
            stop_sequences=["END", "\n\nH:"],
            metadata={"user_id": "u1"},
        )
    )
    assert (out["temperature"], out["top_p"], out["top_k"]) == (0.2, 0.9, 40)
    assert out["stop"] == ["END", "\n\nH:"]
    assert out["user"] == "u1"
    assert out["max_tokens"] == 64 and out["stream"] is False
    assert "stream_options" not in out


def test_system_string_blocks_and_system_messages_merge_into_one_leading_message():
    out = translate(
        _body(
            system=[{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
            messages=[
                {"role": "user", "content": "hi"},
                {"role": "system", "content": [{"type": "text", "text": "C"}]},
                {"role": "system", "content": ""},
                {"role": "assistant", "content": "yo"},
            ],
        )
    )
    assert out["messages"] == [
        {"role": "system", "content": "A\nB\n\nC"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
    ]
    assert translate(_body())["messages"] == [{"role": "user", "content": "hi"}]


def test_images_and_documents_in_user_turns():
    png = {"type": "base64", "media_type": "image/png", "data": "iVBOR"}
    out = translate(
        _body(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": png},
                        {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
                        {
                            "type": "document",
                            "source": {"type": "text", "media_type": "text/plain", "data": "notes"},
                        },
                        {"type": "search_result", "source": "s", "title": "t", "content": []},
                    ],
                }
            ]
        )
    )
    assert out["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
        {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
        {"type": "text", "text": "notes"},
        {"type": "search_result", "source": "s", "title": "t", "content": []},
    ]


def test_a_file_image_is_refused_naming_the_block():
    image = {"type": "image", "source": {"type": "file", "file_id": "file_1"}}
    body = _body(messages=[{"role": "user", "content": [{"type": "text", "text": "x"}, image]}])
    with pytest.raises(InvalidRequest) as refused:
        translate(body)
    assert refused.value.param == "messages[0].content[1].source"
    assert refused.value.code == "unsupported_value"


def test_count_tokens_request_is_the_conversation_alone():
    body = fixture("claude_code_count_tokens")["body"]
    request = parse(encode_json(body), an.CountTokensRequest)
    out = unstructure(count_tokens_to_chat(request))
    assert set(out) == {"model", "messages", "tools", "stream", "chat_template_kwargs"}
    assert out["messages"][0]["role"] == "system"
    assert [t["function"]["name"] for t in out["tools"]] == ["Read"]


def test_tool_only_turns_and_an_empty_turn():
    out = translate(
        _body(
            messages=[
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "", "signature": "s"},
                        {"type": "redacted_thinking", "data": "x"},
                    ],
                },
                {"role": "user", "content": []},
            ]
        )
    )
    assert out["messages"] == [
        {"role": "tool", "content": "", "tool_call_id": "t1"},
        {"role": "assistant", "reasoning_content": ""},
        {"role": "user", "content": []},
    ]


# ------------------------------------------ request: any valid request, carried


def _anthropic_view(request: an.MessagesRequest) -> dict[str, Any]:
    """What chat can carry of `request`, in the order chat carries it: the spec."""
    system = [request.system_text or ""]
    system += [_text_of(m.content) for m in request.messages if m.role == "system"]
    items: list[tuple] = []
    for m in request.messages:
        if isinstance(m.content, str) and m.role != "system":
            items.append((m.role, "text", m.content))
        elif m.role == "user":
            blocks = m.content
            results = [b for b in blocks if isinstance(b, an.ToolResultBlock)]
            items += [("user", "result", b.tool_use_id, _result_view(b.content)) for b in results]
            items += [("user", *v) for b in blocks for v in _block_view(b)]
        elif m.role == "assistant":
            items += [
                ("assistant", "text", b.text) for b in m.content if isinstance(b, an.TextBlock)
            ]
            thinking = [b.thinking for b in m.content if isinstance(b, an.ThinkingBlock)]
            if thinking:
                items.append(("assistant", "thinking", "\n".join(thinking)))
            items += [
                ("assistant", "call", b.id, b.name, b.input)
                for b in m.content
                if isinstance(b, an.ToolUseBlock)
            ]
    tools = [
        (t.name, t.description, t.input_schema, t.strict)
        for t in request.tools or ()
        if isinstance(t, an.Tool)
    ]
    choice = request.tool_choice
    return {
        "system": "\n\n".join(p for p in system if p) or None,
        "items": items,
        "tools": tools,
        "tool_choice": None if choice is None else (choice.type, getattr(choice, "name", None)),
        "parallel": getattr(choice, "disable_parallel_tool_use", None),
        "thinking": isinstance(request.thinking, an.ThinkingEnabled | an.ThinkingAdaptive),
        "sampling": (
            request.max_tokens,
            tuple(request.stop_sequences or ()) or None,
            request.temperature,
            request.top_p,
            request.top_k,
            request.stream,
            request.metadata.user_id if request.metadata else None,
        ),
    }


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(b.text for b in content if isinstance(b, an.TextBlock))


def _block_view(block: Any) -> list[tuple]:
    match block:
        case an.TextBlock(text=text):
            return [("text", text)]
        case an.ImageBlock(source=an.Base64Source(media_type=media, data=data)):
            return [("image", f"data:{media};base64,{data}")]
        case an.ImageBlock(source=an.UrlSource(url=url)):
            return [("image", url)]
        case an.OtherBlock(type=kind, rest=rest):
            return [("other", kind, rest)]
    return []  # thinking or tool_use in a user turn: not a user's to send


def _result_view(content: Any) -> Any:
    if content is None or isinstance(content, str):
        return content or ""
    return [v for b in content for v in _block_view(b)]


def _chat_view(out: chat.ChatCompletionRequest) -> dict[str, Any]:
    """The same view, read back from the chat request alone."""
    messages = list(out.messages)
    system = None
    if messages and isinstance(messages[0], chat.SystemMessage):
        system = messages.pop(0).content
    items: list[tuple] = []
    for m in messages:
        match m:
            case chat.ToolMessage(content=content, tool_call_id=call_id):
                items.append(("user", "result", call_id, _chat_content(content)))
            case chat.UserMessage(content=str(text)) | chat.AssistantMessage(content=str(text)):
                items.append((m.role, "text", text))
            case chat.UserMessage(content=parts):
                items += [("user", *v) for v in _chat_content(parts)]
            case chat.AssistantMessage():
                items += [("assistant", *v) for v in _chat_content(m.content or ())]
                if m.reasoning_content is not None:
                    items.append(("assistant", "thinking", m.reasoning_content))
                items += [
                    ("assistant", "call", c.id, c.function.name, json.loads(c.function.arguments))
                    for c in m.tool_calls or ()
                ]
    choice = out.tool_choice
    names = {"auto": "auto", "required": "any", "none": "none"}
    return {
        "system": system,
        "items": items,
        "tools": [
            (t.function.name, t.function.description, t.function.parameters, t.function.strict)
            for t in out.tools or ()
        ],
        "tool_choice": None
        if choice is None
        else (names[choice], None)
        if isinstance(choice, str)
        else ("tool", choice.function.name),
        "parallel": None if out.parallel_tool_calls is None else not out.parallel_tool_calls,
        "thinking": out.chat_template_kwargs == {"enable_thinking": True},
        "sampling": (
            out.max_tokens,
            out.stop,
            out.temperature,
            out.top_p,
            out.top_k,
            out.stream,
            out.user,
        ),
    }


def _chat_content(content: Any) -> Any:
    if isinstance(content, str):
        return content
    views = []
    for part in content:
        match part:
            case chat.TextPart(text=text):
                views.append(("text", text))
            case chat.ImageUrlPart(image_url=chat.ImageUrl(url=url)):
                views.append(("image", url))
            case chat.OtherPart(type=kind, rest=rest):
                views.append(("other", kind, rest))
    return views


def _no_file_images(request: an.MessagesRequest) -> bool:
    return "'file_id'" not in repr(request) and "FileSource" not in repr(request)


# Any request, with longer conversations than the generic strategy draws.
requests = st.builds(
    lambda request, messages: attrs.evolve(request, messages=tuple(messages)),
    wire_values(an.MessagesRequest),
    st.lists(wire_values(an.MessageParam), min_size=1, max_size=6),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests)
def test_any_request_translates_to_a_valid_chat_request_carrying_every_field(request):
    assume(_no_file_images(request))
    out = messages_to_chat(request)
    assert parse(encode_json(out), chat.ChatCompletionRequest) == out  # valid on the wire
    assert structure(unstructure(out), chat.ChatCompletionRequest, internal=True) == out
    assert _chat_view(out) == _anthropic_view(request)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests)
def test_a_file_image_is_the_only_refusal(request):
    try:
        messages_to_chat(request)
    except InvalidRequest as refused:
        assert refused.code == "unsupported_value" and "FileSource" in repr(request)


# --------------------------------------------------------------------- reply


def _completion(
    content="Checking.",
    reasoning="They want weather.",
    calls=(("get_weather", '{"city":"Paris"}'),),
    finish="tool_calls",
    stop=None,
    usage=(30, 12, 20),
):
    message = chat.ChatCompletionMessage(
        content=content,
        reasoning_content=reasoning,
        tool_calls=tuple(
            chat.ToolCall(id=f"call_{i}", function=chat.FunctionCall(name=n, arguments=a))
            for i, (n, a) in enumerate(calls)
        )
        or None,
    )
    prompt, completion, cached = usage
    return chat.ChatCompletion(
        id="chatcmpl-abc",
        created=1,
        model=MODEL,
        choices=(chat.Choice(message=message, finish_reason=finish, stop_sequence=stop),),
        usage=chat.Usage.of(prompt, completion, cached=cached),
    )


def test_reply_has_thinking_text_and_tool_use_in_order():
    message = chat_to_message(_completion())
    wire = unstructure(message)
    validated = ant.Message.model_validate(wire)
    assert wire["id"] == "msg_abc" and wire["model"] == MODEL
    assert [b.type for b in validated.content] == ["thinking", "text", "tool_use"]
    assert validated.content[2].input == {"city": "Paris"}
    assert validated.content[2].id == "call_0"
    assert (validated.stop_reason, validated.stop_sequence) == ("tool_use", None)
    assert wire["usage"] == {
        "input_tokens": 10,
        "output_tokens": 12,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 20,
    }


@pytest.mark.parametrize(
    ("finish", "stop", "reason"),
    [
        ("stop", None, "end_turn"),
        ("stop", "END", "stop_sequence"),
        ("length", None, "max_tokens"),
        ("tool_calls", None, "tool_use"),
        ("function_call", None, "tool_use"),
        ("content_filter", None, "refusal"),
    ],
)
def test_stop_reasons(finish, stop, reason):
    message = chat_to_message(_completion(finish=finish, stop=stop, calls=()))
    assert message.stop_reason == reason
    assert message.stop_sequence == (stop if reason == "stop_sequence" else None)


def test_reply_without_usage_or_text_and_with_odd_arguments():
    completion = _completion(
        content=None, reasoning=None, calls=(("f", ""), ("g", "[1]"), ("h", "not json"))
    )
    completion = structure({**unstructure(completion), "usage": None}, chat.ChatCompletion)
    message = chat_to_message(completion)
    assert [b.input for b in message.content] == [
        {},
        {"arguments": "[1]"},
        {"arguments": "not json"},
    ]
    assert message.usage == an.Usage.of(0, 0)


def test_reply_reaches_the_sdk_client():
    reply = Reply(
        encode_json(chat_to_message(_completion())), 200, {"content-type": "application/json"}
    )
    with anthropic_client(reply) as (client, _):
        got = client.messages.create(model=MODEL, max_tokens=9, messages=USER)
    assert got.content[2].input == {"city": "Paris"} and got.stop_reason == "tool_use"


# -------------------------------------------------------------------- stream


def _chunks(completion: chat.ChatCompletion, *, pieces: int = 3) -> bytes:
    """The chat SSE a node sends for `completion`: deltas split into `pieces`."""
    choice = completion.choices[0]
    message = choice.message
    ids = {"id": completion.id, "created": 1, "model": MODEL}
    frames = [chat.ChatCompletionChunk.role_chunk(**ids)]
    for field in ("reasoning_content", "content"):
        text = getattr(message, field) or ""
        step = max(1, -(-len(text) // pieces))
        frames += [
            chat.ChatCompletionChunk.of_delta(
                chat.ChoiceDelta(**{field: text[i : i + step]}), **ids
            )
            for i in range(0, len(text), step)
        ]
    for index, call in enumerate(message.tool_calls or ()):
        args = call.function.arguments_json
        head = chat.ToolCallDelta(
            index=index,
            id=call.id,
            type="function",
            function=chat.ToolCallFunctionDelta(name=call.function.name),
        )
        frames.append(
            chat.ChatCompletionChunk.of_delta(chat.ChoiceDelta(tool_calls=(head,)), **ids)
        )
        step = max(1, -(-len(args) // pieces))
        for i in range(0, len(args), step):
            part = chat.ToolCallDelta(
                index=index, function=chat.ToolCallFunctionDelta(arguments=args[i : i + step])
            )
            frames.append(
                chat.ChatCompletionChunk.of_delta(chat.ChoiceDelta(tool_calls=(part,)), **ids)
            )
    frames.append(
        chat.ChatCompletionChunk.finish_chunk(
            choice.finish_reason, stop_sequence=choice.stop_sequence, **ids
        )
    )
    if completion.usage is not None:
        frames.append(chat.ChatCompletionChunk.usage_chunk(completion.usage, **ids))
    body = b"".join(b"data: " + encode_json(f) + b"\n\n" for f in frames)
    return body + b"data: [DONE]\n\n"


def _translate_stream(data: bytes, cuts: list[int] | None = None) -> bytes:
    translator = ChatStreamToAnthropic(model=MODEL, message_id="msg_1")
    out, start = b"", 0
    for cut in [*sorted(cuts or []), len(data)]:
        out += translator.feed(data[start:cut])
        start = cut
    out += translator.close()
    assert translator.outcome == "ok"
    return out


def _events(stream: bytes) -> list[dict[str, Any]]:
    events = []
    for frame in stream.decode().split("\n\n"):
        if frame:
            name, data = frame.split("\n")
            event = json.loads(data.removeprefix("data: "))
            assert name == f"event: {event['type']}"
            events.append(event)
    return events


def _accumulate(stream: bytes) -> ant.Message:
    reply = Reply(stream, headers={"content-type": "text/event-stream"})
    with (
        anthropic_client(reply) as (client, _),
        client.messages.stream(model=MODEL, max_tokens=9, messages=USER) as events,
    ):
        return events.get_final_message()


def _assert_well_formed(events: list[dict[str, Any]]) -> None:
    """message_start first, numbered start/delta/stop triples, message_delta, message_stop."""
    assert events[0]["type"] == "message_start" and events[-1]["type"] == "message_stop"
    assert events[-2]["type"] == "message_delta"
    usage = events[0]["message"]["usage"]
    assert {"cache_creation_input_tokens", "cache_read_input_tokens"} <= set(usage)
    open_index, next_index = None, 0
    for event in events[1:-2]:
        if event["type"] == "ping":
            continue
        if event["type"] == "content_block_start":
            assert open_index is None and event["index"] == next_index
            open_index, next_index = event["index"], next_index + 1
        elif event["type"] == "content_block_delta":
            assert event["index"] == open_index
        else:
            assert event == {"type": "content_block_stop", "index": open_index}
            open_index = None
    assert open_index is None


def test_stream_event_sequence_and_sdk_accumulation():
    completion = _completion()
    stream = _translate_stream(_chunks(completion))
    events = _events(stream)
    _assert_well_formed(events)
    kinds = [
        (e["type"], e.get("index"), (e.get("content_block") or e.get("delta") or {}).get("type"))
        for e in events
    ]
    assert kinds[:2] == [("message_start", None, None), ("content_block_start", 0, "thinking")]
    assert ("content_block_start", 2, "tool_use") in kinds
    assert ("content_block_delta", 2, "input_json_delta") in kinds
    assert events[-2]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert events[-2]["usage"] == {
        "output_tokens": 12,
        "input_tokens": 10,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 20,
    }
    final = _accumulate(stream)
    assert final.model_dump(exclude={"id"}) == ant.Message.model_validate(
        unstructure(chat_to_message(completion))
    ).model_dump(exclude={"id"})


def test_stop_sequence_reaches_message_delta():
    stream = _translate_stream(_chunks(_completion(finish="stop", stop="END", calls=())))
    assert _events(stream)[-2]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    final = _accumulate(stream)
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "END")


def test_keepalives_become_pings_after_message_start():
    translator = ChatStreamToAnthropic(model=MODEL, message_id="msg_1")
    head = translator.ping()  # the gateway waits for a load: the stream opens anyway
    body = translator.feed(b": keepalive\n\n" + _chunks(_completion(calls=())))
    events = _events(head + body + translator.close())
    assert [e["type"] for e in events[:3]] == ["message_start", "ping", "ping"]
    _assert_well_formed(events)
    assert _accumulate(head + body).content[1].text == "Checking."


def test_node_error_frame_becomes_one_error_event_the_sdk_raises():
    translator = ChatStreamToAnthropic(model=MODEL, message_id="msg_1")
    error = {"error": {"message": "worker died", "type": "api_error", "code": "worker_died"}}
    body = translator.feed(
        b'data: {"id":"c","object":"chat.completion.chunk","created":1,'
        b'"model":"m","choices":[{"index":0,"delta":{"content":"Hi"},'
        b'"finish_reason":null}]}\n\n'
        b"data: " + encode_json(error) + b"\n\n"
    )
    assert translator.outcome == "stream_error"
    assert translator.feed(b"data: [DONE]\n\n") == b"" and translator.close() == b""
    events = _events(body)
    assert events[-1] == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "worker died"},
    }
    reply = Reply(body, headers={"content-type": "text/event-stream"})
    with (
        anthropic_client(reply) as (client, _),
        pytest.raises(sdk.APIStatusError) as raised,
        client.messages.stream(model=MODEL, max_tokens=9, messages=USER) as stream,
    ):
        stream.get_final_message()
    assert raised.value.body["error"]["type"] == "overloaded_error"


def test_failure_and_a_cut_stream_end_with_an_error_event():
    translator = ChatStreamToAnthropic(model=MODEL)
    failed = translator.fail(ServiceUnavailable("no healthy nodes"))
    assert _events(failed) == [
        {"type": "error", "error": {"type": "overloaded_error", "message": "no healthy nodes"}}
    ]
    cut = ChatStreamToAnthropic(model=MODEL)
    out = cut.feed(_chunks(_completion())[:300]) + cut.close()
    assert _events(out)[-1]["type"] == "error" and cut.outcome == "stream_error"


def test_done_without_a_finish_chunk_is_an_end_turn_and_counts_deltas():
    translator = ChatStreamToAnthropic(model=MODEL)
    data = b"".join(
        b"data: "
        + encode_json(
            chat.ChatCompletionChunk.of_delta(
                chat.ChoiceDelta(content=t), id="c", created=1, model=MODEL
            )
        )
        + b"\n\n"
        for t in "abc"
    )
    events = _events(translator.feed(data + b"data: [DONE]\n\n"))
    assert events[-2]["delta"]["stop_reason"] == "end_turn"
    assert events[-2]["usage"] == {"output_tokens": 3}
    _assert_well_formed(events)


def test_unreadable_frames_are_skipped():
    translator = ChatStreamToAnthropic(model=MODEL)
    out = translator.feed(b'data: not json\n\ndata: {"x": 1}\n\ndata: [DONE]\n\n')
    assert [e["type"] for e in _events(out)] == ["message_start", "message_delta", "message_stop"]


# ----------------------------------------------- stream ≡ reply, for any output

_texts = st.text(max_size=30)
_arguments = st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3)


@st.composite
def completions(draw) -> chat.ChatCompletion:
    calls = draw(
        st.lists(st.tuples(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), _arguments), max_size=3)
    )
    finish = draw(st.sampled_from(["stop", "length", "tool_calls", "content_filter"]))
    prompt = draw(st.integers(0, 10_000))
    return _completion(
        content=draw(_texts) or None,
        reasoning=draw(_texts) or None,
        calls=tuple((name, encode_json(args).decode()) for name, args in calls),
        finish=finish,
        stop=draw(st.none() | st.text(min_size=1, max_size=4)) if finish == "stop" else None,
        usage=(prompt, draw(st.integers(0, 10_000)), draw(st.integers(0, prompt))),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(completion=completions(), pieces=st.integers(1, 5), data=st.data())
def test_a_stream_accumulates_to_the_reply_for_any_output(completion, pieces, data):
    raw = _chunks(completion, pieces=pieces)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=8))
    stream = _translate_stream(raw, cuts)
    assert stream == _translate_stream(raw)  # however the bytes were split
    _assert_well_formed(_events(stream))
    expected = ant.Message.model_validate(unstructure(chat_to_message(completion)))
    assert _accumulate(stream).model_dump(exclude={"id"}) == expected.model_dump(exclude={"id"})
    reason = stop_reason(completion.choices[0].finish_reason, completion.choices[0].stop_sequence)
    assert expected.stop_reason == reason
