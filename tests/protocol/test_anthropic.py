"""Anthropic Messages on the wire, checked against the official SDK.

The request fixtures follow what Claude Code sends (system blocks with
`cache_control`, a system message inside `messages`, tool_use/tool_result
history, thinking blocks, server tools); the replies and stream events must
validate with the SDK's models and drive its streaming accumulator.
"""

from __future__ import annotations

import anthropic as sdk
import pydantic
import pytest
from anthropic import types as ant
from sdk_clients import anthropic_client, json_reply, sse_reply

from protocol import anthropic as an
from protocol._converter import parse, structure, unstructure
from protocol.errors import RateLimited, ServiceUnavailable, ValidationFailed

MODEL = "Qwen/Qwen3-0.6B"  # a real Claude name makes the SDK warn about deprecations
STREAM_EVENTS = pydantic.TypeAdapter(ant.RawMessageStreamEvent)

CLAUDE_CODE_REQUEST = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 32000,
    "stream": True,
    "temperature": 1,
    "system": [
        {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
        {
            "type": "text",
            "text": "You are an interactive CLI tool that helps users with software tasks.",
            "cache_control": {"type": "ephemeral"},
        },
    ],
    "messages": [
        {"role": "system", "content": "Project instructions from CLAUDE.md"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "<system-reminder>context</system-reminder>"},
                {
                    "type": "text",
                    "text": "Fix the failing test in foo.py",
                    "cache_control": {"type": "ephemeral", "ttl": "1h"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {
                    "type": "thinking",
                    "thinking": "Let me read foo.py.",
                    "signature": "EqQBCkYIBxgCKkA",
                },
                {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va"},
                {"type": "text", "text": "I'll read the file first."},
                {
                    "type": "tool_use",
                    "id": "toolu_01A",
                    "name": "Read",
                    "input": {"file_path": "/repo/foo.py"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01A",
                    "content": [{"type": "text", "text": "def foo():\n    return 1\n"}],
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01B",
                    "content": "File does not exist.",
                    "is_error": True,
                    "cache_control": {"type": "ephemeral"},
                },
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"},
                },
                {
                    "type": "document",
                    "source": {"type": "text", "media_type": "text/plain", "data": "notes"},
                    "title": "notes.txt",
                },
            ],
        },
    ],
    "tools": [
        {
            "name": "Read",
            "description": "Reads a file from the local filesystem.",
            "input_schema": {
                "type": "object",
                "properties": {"file_path": {"type": "string"}},
                "required": ["file_path"],
                "additionalProperties": False,
                "$schema": "http://json-schema.org/draft-07/schema#",
            },
        },
        {
            "name": "Bash",
            "description": "Run a command",
            "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}},
            "cache_control": {"type": "ephemeral"},
        },
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
    ],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": False},
    "thinking": {"type": "enabled", "budget_tokens": 31999},
    "metadata": {"user_id": "user_abc_account_def_session_123"},
    "context_management": {"edits": [{"type": "clear_thinking_20251015"}]},
    "output_config": {"effort": "high"},
}


def _error(data, cls=an.MessagesRequest) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as info:
        structure(data, cls)
    return info.value


def _body(**extra):
    return {
        "model": MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    }


# ------------------------------------------------------------------ requests


def test_claude_code_request_parses():
    request = structure(CLAUDE_CODE_REQUEST, an.MessagesRequest)
    assert request.stream is True and request.max_tokens == 32000
    assert request.system[1].cache_control == an.CacheControl()
    assert request.system_text.startswith("You are Claude Code") and "\n" in request.system_text

    system, user, assistant, results = request.messages
    assert system == an.MessageParam(role="system", content="Project instructions from CLAUDE.md")
    assert user.content[1].cache_control == an.CacheControl(ttl="1h")
    thinking, redacted, text, tool_use = assistant.content
    assert thinking == an.ThinkingBlock(thinking="Let me read foo.py.", signature="EqQBCkYIBxgCKkA")
    assert redacted == an.RedactedThinkingBlock(data="EmwKAhgBEgy3va")
    assert text == an.TextBlock(text="I'll read the file first.")
    assert tool_use == an.ToolUseBlock(
        id="toolu_01A", name="Read", input={"file_path": "/repo/foo.py"}
    )
    ok, failed, image, document = results.content
    assert ok.content == (an.TextBlock(text="def foo():\n    return 1\n"),)
    assert (failed.content, failed.is_error) == ("File does not exist.", True)
    assert image.source == an.Base64Source(media_type="image/png", data="iVBORw0K")
    assert document.type == "document" and document.rest["title"] == "notes.txt"

    read, bash, web = request.tools
    assert read.input_schema["required"] == ["file_path"]
    assert bash.cache_control == an.CacheControl()
    assert web == an.ServerTool(type="web_search_20250305", name="web_search", rest={"max_uses": 5})
    assert request.tool_choice == an.AutoToolChoice(disable_parallel_tool_use=False)
    assert request.thinking == an.ThinkingEnabled(budget_tokens=31999)
    assert request.metadata.user_id == "user_abc_account_def_session_123"
    assert request.temperature == 1.0


def test_unknown_blocks_survive_a_round_trip_verbatim():
    request = structure(CLAUDE_CODE_REQUEST, an.MessagesRequest)
    wire = unstructure(request)
    assert wire["messages"][3]["content"][3] == CLAUDE_CODE_REQUEST["messages"][3]["content"][3]
    assert wire["tools"][2] == CLAUDE_CODE_REQUEST["tools"][2]
    assert "context_management" not in wire  # unknown top-level fields are dropped


def test_request_sent_by_the_sdk_parses():
    with anthropic_client(json_reply(_message())) as (client, sent):
        client.messages.create(
            model=MODEL,
            max_tokens=1024,
            system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            messages=[
                {"role": "user", "content": "What's the weather?"},
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "weather",
                            "input": {"c": "P"},
                        }
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                    ],
                },
            ],
            tools=[{"name": "weather", "input_schema": {"type": "object"}}],
            tool_choice={"type": "tool", "name": "weather"},
            stop_sequences=["\n\nHuman:"],
            metadata={"user_id": "u"},
            thinking={"type": "disabled"},
            # this SDK release has no sampling parameters of its own
            extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 40},
        )
    request = parse(sent.body, an.MessagesRequest)
    assert request.messages[1].content[0].input == {"c": "P"}
    assert request.messages[2].content[1].source == an.UrlSource(url="https://x/y.png")
    assert request.tool_choice == an.NamedToolChoice(name="weather")
    assert request.stop_sequences == ("\n\nHuman:",)
    assert (request.temperature, request.top_p, request.top_k) == (0.5, 0.9, 40)
    assert request.thinking == an.ThinkingDisabled()


def test_count_tokens_sent_by_the_sdk():
    with anthropic_client(json_reply(an.CountTokensResponse(input_tokens=42))) as (client, sent):
        counted = client.messages.count_tokens(
            model=MODEL,
            system="Be brief.",
            messages=[{"role": "user", "content": "hello"}],
            tools=[{"name": "f", "input_schema": {"type": "object"}}],
            thinking={"type": "enabled", "budget_tokens": 2048},
        )
    assert counted.input_tokens == 42
    assert sent.sent[-1].url.path == "/v1/messages/count_tokens"
    request = parse(sent.body, an.CountTokensRequest)
    assert request.system == "Be brief."
    assert request.thinking == an.ThinkingEnabled(budget_tokens=2048)


def test_count_tokens_needs_no_max_tokens():
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
    assert structure(body, an.CountTokensRequest).messages[0].content == "x"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
            "required field missing @ $.max_tokens",
        ),
        (_body(max_tokens="64"), "expected integer, got string @ $.max_tokens"),
        (_body(stream="false"), "expected bool, got string @ $.stream"),
        (
            _body(messages=[{"role": "human", "content": "x"}]),
            "expected one of 'user', 'assistant', 'system', got 'human' @ $.messages[0].role",
        ),
        (
            _body(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]),
            "expected string, got integer @ $.messages[0].content[0].text",
        ),
        (
            _body(messages=[{"role": "user", "content": [{"type": "tool_result"}]}]),
            "required field missing @ $.messages[0].content[0].tool_use_id",
        ),
        (
            _body(messages=[{"role": "user", "content": [{"text": "untyped"}]}]),
            "expected object with type 'image' or 'redacted_thinking' or 'text' or 'thinking' "
            "or 'tool_result' or 'tool_use', got object @ $.messages[0].content[0]",
        ),
        (
            _body(
                messages=[
                    {"role": "user", "content": [{"type": "image", "source": {"type": "ftp"}}]}
                ]
            ),
            "expected object with type 'base64' or 'file' or 'url', got object "
            "@ $.messages[0].content[0].source",
        ),
        (
            _body(tools=[{"name": "f", "description": "no schema"}]),
            "required field missing @ $.tools[0].input_schema",
        ),
        (
            _body(tools=[{"type": "custom", "name": "f", "input_schema": []}]),
            "expected object, got array @ $.tools[0].input_schema",
        ),
        (
            _body(tool_choice={"type": "tool"}),
            "required field missing @ $.tool_choice.name",
        ),
        (
            _body(tool_choice={"type": "sometimes"}),
            "expected object with type 'any' or 'auto' or 'none' or 'tool', got object "
            "@ $.tool_choice",
        ),
        (
            _body(thinking={"type": "enabled"}),
            "required field missing @ $.thinking.budget_tokens",
        ),
        (_body(system=7), "expected string or array or null, got integer @ $.system"),
        (
            _body(system=[{"type": "text"}]),
            "required field missing @ $.system[0].text",
        ),
        (_body(stop_sequences="END"), "expected array or null, got string @ $.stop_sequences"),
    ],
)
def test_validation_errors_name_the_path(body, message):
    assert _error(body).message == message


# ------------------------------------------------------------------- replies


def _message(**fields) -> an.Message:
    return an.Message(
        id="msg_01",
        model=MODEL,
        content=(
            an.ThinkingBlock(thinking="They want weather."),
            an.TextBlock(text="Checking."),
            an.ToolUseBlock(id="toolu_1", name="weather", input={"city": "Paris"}),
        ),
        stop_reason="tool_use",
        usage=an.Usage.of(30, 12, cache_read=20),
        **fields,
    )


def test_reply_wire_shape():
    wire = unstructure(_message())
    assert wire["type"] == "message" and wire["role"] == "assistant"
    assert wire["stop_sequence"] is None  # always present
    assert wire["content"][0] == {
        "type": "thinking",
        "thinking": "They want weather.",
        "signature": "",
    }
    assert wire["content"][1] == {"type": "text", "text": "Checking."}
    assert wire["usage"] == {
        "input_tokens": 30,
        "output_tokens": 12,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 20,
    }


def test_reply_validates_with_the_sdk_and_parses_back():
    validated = ant.Message.model_validate(unstructure(_message()))
    assert validated.content[2].input == {"city": "Paris"}
    assert structure(validated.model_dump(), an.Message) == _message()


def test_reply_reaches_the_sdk_client():
    with anthropic_client(json_reply(_message())) as (client, _):
        got = client.messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    assert [b.type for b in got.content] == ["thinking", "text", "tool_use"]
    assert got.stop_reason == "tool_use" and got.usage.cache_read_input_tokens == 20


# -------------------------------------------------------------------- stream


def _events() -> list:
    start = an.Message(id="msg_01", model=MODEL, usage=an.Usage.of(30, 0))
    return [
        an.MessageStart(message=start),
        an.Ping(),
        an.ContentBlockStart(index=0, content_block=an.ThinkingBlock(thinking="")),
        an.ContentBlockDelta(index=0, delta=an.ThinkingDelta(thinking="They want weather.")),
        an.ContentBlockDelta(index=0, delta=an.SignatureDelta(signature="sig")),
        an.ContentBlockStop(index=0),
        an.ContentBlockStart(index=1, content_block=an.TextBlock(text="")),
        an.ContentBlockDelta(index=1, delta=an.TextDelta(text="Check")),
        an.ContentBlockDelta(index=1, delta=an.TextDelta(text="ing.")),
        an.ContentBlockStop(index=1),
        an.ContentBlockStart(
            index=2, content_block=an.ToolUseBlock(id="toolu_1", name="weather", input={})
        ),
        an.ContentBlockDelta(index=2, delta=an.InputJsonDelta(partial_json='{"city": ')),
        an.ContentBlockDelta(index=2, delta=an.InputJsonDelta(partial_json='"Paris"}')),
        an.ContentBlockStop(index=2),
        an.MessageDelta(
            delta=an.MessageDeltaBody(stop_reason="tool_use"),
            usage=an.MessageDeltaUsage(output_tokens=12, input_tokens=30),
        ),
        an.MessageStop(),
    ]


def test_message_start_keeps_null_stop_fields():
    wire = unstructure(_events()[0])
    assert wire["message"]["stop_reason"] is None
    assert wire["message"]["stop_sequence"] is None
    assert wire["message"]["content"] == []
    assert wire["message"]["usage"]["cache_read_input_tokens"] == 0
    delta = unstructure(_events()[-2])
    assert delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert delta["usage"] == {"output_tokens": 12, "input_tokens": 30}


def test_stream_events_validate_with_the_sdk():
    for event in _events():
        assert structure(unstructure(event), an.StreamEvent) == event
        if not isinstance(event, an.Ping):  # the SDK skips pings without a model
            validated = STREAM_EVENTS.validate_python(unstructure(event))
            assert validated.type == event.type
            assert structure(validated.model_dump(), an.StreamEvent) == event


def test_sdk_stream_accumulates_our_events():
    question = [{"role": "user", "content": "weather?"}]
    with (
        anthropic_client(sse_reply(_events(), named=True)) as (client, _),
        client.messages.stream(model=MODEL, max_tokens=100, messages=question) as stream,
    ):
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Checking."
    thinking, reply, call = final.content
    assert (thinking.thinking, thinking.signature) == ("They want weather.", "sig")
    assert reply.text == "Checking."
    assert (call.name, call.input) == ("weather", {"city": "Paris"})
    assert final.stop_reason == "tool_use"
    assert final.usage.output_tokens == 12


# -------------------------------------------------------------------- errors


def test_error_envelope_value_matches_to_anthropic():
    error = ServiceUnavailable("no healthy nodes available", retry_after=5)
    envelope = an.ErrorResponse.of(error)
    assert unstructure(envelope) == error.to_anthropic()
    assert unstructure(envelope) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "no healthy nodes available"},
    }
    assert ant.ErrorResponse.model_validate(unstructure(envelope)).error.type == "overloaded_error"
    assert structure(unstructure(envelope), an.StreamEvent) == envelope


def test_sdk_raises_the_matching_exception_for_our_envelope():
    error = RateLimited("slow down", retry_after=1)
    reply = json_reply(an.ErrorResponse.of(error), error.status, error.headers())
    with anthropic_client(reply) as (client, _), pytest.raises(sdk.RateLimitError) as info:
        client.messages.create(
            model=MODEL, max_tokens=1, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.status_code == 429
    assert info.value.body["error"] == {"type": "rate_limit_error", "message": "slow down"}
