"""Every public wire type survives unstructure → structure and JSON bytes.

Also: what we write is exactly what we declare (the strict `INTERNAL`
converter, which refuses unknown keys, reads it back), and `None` never
reaches the wire except in fields declared `keep_null()`.
"""

from __future__ import annotations

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wire_strategies import wire_classes, wire_values

from protocol import anthropic, completions, models, openai, responses
from protocol._converter import (
    _KEEP_NULL,
    _WIRE_NAME,
    decode_json,
    encode_json,
    parse,
    structure,
    unstructure,
)

CLASSES = wire_classes(openai, completions, models, responses, anthropic)


def _id(cls: type) -> str:
    return f"{cls.__module__.rpartition('.')[2]}.{cls.__name__}"


def test_every_module_is_covered():
    assert len(CLASSES) > 100
    assert len({_id(c) for c in CLASSES}) == len(CLASSES)


@pytest.mark.parametrize("cls", CLASSES, ids=_id)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip(cls, data):
    value = data.draw(wire_values(cls))
    assert structure(unstructure(value), cls) == value
    assert parse(encode_json(value), cls) == value
    assert structure(decode_json(encode_json(value)), cls, internal=True) == value
    _assert_no_stray_nulls(value, unstructure(value))


def _assert_no_stray_nulls(value, wire):
    """`None` only in keep_null fields, recursively."""
    if attrs.has(type(value)):
        for a in attrs.fields(type(value)):
            inner = getattr(value, a.name)
            key = a.metadata.get(_WIRE_NAME, a.name)
            if inner is None:
                assert (key in wire) == (_KEEP_NULL in a.metadata), key
            elif key in wire:
                _assert_no_stray_nulls(inner, wire[key])
    elif isinstance(value, tuple):
        for item, raw in zip(value, wire, strict=True):
            _assert_no_stray_nulls(item, raw)
