"""The converter's rules, on small types defined here.

Annotations are strings in this module (`from __future__ import
annotations`), which also checks that union tags are found on classes the
converter has not structured yet.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol._converter import (
    decode_json,
    encode_json,
    field,
    keep_null,
    parse,
    rest_keys,
    structure,
    unstructure,
)
from protocol.errors import MalformedJson, ValidationFailed


@attrs.frozen(kw_only=True)
class Text:
    type: Literal["text"] = "text"
    text: str


@attrs.frozen(kw_only=True)
class Image:
    type: Literal["image"] = "image"
    url: str
    detail: Literal["low", "high"] | None = None


@attrs.frozen(kw_only=True)
class Other:
    type: str
    rest: dict[str, Any] = rest_keys()


@attrs.frozen(kw_only=True)
class Easy:
    """An item whose `type` may be left out."""

    type: Literal["message"] | None = None
    role: Literal["user", "assistant"]
    content: str


@attrs.frozen(kw_only=True)
class Call:
    type: Literal["call"] = "call"
    name: str


@attrs.frozen(kw_only=True)
class Doc:
    parts: tuple[Text | Image | Other, ...] = ()
    items: tuple[Easy | Call | Other, ...] = ()
    strict_parts: tuple[Text | Image, ...] = ()
    prompt: str | tuple[str, ...] | tuple[int, ...] | tuple[tuple[int, ...], ...] = ""
    flag: bool = False
    count: int | None = None
    ratio: float | None = None
    from_: str | None = field(wire_name="from", default=None)
    finish: str | None = keep_null()


def _error(data, cls=Doc) -> str:
    with pytest.raises(ValidationFailed) as info:
        structure(data, cls)
    return info.value.message


# ---------------------------------------------------------------- primitives


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"flag": "false"}, "expected bool, got string @ $.flag"),
        ({"flag": 0}, "expected bool, got integer @ $.flag"),
        ({"count": 1.9}, "expected integer or null, got number @ $.count"),
        ({"count": True}, "expected integer or null, got bool @ $.count"),
        ({"count": "1"}, "expected integer or null, got string @ $.count"),
        ({"ratio": "0.5"}, "expected number or null, got string @ $.ratio"),
        ({"parts": {}}, "expected array, got object @ $.parts"),
        ([], "expected object, got array @ $"),
    ],
)
def test_primitives_are_strict(data, message):
    assert _error(data) == message


def test_false_is_never_true():
    assert structure({"flag": False}, Doc).flag is False
    with pytest.raises(ValidationFailed):
        structure({"flag": "false"}, Doc)


def test_ints_are_accepted_as_floats():
    ratio = structure({"ratio": 1}, Doc).ratio
    assert ratio == 1.0 and type(ratio) is float


@pytest.mark.parametrize(
    "raw", [b'{"ratio": NaN}', b'{"ratio": Infinity}', b'{"ratio": -Infinity}']
)
def test_non_finite_numbers_are_malformed_json(raw):
    with pytest.raises(MalformedJson, match="not valid JSON"):
        parse(raw, Doc)


def test_overflowing_float_is_rejected():
    with pytest.raises(ValidationFailed, match="finite number"):
        parse(b'{"ratio": 1e999}', Doc)


def test_non_finite_floats_are_not_written():
    with pytest.raises(ValueError):
        encode_json({"x": math.nan})


def test_invalid_utf8_is_malformed_json():
    with pytest.raises(MalformedJson) as info:
        decode_json(b'{"from": "\xff"}')
    assert info.value.message == "request body is not valid UTF-8 (invalid start byte at byte 10)"
    assert info.value.status == 400 and info.value.code == "malformed_json"


def test_deep_nesting_is_malformed_json():
    with pytest.raises(MalformedJson, match="nested too deeply"):
        decode_json(b"[" * 100_000 + b"]" * 100_000)


@pytest.mark.parametrize("raw", [b"", b"{", b'{"a": 1,}', b"{'a': 1}", b'{"a": 1} x'])
def test_syntax_errors_are_malformed_json(raw):
    with pytest.raises(MalformedJson, match="not valid JSON"):
        decode_json(raw)


# ------------------------------------------------------------------ output


def test_none_is_omitted_unless_kept():
    assert unstructure(Doc()) == {
        "parts": [],
        "items": [],
        "strict_parts": [],
        "prompt": "",
        "flag": False,
        "finish": None,
    }


def test_wire_names():
    doc = structure({"from": "me"}, Doc)
    assert doc.from_ == "me"
    assert unstructure(doc)["from"] == "me"


@pytest.mark.xfail(strict=True, reason="error paths use the attribute name, not the wire name")
def test_error_path_uses_the_wire_name():
    assert _error({"from": 3}) == "expected string or null, got integer @ $.from"


def test_encode_json_is_compact_utf8():
    assert encode_json(Text(text="é")) == '{"type":"text","text":"é"}'.encode()


# ---------------------------------------------------------------- unions


def test_object_members_are_told_apart_by_type():
    doc = structure({"parts": [{"type": "image", "url": "u"}, {"type": "text", "text": "t"}]}, Doc)
    assert doc.parts == (Image(url="u"), Text(text="t"))


def test_a_known_type_reports_its_own_error():
    assert _error({"parts": [{"type": "image"}]}) == "required field missing @ $.parts[0].url"
    assert (
        _error({"parts": [{"type": "image", "url": "u", "detail": "max"}]})
        == "expected one of 'low', 'high' or null, got string @ $.parts[0].detail"
    )


def test_catch_all_keeps_unknown_kinds_verbatim():
    raw = {"type": "audio", "data": "UklG", "format": {"rate": 16000}}
    doc = structure({"parts": [raw]}, Doc)
    assert doc.parts == (Other(type="audio", rest={"data": "UklG", "format": {"rate": 16000}}),)
    assert unstructure(doc)["parts"] == [raw]


def test_catch_all_never_hides_an_error_in_a_known_kind():
    # `{"type": "text"}` is claimed by Text, so its missing field is an error
    assert _error({"parts": [{"type": "text"}]}) == "required field missing @ $.parts[0].text"


def test_catch_all_needs_its_own_fields():
    assert (
        _error({"parts": [{"text": "no type"}]})
        == "expected object with type 'image' or 'text', got object @ $.parts[0]"
    )


def test_default_type_is_not_a_guess():
    assert (
        _error({"strict_parts": [{"text": "no type"}]})
        == "expected object with type 'image' or 'text', got object @ $.strict_parts[0]"
    )


def test_declared_field_wins_over_a_kept_key():
    assert unstructure(Other(type="x", rest={"type": "y", "a": 1})) == {"type": "x", "a": 1}


def test_catch_all_under_the_internal_converter():
    raw = {"type": "audio", "data": 1}
    assert structure(raw, Other, internal=True) == Other(type="audio", rest={"data": 1})
    with pytest.raises(ValidationFailed, match=r"unknown fields \(extra\)"):
        structure({"type": "text", "text": "t", "extra": 1}, Text, internal=True)


def test_optional_type_tag_may_be_absent():
    doc = structure(
        {"items": [{"role": "user", "content": "hi"}, {"type": "call", "name": "f"}]}, Doc
    )
    assert doc.items == (Easy(role="user", content="hi"), Call(name="f"))
    assert unstructure(doc)["items"][0] == {"role": "user", "content": "hi"}


def test_optional_type_tag_reports_precise_errors():
    assert _error({"items": [{"role": "user", "content": 1}]}) == (
        "expected string, got integer @ $.items[0].content"
    )
    assert _error({"items": [{"type": "message", "role": "robot", "content": "x"}]}) == (
        "expected one of 'user', 'assistant', got 'robot' @ $.items[0].role"
    )
    assert structure({"items": [{"type": "tool", "id": 1}]}, Doc).items == (
        Other(type="tool", rest={"id": 1}),
    )


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("text", "text"),
        (["a", "b"], ("a", "b")),
        ([1, 2], (1, 2)),
        ([[1], [2, 3]], ((1,), (2, 3))),
        ([], ()),
    ],
)
def test_array_members_are_told_apart_by_their_first_element(prompt, expected):
    assert structure({"prompt": prompt}, Doc).prompt == expected


def test_array_member_errors_point_at_the_element():
    assert _error({"prompt": [1, "a"]}) == "expected integer, got string @ $.prompt[1]"
    assert _error({"prompt": [[1], 2]}) == "expected array, got integer @ $.prompt[1]"


def test_wrong_shape_for_a_union():
    assert _error({"prompt": {}}) == "expected string or array, got object @ $.prompt"


def test_tuples_inside_unions_are_written_deeply():
    assert unstructure(Doc(prompt=("a",), parts=(Text(text="t"),)))["parts"] == [
        {"type": "text", "text": "t"}
    ]
    nested = {"k": (Text(text="t"),)}
    assert unstructure(nested) == {"k": [{"type": "text", "text": "t"}]}


@given(st.dictionaries(st.text().filter(lambda k: k != "type"), st.integers(), max_size=4))
def test_rest_round_trip(rest):
    value = Other(type="x-kind", rest=rest)
    assert structure(unstructure(value), Other) == value
    assert parse(encode_json(value), Other) == value
