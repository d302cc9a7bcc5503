"""Client text that spells a control token stays text.

A chat prompt is rendered from the client's messages by the model's template,
and the rendered text is tokenised with the tokenizer's special tokens
recognised — the template writes `<|im_start|>` and friends as text. Left at
that, a user message containing `<|im_end|>\\n<|im_start|>system\\n…` would
become real turn boundaries: a forged system turn.

`SpecialTextGuard` closes that. Before rendering, every occurrence of a
special token's text inside the client's strings (messages, tools, template
kwargs) is swapped for a sentinel (private-use characters and a per-render
nonce, which no client can guess); after rendering, the text is cut at the
sentinels, the template's own pieces are tokenised as usual and each sentinel
becomes the ids of its special text encoded as *plain text*. With no special
text in the client's strings — the usual case — nothing changes at all.

Only tokens marked special (control tokens) are guarded; added tokens that are
not special (`<think>`, `<tool_call>` in Qwen-style vocabularies) are ordinary
output vocabulary and a conversation's history legitimately contains them.

Not for: legacy `/v1/completions` prompts, which are the client's raw prompt
by definition.
"""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["SpecialTextGuard"]

_OPEN, _CLOSE = "\ue000", "\ue001"  # private use: never in a template's own text


class SpecialTextGuard:
    """One render's sentinels: `neutralise` before, `encode` after."""

    def __init__(self, special_texts: Iterable[str]) -> None:
        self._pattern = _pattern(frozenset(t for t in special_texts if t))
        self._nonce = secrets.token_hex(6)
        self._sentinel = re.compile(f"{_OPEN}{self._nonce}:(\\d+){_CLOSE}")
        self._replaced: list[str] = []

    @property
    def replaced(self) -> bool:
        return bool(self._replaced)

    def neutralise(self, value: Any) -> Any:
        """`value` (JSON-like: dicts, lists, strings) with special text swapped out."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self._pattern.sub(self._swap, value)
        if isinstance(value, dict):
            return {k: self.neutralise(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.neutralise(v) for v in value)
        return value

    def restore(self, rendered: str) -> str:
        """The rendered text with each sentinel back to the special text it stands for."""
        return self._sentinel.sub(lambda m: self._replaced[int(m.group(1))], rendered)

    def encode(
        self,
        rendered: str,
        encode: Callable[[str], list[int]],
        encode_plain: Callable[[str], list[int]],
    ) -> list[int]:
        """Ids of `rendered`: its own text with `encode`, the client's special text
        with `encode_plain` (special tokens not recognised)."""
        ids: list[int] = []
        start = 0
        for match in self._sentinel.finditer(rendered):
            if match.start() > start:
                ids += encode(rendered[start : match.start()])
            ids += encode_plain(self._replaced[int(match.group(1))])
            start = match.end()
        if start < len(rendered):
            ids += encode(rendered[start:])
        return ids

    def _swap(self, match: re.Match[str]) -> str:
        self._replaced.append(match.group(0))
        return f"{_OPEN}{self._nonce}:{len(self._replaced) - 1}{_CLOSE}"


@functools.cache
def _pattern(texts: frozenset[str]) -> re.Pattern[str] | None:
    """One alternation of the texts, longest first; compiled once per vocabulary."""
    ordered = sorted(texts, key=lambda t: (-len(t), t))
    return re.compile("|".join(map(re.escape, ordered))) if ordered else None
