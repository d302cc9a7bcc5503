"""Constrained decoding, the parent's half: a request's format or forced call → grammar.

`request_grammar` turns a chat request's `response_format` (`json_schema`, with or
without `strict`, or `json_object`) into an llguidance grammar (its JSON text) that
the worker enforces token by token (`neuron.worker.grammar`); `forced_call_grammar`
does the same for a forced tool call (`tool_choice` `required` or a named function;
the prompt already opened the model's tool-call block, see `neuron.text.prompt`):
the model must write `{"name": <an allowed tool>, "arguments": <valid against that
tool's parameters>}` and close the block, so the reply is a parseable call.

The grammar is checked here with llguidance's own validator, so a schema it cannot
compile is a 400 (`unsupported_value` on `response_format` / `tool_choice`) that
quotes llguidance's message naming the schema feature, before any sequence starts.
Compiled matchers are cached in the worker per (grammar, tokenizer).

The output is whitespace-free JSON in the schema's property order. A `json_schema`
without `strict: true` is constrained all the same (the schema is the contract the
client asked for). Only one call is forced: parallel calls under `tool_choice:
required` come back as one call.

Not for: applying the mask (the worker's sampler), parsing the call (`tool_calls`).
"""

from __future__ import annotations

import json
from typing import Any

import llguidance

from neuron.text.errors import UnsupportedValue
from neuron.text.reasoning import Markers
from protocol.openai import (
    ChatCompletionRequest,
    NamedToolChoice,
    ResponseFormatJsonObject,
    ResponseFormatJsonSchema,
)

__all__ = ["forced_call_grammar", "request_grammar"]

_OPTIONS = {"whitespace_flexible": False}


def request_grammar(request: ChatCompletionRequest) -> str | None:
    """The grammar `response_format` asks for, or None (text)."""
    match request.response_format:
        case ResponseFormatJsonSchema(json_schema=spec):
            schema = spec.schema if spec.schema is not None else {}
        case ResponseFormatJsonObject():
            schema = {"type": "object"}
        case _:
            return None
    return _checked(_schema_grammar(schema, "response_format"), "response_format")


def forced_call_grammar(
    tools: tuple[dict[str, Any], ...], choice: object, markers: Markers
) -> str | None:
    """The grammar of one call to one of `tools` (template-ready, already narrowed to
    the named one), closed by the model's tool-call end marker; None when the
    choice forces nothing."""
    if choice in (None, "auto", "none") or markers.tool_call is None:
        return None
    if isinstance(choice, NamedToolChoice):
        tools = tuple(t for t in tools if t["function"]["name"] == choice.function.name)
    calls = [_call_schema(t["function"]) for t in tools]
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    schema["x-guidance"] = _OPTIONS  # llguidance's options, inside a Lark `%json`
    close = markers.tool_call.close_id
    lark = f'start: "\\n"? call "\\n"? <[{close}]>\ncall: %json {json.dumps(schema)}\n'
    try:
        grammar = llguidance.LLMatcher.grammar_from_lark(lark)
    except (ValueError, RuntimeError) as exc:
        message = f"a tool's parameters cannot be enforced: {exc}"
        raise UnsupportedValue("tool_choice", message) from exc
    return _checked(grammar, "tool_choice")


def _call_schema(function: dict[str, Any]) -> dict[str, Any]:
    parameters = function.get("parameters") or {"type": "object"}
    return {
        "type": "object",  # a fresh dict: `x-guidance` may be added
        "properties": {"name": {"const": function["name"]}, "arguments": parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _schema_grammar(schema: Any, param: str) -> str:
    if not isinstance(schema, dict):
        raise UnsupportedValue(param, "the JSON Schema must be an object")
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=_OPTIONS)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise UnsupportedValue(param, f"this JSON Schema cannot be enforced: {exc}") from exc


def _checked(grammar: str, param: str) -> str:
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise UnsupportedValue(param, f"this JSON Schema cannot be enforced: {error}")
    return grammar
