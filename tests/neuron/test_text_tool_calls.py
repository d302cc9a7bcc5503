"""Tool-call bodies: Hermes/Qwen JSON and Qwen-XML with schema coercion."""

from __future__ import annotations

import json
import re

import pytest

from neuron.text.tool_calls import ParsedCall, ToolSchemas, new_call_id, parse_tool_call

SCHEMAS = ToolSchemas.from_tools(
    [
        {
            "type": "function",
            "function": {
                "name": "search",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "query": {"type": "string"},
                        "limit": {"type": "integer"},
                        "ratio": {"type": "number"},
                        "exact": {"type": "boolean"},
                        "filters": {"type": "object"},
                        "tags": {"type": "array"},
                        "maybe": {"type": ["integer", "null"]},
                        "free": {},
                    },
                },
            },
        },
        {"type": "function", "function": {"name": "noargs"}},
    ]
)


def _args(call: ParsedCall | None) -> dict:
    assert call is not None
    return json.loads(call.arguments_json)


# -- JSON -----------------------------------------------------------------------------


def test_hermes_json():
    body = '\n{"name": "search", "arguments": {"query": "cats", "limit": 3}}\n'
    assert parse_tool_call(body) == ParsedCall("search", '{"query":"cats","limit":3}')


def test_json_keeps_unicode_and_accepts_parameters_and_string_arguments():
    assert parse_tool_call('{"name": "f", "parameters": {"city": "Zürich"}}') == ParsedCall(
        "f", '{"city":"Zürich"}'
    )
    assert _args(parse_tool_call('{"name": "f", "arguments": "{\\"a\\": [1]}"}')) == {"a": [1]}
    assert _args(parse_tool_call('{"name": "f"}')) == {}


@pytest.mark.parametrize(
    "body",
    [
        "",
        "not json",
        '{"name": "f", "arguments": {"a": 1}',  # truncated
        '{"arguments": {}}',  # no name
        '{"name": "", "arguments": {}}',
        '{"name": 3, "arguments": {}}',
        '{"name": "f", "arguments": [1, 2]}',  # not an object
        '{"name": "f", "arguments": "plain words"}',
        '{"name": "f", "arguments": {"x": NaN}}',  # not JSON, would not re-serialise
        '["name", "f"]',
    ],
)
def test_unparseable_bodies(body):
    assert parse_tool_call(body, SCHEMAS) is None


# -- Qwen-XML ---------------------------------------------------------------------------


def test_qwen_xml_with_schema_coercion():
    body = (
        "\n<function=search>\n"
        "<parameter=query>\nred cats\n</parameter>\n"
        "<parameter=limit>\n5\n</parameter>\n"
        "<parameter=ratio>\n0.5\n</parameter>\n"
        "<parameter=exact>\nTrue\n</parameter>\n"
        '<parameter=filters>\n{"colour": "red"}\n</parameter>\n'
        "<parameter=tags>\n[1, 2]\n</parameter>\n"
        "<parameter=maybe>\nnull\n</parameter>\n"
        "<parameter=free>\n[true]\n</parameter>\n"
        "</function>\n"
    )
    call = parse_tool_call(body, SCHEMAS)
    assert call is not None and call.name == "search"
    assert _args(call) == {
        "query": "red cats",
        "limit": 5,
        "ratio": 0.5,
        "exact": True,
        "filters": {"colour": "red"},
        "tags": [1, 2],
        "maybe": None,
        "free": [True],
    }


def test_xml_strings_stay_strings_and_keep_inner_newlines():
    body = "<function=search><parameter=query>\n42\nand more\n\n</parameter></function>"
    assert _args(parse_tool_call(body, SCHEMAS)) == {"query": "42\nand more\n"}


@pytest.mark.parametrize(
    ("param", "value", "expected"),
    [
        ("limit", "five", "five"),  # failed coercion keeps the string
        ("limit", "3.0", 3),
        ("limit", "3.5", "3.5"),
        ("limit", "true", "true"),  # JSON true is no integer
        ("ratio", "1e400", "1e400"),  # would overflow to infinity
        ("exact", "yes", "yes"),
        ("filters", "[1]", "[1]"),
        ("free", "plain text", "plain text"),  # no type: JSON sniff, else string
        ("free", "7", 7),
        ("unknown_param", '{"a": 1}', {"a": 1}),
    ],
)
def test_xml_coercion_edges(param, value, expected):
    body = f"<function=search><parameter={param}>{value}</parameter></function>"
    assert _args(parse_tool_call(body, SCHEMAS)) == {param: expected}


def test_xml_tolerates_missing_closing_tags():
    body = "<function=search>\n<parameter=query>\na\n<parameter=limit>\n2\n"
    assert _args(parse_tool_call(body, SCHEMAS)) == {"query": "a", "limit": 2}


def test_xml_without_parameters_and_without_schemas():
    assert parse_tool_call("<function=noargs>\n</function>") == ParsedCall("noargs", "{}")
    body = "<function=other><parameter=n>1</parameter></function>"
    assert _args(parse_tool_call(body)) == {"n": 1}


@pytest.mark.parametrize(
    "body",
    ["text before <function=search></function>", "<function=>x</function>", "<function>"],
)
def test_unparseable_xml(body):
    assert parse_tool_call(body, SCHEMAS) is None


def test_schemas_from_odd_tools():
    schemas = ToolSchemas.from_tools([{"type": "function", "function": {"parameters": {}}}, {}])
    assert schemas.properties == {}
    assert ToolSchemas.from_tools(None).param_type("f", "x") is None


def test_call_ids_are_random_hex():
    ids = {new_call_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", i) for i in ids)
