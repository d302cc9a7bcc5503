"""The grammars `neuron.text.constraints` builds, walked token by token (issue #17).

Each grammar is compiled by the worker's own `Grammars` against the synthetic
Qwen3 tokenizer (its ChatML, `<think>` and `<tool_call>` marker tokens), and fed
text and marker tokens: what a grammar must accept is consumed, what it must
refuse is not, and which marker tokens may come next is checked at the seams.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from neuron.synth import TOKEN_IDS
from neuron.text.constraints import chat_grammar
from neuron.text.errors import UnsupportedValue
from neuron.text.prompt import ChatPrompt
from neuron.text.reasoning import MarkerPair, Markers
from neuron.worker.grammar import Grammars
from protocol import structure
from protocol.openai import ChatCompletionRequest

VOCAB = 4096
EOS = (TOKEN_IDS["<|endoftext|>"], TOKEN_IDS["<|im_end|>"])
THINK, UNTHINK = TOKEN_IDS["<think>"], TOKEN_IDS["</think>"]
CALL, UNCALL = TOKEN_IDS["<tool_call>"], TOKEN_IDS["</tool_call>"]
MARKERS = Markers(
    reasoning=MarkerPair("<think>", "</think>", THINK, UNTHINK),
    tool_call=MarkerPair("<tool_call>", "</tool_call>", CALL, UNCALL),
)
POINT = {
    "$defs": {"Digit": {"type": "integer", "minimum": 0, "maximum": 9}},
    "type": "object",
    "properties": {"x": {"$ref": "#/$defs/Digit"}, "tag": {"enum": ["a", "b"]}},
    "required": ["x", "tag"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "plot", "parameters": POINT, "strict": True}},
    {"type": "function", "function": {"name": "note", "parameters": {"type": "object"}}},
]


@pytest.fixture(scope="module")
def grammars(demo_models) -> Grammars:
    return Grammars.from_snapshot(demo_models.plain_path, VOCAB, EOS)


def _grammar(*, opens_reasoning=False, constrain=True, **body):
    request = structure({"model": "m", "messages": [{"role": "user", "content": "hi"}], **body},
                        ChatCompletionRequest)  # fmt: skip
    tools, choice = body.get("tools"), body.get("tool_choice")
    rendered = None if tools is None else tuple(_template_tool(t) for t in tools)
    prompt = ChatPrompt(
        text="", token_ids=(), tools=rendered,
        parse_tool_calls=tools is not None and choice != "none",
        opens_reasoning=opens_reasoning,
        opens_tool_call=tools is not None and choice not in (None, "auto", "none"),
    )  # fmt: skip
    return chat_grammar(request, prompt, MARKERS, constrain_tool_calls=constrain)


def _template_tool(tool: dict) -> dict:
    """As `neuron.text.messages.chat_tools` renders it (no `strict`)."""
    function = {k: v for k, v in tool["function"].items() if k != "strict"}
    return {"type": "function", "function": function}


def _walk(grammars: Grammars, grammar: str, *pieces: str | int):
    """A matcher fed `pieces` (text, or a marker token id); False when one is refused."""
    matcher = grammars.matcher(grammar)
    for piece in pieces:
        tokens = [piece] if isinstance(piece, int) else grammars.tokenizer.tokenize_str(piece)
        for token in tokens:
            if not matcher.consume_token(token):
                return False
    return matcher


def _accepts(grammars, grammar, *pieces) -> bool:
    matcher = _walk(grammars, grammar, *pieces)
    return bool(matcher) and matcher.is_accepting()


def _call(name: str, arguments: dict) -> str:
    return json.dumps({"name": name, "arguments": arguments}, separators=(",", ":"))


def test_strict_tools_under_auto_constrain_only_what_is_inside_a_call(grammars):
    grammar = _grammar(tools=TOOLS, tool_choice="auto")
    good = _call("plot", {"x": 3, "tag": "b"})
    assert _accepts(grammars, grammar, "Any text at all, even {json}.")
    assert _accepts(grammars, grammar, THINK, "plan", UNTHINK, "\n\nok")
    assert _accepts(grammars, grammar, "Let me plot.", CALL, "\n", good, "\n", UNCALL)
    assert _accepts(grammars, grammar, CALL, good, UNCALL, "\n", CALL, good, UNCALL)
    # the non-strict tool takes any object; the strict one only valid arguments
    assert _accepts(grammars, grammar, CALL, _call("note", {"any": [1]}), UNCALL)
    for bad in ({"x": 12, "tag": "b"}, {"x": 3}, {"x": 3, "tag": "b", "y": 1}):
        assert not _walk(grammars, grammar, CALL, _call("plot", bad))
    assert not _walk(grammars, grammar, CALL, _call("other", {}))
    # after a call: whitespace, another call or the end; no more prose
    assert not _walk(grammars, grammar, CALL, good, UNCALL, "and more")
    assert _walk(grammars, grammar, CALL, good, UNCALL).is_accepting()


def test_parallel_tool_calls_false_allows_one_call(grammars):
    grammar = _grammar(tools=TOOLS, tool_choice="auto", parallel_tool_calls=False)
    good = _call("plot", {"x": 0, "tag": "a"})
    assert _accepts(grammars, grammar, "text", CALL, good, UNCALL)
    assert not _walk(grammars, grammar, CALL, good, UNCALL, "\n", CALL)


def test_no_grammar_without_a_strict_tool_or_when_switched_off(grammars):
    loose = [TOOLS[1]]
    assert _grammar(tools=loose, tool_choice="auto") is None
    assert _grammar(tools=TOOLS, tool_choice="auto", constrain=False) is None
    assert _grammar(tools=TOOLS, tool_choice="none") is None
    assert _grammar(tools=TOOLS, tool_choice="required", constrain=False) is None


def test_a_forced_call_resolves_refs_in_the_tools_parameters(grammars):
    grammar = _grammar(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "plot"}})
    good = _call("plot", {"x": 9, "tag": "a"})
    assert _accepts(grammars, grammar, "\n", good, "\n", UNCALL)
    assert not _walk(grammars, grammar, _call("plot", {"x": 10, "tag": "a"}))
    assert not _walk(grammars, grammar, "text")


def test_a_response_format_next_to_tools_answers_or_calls(grammars):
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": POINT}}
    grammar = _grammar(tools=TOOLS, tool_choice="auto", response_format=fmt)
    assert _accepts(grammars, grammar, '{"x":1,"tag":"a"}')
    assert _accepts(grammars, grammar, CALL, _call("note", {}), UNCALL)
    assert not _walk(grammars, grammar, "prose")
    free = _grammar(tools=TOOLS, tool_choice="auto", response_format=fmt, constrain=False)
    assert _accepts(grammars, free, CALL, "<function=note></function>", UNCALL)
    alone = _grammar(response_format=fmt)
    assert not _walk(grammars, alone, CALL)


def test_a_prompt_left_in_reasoning_reasons_then_answers(grammars):
    fmt = {"type": "json_object"}
    grammar = _grammar(response_format=fmt, opens_reasoning=True)
    assert _accepts(grammars, grammar, "\nthinking it over\n", UNTHINK, "\n\n", '{"a":1}')
    assert not _walk(grammars, grammar, UNTHINK, "\n\nprose")


def test_a_strict_tool_the_library_cannot_enforce_is_refused():
    bad = {"type": "object", "properties": {"a": {"type": "string", "pattern": "(?=x)y"}}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": bad, "strict": True}}]
    with pytest.raises(UnsupportedValue) as info:
        _grammar(tools=tools, tool_choice="auto")
    assert info.value.param == "tools" and "look-around" in str(info.value)
