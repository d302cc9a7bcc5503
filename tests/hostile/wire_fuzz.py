"""Hypothesis strategies for hostile request bodies, derived from the OpenAPI description.

`plausible(schema, components)` draws JSON that follows a schema (the one
`protocol.openapi` derives from the wire types) closely enough to get past
the first checks; `hostile_body(...)` then spoils it — a required field
dropped, a field of the wrong type, unknown fields added, a value deep inside
replaced by arbitrary JSON, `NaN`/`Infinity` literals, a top level that is
not an object, bytes that are not UTF-8 or not JSON at all. `hints` replace
the draw for named properties (e.g. `model`) so that a share of the bodies
reach the code behind the model lookup.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from hypothesis import strategies as st

MAX_DEPTH = 5

Hints = Mapping[str, st.SearchStrategy[Any]]
NO_HINTS: Hints = MappingProxyType({})

# Arbitrary JSON, including what strict parsing must refuse: huge and negative
# numbers, non-finite floats (encoded as the JS literals), odd strings.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=24),
    st.sampled_from(["", "\x00", "../../etc/passwd", "/etc/passwd", "data:,", "☃" * 8]),
)
any_json = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


def _resolve(schema: Mapping[str, Any], components: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def plausible(
    schema: Mapping[str, Any],
    components: Mapping[str, Any],
    hints: Hints = NO_HINTS,
    depth: int = 0,
) -> st.SearchStrategy[Any]:
    """JSON shaped like `schema` (bounded in depth and size)."""
    schema = _resolve(schema, components)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema:
        members = schema["anyOf"]
        if depth >= MAX_DEPTH:  # prefer the shallow alternatives
            members = [m for m in members if "$ref" not in m and m.get("type") != "array"]
            members = members or schema["anyOf"][:1]
        return st.one_of([plausible(m, components, hints, depth + 1) for m in members])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([plausible({**schema, "type": k}, components, hints, depth)
                          for k in kind])  # fmt: skip
    if kind == "object" or "properties" in schema:
        return _object(schema, components, hints, depth)
    if kind == "array":
        size = 0 if depth >= MAX_DEPTH else 3
        return st.lists(plausible(schema.get("items", {}), components, hints, depth + 1),
                        max_size=size).map(list)  # fmt: skip
    return _SCALAR_DRAWS.get(kind, any_json)


_SCALAR_DRAWS = {
    "string": st.text(max_size=16),
    "integer": st.integers(min_value=-3, max_value=64) | st.integers(),
    "number": st.floats(min_value=-3, max_value=3) | st.floats(allow_nan=False),
    "boolean": st.booleans(),
    "null": st.none(),
}


def _object(schema, components, hints, depth) -> st.SearchStrategy[dict]:
    properties = schema.get("properties")
    if properties is None:  # a mapping
        values = schema.get("additionalProperties")
        value = plausible(values, components, hints, depth + 1) if isinstance(values, dict) \
            else any_json  # fmt: skip
        keys = st.integers(-5, 5000).map(str) if "propertyNames" in schema else st.text(max_size=8)
        return st.dictionaries(keys, value, max_size=0 if depth >= MAX_DEPTH else 3)
    required = set(schema.get("required", ()))

    def draw(name: str, sub: Mapping[str, Any]) -> st.SearchStrategy[Any]:
        if name in hints:
            return hints[name]
        return plausible(sub, components, hints, depth + 1)

    fixed = {n: draw(n, s) for n, s in properties.items() if n in required}
    optional = {} if depth >= MAX_DEPTH else {
        n: draw(n, s) for n, s in properties.items() if n not in required
    }  # fmt: skip
    return st.fixed_dictionaries(fixed, optional=optional)


# -- spoiling -------------------------------------------------------------------------------


@st.composite
def spoiled(draw: st.DrawFn, body: Any) -> Any:
    """`body` with one thing made wrong somewhere (or several extras added)."""
    path = draw(_a_path(body))
    how = draw(st.sampled_from(["replace", "drop", "extra", "wrong_type"]))
    return _apply(body, path, how, draw)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(value, dict):
        for key, sub in value.items():
            found += _paths(sub, (*prefix, key))
    elif isinstance(value, list):
        for index, sub in enumerate(value):
            found += _paths(sub, (*prefix, index))
    return found


def _a_path(body: Any) -> st.SearchStrategy[tuple]:
    return st.sampled_from(_paths(body))


def _apply(body: Any, path: tuple, how: str, draw: st.DrawFn) -> Any:
    if not path:
        if how == "extra" and isinstance(body, dict):
            return {**body, **draw(st.dictionaries(st.text(max_size=12), any_json, max_size=4))}
        return draw(any_json)
    head, rest = path[0], path[1:]
    copy = dict(body) if isinstance(body, dict) else list(body)
    if rest:
        copy[head] = _apply(copy[head], rest, how, draw)
    elif how == "drop":
        del copy[head]
    elif how == "wrong_type":
        copy[head] = draw(any_json.filter(lambda v, old=copy[head]: type(v) is not type(old)))
    else:
        copy[head] = draw(any_json)
    return copy


def encode(value: Any) -> bytes:
    """JSON text; non-finite floats come out as the JS literals strict parsing refuses."""
    return json.dumps(tame(value), allow_nan=True).encode()


TOKEN_CAPS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def tame(value: Any) -> Any:
    """Cap a valid token budget at a few tokens: a fuzzed body that happens to be valid
    must not generate thousands (absurd budgets have their own tests)."""
    if isinstance(value, dict):
        capped = {k: 4 for k in TOKEN_CAPS if type(value.get(k)) is int and value[k] > 4}
        return {**value, **capped}
    return value


raw_junk = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64).map(str.encode),
    st.sampled_from([b"", b"{", b"[" * 5000, b'{"model": ', b"\xff\xfe\x00{}", b"null", b"1e999"]),
)


def hostile_body(
    schema: Mapping[str, Any], components: Mapping[str, Any], hints: Hints = NO_HINTS
) -> st.SearchStrategy[bytes]:
    """Request bodies for a route: mostly spoiled plausible JSON, some valid, some junk."""
    base = plausible(schema, components, hints)
    return st.one_of(
        base.flatmap(spoiled).map(encode),
        base.flatmap(spoiled).flatmap(spoiled).map(encode),
        base.map(encode),
        any_json.map(encode),
        raw_junk,
    )
