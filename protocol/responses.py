"""OpenAI Responses API (`POST /v1/responses`) on the wire.

The request (`input` as a string or a list of items, `instructions`, flat
function tools), the `response` object with its output items, and the
streaming event family, each event a `type` plus a `sequence_number`. The
shapes follow the official OpenAI SDK so its clients parse what we send.
Input item and content kinds we do not serve (hosted tool calls, files …)
are kept verbatim as `OtherItem` / `OtherContent` / `OtherTool` rather than
refused. This module does not turn items into chat messages or decide event
order: that is the serving code's job.

The module runs past 500 lines because it is one endpoint's wire written out
as ~60 small declarations with no logic (18 of them the stream events, each
a few lines); the request, the response and its events are read together.
"""

from typing import Any, Literal, NewType, Self

import attrs

from protocol._converter import keep_null, rest_keys
from protocol.ids import ModelId

__all__ = [
    "CallId",
    "ContentPartAdded",
    "ContentPartDone",
    "ErrorEvent",
    "FunctionCall",
    "FunctionCallArgumentsDelta",
    "FunctionCallArgumentsDone",
    "FunctionCallOutput",
    "FunctionTool",
    "IncompleteDetails",
    "InputContent",
    "InputImage",
    "InputItem",
    "InputText",
    "InputTokensDetails",
    "ItemId",
    "ItemStatus",
    "Message",
    "OtherContent",
    "OtherItem",
    "OtherTool",
    "OtherToolChoice",
    "OutputContent",
    "OutputItem",
    "OutputItemAdded",
    "OutputItemDone",
    "OutputMessage",
    "OutputText",
    "OutputTextDelta",
    "OutputTextDone",
    "OutputTokensDetails",
    "ReasoningItem",
    "ReasoningOptions",
    "ReasoningSummaryPartAdded",
    "ReasoningSummaryPartDone",
    "ReasoningSummaryTextDelta",
    "ReasoningSummaryTextDone",
    "ReasoningText",
    "Refusal",
    "Response",
    "ResponseCompleted",
    "ResponseCreated",
    "ResponseError",
    "ResponseFailed",
    "ResponseId",
    "ResponseInProgress",
    "ResponseIncomplete",
    "ResponseStatus",
    "ResponseStreamEvent",
    "ResponseUsage",
    "ResponsesRequest",
    "ResponsesTool",
    "SummaryText",
    "TextConfig",
    "TextFormat",
    "TextFormatJsonObject",
    "TextFormatJsonSchema",
    "TextFormatText",
    "ToolChoice",
    "ToolChoiceFunction",
]

ResponseId = NewType("ResponseId", str)  # resp_…
ItemId = NewType("ItemId", str)  # msg_…, fc_…, rs_…
CallId = NewType("CallId", str)  # call_…: pairs a function_call with its output

ItemStatus = Literal["in_progress", "completed", "incomplete"]
ResponseStatus = Literal["completed", "incomplete", "in_progress", "failed", "cancelled", "queued"]


# ------------------------------------------------------------------ content


@attrs.frozen(kw_only=True)
class InputText:
    type: Literal["input_text"] = "input_text"
    text: str


@attrs.frozen(kw_only=True)
class OutputText:
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: tuple[dict[str, Any], ...] = ()
    logprobs: tuple[dict[str, Any], ...] | None = None


@attrs.frozen(kw_only=True)
class InputImage:
    type: Literal["input_image"] = "input_image"
    image_url: str | None = None  # https://… or data:…;base64,…
    file_id: str | None = None
    detail: str | None = None  # auto | low | high | …


@attrs.frozen(kw_only=True)
class Refusal:
    type: Literal["refusal"] = "refusal"
    refusal: str


@attrs.frozen(kw_only=True)
class OtherContent:
    """Content of a kind we do not model (`input_file`, `input_audio` …)."""

    type: str
    rest: dict[str, Any] = rest_keys()


InputContent = InputText | OutputText | InputImage | Refusal | OtherContent
OutputContent = OutputText | Refusal


# -------------------------------------------------------------------- items


@attrs.frozen(kw_only=True)
class Message:
    """A conversation message as input: `type` may be left out (easy form)."""

    type: Literal["message"] | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: str | tuple[InputContent, ...]
    id: ItemId | None = None
    status: ItemStatus | None = None


@attrs.frozen(kw_only=True)
class FunctionCall:
    """A call the model made; input (replayed) and output alike."""

    type: Literal["function_call"] = "function_call"
    call_id: CallId
    name: str
    arguments: str  # JSON text
    id: ItemId | None = None
    status: ItemStatus | None = None


@attrs.frozen(kw_only=True)
class FunctionCallOutput:
    type: Literal["function_call_output"] = "function_call_output"
    call_id: CallId
    output: str | tuple[InputContent, ...]
    id: ItemId | None = None
    status: ItemStatus | None = None


@attrs.frozen(kw_only=True)
class SummaryText:
    type: Literal["summary_text"] = "summary_text"
    text: str


@attrs.frozen(kw_only=True)
class ReasoningText:
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


@attrs.frozen(kw_only=True)
class ReasoningItem:
    type: Literal["reasoning"] = "reasoning"
    id: ItemId
    summary: tuple[SummaryText, ...] = ()
    content: tuple[ReasoningText, ...] | None = None
    encrypted_content: str | None = None
    status: ItemStatus | None = None


@attrs.frozen(kw_only=True)
class OtherItem:
    """An input item of a kind we do not serve (hosted tool calls …)."""

    type: str
    rest: dict[str, Any] = rest_keys()


InputItem = Message | FunctionCall | FunctionCallOutput | ReasoningItem | OtherItem


@attrs.frozen(kw_only=True)
class OutputMessage:
    """The assistant message of a response."""

    type: Literal["message"] = "message"
    id: ItemId
    role: Literal["assistant"] = "assistant"
    status: ItemStatus
    content: tuple[OutputContent, ...] = ()


OutputItem = OutputMessage | FunctionCall | ReasoningItem


# -------------------------------------------------------------------- tools


@attrs.frozen(kw_only=True)
class FunctionTool:
    """A function tool in the Responses (flat) form. With `strict: true` every
    call's arguments are decoded valid against `parameters`."""

    type: Literal["function"] = "function"
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema
    strict: bool | None = None


@attrs.frozen(kw_only=True)
class OtherTool:
    """A hosted tool (`web_search`, `file_search`, `mcp` …), kept verbatim."""

    type: str
    rest: dict[str, Any] = rest_keys()


ResponsesTool = FunctionTool | OtherTool


@attrs.frozen(kw_only=True)
class ToolChoiceFunction:
    type: Literal["function"] = "function"
    name: str


@attrs.frozen(kw_only=True)
class OtherToolChoice:
    """A choice of hosted tool (`{"type": "web_search_preview"}` …)."""

    type: str
    rest: dict[str, Any] = rest_keys()


ToolChoice = Literal["none", "auto", "required"] | ToolChoiceFunction | OtherToolChoice


# ------------------------------------------------------------------ request


@attrs.frozen(kw_only=True)
class ReasoningOptions:
    effort: str | None = None  # none | minimal | low | medium | high | …
    summary: str | None = None  # auto | concise | detailed


@attrs.frozen(kw_only=True)
class TextFormatText:
    type: Literal["text"] = "text"


@attrs.frozen(kw_only=True)
class TextFormatJsonObject:
    type: Literal["json_object"] = "json_object"


@attrs.frozen(kw_only=True)
class TextFormatJsonSchema:
    """The output text is JSON valid against `schema` (constrained decoding)."""

    type: Literal["json_schema"] = "json_schema"
    name: str
    schema: dict[str, Any]
    strict: bool | None = None
    description: str | None = None


TextFormat = TextFormatText | TextFormatJsonObject | TextFormatJsonSchema


@attrs.frozen(kw_only=True)
class TextConfig:
    format: TextFormat | None = None
    verbosity: str | None = None


@attrs.frozen(kw_only=True)
class ResponsesRequest:
    """`POST /v1/responses`. Unknown fields are dropped when parsed."""

    model: ModelId
    input: str | tuple[InputItem, ...]
    instructions: str | None = None
    tools: tuple[ResponsesTool, ...] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    previous_response_id: ResponseId | None = None
    store: bool | None = None
    reasoning: ReasoningOptions | None = None
    text: TextConfig | None = None
    metadata: dict[str, str] | None = None
    include: tuple[str, ...] | None = None
    top_logprobs: int | None = None  # with `include` message.output_text.logprobs
    truncation: str | None = None
    user: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None  # vendor

    @property
    def items(self) -> tuple[InputItem, ...]:
        """The input as items: a string input is one user message."""
        if isinstance(self.input, str):
            return (Message(role="user", content=self.input),)
        return self.input


# ----------------------------------------------------------------- response


@attrs.frozen(kw_only=True)
class InputTokensDetails:
    """`cached_tokens`: input tokens the node's prefix cache supplied rather than
    computed (0 on a miss)."""

    cached_tokens: int = 0
    cache_write_tokens: int = 0


@attrs.frozen(kw_only=True)
class OutputTokensDetails:
    reasoning_tokens: int = 0


@attrs.frozen(kw_only=True)
class ResponseUsage:
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails = InputTokensDetails()
    output_tokens_details: OutputTokensDetails = OutputTokensDetails()

    @classmethod
    def of(cls, input: int, output: int, *, cached: int = 0, reasoning: int = 0) -> Self:
        return cls(
            input_tokens=input,
            output_tokens=output,
            total_tokens=input + output,
            input_tokens_details=InputTokensDetails(cached_tokens=cached),
            output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning),
        )


@attrs.frozen(kw_only=True)
class IncompleteDetails:
    reason: str | None = None  # max_output_tokens | content_filter


@attrs.frozen(kw_only=True)
class ResponseError:
    code: str  # server_error | rate_limit_exceeded | …
    message: str


@attrs.frozen(kw_only=True)
class Response:
    """The `response` object: the reply, and the shell streamed around it."""

    id: ResponseId
    object: Literal["response"] = "response"
    created_at: int | float  # unix seconds; we send an int, the SDK models a float
    status: ResponseStatus
    model: ModelId
    output: tuple[OutputItem, ...] = ()
    usage: ResponseUsage | None = None
    error: ResponseError | None = keep_null()
    incomplete_details: IncompleteDetails | None = keep_null()
    instructions: str | None = keep_null()
    metadata: dict[str, str] | None = None
    parallel_tool_calls: bool = True
    tool_choice: ToolChoice = "auto"
    tools: tuple[ResponsesTool, ...] = ()
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    previous_response_id: ResponseId | None = None
    reasoning: ReasoningOptions | None = None
    text: TextConfig | None = None
    store: bool | None = None
    user: str | None = None

    @property
    def output_text(self) -> str:
        """All `output_text` of the output messages, joined (as the SDK does)."""
        return "".join(
            part.text
            for item in self.output
            if isinstance(item, OutputMessage)
            for part in item.content
            if isinstance(part, OutputText)
        )


# -------------------------------------------------------------------- stream
# Every event carries `sequence_number`; the emitter stamps it (attrs.evolve).


@attrs.frozen(kw_only=True)
class ResponseCreated:
    type: Literal["response.created"] = "response.created"
    response: Response
    sequence_number: int = 0


@attrs.frozen(kw_only=True)
class ResponseInProgress:
    type: Literal["response.in_progress"] = "response.in_progress"
    response: Response
    sequence_number: int = 0


@attrs.frozen(kw_only=True)
class ResponseCompleted:
    type: Literal["response.completed"] = "response.completed"
    response: Response
    sequence_number: int = 0


@attrs.frozen(kw_only=True)
class ResponseIncomplete:
    type: Literal["response.incomplete"] = "response.incomplete"
    response: Response
    sequence_number: int = 0


@attrs.frozen(kw_only=True)
class ResponseFailed:
    type: Literal["response.failed"] = "response.failed"
    response: Response
    sequence_number: int = 0


@attrs.frozen(kw_only=True)
class OutputItemAdded:
    type: Literal["response.output_item.added"] = "response.output_item.added"
    output_index: int
    item: OutputItem
    sequence_number: int = 0


@attrs.frozen(kw_only=True)
class OutputItemDone:
    type: Literal["response.output_item.done"] = "response.output_item.done"
    output_index: int
    item: OutputItem
    sequence_number: int = 0


@attrs.frozen(kw_only=True)
class ContentPartAdded:
    type: Literal["response.content_part.added"] = "response.content_part.added"
    item_id: ItemId
    output_index: int
    content_index: int
    part: OutputContent
    sequence_number: int = 0


@attrs.frozen(kw_only=True)
class ContentPartDone:
    type: Literal["response.content_part.done"] = "response.content_part.done"
    item_id: ItemId
    output_index: int
    content_index: int
    part: OutputContent
    sequence_number: int = 0


@attrs.frozen(kw_only=True)
class OutputTextDelta:
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    item_id: ItemId
    output_index: int
    content_index: int
    delta: str
    logprobs: tuple[dict[str, Any], ...] = ()
    sequence_number: int = 0


@attrs.frozen(kw_only=True)
class OutputTextDone:
    type: Literal["response.output_text.done"] = "response.output_text.done"
    item_id: ItemId
    output_index: int
    content_index: int
    text: str
    logprobs: tuple[dict[str, Any], ...] = ()
    sequence_number: int = 0


@attrs.frozen(kw_only=True)
class ReasoningSummaryPartAdded:
    type: Literal["response.reasoning_summary_part.added"] = "response.reasoning_summary_part.added"
    item_id: ItemId
    output_index: int
    summary_index: int
    part: SummaryText
    sequence_number: int = 0


@attrs.frozen(kw_only=True)
class ReasoningSummaryPartDone:
    type: Literal["response.reasoning_summary_part.done"] = "response.reasoning_summary_part.done"
    item_id: ItemId
    output_index: int
    summary_index: int
    part: SummaryText
    sequence_number: int = 0


@attrs.frozen(kw_only=True)
class ReasoningSummaryTextDelta:
    type: Literal["response.reasoning_summary_text.delta"] = "response.reasoning_summary_text.delta"
    item_id: ItemId
    output_index: int
    summary_index: int
    delta: str
    sequence_number: int = 0


@attrs.frozen(kw_only=True)
class ReasoningSummaryTextDone:
    type: Literal["response.reasoning_summary_text.done"] = "response.reasoning_summary_text.done"
    item_id: ItemId
    output_index: int
    summary_index: int
    text: str
    sequence_number: int = 0


@attrs.frozen(kw_only=True)
class FunctionCallArgumentsDelta:
    type: Literal["response.function_call_arguments.delta"] = (
        "response.function_call_arguments.delta"
    )
    item_id: ItemId
    output_index: int
    delta: str
    sequence_number: int = 0


@attrs.frozen(kw_only=True)
class FunctionCallArgumentsDone:
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    item_id: ItemId
    output_index: int
    arguments: str
    name: str | None = None
    sequence_number: int = 0


@attrs.frozen(kw_only=True)
class ErrorEvent:
    """An in-band failure (`type: "error"`), e.g. before `response.failed`."""

    type: Literal["error"] = "error"
    message: str
    code: str | None = keep_null()
    param: str | None = keep_null()
    sequence_number: int = 0


ResponseStreamEvent = (
    ResponseCreated
    | ResponseInProgress
    | ResponseCompleted
    | ResponseIncomplete
    | ResponseFailed
    | OutputItemAdded
    | OutputItemDone
    | ContentPartAdded
    | ContentPartDone
    | OutputTextDelta
    | OutputTextDone
    | ReasoningSummaryPartAdded
    | ReasoningSummaryPartDone
    | ReasoningSummaryTextDelta
    | ReasoningSummaryTextDone
    | FunctionCallArgumentsDelta
    | FunctionCallArgumentsDone
    | ErrorEvent
)
