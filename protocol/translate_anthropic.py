"""Anthropic Messages ⇄ OpenAI chat completions (dialect translation).

The gateway serves `/v1/messages` by asking a node for a chat completion.

Request (`messages_to_chat`; `count_tokens_to_chat` for the conversation
alone): the top-level `system` (string or blocks) and every `system`-role
message inside `messages` (Claude Code ≥ 2.1.154 sends them) merge, joined
by blank lines, into one leading system message. Text blocks become text
parts, images `image_url` parts (base64 as a data URI), `tool_use` blocks
assistant tool calls (arguments as JSON text), thinking blocks the
assistant's `reasoning_content`, and each `tool_result` a tool message,
placed before the rest of its user turn as OpenAI needs. Client tools become
function tools; `tool_choice` auto/any/tool/none becomes
auto/required/named/none and `disable_parallel_tool_use` becomes
`parallel_tool_calls: false`. `thinking` enabled or adaptive turns the chat
template's `enable_thinking` on; disabled or absent turns it off (Anthropic
does not think unless asked). Sampling, `stop_sequences`, `max_tokens` and
`metadata.user_id` (as `user`) map one to one. What chat cannot carry is
dropped: `cache_control`, signatures and redacted thinking, `is_error`,
citations, server tools, the thinking budget. An image given as a Files API
`file` is refused (400): there is no file store here.

Reply (`chat_to_message`): thinking (from `reasoning_content`), text and
tool_use blocks in that order; `stop_reason` from `finish_reason`, with
`stop_sequence` when the node reports which stop string matched (helexa's
`stop_sequence` extra on the choice); `msg_` ids; usage with Anthropic's
split (`input_tokens` excludes cache reads) and both cache fields present.

Stream (`ChatStreamToAnthropic`): the node's chat SSE bytes in, Anthropic
SSE bytes out — `message_start`, numbered `content_block_*` triples for
thinking, text and tool_use (`input_json_delta`), `message_delta` with the
stop reason and cumulative usage, `message_stop`; node keepalive comments
and `ping()` become `ping` events; a failure becomes one `error` event.

Pure: no I/O, no clocks; only fresh ids are random. Not for: routing or
HTTP (`cortex.messages`). The module runs past 500 lines because the reply
and the stream share the mapping rules (stop reason, usage, tool input);
apart, each would import the other's private helpers.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import Any

import attrs

from protocol import anthropic as an
from protocol import openai as chat
from protocol._converter import decode_json, encode_json, structure
from protocol.errors import ApiError, EventStreamError, InvalidRequest, UpstreamError
from protocol.ids import ModelId
from protocol.sse import SseComment, SseDecoder, SseEvent, encode_json_event

__all__ = [
    "ChatStreamToAnthropic",
    "chat_to_message",
    "count_tokens_to_chat",
    "messages_to_chat",
    "new_message_id",
    "stop_reason",
]


# ----------------------------------------------------------------- request


def messages_to_chat(
    request: an.MessagesRequest, *, model: ModelId | None = None
) -> chat.ChatCompletionRequest:
    """The chat request a node serves `request` with; `model` replaces an alias."""
    metadata = request.metadata
    return attrs.evolve(
        count_tokens_to_chat(request, model=model),
        max_tokens=request.max_tokens,
        stop=request.stop_sequences or None,
        temperature=request.temperature,
        top_p=request.top_p,
        top_k=request.top_k,
        user=metadata.user_id if metadata is not None else None,
        stream=request.stream,
        stream_options=chat.StreamOptions(include_usage=True) if request.stream else None,
        response_format=_response_format(request.output_config),
    )


def _response_format(config: an.OutputConfig | None) -> chat.ResponseFormat | None:
    """`output_config.format` (structured outputs) as chat's `response_format`."""
    if config is None or config.format is None:
        return None
    spec = chat.JsonSchemaFormat(name="output", schema=config.format.schema, strict=True)
    return chat.ResponseFormatJsonSchema(json_schema=spec)


def count_tokens_to_chat(
    request: an.CountTokensRequest, *, model: ModelId | None = None
) -> chat.ChatCompletionRequest:
    """The conversation alone (messages, tools, thinking): what `count_tokens` counts."""
    return chat.ChatCompletionRequest(
        model=model or request.model,
        messages=tuple(_messages(request)),
        tools=_tools(request.tools),
        tool_choice=_tool_choice(request.tool_choice),
        parallel_tool_calls=_parallel(request.tool_choice),
        chat_template_kwargs={"enable_thinking": _thinking(request.thinking)},
    )


def _messages(request: an.CountTokensRequest) -> list[chat.ChatMessage]:
    system = _system_text(request)
    out: list[chat.ChatMessage] = [chat.SystemMessage(content=system)] if system else []
    for i, message in enumerate(request.messages):
        if message.role == "user":
            out += _user(message.content, f"messages[{i}].content")
        elif message.role == "assistant":
            out.append(_assistant(message.content))
    return out


def _system_text(request: an.CountTokensRequest) -> str | None:
    pieces = [_plain(request.system)]
    pieces += [_plain(m.content) for m in request.messages if m.role == "system"]
    return "\n\n".join(p for p in pieces if p) or None


def _plain(content: str | tuple[Any, ...] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "\n".join(b.text for b in content if isinstance(b, an.TextBlock))


def _user(content: str | tuple[an.ContentBlock, ...], path: str) -> list[chat.ChatMessage]:
    if isinstance(content, str):
        return [chat.UserMessage(content=content)]
    out: list[chat.ChatMessage] = [
        chat.ToolMessage(
            content=_result_content(b.content, f"{path}[{j}].content"),
            tool_call_id=chat.ToolCallId(b.tool_use_id),
        )
        for j, b in enumerate(content)
        if isinstance(b, an.ToolResultBlock)
    ]
    parts = [
        part
        for j, b in enumerate(content)
        if not isinstance(b, an.ToolResultBlock)
        for part in _part(b, f"{path}[{j}]")
    ]
    if parts or not out:
        out.append(chat.UserMessage(content=tuple(parts)))
    return out


def _result_content(content: Any, path: str) -> str | tuple[chat.ContentPart, ...]:
    if content is None or isinstance(content, str):
        return content or ""
    return tuple(part for j, b in enumerate(content) for part in _part(b, f"{path}[{j}]"))


def _part(block: Any, path: str) -> list[chat.ContentPart]:
    """A user-side block as chat parts; kinds a user turn cannot hold are dropped."""
    match block:
        case an.TextBlock(text=text):
            return [chat.TextPart(text=text)]
        case an.ImageBlock(source=source):
            return [chat.ImageUrlPart(image_url=chat.ImageUrl(url=_image_url(source, path)))]
        case an.OtherBlock(type="document", rest={"source": {"type": "text", "data": str(data)}}):
            return [chat.TextPart(text=data)]
        case an.OtherBlock(type=kind, rest=rest):
            return [chat.OtherPart(type=kind, rest=dict(rest))]
    return []


def _image_url(source: an.ImageSource, path: str) -> str:
    match source:
        case an.Base64Source(media_type=media_type, data=data):
            return f"data:{media_type};base64,{data}"
        case an.UrlSource(url=url):
            return url
    raise InvalidRequest(
        "image sources of type 'file' are not supported (this server has no Files API); "
        "send the image as base64", param=f"{path}.source", code="unsupported_value",
    )  # fmt: skip


def _assistant(content: str | tuple[an.ContentBlock, ...]) -> chat.AssistantMessage:
    if isinstance(content, str):
        return chat.AssistantMessage(content=content)
    texts = tuple(chat.TextPart(text=b.text) for b in content if isinstance(b, an.TextBlock))
    thinking = [b.thinking for b in content if isinstance(b, an.ThinkingBlock)]
    calls = tuple(_tool_call(b) for b in content if isinstance(b, an.ToolUseBlock))
    return chat.AssistantMessage(
        content=texts or None,
        reasoning_content="\n".join(thinking) if thinking else None,
        tool_calls=calls or None,
    )


def _tool_call(block: an.ToolUseBlock) -> chat.ToolCall:
    arguments = encode_json(block.input).decode()
    function = chat.FunctionCall(name=block.name, arguments=arguments)
    return chat.ToolCall(id=chat.ToolCallId(block.id), function=function)


def _tools(tools: Iterable[an.Tool | an.ServerTool] | None) -> tuple[chat.FunctionTool, ...] | None:
    functions = tuple(
        chat.FunctionTool(
            function=chat.FunctionDefinition(
                name=t.name, description=t.description, parameters=t.input_schema, strict=t.strict
            )
        )
        for t in tools or ()
        if isinstance(t, an.Tool)
    )
    return functions or None


def _tool_choice(choice: an.ToolChoice | None) -> chat.ToolChoice | None:
    match choice:
        case an.AutoToolChoice():
            return "auto"
        case an.AnyToolChoice():
            return "required"
        case an.NamedToolChoice(name=name):
            return chat.NamedToolChoice(function=chat.FunctionName(name=name))
        case an.NoneToolChoice():
            return "none"
    return None


def _parallel(choice: an.ToolChoice | None) -> bool | None:
    disabled = getattr(choice, "disable_parallel_tool_use", None)
    return None if disabled is None else not disabled


def _thinking(thinking: an.ThinkingConfig | None) -> bool:
    return isinstance(thinking, an.ThinkingEnabled | an.ThinkingAdaptive)


# ------------------------------------------------------------------- reply


def new_message_id() -> an.MessageId:
    return an.MessageId(f"msg_{uuid.uuid4().hex}")


def stop_reason(finish_reason: str | None, stop_sequence: str | None) -> an.StopReason:
    """Anthropic's `stop_reason` for a chat `finish_reason` (`end_turn` when unknown)."""
    match finish_reason:
        case "stop" if stop_sequence is not None:
            return "stop_sequence"
        case "length":
            return "max_tokens"
        case "tool_calls" | "function_call":
            return "tool_use"
        case "content_filter":
            return "refusal"
    return "end_turn"


def chat_to_message(completion: chat.ChatCompletion, *, model: ModelId | None = None) -> an.Message:
    """The `message` reply for a node's chat completion (its first choice)."""
    if not completion.choices:
        raise UpstreamError("the node's reply has no choices", code="upstream_bad_reply")
    choice = completion.choices[0]
    reply = choice.message
    blocks: list[an.ResponseBlock] = []
    if reply.reasoning_content:
        blocks.append(an.ThinkingBlock(thinking=reply.reasoning_content))
    if reply.content:
        blocks.append(an.TextBlock(text=reply.content))
    blocks += [_tool_use(call) for call in reply.tool_calls or ()]
    reason = stop_reason(choice.finish_reason, choice.stop_sequence)
    return an.Message(
        id=an.MessageId("msg_" + completion.id.removeprefix("chatcmpl-")),
        model=model or completion.model,
        content=tuple(blocks),
        stop_reason=reason,
        stop_sequence=choice.stop_sequence if reason == "stop_sequence" else None,
        usage=_usage(completion.usage),
    )


def _tool_use(call: chat.ToolCall) -> an.ToolUseBlock:
    function = call.function
    return an.ToolUseBlock(
        id=an.ToolUseId(call.id), name=function.name, input=_tool_input(function.arguments)
    )


def _tool_input(arguments: str | dict[str, Any]) -> dict[str, Any]:
    """A call's arguments as the object `input` must be; text that is not a JSON
    object is kept whole under `"arguments"` rather than lost."""
    if isinstance(arguments, dict):
        return arguments
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"arguments": arguments}


def _usage(usage: chat.Usage | None) -> an.Usage:
    if usage is None:
        return an.Usage.of(0, 0)
    cached = _cached(usage)
    return an.Usage.of(usage.prompt_tokens - cached, usage.completion_tokens, cache_read=cached)


def _cached(usage: chat.Usage) -> int:
    details = usage.prompt_tokens_details
    return min(usage.prompt_tokens, details.cached_tokens or 0) if details else 0


# ------------------------------------------------------------------ stream

# Codes of in-band node errors that mean "try again later" (Anthropic: overloaded).
_UNAVAILABLE_CODES = frozenset({
    "worker_died", "worker_unavailable", "service_unavailable", "shutting_down",
    "capacity", "out_of_memory", "device_fault", "request_cancelled", "model_unloading",
})  # fmt: skip
_STATUS_OF_TYPE = {"invalid_request_error": 400, "rate_limit_error": 429}


class ChatStreamToAnthropic:
    """One streamed chat completion re-framed as an Anthropic Messages stream.

    Feed the node's SSE bytes as they arrive; each call returns the bytes to
    send the client (possibly none). `ping()` is the keepalive (it opens the
    message first if nothing was sent yet); `input_tokens` is what
    `message_start` reports, when the prompt's size is known before the
    node's usage arrives (0 otherwise); `fail(error)` ends the stream
    with an `error` event; `close()` ends it at the node's end of stream — a
    stream cut before the node finished is a failure. Once ended, every call
    returns `b""`; `outcome` is then "ok" or "stream_error".
    """

    def __init__(
        self, *, model: ModelId, message_id: an.MessageId | None = None, input_tokens: int = 0
    ) -> None:
        self.model = model
        self.message_id = message_id or new_message_id()
        self.input_tokens = input_tokens  # for message_start; the final count comes at the end
        self.started = False
        self.outcome: str | None = None  # set when the stream ended
        self.finish_reason: str | None = None
        self.stop_sequence: str | None = None
        self.usage: chat.Usage | None = None
        self._decoder = SseDecoder()
        self._open: tuple[str, int] | None = None  # (kind, index) of the open block
        self._blocks = 0  # blocks opened so far: the next block's index
        self._tool_blocks: dict[int, int] = {}  # chat tool-call index → block index
        self._deltas = 0  # output pieces seen: output_tokens when the node sends no usage

    @property
    def ended(self) -> bool:
        return self.outcome is not None

    def feed(self, data: bytes) -> bytes:
        if self.ended:
            return b""
        try:
            items = self._decoder.feed(data)
        except EventStreamError as exc:
            return self.fail(UpstreamError(f"the node's stream is malformed: {exc}",
                                           code="upstream_stream_error"))  # fmt: skip
        events: list[Any] = []
        for item in items:
            if self.ended:
                break
            events += self._item(item)
        return _encode(events)

    def ping(self) -> bytes:
        return b"" if self.ended else _encode([*self._start(), an.Ping()])

    def fail(self, error: ApiError) -> bytes:
        return b"" if self.ended else _encode(self._fail(error))

    def close(self) -> bytes:
        """The node's stream ended: finish the message, or fail if it was cut short."""
        if self.ended:
            return b""
        self._decoder.close()
        if self.finish_reason is not None:
            return _encode(self._finish())
        return self.fail(UpstreamError("the node's stream ended before the reply finished",
                                       code="upstream_stream_error"))  # fmt: skip

    # -- one item of the node's stream -------------------------------------------------

    def _item(self, item: SseEvent | SseComment) -> list[Any]:
        if isinstance(item, SseComment):
            return [*self._start(), an.Ping()]  # the node's keepalive, in our dialect
        if item.is_done:
            return self._finish()
        try:
            payload = decode_json(item.data)
        except ApiError:
            return []  # not JSON: skipped, like any frame we cannot read
        if isinstance(payload, dict) and "error" in payload and "choices" not in payload:
            return self._fail(_in_band_error(payload))
        try:
            chunk = structure(payload, chat.ChatCompletionChunk)
        except ApiError:
            return []
        return self._chunk(chunk)

    def _chunk(self, chunk: chat.ChatCompletionChunk) -> list[Any]:
        events = self._start()
        if chunk.usage is not None:
            self.usage = chunk.usage
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            delta = choice.delta
            if thinking := delta.reasoning_content:
                events += self._delta("thinking", an.ThinkingDelta(thinking=thinking))
            if delta.content:
                events += self._delta("text", an.TextDelta(text=delta.content))
            for call in delta.tool_calls or ():
                events += self._tool_call(call)
            if choice.finish_reason is not None:
                self.finish_reason = choice.finish_reason
                self.stop_sequence = choice.stop_sequence
        return events

    # -- events ------------------------------------------------------------------------

    def _start(self) -> list[Any]:
        if self.started:
            return []
        self.started = True
        usage = an.Usage.of(self.input_tokens, 0)
        shell = an.Message(id=self.message_id, model=self.model, usage=usage)
        return [an.MessageStart(message=shell)]

    def _open_block(self, kind: str, block: an.ResponseBlock) -> list[Any]:
        events = self._close_block()
        index, self._blocks = self._blocks, self._blocks + 1
        self._open = (kind, index)
        return [*events, an.ContentBlockStart(index=index, content_block=block)]

    def _close_block(self) -> list[Any]:
        if self._open is None:
            return []
        index, self._open = self._open[1], None
        return [an.ContentBlockStop(index=index)]

    def _delta(self, kind: str, delta: an.StreamDelta) -> list[Any]:
        events: list[Any] = []
        if self._open is None or self._open[0] != kind:
            block = an.TextBlock(text="") if kind == "text" else an.ThinkingBlock(thinking="")
            events = self._open_block(kind, block)
        self._deltas += 1
        return [*events, an.ContentBlockDelta(index=self._blocks - 1, delta=delta)]

    def _tool_call(self, call: chat.ToolCallDelta) -> list[Any]:
        function = call.function or chat.ToolCallFunctionDelta()
        events: list[Any] = []
        index = self._tool_blocks.get(call.index)
        if index is None:
            block = an.ToolUseBlock(
                id=an.ToolUseId(call.id or f"toolu_{uuid.uuid4().hex}"),
                name=function.name or "",
                input={},
            )
            events = self._open_block("tool_use", block)
            index = self._tool_blocks[call.index] = self._blocks - 1
        if function.arguments:
            self._deltas += 1
            delta = an.InputJsonDelta(partial_json=function.arguments)
            events.append(an.ContentBlockDelta(index=index, delta=delta))
        return events

    def _finish(self) -> list[Any]:
        events = [*self._start(), *self._close_block()]
        reason = stop_reason(self.finish_reason, self.stop_sequence)
        body = an.MessageDeltaBody(
            stop_reason=reason,
            stop_sequence=self.stop_sequence if reason == "stop_sequence" else None,
        )
        events += [an.MessageDelta(delta=body, usage=self._final_usage()), an.MessageStop()]
        self.outcome = "ok"
        return events

    def _final_usage(self) -> an.MessageDeltaUsage:
        if self.usage is None:
            return an.MessageDeltaUsage(output_tokens=self._deltas)
        usage = _usage(self.usage)
        return an.MessageDeltaUsage(
            output_tokens=usage.output_tokens,
            input_tokens=usage.input_tokens,
            cache_creation_input_tokens=usage.cache_creation_input_tokens,
            cache_read_input_tokens=usage.cache_read_input_tokens,
        )

    def _fail(self, error: ApiError) -> list[Any]:
        self.outcome = "stream_error"
        return [an.ErrorResponse.of(error)]


def _in_band_error(payload: dict[str, Any]) -> ApiError:
    """A node's in-band error frame, with the status its kind implies (none is sent)."""
    detail = payload.get("error")
    detail = detail if isinstance(detail, dict) else {"message": str(detail)}
    code, kind = detail.get("code"), detail.get("type")
    status = 503 if code in _UNAVAILABLE_CODES else _STATUS_OF_TYPE.get(kind, 500)
    message = detail.get("message")
    return ApiError(message if isinstance(message, str) else "the node failed the request",
                    status=status, code=code if isinstance(code, str) else None)  # fmt: skip


def _encode(events: Iterable[Any]) -> bytes:
    """Named events (`event: <type>`), as Anthropic sends them and its SDK requires."""
    return b"".join(encode_json_event(event, event=event.type) for event in events)
