"""Chat completions from a generation's events: the SSE stream and the whole reply.

`ChatStream` renders upstream's chunk sequence — the role chunk, one chunk
per content / reasoning delta and per parsed tool call, the final chunk with
`finish_reason` (and helexa's `stop_sequence` when a client stop string
ended it), the usage-only chunk, `data: [DONE]`. A failure after the
stream opened is reported in-band (DESIGN §4): an error frame, a final
chunk with `finish_reason: "error"`, the usage so far, `[DONE]`.
`collect_chat` builds the non-streaming `chat.completion` from the same
events. Also here: the `Usage` both chat and legacy completions report.

Pure and synchronous: no I/O, no ids or clocks of its own (they are inputs).
Not for: deciding what to generate, or HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

import attrs

from neuron.events import (
    ChoiceEvent,
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
from neuron.render.template import TEXT, DeltaTemplate
from protocol.errors import InternalError
from protocol.ids import ModelId
from protocol.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    Choice,
    ChoiceDelta,
    ChoiceLogprobs,
    ChunkChoice,
    CompletionId,
    ErrorResponse,
    FinishReason,
    FunctionCall,
    HelexaTiming,
    ToolCall,
    ToolCallDelta,
    ToolCallFunctionDelta,
    ToolCallId,
    TopLogprob,
    Usage,
)
from protocol.openai import TokenLogprob as WireTokenLogprob
from protocol.sse import DONE, encode_json_event

__all__ = ["ChatStream", "collect_chat", "finish_reason", "usage_of"]

# Not an OpenAI value (the protocol's Literal lacks it): the final chunk of a
# stream that failed after it opened, for clients that ignore the error frame.
ERROR_FINISH = cast(FinishReason, "error")


class ChatStream:
    """One streamed chat completion: `start()`, `feed()` each event, then it ends.

    `feed` takes every event kind, `Finished` and `Failed` included, so a
    route can pass the generation's events straight through; `finish` and
    `fail` are what it calls for those. Each call returns the bytes to send
    (possibly none). Feeding after the end is a bug and raises.
    """

    def __init__(
        self,
        completion_id: CompletionId,
        model: ModelId,
        created: int,
        *,
        include_usage: bool = True,
        choices: int = 1,
    ) -> None:
        self.completion_id, self.model, self.created = completion_id, model, created
        self.include_usage = include_usage
        self.choices = choices  # n: each choice's events come as `ChoiceEvent`s
        self.ended = False
        self._tool_calls = [0] * choices
        self._templates: dict[int, tuple[DeltaTemplate, DeltaTemplate]] = {}

    def start(self) -> bytes:
        """The role chunk(s); sent before prefill, so the client sees the stream open."""
        return b"".join(
            encode_json_event(self._delta_chunk(ChoiceDelta(role="assistant", content=""), i))
            for i in range(self.choices)
        )

    def feed(self, event: GenerationEvent | ChoiceEvent, index: int = 0) -> bytes:
        if self.ended:
            raise RuntimeError(f"chat stream {self.completion_id} already ended")
        match event:
            case ContentDelta(text):
                return self._template(index)[0].render(text) if text else b""
            case ReasoningDelta(text):
                return self._template(index)[1].render(text) if text else b""
            case ToolCallParsed():
                return self._tool_call(event, index)
            case LogprobsDelta(tokens):
                logprobs = ChoiceLogprobs(content=tuple(wire_logprob(t) for t in tokens))
                choice = ChunkChoice(index=index, delta=ChoiceDelta(content=""), logprobs=logprobs)
                return encode_json_event(self._chunk(choice))
            case ChoiceEvent(index=i, event=Finished() as done):
                reason = finish_reason(done.reason, self._tool_calls[i])
                choice = ChunkChoice(
                    index=i, finish_reason=reason, stop_sequence=done.stop_sequence
                )
                return encode_json_event(self._chunk(choice))
            case ChoiceEvent(index=i, event=inner):
                return self.feed(inner, i)
            case Started():
                return b""
            case Finished():
                return self.finish(event)
            case Failed():
                return self.fail(event)
        raise TypeError(f"not a generation event: {event!r}")

    def finish(self, finished: Finished) -> bytes:
        """The final chunk, the usage chunk (if asked for) and `[DONE]`. With n > 1 each
        choice's final chunk went out with its `ChoiceEvent(Finished)`."""
        if self.choices > 1:
            return self._end(None, usage_of(finished))
        reason = finish_reason(finished.reason, self._tool_calls[0])
        return self._end(reason, usage_of(finished), finished.stop_sequence)

    def fail(self, failed: Failed) -> bytes:
        """The error frame, a final chunk with `finish_reason: "error"`, usage, `[DONE]`."""
        error = encode_json_event(ErrorResponse.of(failed.error))
        usage = Usage.of(failed.prompt_tokens, failed.completion_tokens)
        return error + self._end(ERROR_FINISH, usage)

    def _template(self, index: int) -> tuple[DeltaTemplate, DeltaTemplate]:
        if index not in self._templates:
            self._templates[index] = (
                DeltaTemplate(self._delta_chunk(ChoiceDelta(content=TEXT), index)),
                DeltaTemplate(self._delta_chunk(ChoiceDelta(reasoning_content=TEXT), index)),
            )
        return self._templates[index]

    def _tool_call(self, call: ToolCallParsed, index: int = 0) -> bytes:
        self._tool_calls[index] += 1
        function = ToolCallFunctionDelta(name=call.name, arguments=call.arguments_json)
        delta = ToolCallDelta(
            index=call.index, id=ToolCallId(call.id), type="function", function=function
        )
        return encode_json_event(self._delta_chunk(ChoiceDelta(tool_calls=(delta,)), index))

    def _end(
        self, reason: FinishReason | None, usage: Usage, stop_sequence: str | None = None
    ) -> bytes:
        if self.ended:
            raise RuntimeError(f"chat stream {self.completion_id} already ended")
        self.ended = True
        id, created, model = self.completion_id, self.created, self.model
        frames = []
        if reason is not None:
            final = ChatCompletionChunk.finish_chunk(
                reason, id=id, created=created, model=model, stop_sequence=stop_sequence
            )
            frames.append(encode_json_event(final))
        if self.include_usage:
            chunk = ChatCompletionChunk.usage_chunk(usage, id=id, created=created, model=model)
            frames.append(encode_json_event(chunk))
        frames.append(DONE)
        return b"".join(frames)

    def _delta_chunk(self, delta: ChoiceDelta, index: int = 0) -> ChatCompletionChunk:
        return self._chunk(ChunkChoice(index=index, delta=delta))

    def _chunk(self, choice: ChunkChoice) -> ChatCompletionChunk:
        id, created, model = self.completion_id, self.created, self.model
        return ChatCompletionChunk(id=id, created=created, model=model, choices=(choice,))


def collect_chat(
    completion_id: CompletionId, model: ModelId, created: int, events: Iterable[GenerationEvent]
) -> ChatCompletion:
    """The non-streaming reply; a `Failed` event raises its error (nothing was sent).
    With n > 1 each choice's events come as `ChoiceEvent`s, then the request's
    `Finished` (the usage over all choices)."""
    events = list(events)
    if any(isinstance(e, ChoiceEvent) for e in events):
        return _collect_choices(completion_id, model, created, events)
    content: list[str] = []
    reasoning: list[str] = []
    calls: list[ToolCall] = []
    logprobs: list[WireTokenLogprob] | None = None
    for event in events:
        match event:
            case ContentDelta(text):
                content.append(text)
            case LogprobsDelta(tokens):
                logprobs = (logprobs or []) + [wire_logprob(t) for t in tokens]
            case ReasoningDelta(text):
                reasoning.append(text)
            case ToolCallParsed():
                calls.append(_tool_call(event))
            case Failed(error=error):
                raise error
            case Finished():
                message = _message("".join(content), "".join(reasoning), tuple(calls))
                choice = Choice(
                    message=message,
                    finish_reason=finish_reason(event.reason, len(calls)),
                    stop_sequence=event.stop_sequence,
                    logprobs=None if logprobs is None else ChoiceLogprobs(content=tuple(logprobs)),
                )
                return ChatCompletion(
                    id=completion_id,
                    created=created,
                    model=model,
                    choices=(choice,),
                    usage=usage_of(event),
                )
    raise InternalError("the generation ended without a result")


def _collect_choices(
    completion_id: CompletionId, model: ModelId, created: int, events: list
) -> ChatCompletion:
    choices, finished = collect_choices(
        events, lambda evs: collect_chat(completion_id, model, created, evs).choices[0]
    )
    return ChatCompletion(id=completion_id, created=created, model=model, choices=choices,
                          usage=usage_of(finished))  # fmt: skip


def collect_choices(events: list, collect_one: Callable[[list], Any]) -> tuple[tuple, Finished]:
    """n > 1, not streamed: each choice's events through `collect_one` (its one choice,
    re-indexed), in index order, and the request's `Finished`."""
    per_choice: dict[int, list[GenerationEvent]] = {}
    for event in events:
        if isinstance(event, Failed):
            raise event.error
        if isinstance(event, ChoiceEvent):
            per_choice.setdefault(event.index, []).append(event.event)
        elif isinstance(event, Finished):
            choices = tuple(
                attrs.evolve(collect_one(evs), index=i) for i, evs in sorted(per_choice.items())
            )
            return choices, event
    raise InternalError("the generation ended without a result")


def finish_reason(reason: FinishReason, tool_calls: int) -> FinishReason:
    """Upstream's rule: a model that stopped after calling tools finished for them."""
    return "tool_calls" if tool_calls and reason == "stop" else reason


def wire_logprob(token: TokenLogprob) -> WireTokenLogprob:
    top = tuple(TopLogprob(token=t.token, logprob=t.logprob, bytes=t.bytes) for t in token.top)
    return WireTokenLogprob(
        token=token.token, logprob=token.logprob, bytes=token.bytes, top_logprobs=top
    )


def usage_of(finished: Finished) -> Usage:
    """Usage with upstream's details and timing: the cached and reasoning counts
    always (0 included, as OpenAI does), so a reply's usage has one shape whether it
    was streamed or not, whether the prefix cache hit and whether the model reasoned."""
    timing = HelexaTiming(
        prefill_ms=finished.prefill_ms,
        decode_ms=finished.decode_ms,
        prefill_tokens=finished.prompt_tokens - finished.cached_tokens,
    )
    return Usage.of(
        finished.prompt_tokens,
        finished.completion_tokens,
        cached=finished.cached_tokens,
        reasoning=finished.reasoning_tokens,
        timing=timing,
    )


def _message(content: str, reasoning: str, calls: tuple[ToolCall, ...]) -> ChatCompletionMessage:
    return ChatCompletionMessage(
        content=None if calls and not content else content,
        reasoning_content=reasoning or None,
        tool_calls=calls or None,
    )


def _tool_call(call: ToolCallParsed) -> ToolCall:
    function = FunctionCall(name=call.name, arguments=call.arguments_json)
    return ToolCall(id=ToolCallId(call.id), function=function)
