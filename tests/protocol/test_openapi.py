"""The OpenAPI descriptions: schemas follow the converter, routes follow the apps,
and the copies under docs/openapi/ are current.

The schema tests check `protocol.openapi.schema_for` against what the
converter actually accepts and refuses; the route tests build each daemon's
Quart app (without serving it) and compare its URL map with the routes the
description lists, so neither can drift from the other.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cortex import openapi as cortex_openapi
from neuron import openapi as neuron_openapi
from protocol import anthropic, node, openai
from protocol.errors import ValidationFailed
from protocol.openapi import schema_for

DOCS = Path(__file__).resolve().parents[2] / "docs" / "openapi"
REGENERATE = "python -m {0}.openapi > docs/openapi/{0}.json"


def _components(tp: Any, internal: bool = False) -> tuple[dict, dict]:
    from protocol.openapi import _Components

    components = _Components()
    return schema_for(tp, components, internal), components.schemas


def test_attrs_classes_become_named_components_with_wire_rules():
    ref, schemas = _components(openai.ChatCompletionRequest)
    assert ref == {"$ref": "#/components/schemas/openai.ChatCompletionRequest"}
    request = schemas["openai.ChatCompletionRequest"]
    assert request["required"] == ["model", "messages"]
    assert request["additionalProperties"] is True  # public bodies tolerate vendor extras
    assert request["properties"]["stream"] == {"type": "boolean", "default": False}
    assert request["properties"]["logit_bias"]["anyOf"][0] == {
        "type": "object",
        "propertyNames": {"pattern": "^-?[0-9]+$"},  # int keys travel as decimal text
        "additionalProperties": {"type": "number"},
    }
    part = schemas["openai.TextPart.tagged"]  # a union member: its tag is required
    assert part["properties"]["type"] == {"const": "text", "default": "text"}
    assert part["required"] == ["text", "type"]
    assert schemas["openai.OtherPart"]["additionalProperties"] is True  # rest_keys


def test_internal_bodies_refuse_unknown_keys_and_get_their_own_component():
    ref, schemas = _components(node.ModelSpec, internal=True)
    assert ref == {"$ref": "#/components/schemas/node.ModelSpec.strict"}
    assert schemas["node.ModelSpec.strict"]["additionalProperties"] is False
    assert schemas["node.ModelSpec.strict"]["required"] == ["model_id"]


def test_same_class_names_in_two_wires_do_not_clash():
    _, schemas = _components(openai.NamedToolChoice | anthropic.NamedToolChoice)
    assert {"openai.NamedToolChoice.tagged", "anthropic.NamedToolChoice.tagged"} <= set(schemas)


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"model": "m", "messages": [], "unknown": 1}, True),
        ({"model": "m"}, False),  # `required`
        ({"model": "m", "messages": [], "stream": "yes"}, False),  # `boolean`
        ({"model": "m", "messages": [], "logit_bias": {"12": 1}}, True),
        ({"model": "m", "messages": [], "max_tokens": 1.5}, False),  # `integer`
    ],
)
def test_the_schema_and_the_converter_agree(body, valid):
    """Spot checks that what the schema promises is what parsing enforces."""
    from protocol import structure

    _, schemas = _components(openai.ChatCompletionRequest)
    schema = schemas["openai.ChatCompletionRequest"]
    missing = set(schema["required"]) - set(body)
    wrong = [k for k, v in body.items() if k in schema["properties"] and not _fits(
        schema["properties"][k], v)]  # fmt: skip
    assert (not missing and not wrong) == valid
    if valid:
        structure(body, openai.ChatCompletionRequest)
    else:
        with pytest.raises(ValidationFailed):
            structure(body, openai.ChatCompletionRequest)


def _fits(schema: dict, value: Any) -> bool:
    if "anyOf" in schema:
        return any(_fits(s, value) for s in schema["anyOf"])
    kinds = {"boolean": bool, "integer": int, "number": (int, float), "string": str,
             "array": list, "object": dict, "null": type(None)}  # fmt: skip
    kind = schema.get("type")
    if kind is None:
        return True
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, kinds[kind])


# -- the routes ---------------------------------------------------------------------------


def _app_routes(app) -> set[tuple[str, str]]:
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule
        for name in rule.arguments:
            path = path.replace(f"<path:{name}>", f"{{{name}}}").replace(f"<{name}>", f"{{{name}}}")
        routes |= {(m, path) for m in rule.methods - {"HEAD", "OPTIONS"}}
    return routes


def _described(doc: dict) -> set[tuple[str, str]]:
    return {(m.upper(), path) for path, methods in doc["paths"].items() for m in methods}


def test_the_neuron_description_lists_exactly_the_apps_routes():
    from neuron.config import NeuronConfig
    from neuron.http import create_app

    app = create_app(SimpleNamespace(config=NeuronConfig()))
    assert _described(neuron_openapi.description()) == _app_routes(app)


def test_the_gateway_description_lists_exactly_the_apps_routes():
    from cortex.config import load_config
    from cortex.gateway import Gateway
    from cortex.http import create_app

    app = create_app(Gateway(load_config(None, {}, catalogue=False)))
    assert _described(cortex_openapi.description()) == _app_routes(app)


@pytest.mark.parametrize("daemon", ["cortex", "neuron"])
def test_the_committed_description_is_current(daemon):
    module = cortex_openapi if daemon == "cortex" else neuron_openapi
    committed = json.loads((DOCS / f"{daemon}.json").read_text())
    assert committed == module.description(), f"stale; regenerate: {REGENERATE.format(daemon)}"
