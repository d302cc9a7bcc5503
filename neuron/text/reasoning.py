"""Which reasoning and tool-call markers a model's tokenizer has, and whether a
rendered prompt leaves the model inside a reasoning block.

Markers are probed like upstream does at load: a pair (`<think>`/`</think>`,
`[THINK]`/`[/THINK]`, `<thought>`/`</thought>`, `<reasoning>`/`</reasoning>`; and
`<tool_call>`/`</tool_call>`) counts only if both its open and its close text
encode to exactly one token each. Otherwise the feature is off and that text is
ordinary output. Because the streaming parser is driven by these token ids, a
chunk boundary can never split a marker.

Not for: parsing output (`neuron.text.output`) or tool-call bodies
(`neuron.text.tool_calls`).
"""

from __future__ import annotations

from typing import Protocol

import attrs

__all__ = [
    "REASONING_PAIRS",
    "TOOL_CALL_PAIRS",
    "MarkerPair",
    "Markers",
    "probe_markers",
    "prompt_opens_reasoning",
]

REASONING_PAIRS = (
    ("<think>", "</think>"),
    ("[THINK]", "[/THINK]"),
    ("<thought>", "</thought>"),
    ("<reasoning>", "</reasoning>"),
)
TOOL_CALL_PAIRS = (("<tool_call>", "</tool_call>"),)


class SingleTokens(Protocol):
    def single_token_id(self, text: str) -> int | None: ...


@attrs.frozen
class MarkerPair:
    open_text: str
    close_text: str
    open_id: int
    close_id: int


@attrs.frozen
class Markers:
    """A model's marker tokens; a None pair means that feature is off."""

    reasoning: MarkerPair | None = None
    tool_call: MarkerPair | None = None

    def without_tool_calls(self) -> Markers:
        """The same markers with tool-call parsing off (a request without tools)."""
        return attrs.evolve(self, tool_call=None)

    def by_id(self) -> dict[int, str]:
        """Marker token id → role: open_think, close_think, open_tool, close_tool."""
        return {
            pair_id: role
            for pair, roles in (
                (self.reasoning, ("open_think", "close_think")),
                (self.tool_call, ("open_tool", "close_tool")),
            )
            if pair is not None
            for pair_id, role in zip((pair.open_id, pair.close_id), roles, strict=True)
        }

    def by_text(self) -> dict[str, str]:
        """Marker text → role, for parsing text that was already decoded."""
        return {
            text: role
            for pair, roles in (
                (self.reasoning, ("open_think", "close_think")),
                (self.tool_call, ("open_tool", "close_tool")),
            )
            if pair is not None
            for text, role in zip((pair.open_text, pair.close_text), roles, strict=True)
        }


def probe_markers(tokenizer: SingleTokens) -> Markers:
    """The first reasoning pair and tool-call pair that are single tokens."""
    return Markers(
        reasoning=_first_pair(tokenizer, REASONING_PAIRS),
        tool_call=_first_pair(tokenizer, TOOL_CALL_PAIRS),
    )


def _first_pair(tokenizer: SingleTokens, pairs) -> MarkerPair | None:
    for open_text, close_text in pairs:
        open_id = tokenizer.single_token_id(open_text)
        close_id = tokenizer.single_token_id(close_text)
        if open_id is not None and close_id is not None:
            return MarkerPair(open_text, close_text, open_id, close_id)
    return None


def prompt_opens_reasoning(prompt: str, markers: Markers) -> bool:
    """True if the prompt's last reasoning marker is an open one (Qwen3.6-style
    templates write `<think>` into the generation prompt), so output starts as
    reasoning."""
    pair = markers.reasoning
    if pair is None:
        return False
    return prompt.rfind(pair.open_text) > prompt.rfind(pair.close_text)
