"""Hypothesis strategies for protocol wire types, derived from their annotations.

`wire_values(SomeType)` draws values of any attrs wire class (or union,
tuple, mapping, Literal, NewType, JSON `Any`) as the converter sees them.
A catch-all class (one with a `rest_keys()` field) gets a `type` no other
member of its union claims (`x-…`) and rest keys it does not declare, so
that what is drawn is also what parsing its JSON gives back.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Any, Literal, get_args, get_origin

import attrs
from hypothesis import strategies as st

from protocol._converter import _REST, _WIRE_NAME

__all__ = ["json_values", "wire_classes", "wire_values"]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_texts = st.text(max_size=12)


def wire_classes(*modules: types.ModuleType) -> list[type]:
    """Every attrs class a module exports."""
    return [obj for m in modules for name in m.__all__ if attrs.has(obj := getattr(m, name))]


def wire_values(tp: Any) -> st.SearchStrategy[Any]:
    return _strategy(tp)


@functools.cache
def _strategy(tp: Any) -> st.SearchStrategy[Any]:
    while hasattr(tp, "__supertype__"):  # NewType
        tp = tp.__supertype__
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return json_values
    if origin is Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(_strategy(a) for a in args))
    if tp is type(None):
        return st.none()
    simple = {
        bool: st.booleans(),
        int: st.integers(),
        float: st.floats(allow_nan=False, allow_infinity=False),
        str: _texts,
    }
    if tp in simple:
        return simple[tp]
    if origin is tuple:
        return st.lists(_strategy(args[0]), max_size=3).map(tuple)
    if origin is dict:
        return st.dictionaries(_strategy(args[0]), _strategy(args[1]), max_size=3)
    if attrs.has(tp):
        return _attrs_strategy(tp)
    raise TypeError(f"no strategy for {tp!r}")


def _attrs_strategy(cls: type) -> st.SearchStrategy[Any]:
    fields = attrs.fields(attrs.resolve_types(cls))
    catch_all = any(_REST in a.metadata for a in fields)
    declared = {a.metadata.get(_WIRE_NAME, a.name) for a in fields}
    kwargs = {}
    for a in fields:
        if _REST in a.metadata:
            keys = _texts.filter(lambda k: k not in declared)
            kwargs[a.name] = st.dictionaries(keys, json_values, max_size=3)
        elif catch_all and a.name == "type":
            kwargs[a.name] = _texts.map(lambda s: "x-" + s)  # a kind nobody else claims
        else:
            kwargs[a.name] = st.deferred(lambda t=a.type: _strategy(t))
    return st.builds(cls, **kwargs)
