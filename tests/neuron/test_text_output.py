"""The output parser: reasoning and tool-call markers driven by token ids, the
whole-text path, and their agreement for any chunking."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuron.text.output import (
    ContentDelta,
    OutputParser,
    ParsedOutput,
    ReasoningDelta,
    ToolCallParsed,
    parse_output_text,
)
from neuron.text.reasoning import Markers, probe_markers, prompt_opens_reasoning
from neuron.text.tokenizer import ModelTokenizer
from neuron.text.tool_calls import ToolSchemas

SCHEMAS = ToolSchemas.from_tools(
    [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}
                },
            },
        }
    ]
)


@pytest.fixture(scope="module")
def tokenizer(demo_models) -> ModelTokenizer:
    return ModelTokenizer.from_snapshot(demo_models.plain_path)


@pytest.fixture(scope="module")
def markers(tokenizer) -> Markers:
    return probe_markers(tokenizer)


def _ids_factory():
    counter = itertools.count()
    return lambda: f"call_{next(counter)}"


def _stream(tokenizer, markers, text, *, steps=None, **kwargs) -> tuple[list, OutputParser]:
    """Feed `text`'s ids one per step (or in the given step sizes); all events."""
    parser = OutputParser(tokenizer, markers, new_id=_ids_factory(), **kwargs)
    ids = tokenizer.encode(text)
    sizes = steps or [1] * len(ids)
    events, start = [], 0
    for size in sizes:
        events += parser.feed(ids[start : start + size])
        start += size
    events += parser.feed(ids[start:])
    return events + parser.finish(), parser


def _parse(tokenizer, markers, text, **kwargs) -> tuple[ParsedOutput, OutputParser]:
    events, parser = _stream(tokenizer, markers, text, **kwargs)
    return ParsedOutput.collect(events), parser


# -- markers --------------------------------------------------------------------------


def test_probes_the_demo_markers(tokenizer, markers):
    assert markers.reasoning is not None and markers.tool_call is not None
    assert (markers.reasoning.open_text, markers.reasoning.close_text) == ("<think>", "</think>")
    assert markers.reasoning.open_id == tokenizer.token_to_id("<think>")
    assert markers.tool_call.close_id == tokenizer.token_to_id("</tool_call>")
    assert markers.without_tool_calls().tool_call is None


class _Vocab:
    def __init__(self, singles: dict[str, int]) -> None:
        self.singles = singles

    def single_token_id(self, text: str) -> int | None:
        return self.singles.get(text)


def test_a_pair_counts_only_if_both_markers_are_single_tokens():
    assert probe_markers(_Vocab({"<think>": 1, "<tool_call>": 2})) == Markers()
    found = probe_markers(_Vocab({"<think>": 1, "[THINK]": 3, "[/THINK]": 4}))
    assert found.reasoning is not None and found.reasoning.open_text == "[THINK]"
    assert found.tool_call is None


def test_prompt_opens_reasoning(markers):
    assert prompt_opens_reasoning("<|im_start|>assistant\n<think>\n", markers)
    assert not prompt_opens_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n", markers)
    assert not prompt_opens_reasoning("<|im_start|>assistant\n", markers)
    assert not prompt_opens_reasoning("<think>", Markers())


# -- reasoning ------------------------------------------------------------------------


def test_reasoning_then_content(tokenizer, markers):
    result, parser = _parse(tokenizer, markers, "<think>\nLet me see.\n</think>\n\nIt is 4.")
    assert result == ParsedOutput("It is 4.", "Let me see.", ())
    assert parser.reasoning_tokens == len(tokenizer.encode("<think>\nLet me see.\n</think>"))


def test_reasoning_streams_before_the_close_marker(tokenizer, markers):
    parser = OutputParser(tokenizer, markers)
    events = parser.feed(tokenizer.encode("<think>Hmm, so"))
    assert events and all(isinstance(e, ReasoningDelta) for e in events)
    assert "".join(e.text for e in events).startswith("Hmm")


def test_starts_in_reasoning_when_the_prompt_opened_it(tokenizer, markers):
    result, parser = _parse(
        tokenizer, markers, "\nPondering.\n</think>\n\nDone.", starts_in_reasoning=True
    )
    assert result == ParsedOutput("Done.", "Pondering.", ())
    assert parser.reasoning_tokens == len(tokenizer.encode("\nPondering.\n</think>"))


def test_unclosed_reasoning_is_all_reasoning(tokenizer, markers):
    result, _ = _parse(tokenizer, markers, "<think>cut off mid tho")
    assert result == ParsedOutput("", "cut off mid tho", ())


def test_stray_and_nested_reasoning_markers_are_dropped(tokenizer, markers):
    result, _ = _parse(tokenizer, markers, "A</think> B<think>x<think>y</think>C")
    assert result == ParsedOutput("A BC", "xy", ())


def test_without_reasoning_markers_the_text_is_content(tokenizer):
    result, parser = _parse(tokenizer, Markers(), "<think>x</think>y", starts_in_reasoning=True)
    assert result == ParsedOutput("<think>x</think>y", "", ())
    assert parser.reasoning_tokens == 0


def test_content_keeps_its_own_leading_whitespace(tokenizer, markers):
    result, _ = _parse(tokenizer, markers, "    indented code\n")
    assert result.content == "    indented code\n"


# -- tool calls -------------------------------------------------------------------------

CALL = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>'
)


def test_a_tool_call_is_parsed_at_its_close_marker(tokenizer, markers):
    ids = tokenizer.encode(f"Checking.\n\n{CALL}")
    parser = OutputParser(tokenizer, markers, schemas=SCHEMAS, new_id=lambda: "call_x")
    events = [event for i in ids for event in parser.feed([i])]
    assert [e for e in events if isinstance(e, ContentDelta)][-1].text != "\n\n"
    assert events[-1] == ToolCallParsed(0, "call_x", "get_weather", '{"city":"Paris","days":2}')
    assert parser.finish() == []
    assert parser.tool_calls == 1
    assert ParsedOutput.collect(events).content == "Checking."


def test_several_calls_are_indexed_and_whitespace_between_them_dropped(tokenizer, markers):
    xml = (
        "<tool_call>\n<function=get_weather>\n<parameter=days>\n3\n</parameter>\n"
        "</function>\n</tool_call>"
    )
    result, _ = _parse(tokenizer, markers, f"<think>plan</think>\n{CALL}\n{xml}\n", schemas=SCHEMAS)
    assert result.content == ""
    assert result.reasoning_content == "plan"
    assert [(c.index, c.id, c.name, json.loads(c.arguments_json)) for c in result.tool_calls] == [
        (0, "call_0", "get_weather", {"city": "Paris", "days": 2}),
        (1, "call_1", "get_weather", {"days": 3}),
    ]


def test_content_after_a_call_keeps_its_separation(tokenizer, markers):
    result, _ = _parse(tokenizer, markers, f"Before.\n{CALL}\nAfter.")
    assert result.content == "Before.\n\nAfter."
    assert len(result.tool_calls) == 1


def test_an_unparseable_block_is_shown_verbatim(tokenizer, markers):
    text = "Look: <tool_call>\nnot a call\n</tool_call> ok"
    result, parser = _parse(tokenizer, markers, text)
    assert result == ParsedOutput(text, "", ())
    assert parser.tool_calls == 0


def test_an_unterminated_block_is_content_at_finish(tokenizer, markers):
    text = 'Sure. <tool_call>\n{"name": "get_weather", "argum'
    result, _ = _parse(tokenizer, markers, text)
    assert result == ParsedOutput(text, "", ())


def test_tool_markers_in_reasoning_are_reasoning_text(tokenizer, markers):
    result, _ = _parse(tokenizer, markers, f"<think>maybe {CALL}</think>no")
    assert result.tool_calls == ()
    assert result.reasoning_content == f"maybe {CALL}"
    assert result.content == "no"


def test_with_tool_calls_off_blocks_are_content(tokenizer, markers):
    result, _ = _parse(tokenizer, markers.without_tool_calls(), f"x {CALL}")
    assert result == ParsedOutput(f"x {CALL}", "", ())


def test_a_stray_close_marker_is_content(tokenizer, markers):
    result, _ = _parse(tokenizer, markers, "a </tool_call> b")
    assert result.content == "a </tool_call> b"


def test_hidden_ids_are_neither_shown_nor_counted(tokenizer, markers):
    events, parser = _stream(
        tokenizer,
        markers,
        "<think>r</think>c<|im_end|>",
        hidden_ids=tokenizer.eos_token_ids,
        skip_special_tokens=False,
    )
    assert ParsedOutput.collect(events) == ParsedOutput("c", "r", ())
    assert parser.reasoning_tokens == 3


def test_the_text_path_agrees_on_the_examples(tokenizer, markers):
    text = f"<think>\nhm\n</think>\n\nHi {CALL} bye <tool_call>junk</tool_call>"
    streamed, _ = _parse(tokenizer, markers, text, schemas=SCHEMAS)
    whole = parse_output_text(text, markers, schemas=SCHEMAS, new_id=_ids_factory())
    assert streamed == whole
    assert whole.content == "Hi  bye <tool_call>junk</tool_call>"  # both spaces are text


# -- streaming == whole text, for any chunking ---------------------------------------------

_calls = st.builds(
    lambda city, days: json.dumps(
        {"name": "get_weather", "arguments": {"city": city, "days": days}}
    ),
    st.text(max_size=8),
    st.integers(-5, 5),
)
_xml = st.builds(
    lambda days: f"<function=get_weather>\n<parameter=days>\n{days}\n</parameter>\n</function>",
    st.sampled_from(["1", "two", "3.0"]),
)
_segments = st.lists(
    st.text(max_size=10)
    | st.sampled_from(["<think>", "</think>", "<tool_call>", "</tool_call>", "\n", "\n\n", " "])
    | st.sampled_from(["<|im_end|>", "<|im_start|>"])
    | _calls.map(lambda c: f"<tool_call>\n{c}\n</tool_call>")
    | _xml.map(lambda c: f"<tool_call>\n{c}\n</tool_call>"),
    max_size=12,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    segments=_segments,
    cuts=st.lists(st.integers(0, 10_000), max_size=30),
    starts_in_reasoning=st.booleans(),
    tools=st.booleans(),
    skip=st.booleans(),
)
def test_streaming_equals_the_whole_text_path(
    tokenizer, markers, segments, cuts, starts_in_reasoning, tools, skip
):
    chosen = markers if tools else markers.without_tool_calls()
    ids = tokenizer.encode("".join(segments))
    bounds = sorted({c % (len(ids) + 1) for c in cuts} | {0, len(ids)})
    parser = OutputParser(
        tokenizer,
        chosen,
        schemas=SCHEMAS,
        starts_in_reasoning=starts_in_reasoning,
        skip_special_tokens=skip,
        new_id=_ids_factory(),
    )
    events = [e for a, b in itertools.pairwise(bounds) for e in parser.feed(ids[a:b])]
    streamed = ParsedOutput.collect(events + parser.finish())
    whole = parse_output_text(
        tokenizer.decode(ids, skip_special_tokens=skip),
        chosen,
        schemas=SCHEMAS,
        starts_in_reasoning=starts_in_reasoning,
        new_id=_ids_factory(),
    )
    assert streamed == whole
    assert parser.tool_calls == len(whole.tool_calls)
    assert not any(isinstance(e, ContentDelta | ReasoningDelta) and not e.text for e in events)
