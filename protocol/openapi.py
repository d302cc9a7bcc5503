"""OpenAPI 3.1 descriptions derived from the wire types and the converter's rules.

`schema_for` turns a protocol type into JSON Schema exactly as
`protocol._converter` reads it: field names on the wire (`wire_name`),
required fields (no default), `Literal` tags as `enum`s, unions as `anyOf`
(a tagged member needs its tag there even when the tag has a default: the
converter never guesses a kind), ids and bodies no daemon accepts empty with
`minLength`/`minItems` (`NON_EMPTY`), the kinds no daemon serves left out of
their unions (`UNSERVED`), an event stream as its SSE framing (`sse_schema`),
tuples and lists as arrays, `int`-keyed mappings as objects whose keys are
decimal strings, floats as (finite) numbers, and unknown keys tolerated on
public bodies but refused on internal ones (`additionalProperties`). Each
attrs class becomes one component, named `<module>.<Class>`
(`openai.ChatCompletionRequest`), so the same name in two wires never clashes.

`document` assembles a whole description from a list of `Route`s. The routes
themselves belong to the daemons (`cortex.openapi`, `neuron.openapi`): this
module knows types, never a route.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args, get_origin

import attrs

from protocol import anthropic, completions, node, openai, responses
from protocol._converter import _discriminators, _is_catch_all

__all__ = ["ERROR_BODIES", "NON_EMPTY", "SSE", "UNSERVED", "Body", "Route", "document",
           "schema_for", "sse_schema"]  # fmt: skip

_NoneType = type(None)
# The converter's field metadata (protocol._converter.field).
_WIRE_NAME = "helexa.wire_name"
_REST = "helexa.rest"

ErrorDialect = Literal["openai", "anthropic", "flat"]

# What an error body looks like in each dialect (protocol.errors renders them).
ERROR_BODIES: dict[str, type] = {
    "openai": openai.ErrorResponse,
    "anthropic": anthropic.ErrorResponse,
    "flat": node.ErrorBody,
}


@attrs.frozen
class Body:
    """One media type of a request or response: a protocol type, or a bare schema
    for bodies with no protocol type (a JSON object the daemon builds)."""

    type: Any = None
    schema: Mapping[str, Any] | None = None
    media_type: str = "application/json"
    internal: bool = False  # read by the INTERNAL converter: unknown keys refused


@attrs.frozen
class Route:
    """One operation: method, path (`{name}` parameters), bodies and error dialect."""

    method: str
    path: str
    summary: str
    request: Body | None = None
    responses: Sequence[Body] = ()  # the 200 answer's media types
    errors: ErrorDialect = "openai"
    error_statuses: tuple[int, ...] = (400, 404, 413, 415, 500, 503)
    tags: tuple[str, ...] = ()


class _Components:
    """The component schemas collected while describing a document."""

    def __init__(self) -> None:
        self.schemas: dict[str, dict[str, Any]] = {}
        self.responses: dict[str, dict[str, Any]] = {}
        self._names: dict[tuple[type, bool, bool], str] = {}

    def error_response(self, dialect: str) -> dict[str, Any]:
        """A `$ref` to the shared error response of `dialect`."""
        name = f"{dialect}.Error"
        if name not in self.responses:
            schema = schema_for(ERROR_BODIES[dialect], self)
            self.responses[name] = {
                "description": f"an error in the {dialect} envelope",
                "content": {"application/json": {"schema": schema}},
            }
        return {"$ref": f"#/components/responses/{name}"}

    def ref(self, cls: type, internal: bool, tagged: bool = False) -> dict[str, Any]:
        """`cls`'s component; `tagged`: as a union member, its tags required."""
        key = (cls, internal, tagged)
        if key not in self._names:
            name = _component_name(cls) + (".strict" if internal else "")
            name += ".tagged" if tagged else ""
            self._names[key] = name
            self.schemas[name] = {}  # reserved first: classes may refer to themselves
            self.schemas[name] = _object_schema(cls, self, internal, tagged)
        return {"$ref": f"#/components/schemas/{self._names[key]}"}


def _component_name(cls: type) -> str:
    module = cls.__module__.removeprefix("protocol.")
    return f"{module}.{cls.__qualname__}"


# Values every daemon refuses when empty (a 400 or 404, never an answer): ids by
# NewType name, fields by (class, wire name).
NON_EMPTY_IDS = frozenset({"ModelId"})
NON_EMPTY: frozenset[tuple[type, str]] = frozenset({
    (openai.ChatCompletionRequest, "messages"), (anthropic.MessagesRequest, "messages"),
    (anthropic.CountTokensRequest, "messages"), (completions.CompletionRequest, "prompt"),
})  # fmt: skip


# What the types read but no daemon serves (a 400): union members (no Files API),
# and fields that must be null (no conversation state is kept). JSON response
# formats are served (constrained decoding, neuron.text.constraints).
UNSERVED = frozenset({anthropic.FileSource})
UNSERVED_FIELDS = frozenset({(responses.ResponsesRequest, "previous_response_id")})


def schema_for(tp: Any, components: _Components | None = None, internal: bool = False) -> dict:
    """The JSON Schema of `tp` as the converter reads it; attrs classes become `$ref`s
    into `components` (a fresh, discarded set when none is given)."""
    components = components if components is not None else _Components()
    if getattr(tp, "__name__", None) in NON_EMPTY_IDS and hasattr(tp, "__supertype__"):
        return _non_empty(schema_for(tp.__supertype__, components, internal))
    while hasattr(tp, "__supertype__"):  # NewType
        tp = tp.__supertype__
    if attrs.has(tp):
        return components.ref(tp, internal)
    origin = get_origin(tp)
    if origin is Literal:
        values = list(get_args(tp))
        return {"const": values[0]} if len(values) == 1 else {"enum": values}
    if origin in (typing.Union, types.UnionType):
        members = get_args(tp)
        return {"anyOf": [_member(m, members, components, internal)
                          for m in members if m not in UNSERVED]}  # fmt: skip
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        args = get_args(tp)
        items = schema_for(args[0], components, internal) if args else {}
        return {"type": "array", "items": items}
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return _mapping_schema(get_args(tp), components, internal)
    return dict(_SCALARS.get(tp, {}))


def _member(member: Any, members: tuple[Any, ...], components: _Components,
            internal: bool) -> dict[str, Any]:  # fmt: skip
    """A union member's schema. Among several object members the converter tries a
    tagged one only when one of its tags is present (`_converter._tags_match`), so
    there the tag is required whatever its default; a catch-all member needs none."""
    objects = [m for m in members if attrs.has(m) or get_origin(m) in (dict, Mapping)]
    if len(objects) < 2 or not _tag_needed(member):
        return schema_for(member, components, internal)
    return components.ref(member, internal, tagged=True)


def _kind_tag(cls: type) -> str:
    """The tag a union member is told by: `type` when it has one, else its first
    tag that cannot be null (one present tag is enough for the converter to try it)."""
    tags = {k: v for k, v in _discriminators(cls).items() if None not in v}
    return "type" if "type" in tags else min(tags)


def _tag_needed(member: Any) -> bool:
    if not attrs.has(member) or _is_catch_all(member):
        return False
    tags = _discriminators(member)
    return bool(tags) and not all(None in allowed for allowed in tags.values())


def _non_empty(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` refusing "" and []; in a union, each string and array member."""
    if "anyOf" in schema:
        return {**schema, "anyOf": [_non_empty(m) for m in schema["anyOf"]]}
    if schema.get("type") == "string":
        return {**schema, "minLength": 1}
    if schema.get("type") == "array":
        return {**schema, "minItems": 1}
    return schema


_SCALARS: dict[Any, dict[str, Any]] = {
    bool: {"type": "boolean"},
    int: {"type": "integer"},
    float: {"type": "number"},  # finite: NaN and Infinity are not JSON
    str: {"type": "string"},
    _NoneType: {"type": "null"},
    Any: {},
}


def _mapping_schema(args: tuple[Any, ...], components: _Components, internal: bool) -> dict:
    schema: dict[str, Any] = {"type": "object"}
    if len(args) == 2:
        key = args[0]
        while hasattr(key, "__supertype__"):
            key = key.__supertype__
        if key is int:  # JSON keys are strings: an int key travels as its decimal text
            schema["propertyNames"] = {"pattern": "^-?[0-9]+$"}
        if args[1] is not Any:
            schema["additionalProperties"] = schema_for(args[1], components, internal)
    return schema


def _object_schema(
    cls: type, components: _Components, internal: bool, tagged: bool = False
) -> dict[str, Any]:
    fields = attrs.fields(attrs.resolve_types(cls))
    properties: dict[str, Any] = {}
    required: list[str] = []
    rest = False
    for a in fields:
        if _REST in a.metadata:
            rest = True
            continue
        name = a.metadata.get(_WIRE_NAME, a.name)
        prop = schema_for(a.type, components, internal)
        if (cls, name) in NON_EMPTY:
            prop = _non_empty(prop)
        if (cls, name) in UNSERVED_FIELDS:
            prop = {"type": "null"}
        default = _json_default(a)
        if default is not None:
            prop = {**prop, "default": default}
        properties[name] = prop
        if a.default is attrs.NOTHING:
            required.append(name)
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if tagged and (tag := _kind_tag(cls)) not in required:
        required.append(tag)
    if required:
        schema["required"] = required
    # Public bodies tolerate unknown keys (dropped, or kept by a rest_keys field).
    schema["additionalProperties"] = rest or not internal
    if doc := _summary(cls):
        schema["description"] = doc
    return schema


def _json_default(a: attrs.Attribute) -> Any:
    default = a.default
    if isinstance(default, (bool, int, float, str)):
        return default
    return None


def _summary(cls: type) -> str | None:
    """The first paragraph of a class's own docstring (attrs writes none)."""
    doc = cls.__dict__.get("__doc__")
    if not doc:
        return None
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


# ------------------------------------------------------------------ documents


def document(title: str, version: str, description: str, routes: Sequence[Route]) -> dict[str, Any]:
    """An OpenAPI 3.1 document for `routes`."""
    components = _Components()
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.schemas.items())),
            "responses": dict(sorted(components.responses.items())),
        },
    }


def _operation(route: Route, components: _Components) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": route.summary, "operationId": _operation_id(route)}
    if route.tags:
        operation["tags"] = list(route.tags)
    if params := _path_parameters(route.path):
        operation["parameters"] = params
    if route.request is not None:
        operation["requestBody"] = {"required": True,
                                    "content": _content([route.request], components)}  # fmt: skip
    ok: dict[str, Any] = {"description": "success"}
    if route.responses:
        ok["content"] = _content(route.responses, components)
    responses: dict[str, Any] = {"200": ok}
    error = components.error_response(route.errors)
    responses.update((str(status), error) for status in route.error_statuses)
    operation["responses"] = responses
    return operation


def _operation_id(route: Route) -> str:
    words = route.path.strip("/").replace("{", "").replace("}", "").replace("/", "_")
    return f"{route.method.lower()}_{words or 'root'}".replace("-", "_").replace(".", "_")


def _path_parameters(path: str) -> list[dict[str, Any]]:
    names = [part[1:-1] for part in path.split("/") if part.startswith("{")]
    return [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
            for n in names]  # fmt: skip


def _content(bodies: Sequence[Body], components: _Components) -> dict[str, Any]:
    content = {}
    for body in bodies:
        if body.type is not None:
            schema = schema_for(body.type, components, body.internal)
        else:
            schema = dict(body.schema or {})
        if body.media_type == SSE:
            schema = sse_schema(schema)
        content[body.media_type] = {"schema": schema}
    return content


SSE = "text/event-stream"


def sse_schema(payload: dict[str, Any]) -> dict[str, Any]:
    """An event stream as what it is on the wire: a sequence of SSE events (`event`,
    `data`, `id`, `retry`; comments are keepalives), each `data` the JSON text of one
    `payload` — or `[DONE]`, which ends an OpenAI stream."""
    data = {"type": "string", "contentMediaType": "application/json", "contentSchema": payload,
            "description": "the JSON text of one event payload, or [DONE]"}  # fmt: skip
    event = {"type": "object", "required": ["data"], "additionalProperties": False,
             "properties": {"event": {"type": "string"}, "data": data,
                            "id": {"type": "string"}, "retry": {"type": "integer"}}}  # fmt: skip
    return {"type": "array", "items": event,
            "description": "text/event-stream: one SSE event per item, in order"}  # fmt: skip
