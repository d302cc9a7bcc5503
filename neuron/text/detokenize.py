"""Incremental detokenisation: token ids in, step by step; only complete text out.

The classic prefix-window method (text-generation-inference, vLLM): each step
decodes `ids[prefix:]` and `ids[prefix:read]` and emits the difference.
Decoding a window that starts a little before the new ids keeps the
tokenizer's own spacing rules (byte-level BPE, SentencePiece's leading-space
marker) exactly as a whole decode applies them; `context` seeds the window with
ids that precede the stream (a prompt tail, a marker token) without emitting
them. While the window's text ends in U+FFFD — a UTF-8 character split across
tokens — only the text before that tail is emitted and the window is kept open,
so no character is ever split (byte-level BPE merges can straddle characters,
so this can last several tokens).

Everything emitted, plus `finish()`, equals `tokenizer.decode(all ids)` for
tokenizers whose decode is prefix-consistent (byte-level BPE and SentencePiece
are). Only after `MAX_PENDING` ids without a character boundary — garbage
output — is the tail emitted as is (U+FFFD), which bounds the work per step.

Not for: stop strings, markers or events (`neuron.text.stop`,
`neuron.text.output`). One instance per stream; not thread-safe.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

__all__ = ["MAX_PENDING", "Decoder", "IncrementalDetokenizer"]

MAX_PENDING = 256
_REPLACEMENT = "\ufffd"


class Decoder(Protocol):
    """What the detokenizer needs: `ModelTokenizer` fits."""

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    __slots__ = ("_decoder", "_emitted", "_ids", "_prefix", "_read", "_skip")

    def __init__(
        self,
        decoder: Decoder,
        *,
        skip_special_tokens: bool = True,
        context: Sequence[int] = (),
    ) -> None:
        self._decoder = decoder
        self._skip = skip_special_tokens
        self._ids: list[int] = list(context)
        self._prefix = 0  # window start: decoded only for its effect on spacing
        self._read = len(self._ids)  # the text of ids before this is settled
        self._emitted = 0  # characters past the settled text already emitted

    @property
    def pending(self) -> int:
        """Ids received since the text last settled on a character boundary."""
        return len(self._ids) - self._read

    def push(self, ids: Iterable[int]) -> str:
        """Add one step's ids; return the text they complete (maybe '')."""
        self._ids.extend(ids)
        if self.pending == 0:
            return ""
        prefix_text, new_text = self._window()
        if new_text.endswith(_REPLACEMENT) and self.pending < MAX_PENDING:
            return self._emit_stable(len(prefix_text), new_text)
        return self._advance(len(prefix_text), new_text)

    def finish(self) -> str:
        """Flush whatever is pending, split characters included (as U+FFFD)."""
        if self.pending == 0:
            return ""
        prefix_text, new_text = self._window()
        return self._advance(len(prefix_text), new_text)

    def _window(self) -> tuple[str, str]:
        window = self._ids[self._prefix :]
        decode = self._decoder.decode
        return (
            decode(window[: self._read - self._prefix], skip_special_tokens=self._skip),
            decode(window, skip_special_tokens=self._skip),
        )

    def _emit_stable(self, settled: int, new_text: str) -> str:
        """Text before a trailing run of U+FFFD cannot change any more: emit it."""
        start, stable = settled + self._emitted, len(new_text.rstrip(_REPLACEMENT))
        if stable <= start:
            return ""
        self._emitted += stable - start
        return new_text[start:stable]

    def _advance(self, settled: int, new_text: str) -> str:
        delta = new_text[settled + self._emitted :]
        del self._ids[: self._prefix]  # ids before the next window are never read again
        self._prefix, self._read = self._read - self._prefix, len(self._ids)
        self._emitted = 0
        return delta
