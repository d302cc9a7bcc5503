"""Legacy completions (`text_completion`) from a generation's events.

`CompletionStream` renders one chunk per text delta, a final chunk with
`finish_reason`, the usage-only chunk (`choices: []`) and `data: [DONE]`,
as chat does; a failure after the stream opened is reported in-band the
same way (error frame, `finish_reason: "error"`, usage, `[DONE]`).
`collect_completion` builds the non-streaming reply. Legacy completions
carry raw text: reasoning and tool calls are not parsed for them, so only
`ContentDelta` and `LogprobsDelta` may be fed — anything else is a caller bug
and raises.

Pure and synchronous; ids and `created` are inputs. Not for: HTTP.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, cast

from neuron.events import (
    ChoiceEvent,
    ContentDelta,
    Failed,
    Finished,
    GenerationEvent,
    LogprobsDelta,
    Started,
    TokenLogprob,
)
from neuron.render.chat import collect_choices, usage_of
from neuron.render.template import TEXT, DeltaTemplate
from protocol.completions import Completion, CompletionChoice, CompletionLogprobs
from protocol.errors import InternalError
from protocol.ids import ModelId
from protocol.openai import CompletionId, ErrorResponse, Usage
from protocol.sse import DONE, encode_json_event

__all__ = ["CompletionStream", "collect_completion"]

CompletionFinish = Literal["stop", "length", "content_filter"]

# Not an OpenAI value: the final chunk of a stream that failed after it opened.
ERROR_FINISH = cast(CompletionFinish, "error")


class CompletionStream:
    """One streamed legacy completion: `start()`, `feed()` each event, then it ends.

    Same calling convention as `neuron.render.chat.ChatStream`. There is no
    opening chunk (legacy completions have no role), so `start()` renders
    nothing; the keepalive holds the stream open until the first text.
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
        self._texts: dict[int, DeltaTemplate] = {}

    def start(self) -> bytes:
        return b""

    def feed(self, event: GenerationEvent, index: int = 0) -> bytes:
        if self.ended:
            raise RuntimeError(f"completion stream {self.completion_id} already ended")
        match event:
            case ContentDelta(text):
                return self._text(index).render(text) if text else b""
            case LogprobsDelta(tokens):
                logprobs = completion_logprobs(tokens)
                choice = CompletionChoice(index=index, text="", logprobs=logprobs)
                return encode_json_event(self._chunk(choice))
            case ChoiceEvent(index=i, event=Finished() as done):
                choice = CompletionChoice(index=i, text="", finish_reason=_finish_reason(done))
                return encode_json_event(self._chunk(choice))
            case ChoiceEvent(index=i, event=inner):
                return self.feed(inner, i)
            case Started():
                return b""
            case Finished():
                return self.finish(event)
            case Failed():
                return self.fail(event)
        raise TypeError(f"legacy completions carry text only, not {event!r}")

    def finish(self, finished: Finished) -> bytes:
        reason = None if self.choices > 1 else _finish_reason(finished)  # n: sent per choice
        return self._end(reason, usage_of(finished))

    def fail(self, failed: Failed) -> bytes:
        error = encode_json_event(ErrorResponse.of(failed.error))
        usage = Usage.of(failed.prompt_tokens, failed.completion_tokens)
        return error + self._end(ERROR_FINISH, usage)

    def _text(self, index: int) -> DeltaTemplate:
        if index not in self._texts:
            self._texts[index] = DeltaTemplate(
                self._chunk(CompletionChoice(index=index, text=TEXT))
            )
        return self._texts[index]

    def _end(self, reason: CompletionFinish | None, usage: Usage) -> bytes:
        if self.ended:
            raise RuntimeError(f"completion stream {self.completion_id} already ended")
        self.ended = True
        frames = []
        if reason is not None:
            choice = CompletionChoice(text="", finish_reason=reason)
            frames.append(encode_json_event(self._chunk(choice)))
        if self.include_usage:
            frames.append(encode_json_event(self._chunk(None, usage=usage)))
        frames.append(DONE)
        return b"".join(frames)

    def _chunk(self, choice: CompletionChoice | None, *, usage: Usage | None = None) -> Completion:
        return Completion(
            id=self.completion_id,
            created=self.created,
            model=self.model,
            choices=() if choice is None else (choice,),
            usage=usage,
        )


def collect_completion(
    completion_id: CompletionId, model: ModelId, created: int, events: Iterable[GenerationEvent]
) -> Completion:
    """The non-streaming reply; a `Failed` event raises its error (nothing was sent).
    With n > 1, each choice's events come as `ChoiceEvent`s before the request's
    `Finished`."""
    events = list(events)
    if any(isinstance(e, ChoiceEvent) for e in events):
        return _collect_choices(completion_id, model, created, events)
    text: list[str] = []
    logprobs: list[TokenLogprob] | None = None
    for event in events:
        match event:
            case ContentDelta(piece):
                text.append(piece)
            case LogprobsDelta(tokens):
                logprobs = (logprobs or []) + list(tokens)
            case Started():
                pass
            case Failed(error=error):
                raise error
            case Finished():
                choice = CompletionChoice(
                    text="".join(text),
                    finish_reason=_finish_reason(event),
                    logprobs=None if logprobs is None else completion_logprobs(logprobs),
                )
                return Completion(
                    id=completion_id,
                    created=created,
                    model=model,
                    choices=(choice,),
                    usage=usage_of(event),
                )
            case _:
                raise TypeError(f"legacy completions carry text only, not {event!r}")
    raise InternalError("the generation ended without a result")


def _collect_choices(
    completion_id: CompletionId, model: ModelId, created: int, events: list
) -> Completion:
    choices, finished = collect_choices(
        events, lambda evs: collect_completion(completion_id, model, created, evs).choices[0]
    )
    return Completion(id=completion_id, created=created, model=model, choices=choices,
                      usage=usage_of(finished))  # fmt: skip


def completion_logprobs(tokens) -> CompletionLogprobs:
    """The legacy shape: parallel lists, `text_offset` counted in tokens' text."""
    offsets, at = [], 0
    for token in tokens:
        offsets.append(at)
        at += len(token.token)
    return CompletionLogprobs(
        tokens=tuple(t.token for t in tokens),
        token_logprobs=tuple(t.logprob for t in tokens),
        top_logprobs=tuple({a.token: a.logprob for a in t.top} for t in tokens),
        text_offset=tuple(offsets),
    )


def _finish_reason(finished: Finished) -> CompletionFinish:
    # No tool calls are parsed here, so a generation can only stop or run out.
    return "length" if finished.reason == "length" else "stop"
