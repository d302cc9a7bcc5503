"""Server-sent events: a sans-IO encoder and an incremental decoder.

The neuron renders its streams with the encoder; the gateway reads a node's
stream with `SseDecoder` when it needs to look inside (usage, errors, the
Anthropic re-framing) and forwards comments such as keepalives. Parsing
follows the WHATWG "event stream interpretation" rules:

* the stream is UTF-8 (invalid bytes become U+FFFD) with one optional BOM at
  the very start; lines end in CRLF, LF or CR, and any of them may be split
  across `feed()` calls, as may a multi-byte character;
* a blank line dispatches the event; `data` lines are joined with LF; a
  field without a colon has an empty value; one space after the colon is
  dropped; an event without any `data` line is not dispatched;
* at end of stream an unterminated event is discarded, never dispatched —
  `close()` records that in `truncated` so a reader can tell a cut stream
  from a finished one.

Unlike a browser, the decoder surfaces comment lines as `SseComment` (the
gateway relays keepalives) and reports `id`/`retry` as they appeared in each
event's own block. This module does no I/O and knows nothing of HTTP.
"""

from __future__ import annotations

import codecs
import re
from typing import Any

import attrs

from protocol._converter import encode_json
from protocol.errors import EventStreamError

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_MAX_EVENT_SIZE",
    "DONE",
    "KEEPALIVE",
    "SseComment",
    "SseDecoder",
    "SseEvent",
    "encode",
    "encode_comment",
    "encode_data",
    "encode_event",
    "encode_json_event",
]

CONTENT_TYPE = "text/event-stream"
DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keepalive\n\n"

# Characters buffered for one event (its data plus an unfinished line).
DEFAULT_MAX_EVENT_SIZE = 16 * 1024 * 1024

_EOL = re.compile(r"\r\n|\r|\n")


@attrs.frozen
class SseEvent:
    """One dispatched event.

    `event` is None for the default type ("message"). `id` and `retry` are
    the fields given in this event's block, if any; the decoder's
    `last_event_id` carries the spec's sticky value across events.
    """

    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None

    @property
    def is_done(self) -> bool:
        """Whether this is the OpenAI stream terminator `data: [DONE]`."""
        return self.data == "[DONE]" and self.event is None


@attrs.frozen
class SseComment:
    """A comment line (`: text`), e.g. a keepalive."""

    text: str = ""


# ------------------------------------------------------------------ encoder


def encode(item: SseEvent | SseComment) -> bytes:
    if isinstance(item, SseComment):
        return encode_comment(item.text)
    return encode_event(item.data, event=item.event, id=item.id, retry=item.retry)


def encode_event(
    data: str, *, event: str | None = None, id: str | None = None, retry: int | None = None
) -> bytes:
    """Render one event; `data` may span lines (CRLF, CR and LF all split it)."""
    head = ""
    if event is not None:
        head += f"event: {_single_line('event name', event, allow_empty=False)}\n"
    if id is not None:
        if "\0" in id:
            raise ValueError("SSE id must not contain NUL")
        head += f"id: {_single_line('id', id)}\n"
    if retry is not None:
        if type(retry) is not int or retry < 0:
            raise ValueError(f"SSE retry must be a non-negative integer, got {retry!r}")
        head += f"retry: {retry}\n"
    if "\n" in data or "\r" in data:
        body = "".join(f"data: {line}\n" for line in _EOL.split(data))
    else:
        body = f"data: {data}\n"
    return f"{head}{body}\n".encode()


def encode_comment(text: str = "") -> bytes:
    """Render a comment frame, e.g. `: keepalive` plus the closing blank line."""
    text = _single_line("comment", text)
    return f": {text}\n\n".encode() if text else b":\n\n"


def encode_data(payload: bytes, *, event: str | None = None) -> bytes:
    """Frame an already-encoded single-line payload as one event."""
    if b"\n" in payload or b"\r" in payload:
        raise ValueError("payload for encode_data must be a single line")
    if event is None:
        return b"data: %b\n\n" % payload
    name = _single_line("event name", event, allow_empty=False).encode()
    return b"event: %b\ndata: %b\n\n" % (name, payload)


def encode_json_event(payload: Any, *, event: str | None = None) -> bytes:
    """`data: <compact JSON>` for a protocol value or plain data: the hot path.

    Compact JSON never contains a raw CR or LF (they are escaped inside
    strings), so no line splitting is needed.
    """
    if event is None:
        return b"data: %b\n\n" % encode_json(payload)
    return encode_data(encode_json(payload), event=event)


def _single_line(what: str, value: str, *, allow_empty: bool = True) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"SSE {what} must not contain a line break: {value!r}")
    if not value and not allow_empty:
        raise ValueError(f"SSE {what} must not be empty (use None for the default)")
    return value


# ------------------------------------------------------------------ decoder


class SseDecoder:
    """Incremental event-stream parser: `feed(bytes)` → events and comments.

    Bytes may be split anywhere. More than `max_event_size` characters
    buffered for one event (data lines plus an unfinished line) raises
    `EventStreamError` instead of growing without bound; so does feeding
    after `close()`. After an error the decoder refuses further input.
    """

    def __init__(self, *, max_event_size: int = DEFAULT_MAX_EVENT_SIZE) -> None:
        self.max_event_size = max_event_size
        self.last_event_id = ""  # the spec's sticky "last event ID string"
        self.retry: int | None = None  # the latest valid `retry` (ms)
        self.truncated = False  # set by close() if an unfinished event was dropped
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._at_start = True  # a BOM is only stripped at the very beginning
        self._skip_lf = False  # the last chunk ended in CR: a leading LF belongs to it
        self._line: list[str] = []  # pieces of the unfinished line
        self._line_size = 0
        self._closed = False
        self._reset_event()

    def feed(self, data: bytes | bytearray | memoryview) -> list[SseEvent | SseComment]:
        if self._closed:
            raise EventStreamError("SSE decoder used after close() or an error")
        text = self._utf8.decode(data)
        if self._at_start and text:
            self._at_start = False
            text = text.removeprefix("\ufeff")
        if self._skip_lf and text:
            self._skip_lf = False
            text = text.removeprefix("\n")
        out: list[SseEvent | SseComment] = []
        if text:
            try:
                self._feed_text(text, out)
            except EventStreamError:
                self._closed = True
                raise
        return out

    def close(self) -> None:
        """End of stream: discard an unterminated event (per spec)."""
        if self._closed:
            return
        self._closed = True
        tail = self._utf8.decode(b"", final=True)
        pending = self._data or self._event is not None or self._id is not None
        self.truncated = bool(tail or self._line or pending or self._retry is not None)

    def _feed_text(self, text: str, out: list[SseEvent | SseComment]) -> None:
        lines = _EOL.split(text)
        if len(lines) == 1:
            self._extend_line(text)
            return
        if self._line:
            lines[0] = "".join(self._line) + lines[0]
            self._line.clear()
            self._line_size = 0
        for line in lines[:-1]:
            self._process(line, out)
        if lines[-1]:
            self._extend_line(lines[-1])
        elif text[-1] == "\r":
            self._skip_lf = True

    def _extend_line(self, piece: str) -> None:
        self._line.append(piece)
        self._line_size += len(piece)
        self._check_size()

    def _check_size(self) -> None:
        if self._line_size + self._data_size > self.max_event_size:
            raise EventStreamError(
                f"SSE event exceeds {self.max_event_size} characters without being dispatched"
            )

    def _process(self, line: str, out: list[SseEvent | SseComment]) -> None:
        if not line:
            self._dispatch(out)
            return
        if line[0] == ":":
            out.append(SseComment(line[2:] if line[1:2] == " " else line[1:]))
            return
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._data_size += len(value) + 1
            self._check_size()
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = self.retry = int(value)

    def _dispatch(self, out: list[SseEvent | SseComment]) -> None:
        if self._id is not None:
            self.last_event_id = self._id
        if self._data:
            out.append(SseEvent("\n".join(self._data), self._event or None, self._id, self._retry))
        self._reset_event()

    def _reset_event(self) -> None:
        self._data: list[str] = []
        self._data_size = 0
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
