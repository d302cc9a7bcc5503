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
  such as `type`.
* Errors carry a precise path: `expected bool @ $.stream`.
* Output omits fields that are `None`, unless the field is declared with
  `keep_null()` (e.g. `finish_reason` in a streaming chunk). Fields may have
  a different wire name (`wire_name=`), e.g. for Python keywords.

Types live in the other modules of this package; none of them holds a
serialization rule. This module does not know about HTTP.
"""

from __future__ import annotations

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
    "structure",
    "unstructure",
]

T = TypeVar("T")

_KEEP_NULL = "helexa.keep_null"
_WIRE_NAME = "helexa.wire_name"
_NoneType = type(None)


def field(*, wire_name: str | None = None, keep_null: bool = False, **kwargs: Any) -> Any:
    """An `attrs.field` with wire metadata (`wire_name`, `keep_null`)."""
    metadata = dict(kwargs.pop("metadata", {}))
    if wire_name is not None:
        metadata[_WIRE_NAME] = wire_name
    if keep_null:
        metadata[_KEEP_NULL] = True
    return attrs.field(metadata=metadata, **kwargs)


def keep_null(**kwargs: Any) -> Any:
    """A field that is rendered as `null` rather than omitted when `None`."""
    kwargs.setdefault("default", None)
    return field(keep_null=True, **kwargs)


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


def _discriminators(cls: type) -> dict[str, tuple[Any, ...]]:
    """`Literal`-typed fields of an attrs class, by wire name."""
    found = {}
    for a in attrs.fields(cls):
        if get_origin(a.type) is Literal:
            found[a.metadata.get(_WIRE_NAME, a.name)] = get_args(a.type)
    return found


def _pick_object_member(members: list[Any], value: dict) -> Any | None:
    """Choose among object-shaped union members by their Literal fields."""
    if len(members) == 1:
        return members[0]
    matching = []
    for m in members:
        if attrs.has(m):
            tags = _discriminators(m)
            if (
                tags
                and all(value.get(k) in v for k, v in tags.items() if k in value)
                and any(k in value for k in tags)
            ):
                matching.append(m)
    return matching[0] if len(matching) == 1 else None


def _union_hook_factory(conv: cattrs.Converter) -> Callable[[Any], Callable[[Any, Any], Any]]:
    def factory(tp: Any) -> Callable[[Any, Any], Any]:
        members = list(get_args(tp))

        def structure(value: Any, _: Any) -> Any:
            fits = [m for m in members if _accepts(m, value)]
            if not fits:
                raise WrongType(_describe(tp), value)
            if value is None:
                return None
            member = fits[0] if type(value) is not dict else _pick_object_member(fits, value)
            if member is None:
                return _first_that_structures(conv, fits, value, tp)
            return conv.structure(value, member)

        return structure

    return factory


def _first_that_structures(conv: cattrs.Converter, fits: list[Any], value: Any, tp: Any) -> Any:
    for member in fits:
        try:
            return conv.structure(value, member)
        except Exception:  # trying members in order is the point
            continue
    tags = sorted({t for m in fits if attrs.has(m) for v in _discriminators(m).values() for t in v})
    if tags:
        raise WrongType("object with type " + " or ".join(repr(t) for t in tags), value)
    raise WrongType(_describe(tp), value)


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


def _mapping_hook(conv: cattrs.Converter):
    def factory(tp: Any) -> Callable[[Any, Any], Any]:
        args = get_args(tp)
        value_type = args[1] if len(args) == 2 else Any

        def structure(value: Any, _: Any) -> dict:
            if type(value) is not dict:
                raise WrongType("object", value)
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


def _attrs_structure_factory(conv: cattrs.Converter, forbid_extra_keys: bool):
    def factory(cls: type) -> Callable[[Any, Any], Any]:
        inner = make_dict_structure_fn(
            cls, conv, _cattrs_forbid_extra_keys=forbid_extra_keys, **_renames(cls)
        )
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

        def unstructure(obj: Any) -> dict:
            return {k: v for k, v in inner(obj).items() if v is not None or k in keep}

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
    conv.register_unstructure_hook(tuple, list)
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
