"""What one generation produces, as a stream of typed events.

A generation (see `neuron.generation`) emits `Started` once, then any number
of `ContentDelta` / `ReasoningDelta` / `ToolCallParsed` (from
`neuron.text.output`), then exactly one of `Finished` or `Failed`. The
renderers (`neuron.render`) turn this one stream into each API's wire
format — chat completion chunks, legacy completions, Responses events —
streamed or collected. Nothing here knows a wire format.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import attrs

from neuron.text.output import ContentDelta, ReasoningDelta, ToolCallParsed
from protocol.errors import ApiError

__all__ = [
    "ChoiceEvent",
    "ContentDelta",
    "Failed",
    "Finished",
    "GenerationEvent",
    "LogprobsDelta",
    "ReasoningDelta",
    "Started",
    "TokenLogprob",
    "ToolCallParsed",
]

FinishReason = Literal["stop", "length", "tool_calls"]


@attrs.frozen
class Started:
    """The sequence was admitted and sent to its worker."""

    prompt_tokens: int


@attrs.frozen
class Finished:
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    stop_sequence: str | None = None  # the stop string that ended it, if one did
    prefill_ms: float = 0.0  # submit → first token
    decode_ms: float = 0.0  # first token → last token


@attrs.frozen
class TokenLogprob:
    """One token's text, UTF-8 bytes and log-probability; `top` holds the most
    likely alternatives (as `TokenLogprob`s with no `top`), most likely first."""

    token: str
    logprob: float
    bytes: tuple[int, ...]
    top: tuple[TokenLogprob, ...] = ()


@attrs.frozen
class LogprobsDelta:
    """The logprobs of one step's tokens, sent before that step's text events (only
    when the request asked for logprobs)."""

    tokens: tuple[TokenLogprob, ...]


@attrs.frozen
class Failed:
    """The generation failed after `Started`: rendered in-band, never a cut stream."""

    error: ApiError
    prompt_tokens: int = 0
    completion_tokens: int = 0


@attrs.frozen
class ChoiceEvent:
    """An event of choice `index` of an n > 1 request (`neuron.generation.generate_choices`)."""

    index: int
    event: Started | ContentDelta | ReasoningDelta | ToolCallParsed | LogprobsDelta | Finished


GenerationEvent: TypeAlias = (
    Started
    | ContentDelta
    | ReasoningDelta
    | ToolCallParsed
    | LogprobsDelta
    | ChoiceEvent
    | Finished
    | Failed
)
