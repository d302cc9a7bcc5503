"""Stop strings over streamed text: pass text through, cut at the first stop string.

`StopMatcher.push(text)` returns what may be shown now and, once a stop string
has completed, which one. It holds back only the shortest necessary tail: the
longest suffix of the text so far that is a proper prefix of some stop string.
"First match" means the stop string that completes earliest in the stream
(ties: the one starting earliest), so the result never depends on how the text
was chunked. The text before the match is emitted; the stop string itself and
everything after it are not (OpenAI and Anthropic both exclude it). After a
match the matcher swallows everything.

Not for: stop token ids (the worker stops on those) or deciding what text is
matched — the daemon feeds visible content, not reasoning or tool-call bodies.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

__all__ = ["StopMatcher", "StopScan"]


@attrs.frozen
class StopScan:
    text: str  # safe to emit now
    stopped: str | None = None  # the stop string that matched, once


class StopMatcher:
    __slots__ = ("_held", "_matched", "_stops")

    def __init__(self, stops: Sequence[str]) -> None:
        if any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        self._stops = tuple(dict.fromkeys(stops))
        self._held = ""
        self._matched: str | None = None

    @property
    def matched(self) -> str | None:
        return self._matched

    @property
    def held(self) -> str:
        """Text held back because it could still start a stop string."""
        return self._held

    def push(self, text: str) -> StopScan:
        if self._matched is not None:
            return StopScan("")
        buffer = self._held + text
        match = _first_match(buffer, self._stops)
        if match is not None:
            start, stop = match
            self._held, self._matched = "", stop
            return StopScan(buffer[:start], stop)
        keep = _partial_suffix(buffer, self._stops)
        self._held = buffer[len(buffer) - keep :]
        return StopScan(buffer[: len(buffer) - keep])

    def finish(self) -> str:
        """The held tail, released when the stream ends without a match."""
        held, self._held = self._held, ""
        return held


def _first_match(text: str, stops: Sequence[str]) -> tuple[int, str] | None:
    """(start, stop) of the match that ends first; ties go to the earlier start."""
    best: tuple[int, int, str] | None = None
    for stop in stops:
        start = text.find(stop)
        if start < 0:
            continue
        candidate = (start + len(stop), start, stop)
        if best is None or candidate[:2] < best[:2]:
            best = candidate
    return None if best is None else (best[1], best[2])


def _partial_suffix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop."""
    longest = max(len(s) for s in stops) - 1 if stops else 0
    for start in range(max(0, len(text) - longest), len(text)):
        tail = text[start:]
        if any(len(s) > len(tail) and s.startswith(tail) for s in stops):
            return len(text) - start
    return 0
