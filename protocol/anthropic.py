"""Anthropic Messages (`POST /v1/messages`, `…/count_tokens`) on the wire.

The request as Claude Code and the Anthropic SDK send it (system blocks,
`cache_control` anywhere, tool_use/tool_result history, thinking blocks,
server tools), the `message` reply, the streaming events and the error
envelope. Block and tool kinds we do not serve (documents, search results,
server tools …) are kept verbatim (`OtherBlock`, `ServerTool`) rather than
refused, since every Claude Code release may send new ones. Translating to
and from OpenAI chat is not done here.
"""

from typing import Any, Literal, NewType, Self

import attrs

from protocol._converter import keep_null, rest_keys
from protocol.errors import ApiError
from protocol.ids import ModelId

__all__ = [
    "AnyToolChoice",
    "AutoToolChoice",
    "Base64Source",
    "CacheControl",
    "ContentBlock",
    "ContentBlockDelta",
    "ContentBlockStart",
    "ContentBlockStop",
    "CountTokensRequest",
    "CountTokensResponse",
    "ErrorDetail",
    "ErrorResponse",
    "FileSource",
    "ImageBlock",
    "ImageSource",
    "InputJsonDelta",
    "Message",
    "MessageDelta",
    "MessageDeltaBody",
    "MessageDeltaUsage",
    "MessageId",
    "MessageParam",
    "MessageStart",
    "MessageStop",
    "MessagesRequest",
    "Metadata",
    "NamedToolChoice",
    "NoneToolChoice",
    "OtherBlock",
    "Ping",
    "RedactedThinkingBlock",
    "ResponseBlock",
    "ServerTool",
    "SignatureDelta",
    "StopReason",
    "StreamDelta",
    "StreamEvent",
    "TextBlock",
    "TextDelta",
    "ThinkingAdaptive",
    "ThinkingBlock",
    "ThinkingConfig",
    "ThinkingDelta",
    "ThinkingDisabled",
    "ThinkingEnabled",
    "Tool",
    "ToolChoice",
    "ToolResultBlock",
    "ToolUseBlock",
    "ToolUseId",
    "UrlSource",
    "Usage",
]

MessageId = NewType("MessageId", str)  # msg_…
ToolUseId = NewType("ToolUseId", str)  # toolu_…: pairs tool_use with tool_result

StopReason = Literal[
    "end_turn",
    "max_tokens",
    "stop_sequence",
    "tool_use",
    "pause_turn",
    "refusal",
    "model_context_window_exceeded",
]


@attrs.frozen(kw_only=True)
class CacheControl:
    """Prompt-caching hint; accepted anywhere, meaningful to no one here."""

    type: str = "ephemeral"
    ttl: str | None = None  # 5m | 1h


# ------------------------------------------------------------------- blocks


@attrs.frozen(kw_only=True)
class TextBlock:
    type: Literal["text"] = "text"
    text: str
    cache_control: CacheControl | None = None
    citations: tuple[dict[str, Any], ...] | None = None


@attrs.frozen(kw_only=True)
class Base64Source:
    type: Literal["base64"] = "base64"
    media_type: str  # image/png | image/jpeg | image/gif | image/webp
    data: str


@attrs.frozen(kw_only=True)
class UrlSource:
    type: Literal["url"] = "url"
    url: str


@attrs.frozen(kw_only=True)
class FileSource:
    type: Literal["file"] = "file"
    file_id: str


ImageSource = Base64Source | UrlSource | FileSource


@attrs.frozen(kw_only=True)
class ImageBlock:
    type: Literal["image"] = "image"
    source: ImageSource
    cache_control: CacheControl | None = None


@attrs.frozen(kw_only=True)
class ToolUseBlock:
    type: Literal["tool_use"] = "tool_use"
    id: ToolUseId
    name: str
    input: dict[str, Any]
    cache_control: CacheControl | None = None


@attrs.frozen(kw_only=True)
class ThinkingBlock:
    type: Literal["thinking"] = "thinking"
    thinking: str
    # Opaque to us; Anthropic verifies it, our own replies carry "".
    signature: str = ""


@attrs.frozen(kw_only=True)
class RedactedThinkingBlock:
    type: Literal["redacted_thinking"] = "redacted_thinking"
    data: str


@attrs.frozen(kw_only=True)
class OtherBlock:
    """A block of a kind we do not model (`document`, `search_result` …)."""

    type: str
    rest: dict[str, Any] = rest_keys()


@attrs.frozen(kw_only=True)
class ToolResultBlock:
    type: Literal["tool_result"] = "tool_result"
    tool_use_id: ToolUseId
    content: str | tuple[TextBlock | ImageBlock | OtherBlock, ...] | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None


ContentBlock = (
    TextBlock
    | ImageBlock
    | ToolUseBlock
    | ToolResultBlock
    | ThinkingBlock
    | RedactedThinkingBlock
    | OtherBlock
)
ResponseBlock = TextBlock | ToolUseBlock | ThinkingBlock | RedactedThinkingBlock


@attrs.frozen(kw_only=True)
class MessageParam:
    """One turn of the conversation sent in a request.

    `system` is accepted as a role too: Claude Code ≥ 2.1.154 puts its system
    prompt inside `messages`.
    """

    role: Literal["user", "assistant", "system"]
    content: str | tuple[ContentBlock, ...]


# -------------------------------------------------------------------- tools


@attrs.frozen(kw_only=True)
class Tool:
    """A client tool: the model calls it, the client runs it. With `strict: true`
    every call's `input` is decoded valid against `input_schema`."""

    type: Literal["custom"] | None = None
    name: str
    description: str | None = None
    input_schema: dict[str, Any]  # a JSON Schema
    cache_control: CacheControl | None = None
    strict: bool | None = None


@attrs.frozen(kw_only=True)
class ServerTool:
    """A server tool (`web_search_20250305`, `bash_20250124` …), kept verbatim."""

    type: str
    name: str | None = None
    rest: dict[str, Any] = rest_keys()


@attrs.frozen(kw_only=True)
class AutoToolChoice:
    type: Literal["auto"] = "auto"
    disable_parallel_tool_use: bool | None = None


@attrs.frozen(kw_only=True)
class AnyToolChoice:
    type: Literal["any"] = "any"
    disable_parallel_tool_use: bool | None = None


@attrs.frozen(kw_only=True)
class NamedToolChoice:
    type: Literal["tool"] = "tool"
    name: str
    disable_parallel_tool_use: bool | None = None


@attrs.frozen(kw_only=True)
class NoneToolChoice:
    type: Literal["none"] = "none"


ToolChoice = AutoToolChoice | AnyToolChoice | NamedToolChoice | NoneToolChoice


# ----------------------------------------------------------------- thinking


@attrs.frozen(kw_only=True)
class ThinkingEnabled:
    type: Literal["enabled"] = "enabled"
    budget_tokens: int
    display: str | None = None  # summarized | omitted


@attrs.frozen(kw_only=True)
class ThinkingDisabled:
    type: Literal["disabled"] = "disabled"


@attrs.frozen(kw_only=True)
class ThinkingAdaptive:
    type: Literal["adaptive"] = "adaptive"
    display: str | None = None


ThinkingConfig = ThinkingEnabled | ThinkingDisabled | ThinkingAdaptive


# ----------------------------------------------------------------- requests


@attrs.frozen(kw_only=True)
class Metadata:
    user_id: str | None = None


@attrs.frozen(kw_only=True)
class CountTokensRequest:
    """`POST /v1/messages/count_tokens`: what would be sent, minus sampling."""

    model: ModelId
    messages: tuple[MessageParam, ...]
    system: str | tuple[TextBlock, ...] | None = None
    tools: tuple[Tool | ServerTool, ...] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None


@attrs.frozen(kw_only=True)
class JsonOutputFormat:
    """Structured output: the reply's text is JSON valid against `schema`."""

    type: Literal["json_schema"] = "json_schema"
    schema: dict[str, Any]


@attrs.frozen(kw_only=True)
class OutputConfig:
    format: JsonOutputFormat | None = None
    effort: str | None = None


@attrs.frozen(kw_only=True)
class MessagesRequest(CountTokensRequest):
    """`POST /v1/messages`; `max_tokens` is required. Unknown fields dropped."""

    max_tokens: int
    output_config: OutputConfig | None = None
    stop_sequences: tuple[str, ...] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    metadata: Metadata | None = None
    stream: bool = False

    @property
    def system_text(self) -> str | None:
        """The top-level system prompt as text (blocks joined by newlines)."""
        if self.system is None or isinstance(self.system, str):
            return self.system
        return "\n".join(block.text for block in self.system)


# ------------------------------------------------------------------ replies


@attrs.frozen(kw_only=True)
class CountTokensResponse:
    input_tokens: int


@attrs.frozen(kw_only=True)
class Usage:
    """Token counts. `input_tokens` leaves out `cache_read_input_tokens`: the prompt
    tokens the node's prefix cache supplied (caching is automatic; `cache_control` is
    accepted and changes nothing). `cache_creation_input_tokens` is always 0. Both
    cache counts are always present."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None

    @classmethod
    def of(cls, input: int, output: int, *, cache_read: int = 0, cache_creation: int = 0) -> Self:
        """Usage with both cache counts present (Claude Code expects them)."""
        return cls(
            input_tokens=input,
            output_tokens=output,
            cache_creation_input_tokens=cache_creation,
            cache_read_input_tokens=cache_read,
        )


@attrs.frozen(kw_only=True)
class Message:
    """The `message` reply, and the shell `message_start` opens a stream with."""

    id: MessageId
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    content: tuple[ResponseBlock, ...] = ()
    model: ModelId
    stop_reason: StopReason | None = keep_null()
    stop_sequence: str | None = keep_null()
    usage: Usage


# ------------------------------------------------------------------- stream


@attrs.frozen(kw_only=True)
class MessageStart:
    type: Literal["message_start"] = "message_start"
    message: Message


@attrs.frozen(kw_only=True)
class ContentBlockStart:
    type: Literal["content_block_start"] = "content_block_start"
    index: int
    content_block: ResponseBlock


@attrs.frozen(kw_only=True)
class TextDelta:
    type: Literal["text_delta"] = "text_delta"
    text: str


@attrs.frozen(kw_only=True)
class InputJsonDelta:
    type: Literal["input_json_delta"] = "input_json_delta"
    partial_json: str


@attrs.frozen(kw_only=True)
class ThinkingDelta:
    type: Literal["thinking_delta"] = "thinking_delta"
    thinking: str


@attrs.frozen(kw_only=True)
class SignatureDelta:
    type: Literal["signature_delta"] = "signature_delta"
    signature: str


StreamDelta = TextDelta | InputJsonDelta | ThinkingDelta | SignatureDelta


@attrs.frozen(kw_only=True)
class ContentBlockDelta:
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int
    delta: StreamDelta


@attrs.frozen(kw_only=True)
class ContentBlockStop:
    type: Literal["content_block_stop"] = "content_block_stop"
    index: int


@attrs.frozen(kw_only=True)
class MessageDeltaBody:
    stop_reason: StopReason | None = keep_null()
    stop_sequence: str | None = keep_null()


@attrs.frozen(kw_only=True)
class MessageDeltaUsage:
    """Cumulative counts at the end of the stream; `output_tokens` always."""

    output_tokens: int
    input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


@attrs.frozen(kw_only=True)
class MessageDelta:
    type: Literal["message_delta"] = "message_delta"
    delta: MessageDeltaBody
    usage: MessageDeltaUsage


@attrs.frozen(kw_only=True)
class MessageStop:
    type: Literal["message_stop"] = "message_stop"


@attrs.frozen(kw_only=True)
class Ping:
    type: Literal["ping"] = "ping"


# ------------------------------------------------------------------- errors


@attrs.frozen(kw_only=True)
class ErrorDetail:
    type: str  # invalid_request_error | overloaded_error | api_error | …
    message: str


@attrs.frozen(kw_only=True)
class ErrorResponse:
    """`{"type": "error", "error": {...}}`: an error body or stream event."""

    type: Literal["error"] = "error"
    error: ErrorDetail
    request_id: str | None = None

    @classmethod
    def of(cls, error: ApiError) -> Self:
        """The envelope `error.to_anthropic()` renders, as a value."""
        detail = error.to_anthropic()["error"]
        return cls(error=ErrorDetail(type=detail["type"], message=detail["message"]))


StreamEvent = (
    MessageStart
    | ContentBlockStart
    | ContentBlockDelta
    | ContentBlockStop
    | MessageDelta
    | MessageStop
    | Ping
    | ErrorResponse
)
