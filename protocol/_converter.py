"""Every serialization rule of the wire protocol, in one place.

Two cattrs converters share one rule set and differ only in how they treat
unknown keys:

* `PUBLIC` — inbound requests from API clients. Unknown keys are tolerated
  (real clients send vendor extras) and dropped.
* `INTERNAL` — node API and device-worker messages between our own
  programs. Unknown keys are an error: a mismatch there is a bug.

The shared rules:

* Primitives are strict. `"false"` is not a bool, `1.9` is not an int, `True`
  is not an int, `123` is not a string; floats must be finite (ints are
  accepted for floats). Lists must be JSON arrays, objects JSON objects.
* Unions are resolved by JSON shape (string vs array vs object …); several
  object-shaped members are told apart by a `Literal` discriminator field
  such as `type`, several array-shaped ones by the shape of the first
  element (`[1, 2]` vs `["a"]` vs `[[1, 2]]`).
* Errors carry a precise path: `expected bool @ $.stream`.
* Mappings with `int` keys (token id → bias) take their keys as decimal
  strings, since JSON object keys are always strings.
* A class with a `rest_keys()` field keeps every key it does not declare
  there and writes them back on output. In a union such a class is the
  catch-all: it takes objects whose tag (`type`) no other member claims, so
  unknown item kinds survive without hiding errors in known ones.
* A `Literal[...] | None` field is a tag that may be absent (an OpenAI
  Responses message has an optional `type`); a member whose tags all agree
  with an object is chosen, else the one member that claims it by the tag
  naming the kind (`type`, else the tags all members share, e.g. `role`),
  so that member's own precise error is reported.
* Output omits fields that are `None`, unless the field is declared with
  `keep_null()` (e.g. `finish_reason` in a streaming chunk). Fields may have
  a different wire name (`wire_name=`), e.g. for Python keywords.

Types live in the other modules of this package; none of them holds a
serialization rule. This module does not know about HTTP.
"""

from __future__ import annotations

import functools
import json
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar, get_args, get_origin

import attrs
import cattrs
from cattrs.cols import homogenous_tuple_structure_factory, list_structure_factory
from cattrs.errors import ForbiddenExtraKeysError
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.v import transform_error

from protocol.errors import MalformedJson, ValidationFailed

__all__ = [
    "INTERNAL",
    "PUBLIC",
    "decode_json",
    "encode_json",
    "field",
    "keep_null",
    "parse",
    "rest_keys",
    "structure",
    "unstructure",
]

T = TypeVar("T")

_KEEP_NULL = "helexa.keep_null"
_REST = "helexa.rest"
_WIRE_NAME = "helexa.wire_name"
_NoneType = type(None)


def field(
    *, wire_name: str | None = None, keep_null: bool = False, rest: bool = False, **kwargs: Any
) -> Any:
    """An `attrs.field` with wire metadata (`wire_name`, `keep_null`, `rest`)."""
    metadata = dict(kwargs.pop("metadata", {}))
    if wire_name is not None:
        metadata[_WIRE_NAME] = wire_name
    if keep_null:
        metadata[_KEEP_NULL] = True
    if rest:
        metadata[_REST] = True
    return attrs.field(metadata=metadata, **kwargs)


def keep_null(**kwargs: Any) -> Any:
    """A field that is rendered as `null` rather than omitted when `None`."""
    kwargs.setdefault("default", None)
    return field(keep_null=True, **kwargs)


def rest_keys(**kwargs: Any) -> Any:
    """A `dict[str, Any]` field holding every key its class does not declare."""
    kwargs.setdefault("factory", dict)
    return field(rest=True, **kwargs)


# ---------------------------------------------------------------- JSON shapes


class WrongType(Exception):
    """Raised by the strict hooks; formatted as `expected X, got Y`."""

    def __init__(self, expected: str, value: Any, *, show_value: bool = False) -> None:
        got = repr(value) if show_value and isinstance(value, (str, int, float)) else None
        super().__init__(f"expected {expected}, got {got or _json_kind(value)}")


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _unwrap_newtype(tp: Any) -> Any:
    while hasattr(tp, "__supertype__"):
        tp = tp.__supertype__
    return tp


def _describe(tp: Any) -> str:
    """How a type reads in an error message."""
    tp = _unwrap_newtype(tp)
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if _is_union(tp):
        return " or ".join(dict.fromkeys(_describe(m) for m in get_args(tp)))
    names = {bool: "bool", int: "integer", float: "number", str: "string", _NoneType: "null"}
    if tp in names:
        return names[tp]
    if tp is Any:
        return "any value"
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        return "array"
    return "object"


def _accepts(tp: Any, value: Any) -> bool:
    """Whether `value`'s JSON shape fits `tp` (without checking contents)."""
    tp = _unwrap_newtype(tp)
    origin = get_origin(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in get_args(tp))
    if tp is _NoneType:
        return value is None
    if tp is bool:
        return type(value) is bool
    if tp is int:
        return type(value) is int
    if tp is float:
        return type(value) in (int, float)
    if tp is str:
        return type(value) is str
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        return type(value) is list
    return type(value) is dict


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (typing.Union, types.UnionType)


# ------------------------------------------------------------ strict hooks


def _strict_bool(value: Any, _: Any) -> bool:
    if type(value) is not bool:
        raise WrongType("bool", value)
    return value


def _strict_int(value: Any, _: Any) -> int:
    if type(value) is not int:
        raise WrongType("integer", value)
    return value


def _strict_float(value: Any, _: Any) -> float:
    if type(value) not in (int, float):
        raise WrongType("number", value)
    if not math.isfinite(value):
        raise WrongType("finite number", value)
    return float(value)


def _strict_str(value: Any, _: Any) -> str:
    if type(value) is not str:
        raise WrongType("string", value)
    return value


def _structure_any(value: Any, _: Any) -> Any:
    return value


def _literal_hook(tp: Any) -> Callable[[Any, Any], Any]:
    def structure(value: Any, _: Any) -> Any:
        if not _accepts(tp, value):
            raise WrongType(_describe(tp), value, show_value=True)
        return value

    return structure


def _literal_values(tp: Any) -> tuple[Any, ...] | None:
    """What a `Literal` field allows; `None` among them for `Literal | None`."""
    if get_origin(tp) is Literal:
        return get_args(tp)
    args = get_args(tp) if _is_union(tp) else ()
    if len(args) == 2 and _NoneType in args:
        (inner,) = (a for a in args if a is not _NoneType)
        if get_origin(inner) is Literal:
            return (*get_args(inner), None)
    return None


@functools.cache
def _discriminators(cls: type) -> dict[str, tuple[Any, ...]]:
    """`Literal`-typed fields of an attrs class, by wire name."""
    found = {}
    # Resolve string annotations (`from __future__ import annotations`) first.
    for a in attrs.fields(attrs.resolve_types(cls)):
        values = _literal_values(a.type)
        if values is not None:
            found[a.metadata.get(_WIRE_NAME, a.name)] = values
    return found


@functools.cache
def _is_catch_all(tp: Any) -> bool:
    return attrs.has(tp) and any(_REST in a.metadata for a in attrs.fields(tp))


def _tagged(members: list[Any]) -> dict[Any, dict[str, tuple[Any, ...]]]:
    return {m: tags for m in members if attrs.has(m) and (tags := _discriminators(m))}


def _tags_match(tags: dict[str, tuple[Any, ...]], value: dict) -> bool:
    if any(k in value and value[k] not in allowed for k, allowed in tags.items()):
        return False
    return any(k in value for k in tags) or all(None in allowed for allowed in tags.values())


def _kind_tags(tagged: dict[Any, dict[str, tuple[Any, ...]]]) -> set[str]:
    """What names a kind: `type` if every member has it, else the shared tags."""
    common = set.intersection(*(set(t) for t in tagged.values())) if tagged else set()
    return {"type"} if "type" in common else common


def _claimants(tagged: dict[Any, dict[str, tuple[Any, ...]]], value: dict) -> list[Any]:
    present = [k for k in _kind_tags(tagged) if k in value]
    if not present:
        return []
    return [m for m, tags in tagged.items() if all(value[k] in tags[k] for k in present)]


def _pick_object_member(members: list[Any], value: dict) -> Any | None:
    """Choose among object-shaped union members by their Literal fields."""
    if len(members) == 1:
        return members[0]
    tagged = _tagged(members)
    matching = [m for m, tags in tagged.items() if _tags_match(tags, value)]
    if not matching:
        matching = _claimants(tagged, value)
    return matching[0] if len(matching) == 1 else None


def _pick_array_member(members: list[Any], value: list) -> Any:
    """Choose among array-shaped union members by their first element."""
    if len(members) > 1 and value:
        for m in members:
            args = get_args(_unwrap_newtype(m))
            if args and _accepts(args[0], value[0]):
                return m
    return members[0]


def _union_hook_factory(conv: cattrs.Converter) -> Callable[[Any], Callable[[Any, Any], Any]]:
    def factory(tp: Any) -> Callable[[Any, Any], Any]:
        members = list(get_args(tp))

        def structure(value: Any, _: Any) -> Any:
            fits = [m for m in members if _accepts(m, value)]
            if not fits:
                raise WrongType(_describe(tp), value)
            if value is None:
                return None
            if type(value) is dict:
                member = _pick_object_member(fits, value)
            elif type(value) is list:
                member = _pick_array_member(fits, value)
            else:
                member = fits[0]
            if member is None:
                return _first_that_structures(conv, fits, value, tp)
            return conv.structure(value, member)

        return structure

    return factory


def _first_that_structures(conv: cattrs.Converter, fits: list[Any], value: dict, tp: Any) -> Any:
    """Try, in order, the members `value` may be; the catch-all last.

    A tagged member whose tags are all missing from `value` is not tried: a
    default `type` is for building values, not for guessing a kind.
    """
    tagged = _tagged(fits)
    candidates = [m for m, tags in tagged.items() if _tags_match(tags, value)]
    claimed = _claimants(tagged, value)
    candidates = candidates or claimed
    ordered = [m for m in fits if m in candidates or not (m in tagged or _is_catch_all(m))]
    if not claimed:
        ordered += [m for m in fits if _is_catch_all(m)]
    for member in ordered:
        try:
            return conv.structure(value, member)
        except Exception:  # trying members in order is the point
            continue
    raise WrongType(_expected_kinds(tagged) or _describe(tp), value)


def _expected_kinds(tagged: dict[Any, dict[str, tuple[Any, ...]]]) -> str | None:
    key = min(_kind_tags(tagged), default=None)
    if key is None:
        return None
    kinds = sorted({repr(v) for tags in tagged.values() for v in tags[key] if v is not None})
    return f"object with {key} " + " or ".join(kinds)


def _checked(kind: type, expected: str, inner: Callable[[Any, Any], Any]):
    def structure(value: Any, tp: Any) -> Any:
        if type(value) is not kind:
            raise WrongType(expected, value)
        return inner(value, tp)

    return structure


def _is_list(tp: Any) -> bool:
    return get_origin(tp) in (list, Sequence)


def _is_tuple(tp: Any) -> bool:
    args = get_args(tp)
    return get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis


def _is_mapping(tp: Any) -> bool:
    return get_origin(tp) in (dict, Mapping) or tp in (dict, Mapping)


def _int_key(key: Any) -> int:
    """JSON object keys are strings: an `int` key travels as its decimal text."""
    if type(key) is int:
        return key
    digits = key.removeprefix("-") if type(key) is str else ""
    if digits.isascii() and digits.isdecimal():
        return int(key)
    raise WrongType("integer key", key, show_value=True)


def _mapping_hook(conv: cattrs.Converter):
    def factory(tp: Any) -> Callable[[Any, Any], Any]:
        args = get_args(tp)
        value_type = args[1] if len(args) == 2 else Any
        int_keys = len(args) == 2 and _unwrap_newtype(args[0]) is int

        def structure(value: Any, _: Any) -> dict:
            if type(value) is not dict:
                raise WrongType("object", value)
            if int_keys:
                return {_int_key(k): conv.structure(v, value_type) for k, v in value.items()}
            if value_type is Any:
                return value
            return {k: conv.structure(v, value_type) for k, v in value.items()}

        return structure

    return factory


# ------------------------------------------------------------ attrs classes


def _renames(cls: type) -> dict[str, Any]:
    return {
        a.name: override(rename=a.metadata[_WIRE_NAME])
        for a in attrs.fields(cls)
        if _WIRE_NAME in a.metadata
    }


def _rest_name(cls: type) -> str | None:
    return next((a.name for a in attrs.fields(cls) if _REST in a.metadata), None)


def _gathering_rest(cls: type, rest: str, inner: Callable[[Any, Any], Any]):
    declared = frozenset(a.metadata.get(_WIRE_NAME, a.name) for a in attrs.fields(cls)) - {rest}

    def structure(value: dict, tp: Any) -> Any:
        own = {k: v for k, v in value.items() if k in declared}
        own[rest] = {k: v for k, v in value.items() if k not in declared}
        return inner(own, tp)

    return structure


def _attrs_structure_factory(conv: cattrs.Converter, forbid_extra_keys: bool):
    def factory(cls: type) -> Callable[[Any, Any], Any]:
        rest = _rest_name(cls)
        inner = make_dict_structure_fn(
            cls, conv, _cattrs_forbid_extra_keys=forbid_extra_keys and not rest, **_renames(cls)
        )
        if rest:
            inner = _gathering_rest(cls, rest, inner)
        return _checked(dict, "object", inner)

    return factory


def _attrs_unstructure_factory(conv: cattrs.Converter):
    def factory(cls: type) -> Callable[[Any], dict]:
        inner = make_dict_unstructure_fn(cls, conv, **_renames(cls))
        keep = frozenset(
            a.metadata.get(_WIRE_NAME, a.name)
            for a in attrs.fields(cls)
            if _KEEP_NULL in a.metadata
        )

        rest = _rest_name(cls)

        def unstructure(obj: Any) -> dict:
            out = {k: v for k, v in inner(obj).items() if v is not None or k in keep}
            if rest:
                for k, v in (out.pop(rest, None) or {}).items():
                    out.setdefault(k, v)  # a declared field wins over a kept key
            return out

        return unstructure

    return factory


def _make(forbid_extra_keys: bool) -> cattrs.Converter:
    conv = cattrs.Converter(detailed_validation=True, forbid_extra_keys=forbid_extra_keys)
    conv.register_structure_hook(bool, _strict_bool)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(Any, _structure_any)
    conv.register_structure_hook_factory(lambda t: get_origin(t) is Literal, _literal_hook)
    conv.register_structure_hook_factory(_is_union, _union_hook_factory(conv))
    conv.register_structure_hook_factory(
        _is_list, lambda t: _checked(list, "array", list_structure_factory(t, conv))
    )
    conv.register_structure_hook_factory(
        _is_tuple, lambda t: _checked(list, "array", homogenous_tuple_structure_factory(t, conv))
    )
    conv.register_structure_hook_factory(_is_mapping, _mapping_hook(conv))
    conv.register_structure_hook_factory(
        attrs.has, _attrs_structure_factory(conv, forbid_extra_keys)
    )
    conv.register_unstructure_hook_factory(attrs.has, _attrs_unstructure_factory(conv))
    # Deep: a tuple reached through a union is dispatched on its runtime type.
    conv.register_unstructure_hook(tuple, lambda t: [conv.unstructure(x) for x in t])
    return conv


PUBLIC = _make(forbid_extra_keys=False)
INTERNAL = _make(forbid_extra_keys=True)


# ---------------------------------------------------------------- entry points


def _format(exc: BaseException, tp: Any) -> str:
    if isinstance(exc, WrongType):
        return str(exc)
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, ForbiddenExtraKeysError):
        return f"unknown fields ({', '.join(sorted(exc.extra_fields))})"
    return f"invalid value ({exc})"


def _validation_error(exc: Exception) -> ValidationFailed:
    messages = transform_error(exc, path="$", format_exception=_format)
    first = messages[0] if messages else "invalid request body"
    message, _, path = first.rpartition(" @ ")
    if not message:
        message, path = first, "$"
    param = path.removeprefix("$").removeprefix(".") or None
    return ValidationFailed("; ".join(messages), param=param, extra={"errors": messages})


def structure(data: Any, cls: type[T], *, internal: bool = False) -> T:
    """Build `cls` from decoded JSON, or raise `ValidationFailed` with the path."""
    conv = INTERNAL if internal else PUBLIC
    try:
        return conv.structure(data, cls)
    except (cattrs.BaseValidationError, WrongType, KeyError, ForbiddenExtraKeysError) as exc:
        raise _validation_error(exc) from exc


def unstructure(obj: Any) -> Any:
    """Render a protocol value as JSON-ready data (`None` fields omitted)."""
    return PUBLIC.unstructure(obj)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_json(raw: bytes | bytearray | str) -> Any:
    """Parse a request body; `MalformedJson` for bad UTF-8, syntax, NaN, depth."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
        return json.loads(text, parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise MalformedJson(
            f"request body is not valid UTF-8 ({exc.reason} at byte {exc.start})"
        ) from exc
    except RecursionError as exc:
        raise MalformedJson("request body is nested too deeply") from exc
    except ValueError as exc:
        raise MalformedJson(f"request body is not valid JSON: {exc}") from exc


def encode_json(data: Any) -> bytes:
    """Compact UTF-8 JSON for protocol values or plain data."""
    if attrs.has(type(data)):
        data = unstructure(data)
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def parse(raw: bytes | bytearray | str, cls: type[T], *, internal: bool = False) -> T:
    """`decode_json` then `structure`: the one call an HTTP edge needs."""
    return structure(decode_json(raw), cls, internal=internal)
