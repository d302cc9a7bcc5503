"""Parse the body of one `<tool_call>…</tool_call>` block into a name and JSON arguments.

Two body formats, tried in order:

* Hermes / Qwen JSON: `{"name": ..., "arguments": {...}}` (`parameters` is taken
  for `arguments`; arguments given as a JSON string are unwrapped). Arguments
  must be a JSON object.
* Qwen-XML (Qwen3-Coder): `<function=NAME><parameter=KEY>VALUE</parameter>…
  </function>`. One newline on each side of a value is markup, not value. Each
  value is coerced by the request's tool JSON schema: string as is;
  integer/number/boolean/null parsed; object/array as JSON; an unknown or
  missing type is parsed as JSON if it is JSON, else kept as a string; a
  failed coercion keeps the string.

Arguments are re-serialised compactly (`{"city":"Paris"}`), as OpenAI sends them.
A body that fits neither format yields None; the caller shows it as text.

Not for: finding blocks in a stream (`neuron.text.output`).
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

__all__ = ["ParsedCall", "ToolSchemas", "new_call_id", "parse_tool_call"]

_FUNCTION = re.compile(r"<function=([^>\n]+)>(.*?)(?:</function>|$)", re.DOTALL)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>(.*?)(?:</parameter>|(?=<parameter=)|$)", re.DOTALL)
_NO_VALUE = object()


@attrs.frozen
class ParsedCall:
    name: str
    arguments_json: str  # a JSON object, compact


@attrs.frozen
class ToolSchemas:
    """Each request tool's parameter schemas: name → {param → JSON schema}."""

    properties: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)

    @classmethod
    def from_tools(cls, tools: Sequence[Mapping[str, Any]] | None) -> ToolSchemas:
        """From template-ready tool dicts (`neuron.text.messages.chat_tools`)."""
        found = {}
        for tool in tools or ():
            function = tool.get("function") or {}
            props = (function.get("parameters") or {}).get("properties")
            if isinstance(function.get("name"), str):
                found[function["name"]] = props if isinstance(props, Mapping) else {}
        return cls(found)

    def param_type(self, function: str, param: str) -> object:
        schema = self.properties.get(function, {}).get(param)
        return schema.get("type") if isinstance(schema, Mapping) else None


def new_call_id() -> str:
    """`call_<24 hex>`: random, so ids never collide across requests or nodes."""
    return f"call_{secrets.token_hex(12)}"


def parse_tool_call(body: str, schemas: ToolSchemas | None = None) -> ParsedCall | None:
    return _parse_json(body) or _parse_xml(body, schemas or ToolSchemas())


def _dump(arguments: Mapping[str, Any]) -> str:
    return json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))


# -- Hermes / Qwen JSON ------------------------------------------------------------


def _parse_json(body: str) -> ParsedCall | None:
    call = _json_or(body, None)
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
        return None
    arguments = call.get("arguments", call.get("parameters", {}))
    if isinstance(arguments, str):
        arguments = _json_or(arguments, None)
    if not isinstance(arguments, dict):
        return None
    return ParsedCall(call["name"], _dump(arguments))


# -- Qwen-XML ------------------------------------------------------------------------


def _parse_xml(body: str, schemas: ToolSchemas) -> ParsedCall | None:
    match = _FUNCTION.search(body)
    if match is None or body[: match.start()].strip():
        return None
    name = match.group(1).strip()
    if not name:
        return None
    arguments = {
        key.strip(): _coerce(_unwrap(value), schemas.param_type(name, key.strip()))
        for key, value in _PARAMETER.findall(match.group(2))
    }
    return ParsedCall(name, _dump(arguments))


def _unwrap(value: str) -> str:
    value = value.removeprefix("\n")
    return value.removesuffix("\n")


def _coerce(value: str, schema_type: object) -> Any:
    types = schema_type if isinstance(schema_type, list) else [schema_type]
    for kind in types:
        coerced = _coerce_one(value, kind)
        if coerced is not _NO_VALUE:
            return coerced
    return value


def _coerce_one(value: str, kind: object) -> Any:
    if kind == "string":
        return value
    if kind == "boolean":
        return {"true": True, "false": False}.get(value.strip().lower(), _NO_VALUE)
    if kind in ("integer", "number", "null", "object", "array"):
        parsed = _json_or(value.strip(), _NO_VALUE)
        if kind == "integer" and isinstance(parsed, float) and parsed.is_integer():
            parsed = int(parsed)
        return parsed if _is_kind(parsed, kind) else _NO_VALUE
    return _json_or(value.strip(), value)  # no usable schema: sniff JSON


def _is_kind(value: Any, kind: object) -> bool:
    if isinstance(value, bool):
        return False  # booleans are handled apart; JSON true is no integer
    if kind == "integer":
        return isinstance(value, int)
    if kind == "number":
        return isinstance(value, int | float) and math.isfinite(value)
    expected = {"null": type(None), "object": dict, "array": list}.get(str(kind))
    return expected is not None and isinstance(value, expected)


def _json_or(text: str, default: Any) -> Any:
    """Strict JSON (no NaN/Infinity, which would not survive re-serialising), else default."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except ValueError:
        return default


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} overflows a double")
    return value
