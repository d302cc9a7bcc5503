"""OpenAI Chat Completions on the wire: the request, the reply, the stream chunk.

These are the shapes of `POST /v1/chat/completions` as the official SDKs and
the common OpenAI-compatible servers speak them, plus the vendor sampling
extras (`top_k`, `min_p`, `repetition_penalty`, `chat_template_kwargs`),
`reasoning_content`, and helexa's `stop_sequence` on a finished choice. They
are plain frozen values: what a request *means* (defaults, caps, template
rendering) belongs to the serving code, and how a value becomes JSON belongs
to `protocol._converter`. Legacy completions live
in `protocol.completions`, the model list in `protocol.models`, the Responses
API in `protocol.responses`.

The module runs past 500 lines because it is one endpoint's wire written out
as ~50 small declarations with no logic; splitting the request from its reply
would only scatter what is read together.
"""

from typing import Any, Literal, NewType, Self

import attrs

from protocol._converter import encode_json, keep_null, rest_keys
from protocol.errors import ApiError
from protocol.ids import ModelId

__all__ = [
    "AssistantMessage",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionMessage",
    "ChatCompletionRequest",
    "ChatMessage",
    "ChatRole",
    "ChatTool",
    "Choice",
    "ChoiceDelta",
    "ChoiceLogprobs",
    "ChunkChoice",
    "CompletionId",
    "CompletionTokensDetails",
    "ContentPart",
    "DeveloperMessage",
    "ErrorObject",
    "ErrorResponse",
    "FinishReason",
    "FunctionCall",
    "FunctionDefinition",
    "FunctionMessage",
    "FunctionName",
    "FunctionTool",
    "HelexaTiming",
    "ImageUrl",
    "ImageUrlPart",
    "InputAudio",
    "InputAudioPart",
    "JsonSchemaFormat",
    "NamedToolChoice",
    "OtherPart",
    "OtherTool",
    "PromptTokensDetails",
    "ResponseFormat",
    "ResponseFormatJsonObject",
    "ResponseFormatJsonSchema",
    "ResponseFormatText",
    "StreamOptions",
    "SystemMessage",
    "TextPart",
    "TokenLogprob",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallFunctionDelta",
    "ToolCallId",
    "ToolChoice",
    "ToolMessage",
    "TopLogprob",
    "Usage",
    "UserMessage",
]

# `chatcmpl-…` (chat) or `cmpl-…` (legacy completions).
CompletionId = NewType("CompletionId", str)
# `call_…`: pairs an assistant tool call with the tool message answering it.
ToolCallId = NewType("ToolCallId", str)

ChatRole = Literal["system", "developer", "user", "assistant", "tool", "function"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


# ------------------------------------------------------------ content parts


@attrs.frozen(kw_only=True)
class TextPart:
    type: Literal["text"] = "text"
    text: str


@attrs.frozen(kw_only=True)
class ImageUrl:
    url: str  # https://… or data:image/png;base64,…
    detail: str | None = None  # auto | low | high (new values pass through)


@attrs.frozen(kw_only=True)
class ImageUrlPart:
    type: Literal["image_url"] = "image_url"
    image_url: ImageUrl


@attrs.frozen(kw_only=True)
class InputAudio:
    data: str  # base64
    format: str  # wav | mp3 | …


@attrs.frozen(kw_only=True)
class InputAudioPart:
    type: Literal["input_audio"] = "input_audio"
    input_audio: InputAudio


@attrs.frozen(kw_only=True)
class OtherPart:
    """A part of a kind we do not model (`file`, `refusal`, …), kept verbatim."""

    type: str
    rest: dict[str, Any] = rest_keys()


ContentPart = TextPart | ImageUrlPart | InputAudioPart | OtherPart


# -------------------------------------------------------------- tool calls


@attrs.frozen(kw_only=True)
class FunctionCall:
    """A function call's name and JSON arguments.

    `arguments` is a JSON string on the OpenAI wire; an object is accepted
    too, because the upstream gateway's Anthropic translation sends one.
    """

    name: str
    arguments: str | dict[str, Any]

    @property
    def arguments_json(self) -> str:
        """The arguments as the JSON text OpenAI clients expect."""
        if isinstance(self.arguments, str):
            return self.arguments
        return encode_json(self.arguments).decode()


@attrs.frozen(kw_only=True)
class ToolCall:
    id: ToolCallId
    type: Literal["function"] = "function"
    function: FunctionCall


# ----------------------------------------------------------------- messages


@attrs.frozen(kw_only=True)
class SystemMessage:
    role: Literal["system"] = "system"
    content: str | tuple[ContentPart, ...]
    name: str | None = None


@attrs.frozen(kw_only=True)
class DeveloperMessage:
    role: Literal["developer"] = "developer"
    content: str | tuple[ContentPart, ...]
    name: str | None = None


@attrs.frozen(kw_only=True)
class UserMessage:
    role: Literal["user"] = "user"
    content: str | tuple[ContentPart, ...]
    name: str | None = None


@attrs.frozen(kw_only=True)
class AssistantMessage:
    """A prior assistant turn; `content` may be null when it only called tools."""

    role: Literal["assistant"] = "assistant"
    content: str | tuple[ContentPart, ...] | None = None
    reasoning_content: str | None = None
    tool_calls: tuple[ToolCall, ...] | None = None
    refusal: str | None = None
    name: str | None = None


@attrs.frozen(kw_only=True)
class ToolMessage:
    role: Literal["tool"] = "tool"
    content: str | tuple[ContentPart, ...]
    tool_call_id: ToolCallId


@attrs.frozen(kw_only=True)
class FunctionMessage:
    """The legacy (`functions`-era) form of a tool result."""

    role: Literal["function"] = "function"
    content: str | None = None
    name: str


ChatMessage = (
    SystemMessage
    | DeveloperMessage
    | UserMessage
    | AssistantMessage
    | ToolMessage
    | FunctionMessage
)


# -------------------------------------------------------------------- tools


@attrs.frozen(kw_only=True)
class FunctionDefinition:
    """A function the model may call. With `strict: true` (or when `tool_choice`
    forces a call) the call's arguments are decoded valid against `parameters`."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema
    strict: bool | None = None


@attrs.frozen(kw_only=True)
class FunctionTool:
    type: Literal["function"] = "function"
    function: FunctionDefinition


@attrs.frozen(kw_only=True)
class OtherTool:
    """A tool of a kind we do not serve (`custom`, …), kept verbatim."""

    type: str
    rest: dict[str, Any] = rest_keys()


ChatTool = FunctionTool | OtherTool


@attrs.frozen(kw_only=True)
class FunctionName:
    name: str


@attrs.frozen(kw_only=True)
class NamedToolChoice:
    type: Literal["function"] = "function"
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


# ---------------------------------------------------------- response format


@attrs.frozen(kw_only=True)
class ResponseFormatText:
    type: Literal["text"] = "text"


@attrs.frozen(kw_only=True)
class ResponseFormatJsonObject:
    """The reply is one JSON object (constrained decoding)."""

    type: Literal["json_object"] = "json_object"


@attrs.frozen(kw_only=True)
class JsonSchemaFormat:
    name: str
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


@attrs.frozen(kw_only=True)
class ResponseFormatJsonSchema:
    """The reply is JSON valid against `json_schema.schema`, with or without `strict`
    (constrained decoding); a schema the grammar library cannot enforce is a 400."""

    type: Literal["json_schema"] = "json_schema"
    json_schema: JsonSchemaFormat


ResponseFormat = ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema


# ------------------------------------------------------------------ request


@attrs.frozen(kw_only=True)
class StreamOptions:
    include_usage: bool | None = None


@attrs.frozen(kw_only=True)
class ChatCompletionRequest:
    """`POST /v1/chat/completions`. Unknown fields are dropped when parsed."""

    model: ModelId
    messages: tuple[ChatMessage, ...]
    tools: tuple[ChatTool, ...] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | tuple[str, ...] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # vendor
    min_p: float | None = None  # vendor
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None  # vendor
    logit_bias: dict[int, float] | None = None  # token id → bias; keys are strings on the wire
    logprobs: bool | None = None
    top_logprobs: int | None = None
    seed: int | None = None
    n: int | None = None
    user: str | None = None
    reasoning_effort: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None  # vendor
    metadata: dict[str, str] | None = None
    store: bool | None = None

    @property
    def effective_max_tokens(self) -> int | None:
        """The output cap the client asked for: `max_completion_tokens` wins."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else self.stop

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


# -------------------------------------------------------------------- usage


@attrs.frozen(kw_only=True)
class PromptTokensDetails:
    """`cached_tokens`: prompt tokens the node's prefix cache supplied rather than
    computed; on every generation's usage, streamed or not (0 on a miss)."""

    cached_tokens: int | None = None


@attrs.frozen(kw_only=True)
class CompletionTokensDetails:
    reasoning_tokens: int | None = None


@attrs.frozen(kw_only=True)
class HelexaTiming:
    """Where a request's time went, in milliseconds (a helexa extra)."""

    prefill_ms: float
    decode_ms: float
    prefill_tokens: int | None = None


@attrs.frozen(kw_only=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None
    helexa_timing: HelexaTiming | None = None

    @classmethod
    def of(
        cls,
        prompt: int,
        completion: int,
        *,
        cached: int | None = None,
        reasoning: int | None = None,
        timing: HelexaTiming | None = None,
    ) -> Self:
        """Usage with the total filled in; details only for counts given."""
        cached_details = None if cached is None else PromptTokensDetails(cached_tokens=cached)
        reasoning_details = (
            None if reasoning is None else CompletionTokensDetails(reasoning_tokens=reasoning)
        )
        return cls(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            prompt_tokens_details=cached_details,
            completion_tokens_details=reasoning_details,
            helexa_timing=timing,
        )


# ----------------------------------------------------------------- logprobs


@attrs.frozen(kw_only=True)
class TopLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...] | None = None


@attrs.frozen(kw_only=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...] | None = None
    top_logprobs: tuple[TopLogprob, ...] = ()


@attrs.frozen(kw_only=True)
class ChoiceLogprobs:
    content: tuple[TokenLogprob, ...] | None = None
    refusal: tuple[TokenLogprob, ...] | None = None


# ------------------------------------------------------------------ response


@attrs.frozen(kw_only=True)
class ChatCompletionMessage:
    """The assistant's reply; `content` is always present, null with tool calls."""

    role: Literal["assistant"] = "assistant"
    content: str | None = keep_null()
    reasoning_content: str | None = None
    tool_calls: tuple[ToolCall, ...] | None = None
    refusal: str | None = None


@attrs.frozen(kw_only=True)
class Choice:
    index: int = 0
    message: ChatCompletionMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None
    # helexa extra: the client's stop string that ended the choice, so that a
    # translation to Anthropic can report `stop_sequence` (vLLM calls it `stop_reason`).
    stop_sequence: str | None = None


@attrs.frozen(kw_only=True)
class ChatCompletion:
    id: CompletionId
    object: Literal["chat.completion"] = "chat.completion"
    created: int  # unix seconds
    model: ModelId
    choices: tuple[Choice, ...]
    usage: Usage | None = None
    system_fingerprint: str | None = None


# -------------------------------------------------------------------- stream


@attrs.frozen(kw_only=True)
class ToolCallFunctionDelta:
    name: str | None = None
    arguments: str | None = None


@attrs.frozen(kw_only=True)
class ToolCallDelta:
    index: int
    id: ToolCallId | None = None
    type: Literal["function"] | None = None
    function: ToolCallFunctionDelta | None = None


@attrs.frozen(kw_only=True)
class ChoiceDelta:
    role: ChatRole | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: tuple[ToolCallDelta, ...] | None = None
    refusal: str | None = None


@attrs.frozen(kw_only=True)
class ChunkChoice:
    index: int = 0
    delta: ChoiceDelta = ChoiceDelta()
    finish_reason: FinishReason | None = keep_null()
    logprobs: ChoiceLogprobs | None = None
    stop_sequence: str | None = None  # helexa extra, on the final chunk (see `Choice`)


@attrs.frozen(kw_only=True)
class ChatCompletionChunk:
    """One `data:` frame of a streamed chat completion.

    Every chunk of one stream shares `id`, `created` and `model`. The last
    one may carry only `usage`, with `choices` empty.
    """

    id: CompletionId
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: ModelId
    choices: tuple[ChunkChoice, ...] = ()
    usage: Usage | None = None
    system_fingerprint: str | None = None

    @classmethod
    def role_chunk(cls, *, id: CompletionId, created: int, model: ModelId) -> Self:
        """The opening chunk: `{"role": "assistant", "content": ""}`."""
        delta = ChoiceDelta(role="assistant", content="")
        return cls.of_delta(delta, id=id, created=created, model=model)

    @classmethod
    def of_delta(
        cls, delta: ChoiceDelta, *, id: CompletionId, created: int, model: ModelId
    ) -> Self:
        return cls(id=id, created=created, model=model, choices=(ChunkChoice(delta=delta),))

    @classmethod
    def finish_chunk(
        cls,
        reason: FinishReason,
        *,
        id: CompletionId,
        created: int,
        model: ModelId,
        stop_sequence: str | None = None,
    ) -> Self:
        """An empty delta with the `finish_reason` (and the stop string that matched)."""
        choice = ChunkChoice(finish_reason=reason, stop_sequence=stop_sequence)
        return cls(id=id, created=created, model=model, choices=(choice,))

    @classmethod
    def usage_chunk(cls, usage: Usage, *, id: CompletionId, created: int, model: ModelId) -> Self:
        """The final usage-only chunk (`choices: []`)."""
        return cls(id=id, created=created, model=model, usage=usage)


# -------------------------------------------------------------------- errors


@attrs.frozen(kw_only=True)
class ErrorObject:
    """The inside of the OpenAI error envelope; extra diagnostics are kept."""

    message: str
    type: str
    code: str | None = keep_null()
    param: str | None = keep_null()
    rest: dict[str, Any] = rest_keys()


@attrs.frozen(kw_only=True)
class ErrorResponse:
    """`{"error": {...}}`: an error body, or an in-band error in a stream."""

    error: ErrorObject

    @classmethod
    def of(cls, error: ApiError) -> Self:
        """The envelope `error.to_openai()` renders, as a value."""
        return cls(
            error=ErrorObject(
                message=error.message,
                type=error.type,
                code=error.code,
                param=error.param,
                rest=dict(error.extra),
            )
        )
