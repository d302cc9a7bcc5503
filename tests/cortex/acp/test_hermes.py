"""The Hermes tool-call format: the streaming splitter at every chunk boundary, the
body parser (JSON and Qwen-XML), and the history re-serialised as text."""

from __future__ import annotations

import itertools
import json

import pytest

from cortex.acp.hermes import CallBlock, CallSplitter, ParsedCall, parse_call, render_messages

CALL = '{"name": "read_file", "arguments": {"path": "a <b>.txt"}}'
STREAM = f"Let me look <here>. <tool_call>\n{CALL}\n</tool_call> Then <tool_ more."


def split(chunks) -> tuple[str, list[str]]:
    """Everything the splitter gave: the text joined, and the blocks' bodies."""
    splitter = CallSplitter()
    pieces = [piece for chunk in chunks for piece in splitter.feed(chunk)]
    pieces.append(splitter.finish())
    text = "".join(p for p in pieces if isinstance(p, str))
    return text, [p.body for p in pieces if isinstance(p, CallBlock)]


EXPECTED = ("Let me look <here>.  Then <tool_ more.", [f"\n{CALL}\n"])


def test_the_whole_stream_at_once():
    assert split([STREAM]) == EXPECTED


def test_every_single_split_point():
    for cut in range(len(STREAM) + 1):
        assert split([STREAM[:cut], STREAM[cut:]]) == EXPECTED, cut


def test_every_pair_of_split_points():
    for a, b in itertools.combinations(range(len(STREAM) + 1), 2):
        assert split([STREAM[:a], STREAM[a:b], STREAM[b:]]) == EXPECTED, (a, b)


def test_one_character_at_a_time():
    assert split(list(STREAM)) == EXPECTED


def test_a_marker_prefix_is_held_back_never_shown_early():
    splitter = CallSplitter()
    assert splitter.feed("text <tool_") == ["text "]
    assert splitter.feed("call>{") == []
    assert splitter.finish() == "<tool_call>{"  # cut off: shown as text after all


def test_two_calls_in_a_row():
    both = f"<tool_call>{CALL}</tool_call><tool_call>{CALL}</tool_call>"
    for cut in range(len(both) + 1):
        assert split([both[:cut], both[cut:]]) == ("", [CALL, CALL]), cut


@pytest.mark.parametrize(
    "body",
    [
        CALL,
        '{"name": "read_file", "parameters": {"path": "a <b>.txt"}}',
        '{"name": "read_file", "arguments": "{\\"path\\": \\"a <b>.txt\\"}"}',
        "<function=read_file>\n<parameter=path>\na <b>.txt\n</parameter>\n</function>",
    ],
)
def test_a_body_parses_in_either_format(body):
    assert parse_call(body) == ParsedCall("read_file", {"path": "a <b>.txt"})


def test_qwen_xml_values_follow_the_tool_schema():
    body = (
        "<function=f>\n<parameter=n>\n7\n</parameter>\n<parameter=s>\n7\n</parameter>\n</function>"
    )
    schemas = {"f": {"n": {"type": "integer"}, "s": {"type": "string"}}}
    assert parse_call(body, schemas) == ParsedCall("f", {"n": 7, "s": "7"})


@pytest.mark.parametrize("body", ["", "not a call", '{"arguments": {}}', '{"name": "f", '
                                  '"arguments": [1]}', "text <function=f></function>"])  # fmt: skip
def test_a_body_in_neither_format_is_none(body):
    assert parse_call(body) is None


def test_the_history_becomes_text_turns_with_the_tools_in_the_system_prompt():
    tool = {"type": "function", "function": {"name": "read_file", "parameters": {}}}
    call = {"id": "c1", "type": "function",
            "function": {"name": "read_file", "arguments": '{"path": "x"}'}}  # fmt: skip
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Read x and y."},
        {"role": "assistant", "content": "Reading.", "tool_calls": [call, {**call, "id": "c2"}]},
        {"role": "tool", "tool_call_id": "c1", "content": "X"},
        {"role": "tool", "tool_call_id": "c2", "content": "Y"},
    ]
    system, user, assistant, results = render_messages(history, [tool])
    assert system["content"].startswith("Be brief.\n\n# Tools\n")
    assert json.dumps(tool) in system["content"]
    assert user == history[1]
    block = '<tool_call>\n{"name": "read_file", "arguments": {"path": "x"}}\n</tool_call>'
    assert assistant == {"role": "assistant", "content": f"Reading.\n{block}\n{block}"}
    assert results == {"role": "user", "content": "<tool_response>\nX\n</tool_response>\n"
                       "<tool_response>\nY\n</tool_response>"}  # fmt: skip
