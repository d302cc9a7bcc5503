"""Responses requests become chat requests the neuron's pipeline can serve."""

from __future__ import annotations

import pytest

from protocol import parse, unstructure
from protocol.errors import InvalidRequest
from protocol.responses import ResponsesRequest
from protocol.translate_responses import responses_to_chat

IMAGE = "data:image/png;base64,AA"


def translate(body: dict) -> dict:
    from protocol import encode_json

    return unstructure(responses_to_chat(parse(encode_json(body), ResponsesRequest)))


def test_string_input_and_instructions():
    out = translate({"model": "m", "input": "hi", "instructions": "be brief",
                     "max_output_tokens": 7, "stream": True})  # fmt: skip
    assert out["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    assert out["max_completion_tokens"] == 7 and out["stream"] is True


def test_items_tools_and_dropped_kinds():
    out = translate({
        "model": "m",
        "input": [
            {"role": "developer", "content": "rules"},
            {"role": "user", "content": [{"type": "input_text", "text": "hi"},
                                         {"type": "input_image", "image_url": IMAGE}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"a\":1}"},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
            {"type": "item_we_do_not_know", "x": 1},
        ],
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"},
                   "strict": True},
                  {"type": "web_search_preview"}],
        "tool_choice": {"type": "function", "name": "f"},
    })  # fmt: skip
    assert out["messages"] == [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": [
            {"type": "text", "text": "hi"},
            {"type": "image_url", "image_url": {"url": IMAGE}},
        ]},
        {"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
        ]},
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
    ]  # fmt: skip
    assert out["tools"] == [
        {"type": "function",
         "function": {"name": "f", "parameters": {"type": "object"}, "strict": True}}
    ]  # fmt: skip
    assert out["tool_choice"] == {"type": "function", "function": {"name": "f"}}


def test_previous_response_id_is_refused():
    with pytest.raises(InvalidRequest) as refused:
        translate({"model": "m", "input": "hi", "previous_response_id": "resp_1"})
    assert refused.value.code == "chained_conversation_not_supported"
    assert refused.value.param == "previous_response_id"


def test_output_text_logprobs_include_becomes_chat_logprobs():
    include = {"include": ["message.output_text.logprobs"], "top_logprobs": 3}
    out = translate({"model": "m", "input": "hi", **include})
    assert out["logprobs"] is True and out["top_logprobs"] == 3
    out = translate({"model": "m", "input": "hi", "top_logprobs": 3, "include": ["reasoning"]})
    assert "logprobs" not in out and "top_logprobs" not in out
