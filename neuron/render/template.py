"""Pre-rendered SSE frames for the per-token hot path.

Consecutive delta frames of one stream differ only in their text (and, for
Responses events, their `sequence_number`). `DeltaTemplate` renders a
protocol value once, through the converter, with marker values in those
fields and keeps the bytes around them; each delta then costs one JSON
string escape and one join — about a tenth of building and encoding the
value every time, with byte-identical output (the tests check that against
the converter). Frames sent once per stream or per item are not templated:
they go through the converter directly.
"""

from __future__ import annotations

import json
from typing import Any

from protocol.sse import encode_json_event

__all__ = ["SEQUENCE", "TEXT", "DeltaTemplate"]

# Marker values for the varying fields. Private-use characters: no real field
# of a frame contains them. Typed Any because SEQUENCE stands in for an int.
TEXT: Any = "\ue000text\ue000"
SEQUENCE: Any = "\ue000sequence_number\ue000"

# How the converter escapes a string (`encode_json`: ensure_ascii=False).
_escape = json.JSONEncoder(ensure_ascii=False).encode


class DeltaTemplate:
    """One SSE frame with a `TEXT` slot and, after it, an optional `SEQUENCE` slot."""

    __slots__ = ("_head", "_middle", "_tail")

    def __init__(self, value: Any, *, event: str | None = None) -> None:
        frame = encode_json_event(value, event=event)
        self._head, rest = _split(frame, TEXT)
        self._tail: bytes | None = None
        self._middle = rest
        if _quoted(SEQUENCE) in rest:
            self._middle, self._tail = _split(rest, SEQUENCE)

    def render(self, text: str, sequence_number: int = 0) -> bytes:
        if self._tail is None:
            return b"".join((self._head, _escape(text).encode(), self._middle))
        return b"".join(
            (self._head, _escape(text).encode(), self._middle, b"%d" % sequence_number, self._tail)
        )


def _quoted(marker: str) -> bytes:
    return f'"{marker}"'.encode()


def _split(frame: bytes, marker: str) -> tuple[bytes, bytes]:
    quoted = _quoted(marker)
    if frame.count(quoted) != 1:
        raise ValueError(f"template needs exactly one {marker!r} slot: {frame!r}")
    head, _, tail = frame.partition(quoted)
    return head, tail
