"""The OpenAI Responses API from a generation's events: named SSE events and the reply.

`ResponsesStream` renders upstream's event order, each event stamped with
the next `sequence_number`: `response.created` and `response.in_progress`
(the in-progress shell), then one output item per run of same-kind output —
a reasoning item (summary part and summary text deltas), a message item
(content part and `output_text` deltas; with `include:
["message.output_text.logprobs"]` each delta, the done event and the part
carry the logprobs of the tokens that became that text), a function call item per parsed
tool call (its arguments in one delta) — each opened when its first output
arrives and closed (`*.done` events) when output of another kind begins or
the generation ends; then `response.completed`, or `response.incomplete`
(`max_output_tokens`) when it hit the length cap. No `[DONE]`. A failure is
reported in-band: an `error` event, then `response.failed` carrying the
error and the output so far (unfinished items marked `incomplete`).

`collect_response` runs the same machine without sending anything, so the
non-streaming reply is by construction the streamed one's final response —
function calls included (upstream drops them there).

Item ids derive from the response id (`msg_<id>_<index>`, `rs_…`, `fc_…`):
deterministic, and unique as response ids are. Pure and synchronous; not
for HTTP or for turning request items into chat messages.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from neuron.events import (
    ContentDelta,
    Failed,
    Finished,
    GenerationEvent,
    LogprobsDelta,
    ReasoningDelta,
    Started,
    TokenLogprob,
    ToolCallParsed,
)
from neuron.render.template import SEQUENCE, TEXT, DeltaTemplate
from protocol.errors import ApiError, InternalError
from protocol.ids import ModelId
from protocol.responses import (
    CallId,
    ContentPartAdded,
    ContentPartDone,
    ErrorEvent,
    FunctionCall,
    FunctionCallArgumentsDelta,
    FunctionCallArgumentsDone,
    IncompleteDetails,
    ItemId,
    ItemStatus,
    OutputItem,
    OutputItemAdded,
    OutputItemDone,
    OutputMessage,
    OutputText,
    OutputTextDelta,
    OutputTextDone,
    ReasoningItem,
    ReasoningSummaryPartAdded,
    ReasoningSummaryPartDone,
    ReasoningSummaryTextDelta,
    ReasoningSummaryTextDone,
    Response,
    ResponseCompleted,
    ResponseCreated,
    ResponseError,
    ResponseFailed,
    ResponseId,
    ResponseIncomplete,
    ResponseInProgress,
    ResponsesRequest,
    ResponseStreamEvent,
    ResponseUsage,
    SummaryText,
)
from protocol.sse import encode_json_event

__all__ = ["LOGPROBS_INCLUDE", "ResponsesStream", "collect_response"]

LOGPROBS_INCLUDE = "message.output_text.logprobs"

# Request fields a response echoes back (when the client set them).
_ECHOED = (
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "max_output_tokens",
    "temperature",
    "top_p",
    "previous_response_id",
    "store",
    "reasoning",
    "text",
    "metadata",
    "user",
)


class _Message:
    """An open message item: one `output_text` part that deltas extend (and, when
    the request included them, the logprobs of its tokens)."""

    prefix = "msg"

    def __init__(self, item_id: ItemId, index: int, *, logprobs: bool = False) -> None:
        self.id, self.index = item_id, index
        self.parts: list[str] = []
        self.logprobs: list[TokenLogprob] | None = [] if logprobs else None
        delta = OutputTextDelta(
            item_id=item_id,
            output_index=index,
            content_index=0,
            delta=TEXT,
            sequence_number=SEQUENCE,
        )
        self.template = DeltaTemplate(delta, event=delta.type)

    def opened(self) -> list[ResponseStreamEvent]:
        item = OutputMessage(id=self.id, status="in_progress")
        part = OutputText(text="")
        return [
            OutputItemAdded(output_index=self.index, item=item),
            ContentPartAdded(item_id=self.id, output_index=self.index, content_index=0, part=part),
        ]

    def close(self, status: ItemStatus) -> tuple[OutputMessage, list[ResponseStreamEvent]]:
        """The finished item, and the events that finish it."""
        tokens = self.logprobs
        part = OutputText(
            text="".join(self.parts),
            logprobs=None if tokens is None else tuple(_part_logprob(t) for t in tokens),
        )
        item = OutputMessage(id=self.id, status=status, content=(part,))
        where = {"item_id": self.id, "output_index": self.index, "content_index": 0}
        done_logprobs = tuple(_event_logprob(t) for t in tokens or ())
        return item, [
            OutputTextDone(**where, text=part.text, logprobs=done_logprobs),
            ContentPartDone(**where, part=part),
            OutputItemDone(output_index=self.index, item=item),
        ]


class _Reasoning:
    """An open reasoning item: one summary part that deltas extend."""

    prefix = "rs"

    def __init__(self, item_id: ItemId, index: int) -> None:
        self.id, self.index = item_id, index
        self.parts: list[str] = []
        delta = ReasoningSummaryTextDelta(
            item_id=item_id,
            output_index=index,
            summary_index=0,
            delta=TEXT,
            sequence_number=SEQUENCE,
        )
        self.template = DeltaTemplate(delta, event=delta.type)

    def opened(self) -> list[ResponseStreamEvent]:
        item = ReasoningItem(id=self.id, status="in_progress")
        part = SummaryText(text="")
        return [
            OutputItemAdded(output_index=self.index, item=item),
            ReasoningSummaryPartAdded(
                item_id=self.id, output_index=self.index, summary_index=0, part=part
            ),
        ]

    def close(self, status: ItemStatus) -> tuple[ReasoningItem, list[ResponseStreamEvent]]:
        """The finished item, and the events that finish it."""
        part = SummaryText(text="".join(self.parts))
        item = ReasoningItem(id=self.id, summary=(part,), status=status)
        where = {"item_id": self.id, "output_index": self.index, "summary_index": 0}
        return item, [
            ReasoningSummaryTextDone(**where, text=part.text),
            ReasoningSummaryPartDone(**where, part=part),
            OutputItemDone(output_index=self.index, item=item),
        ]


class ResponsesStream:
    """One streamed response: `start()`, `feed()` each event, then it ends.

    `feed` takes every event kind, `Finished` and `Failed` included; each
    call returns the bytes to send (possibly none). After the end,
    `response` is the final `Response` (completed, incomplete or failed).
    Feeding before `start()` or after the end is a bug and raises.
    """

    def __init__(
        self,
        response_id: ResponseId,
        model: ModelId,
        created_at: int,
        *,
        request: ResponsesRequest | None = None,
    ) -> None:
        self.response_id = response_id
        self.response: Response | None = None
        self._shell = Response(
            id=response_id,
            created_at=created_at,
            status="in_progress",
            model=model,
            **_echo(request),
        )
        self._id_suffix = response_id.removeprefix("resp_")
        self._started = False
        self._sequence = 0
        self._output: list[OutputItem] = []  # closed items, in output order
        self._open: _Message | _Reasoning | None = None
        # `include: ["message.output_text.logprobs"]`: a step's logprobs wait for its
        # text; those of tokens that became reasoning or a call are dropped.
        self._logprobs = request is not None and LOGPROBS_INCLUDE in (request.include or ())
        self._pending: list[TokenLogprob] = []

    @property
    def ended(self) -> bool:
        return self.response is not None

    def start(self) -> bytes:
        """`response.created` and `response.in_progress`, before prefill."""
        if self._started:
            raise RuntimeError(f"response stream {self.response_id} already started")
        self._started = True
        shell = self._shell
        return self._emit(ResponseCreated(response=shell), ResponseInProgress(response=shell))

    def feed(self, event: GenerationEvent) -> bytes:
        match event:
            case ContentDelta(text):
                return self._text(_Message, text) if text else b""
            case ReasoningDelta(text):
                self._pending.clear()
                return self._text(_Reasoning, text) if text else b""
            case ToolCallParsed():
                self._pending.clear()
                return self._function_call(event)
            case LogprobsDelta(tokens):
                self._pending.extend(tokens)
                return b""
            case Started():
                return b""
            case Finished():
                return self.finish(event)
            case Failed():
                return self.fail(event)
        raise TypeError(f"not a generation event: {event!r}")

    def finish(self, finished: Finished) -> bytes:
        """Close the open item; `response.completed`, or `response.incomplete` on length."""
        self._check_live()
        cut = finished.reason == "length"
        closing = self._close("incomplete" if cut else "completed")
        usage = ResponseUsage.of(
            finished.prompt_tokens,
            finished.completion_tokens,
            cached=finished.cached_tokens,
            reasoning=finished.reasoning_tokens,
        )
        response = attrs.evolve(
            self._shell,
            status="incomplete" if cut else "completed",
            output=tuple(self._output),
            usage=usage,
            incomplete_details=IncompleteDetails(reason="max_output_tokens") if cut else None,
        )
        self.response = response
        if cut:
            return closing + self._emit(ResponseIncomplete(response=response))
        return closing + self._emit(ResponseCompleted(response=response))

    def fail(self, failed: Failed) -> bytes:
        """An `error` event, then `response.failed` with the output so far."""
        self._check_live()
        output = [*self._output]
        if self._open is not None:
            output.append(self._open.close("incomplete")[0])
            self._open = None
        error = failed.error
        response = attrs.evolve(
            self._shell,
            status="failed",
            output=tuple(output),
            usage=ResponseUsage.of(failed.prompt_tokens, failed.completion_tokens),
            error=ResponseError(code=_response_error_code(error), message=error.message),
        )
        self.response = response
        return self._emit(
            ErrorEvent(message=error.message, code=error.code, param=error.param),
            ResponseFailed(response=response),
        )

    # The hot path: a delta for the open item is one template render.
    def _text(self, kind: type[_Message] | type[_Reasoning], text: str) -> bytes:
        item = self._open
        if type(item) is not kind:
            return self._switch_to(kind) + self._text(kind, text)
        item.parts.append(text)
        if isinstance(item, _Message) and item.logprobs is not None:
            tokens, self._pending = self._pending, []
            item.logprobs += tokens
            delta = OutputTextDelta(
                item_id=item.id, output_index=item.index, content_index=0, delta=text,
                logprobs=tuple(_event_logprob(t) for t in tokens),
            )  # fmt: skip
            return self._emit(delta)
        self._sequence += 1
        return item.template.render(text, self._sequence - 1)

    def _switch_to(self, kind: type[_Message] | type[_Reasoning]) -> bytes:
        self._check_live()
        closing = self._close("completed")
        item_id, index = self._item_id(kind.prefix), len(self._output)
        if kind is _Message:
            item = _Message(item_id, index, logprobs=self._logprobs)
        else:
            item = _Reasoning(item_id, index)
        self._open = item
        return closing + self._emit(*item.opened())

    def _close(self, status: ItemStatus) -> bytes:
        item = self._open
        if item is None:
            return b""
        self._open = None
        done, events = item.close(status)
        self._output.append(done)
        return self._emit(*events)

    def _function_call(self, call: ToolCallParsed) -> bytes:
        self._check_live()
        closing = self._close("completed")
        index, item_id = len(self._output), self._item_id("fc")
        done = FunctionCall(
            call_id=CallId(call.id),
            name=call.name,
            arguments=call.arguments_json,
            id=item_id,
            status="completed",
        )
        added = attrs.evolve(done, arguments="", status="in_progress")
        events: list[ResponseStreamEvent] = [OutputItemAdded(output_index=index, item=added)]
        if call.arguments_json:
            events.append(
                FunctionCallArgumentsDelta(
                    item_id=item_id, output_index=index, delta=call.arguments_json
                )
            )
        events += [
            FunctionCallArgumentsDone(
                item_id=item_id, output_index=index, arguments=call.arguments_json, name=call.name
            ),
            OutputItemDone(output_index=index, item=done),
        ]
        self._output.append(done)
        return closing + self._emit(*events)

    def _item_id(self, prefix: str) -> ItemId:
        return ItemId(f"{prefix}_{self._id_suffix}_{len(self._output)}")

    def _emit(self, *events: ResponseStreamEvent) -> bytes:
        frames = []
        for event in events:
            stamped = attrs.evolve(event, sequence_number=self._sequence)
            self._sequence += 1
            frames.append(encode_json_event(stamped, event=stamped.type))
        return b"".join(frames)

    def _check_live(self) -> None:
        if not self._started:
            raise RuntimeError(f"response stream {self.response_id}: call start() first")
        if self.response is not None:
            raise RuntimeError(f"response stream {self.response_id} already ended")


def collect_response(
    response_id: ResponseId,
    model: ModelId,
    created_at: int,
    events: Iterable[GenerationEvent],
    *,
    request: ResponsesRequest | None = None,
) -> Response:
    """The non-streaming reply; a `Failed` event raises its error (nothing was sent)."""
    stream = ResponsesStream(response_id, model, created_at, request=request)
    stream.start()
    for event in events:
        if isinstance(event, Failed):
            raise event.error
        stream.feed(event)
        if stream.response is not None:
            return stream.response
    raise InternalError("the generation ended without a result")


def _echo(request: ResponsesRequest | None) -> dict[str, Any]:
    if request is None:
        return {}
    values = ((name, getattr(request, name)) for name in _ECHOED)
    return {name: value for name, value in values if value is not None}


def _response_error_code(error: ApiError) -> str:
    """`Response.error.code` is a closed set in the SDK: ours map onto two of its values.

    The `error` event before `response.failed` keeps our own code.
    """
    return "rate_limit_exceeded" if error.status == 429 else "server_error"


def _part_logprob(token: TokenLogprob) -> dict[str, Any]:
    """An `output_text` part's entry: bytes included, alternatives most likely first."""
    top = [{"token": t.token, "bytes": list(t.bytes), "logprob": t.logprob} for t in token.top]
    return {"token": token.token, "bytes": list(token.bytes), "logprob": token.logprob,
            "top_logprobs": top}  # fmt: skip


def _event_logprob(token: TokenLogprob) -> dict[str, Any]:
    """A delta or done event's entry (OpenAI's events carry no bytes)."""
    top = [{"token": t.token, "logprob": t.logprob} for t in token.top]
    return {"token": token.token, "logprob": token.logprob, "top_logprobs": top}
