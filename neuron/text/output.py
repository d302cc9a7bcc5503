"""Split a generation into content, reasoning and tool calls — streaming or whole.

`OutputParser` is fed the token ids each engine step produced and returns typed
events: `ContentDelta`, `ReasoningDelta`, `ToolCallParsed`. It is driven by the
marker token ids of `neuron.text.reasoning.Markers`, so a marker can never be
split across steps; the text between markers goes through an incremental
detokenizer. `parse_output_text` runs the same state machine over already
decoded text (markers found as strings), so for output whose markers are the
marker tokens both give the same `ParsedOutput`.

Rules (upstream helexa's, plus whitespace tidying):

* Reasoning markers flip reasoning on and off and are never shown. Output
  starts in reasoning when the prompt left a reasoning block open. A stray
  close marker in content and a nested open marker are dropped.
* A tool-call block is buffered to its close marker, then parsed
  (`neuron.text.tool_calls`). A parsed block becomes `ToolCallParsed`; one that
  does not parse is shown verbatim as content; an unterminated block (length
  cut) is shown as content at `finish()`. Markers inside reasoning are text.
* Whitespace around blocks is markup, not text. Reasoning is stripped at both
  ends. Content loses its leading whitespace when it only starts after a
  reasoning block or a tool call (`</think>\n\nAnswer` → `Answer`), and its
  trailing whitespace when a tool call ends the output. To stream that, the
  trailing whitespace of each kind is held back until more visible text of
  the same kind follows; `finish()` releases what content still holds.

Not for: stop strings (`neuron.text.stop`) or wire chunks (the daemon).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

import attrs

from neuron.text.detokenize import Decoder, IncrementalDetokenizer
from neuron.text.reasoning import Markers
from neuron.text.tool_calls import ToolSchemas, new_call_id, parse_tool_call

__all__ = [
    "ContentDelta",
    "OutputEvent",
    "OutputParser",
    "ParsedOutput",
    "ReasoningDelta",
    "ToolCallParsed",
    "parse_output_text",
]


@attrs.frozen
class ContentDelta:
    text: str


@attrs.frozen
class ReasoningDelta:
    text: str


@attrs.frozen
class ToolCallParsed:
    index: int  # 0, 1, … in order of appearance
    id: str  # call_<hex>
    name: str
    arguments_json: str


OutputEvent = ContentDelta | ReasoningDelta | ToolCallParsed


@attrs.frozen
class ParsedOutput:
    content: str = ""
    reasoning_content: str = ""
    tool_calls: tuple[ToolCallParsed, ...] = ()

    @classmethod
    def collect(cls, events: Iterable[OutputEvent]) -> ParsedOutput:
        """Join a stream's events into the whole result."""
        content, reasoning, calls = [], [], []
        for event in events:
            match event:
                case ContentDelta(text):
                    content.append(text)
                case ReasoningDelta(text):
                    reasoning.append(text)
                case ToolCallParsed():
                    calls.append(event)
        return cls("".join(content), "".join(reasoning), tuple(calls))


class _Router:
    """The state machine: text pieces and marker roles in, events out."""

    def __init__(self, markers: Markers, schemas: ToolSchemas, reasoning: bool, new_id) -> None:
        self._texts = {role: text for text, role in markers.by_text().items()}
        self._schemas = schemas
        self._new_id = new_id
        self.mode = "reasoning" if reasoning and markers.reasoning else "content"
        self._held = {"content": "", "reasoning": ""}  # trailing whitespace not shown yet
        self._lstrip = {"content": False, "reasoning": True}  # until the first visible text
        self._block: list[str] = []  # the open marker and body of a tool call
        self._shown = {"content": False, "reasoning": False}
        self._after_call = False  # nothing but whitespace since the last tool call
        self.calls = 0  # tool calls parsed so far

    def text(self, text: str) -> list[OutputEvent]:
        if self.mode == "tool":
            self._block.append(text)
            return []
        kind = self.mode
        if self._lstrip[kind]:
            text = text.lstrip()
            self._lstrip[kind] = not text
        combined = self._held[kind] + text
        visible = combined.rstrip()
        self._held[kind] = combined[len(visible) :]
        if not visible:
            return []
        self._after_call, self._shown[kind] = False, True
        return [ReasoningDelta(visible) if kind == "reasoning" else ContentDelta(visible)]

    def marker(self, role: str) -> list[OutputEvent]:
        if self.mode == "tool":
            return self._close_block() if role == "close_tool" else self.text(self._texts[role])
        if self.mode == "reasoning":
            return self._in_reasoning(role)
        return self._in_content(role)

    def finish(self) -> list[OutputEvent]:
        events = []
        if self.mode == "tool":  # cut off inside a block: show it as it was
            self.mode = "content"
            events = self.text("".join(self._block))
        held = self._held["content"]
        return [*events, ContentDelta(held)] if held and not self._after_call else events

    def _in_reasoning(self, role: str) -> list[OutputEvent]:
        if role == "close_think":
            self.mode = "content"
            self._strip_leading_content()
            return []
        return [] if role == "open_think" else self.text(self._texts[role])

    def _in_content(self, role: str) -> list[OutputEvent]:
        if role == "open_tool":
            self.mode, self._block = "tool", [self._texts[role]]
        elif role == "open_think":
            self.mode = "reasoning"
        elif role == "close_tool":
            return self.text(self._texts[role])
        return []  # a stray close_think is dropped

    def _close_block(self) -> list[OutputEvent]:
        parsed = parse_tool_call("".join(self._block[1:]), self._schemas)
        self.mode = "content"
        if parsed is None:
            return self.text("".join(self._block) + self._texts["close_tool"])
        self._strip_leading_content()
        self._after_call, index = True, self.calls
        self.calls += 1
        return [ToolCallParsed(index, self._new_id(), parsed.name, parsed.arguments_json)]

    def _strip_leading_content(self) -> None:
        """Content that only starts after a block drops its leading whitespace."""
        if not self._shown["content"]:
            self._lstrip["content"], self._held["content"] = True, ""


class OutputParser:
    """Streaming parser over token ids (one instance per generation)."""

    def __init__(
        self,
        decoder: Decoder,
        markers: Markers,
        *,
        schemas: ToolSchemas | None = None,
        starts_in_reasoning: bool = False,
        starts_in_tool_call: bool = False,
        skip_special_tokens: bool = True,
        context: Sequence[int] = (),
        hidden_ids: Iterable[int] = (),
        new_id: Callable[[], str] = new_call_id,
    ) -> None:
        """`context`: prompt-tail ids for spacing; `hidden_ids`: never shown (EOS);
        `starts_in_tool_call`: the prompt ended with an open tool-call marker."""
        self._router = _Router(markers, schemas or ToolSchemas(), starts_in_reasoning, new_id)
        if starts_in_tool_call and markers.tool_call is not None:
            self._router.marker("open_tool")
        self._roles = markers.by_id()
        self._hidden = frozenset(hidden_ids)
        self._decoder, self._skip = decoder, skip_special_tokens
        self._detok = IncrementalDetokenizer(
            decoder, skip_special_tokens=self._skip, context=context
        )
        self.reasoning_tokens = 0  # ids generated inside reasoning, markers included

    @property
    def tool_calls(self) -> int:
        return self._router.calls

    def feed(self, ids: Iterable[int]) -> list[OutputEvent]:
        """One engine step's ids (any number); the events they complete."""
        events: list[OutputEvent] = []
        run: list[int] = []  # ids between markers go to the detokenizer together
        for token_id in ids:
            role = self._roles.get(token_id)
            if role is not None:
                events += self._text(run) + self._marker(token_id, role)
                run = []
            elif token_id not in self._hidden:
                run.append(token_id)
        return events + self._text(run)

    def finish(self) -> list[OutputEvent]:
        """The generation ended (any reason): flush held text and open blocks."""
        return self._router.text(self._detok.finish()) + self._router.finish()

    def _text(self, run: list[int]) -> list[OutputEvent]:
        if not run:
            return []
        if self._router.mode == "reasoning":
            self.reasoning_tokens += len(run)
        return self._router.text(self._detok.push(run))

    def _marker(self, token_id: int, role: str) -> list[OutputEvent]:
        was_reasoning = self._router.mode == "reasoning"
        events = self._router.text(self._detok.finish()) + self._router.marker(role)
        self._detok = IncrementalDetokenizer(
            self._decoder, skip_special_tokens=self._skip, context=(token_id,)
        )
        if was_reasoning or self._router.mode == "reasoning":
            self.reasoning_tokens += 1
        return events


def parse_output_text(
    text: str,
    markers: Markers,
    *,
    schemas: ToolSchemas | None = None,
    starts_in_reasoning: bool = False,
    new_id: Callable[[], str] = new_call_id,
) -> ParsedOutput:
    """The whole-text path: markers are found as strings in decoded output."""
    router = _Router(markers, schemas or ToolSchemas(), starts_in_reasoning, new_id)
    roles = markers.by_text()
    events: list[OutputEvent] = []
    if roles:
        pattern = "|".join(re.escape(t) for t in sorted(roles, key=len, reverse=True))
        for i, piece in enumerate(re.split(f"({pattern})", text)):
            events += router.marker(roles[piece]) if i % 2 else router.text(piece)
    else:
        events += router.text(text)
    return ParsedOutput.collect(events + router.finish())
