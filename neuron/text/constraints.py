"""Constrained decoding, the parent's half: a chat request → the grammar its output obeys.

`chat_grammar` turns what a request asks of its output into an llguidance grammar
(its JSON text) that the worker enforces token by token (`neuron.worker.grammar`),
or None when nothing is asked:

* `response_format` (`json_schema`, with or without `strict`, or `json_object`):
  the answer is a JSON document valid against the schema. When the request also
  offers tools (`tool_choice` auto) the model may instead call them; when the
  prompt left a reasoning block open (Qwen3.6-style templates) the model first
  finishes its reasoning freely, then answers.
* A forced call (`tool_choice` `required` or a named function; the prompt already
  opened the model's tool-call block, see `neuron.text.prompt`): the model must
  write `{"name": <an allowed tool>, "arguments": <valid against that tool's
  parameters>}` and close the block, so the reply is a parseable call.
* Tools with `strict: true` under `tool_choice` auto: the model writes free text
  (reasoning markers included) or calls tools, but every `<tool_call>` block it
  opens holds `{"name": <a tool>, "arguments": …}` — strict tools' arguments valid
  against their parameters, other tools' any JSON object — and only whitespace
  and further calls may follow a call (one call when `parallel_tool_calls` is
  false).

Calls are written in the Hermes/Qwen JSON form; `constrain_tool_calls=False`
(`[engine]`) is for models trained on another call syntax: forced and strict
calls are then not constrained, and next to a `response_format` a call's body is
free text.

The grammar is checked here with llguidance's own validator, so a schema it cannot
compile is a 400 (`unsupported_value` on `response_format`, `tool_choice` or
`tools`) that quotes llguidance's message naming the schema feature, before any
sequence starts. Compiled matchers are cached in the worker per (grammar,
tokenizer); a request's grammar text depends only on its schemas and tools, so
the same tools request after request compile once.

The JSON is whitespace-free in the schema's property order. A `json_schema`
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
from neuron.text.prompt import ChatPrompt
from neuron.text.reasoning import Markers
from protocol.openai import (
    ChatCompletionRequest,
    FunctionTool,
    NamedToolChoice,
    ResponseFormatJsonObject,
    ResponseFormatJsonSchema,
)

__all__ = ["chat_grammar"]

_OPTIONS = {"whitespace_flexible": False}
_ANY_OBJECT = {"type": "object"}
# Free text: any bytes (special tokens are never bytes, so they need naming).
_TEXT = "TEXT: /(.|\\n)*/\nWS: /[ \\t\\n]*/\n"


def chat_grammar(
    request: ChatCompletionRequest,
    prompt: ChatPrompt,
    markers: Markers,
    *,
    constrain_tool_calls: bool = True,
) -> str | None:
    """The grammar `request`'s output must follow, or None (unconstrained)."""
    if prompt.opens_tool_call:
        if not constrain_tool_calls:
            return None
        return _forced_call_grammar(prompt.tools or (), request.tool_choice, markers)
    answer = _answer_schema(request)
    calls = bool(prompt.parse_tool_calls and prompt.tools and markers.tool_call is not None)
    strict = _strict_names(request)
    if answer is None:
        if not (calls and strict and constrain_tool_calls):
            return None
        lark = f"start: seg calls?\n{_seg(markers)}"
    elif calls:
        lark = f"start: {_head(prompt, markers)}(answer | calls)\n{_json('answer', answer)}"
    elif prompt.opens_reasoning and markers.reasoning is not None:
        lark = f"start: {_head(prompt, markers)}answer\n{_json('answer', answer)}"
    else:
        return _checked(_schema_grammar(answer, "response_format"), "response_format")
    if calls:
        if constrain_tool_calls:
            lark += _call_rules(prompt.tools, strict)
        one = request.parallel_tool_calls is False
        lark += _calls(markers, "body" if constrain_tool_calls else "TEXT", one=one)
    param = "response_format" if answer is not None else "tools"
    return _checked(_lark_grammar(lark + _TEXT, param), param)


def _answer_schema(request: ChatCompletionRequest) -> dict[str, Any] | None:
    match request.response_format:
        case ResponseFormatJsonSchema(json_schema=spec):
            schema = spec.schema if spec.schema is not None else {}
            if not isinstance(schema, dict):
                raise UnsupportedValue("response_format", "the JSON Schema must be an object")
            return schema
        case ResponseFormatJsonObject():
            return dict(_ANY_OBJECT)
    return None


def _strict_names(request: ChatCompletionRequest) -> frozenset[str]:
    return frozenset(
        t.function.name
        for t in request.tools or ()
        if isinstance(t, FunctionTool) and t.function.strict
    )


def _head(prompt: ChatPrompt, markers: Markers) -> str:
    """Before a structured answer: the rest of a reasoning block the prompt opened."""
    if prompt.opens_reasoning and markers.reasoning is not None:
        return f"TEXT <[{markers.reasoning.close_id}]> WS "
    return ""


def _seg(markers: Markers) -> str:
    """Free text, with the model's reasoning markers (which are not bytes) allowed."""
    pair = markers.reasoning
    if pair is None:
        return "seg: TEXT\n"
    return f"seg: TEXT (think TEXT)*\nthink: <[{pair.open_id}]> | <[{pair.close_id}]>\n"


def _calls(markers: Markers, body: str, *, one: bool) -> str:
    pair = markers.tool_call
    more = "" if one else " (WS call)*"
    return f'calls: call{more}\ncall: <[{pair.open_id}]> "\\n"? {body} "\\n"? <[{pair.close_id}]>\n'


def _call_rules(tools: tuple[dict[str, Any], ...], strict: frozenset[str]) -> str:
    """`body`: one call, `{"name":<tool>,"arguments":<object>}`, to any of `tools`;
    the arguments of the tools named in `strict` obey their parameters. Each
    parameters schema is its own `%json` root, so its `$ref`s resolve."""
    rules, names = "", []
    for i, tool in enumerate(tools):
        function = tool["function"]
        parameters = function.get("parameters") or _ANY_OBJECT
        name = json.dumps(function["name"])
        head = json.dumps('{"name":' + name + ',"arguments":')
        rules += f'call_{i}: {head} args_{i} "}}"\n'
        rules += _json(f"args_{i}", parameters if function["name"] in strict else _ANY_OBJECT)
        names.append(f"call_{i}")
    return f"body: {' | '.join(names)}\n{rules}"


def _json(rule: str, schema: dict[str, Any]) -> str:
    # `x-guidance` carries llguidance's options into a Lark `%json` (a fresh dict).
    return f"{rule}: %json {json.dumps({**schema, 'x-guidance': _OPTIONS})}\n"


def _forced_call_grammar(
    tools: tuple[dict[str, Any], ...], choice: object, markers: Markers
) -> str | None:
    """One call to one of `tools` (template-ready, already narrowed to the named
    one), closed by the model's tool-call end marker."""
    if choice in (None, "auto", "none") or markers.tool_call is None:
        return None
    if isinstance(choice, NamedToolChoice):
        tools = tuple(t for t in tools if t["function"]["name"] == choice.function.name)
    every = frozenset(t["function"]["name"] for t in tools)
    close = markers.tool_call.close_id
    lark = f'start: "\\n"? body "\\n"? <[{close}]>\n{_call_rules(tools, every)}'
    return _checked(_lark_grammar(lark, "tool_choice"), "tool_choice")


def _lark_grammar(lark: str, param: str) -> str:
    try:
        return llguidance.LLMatcher.grammar_from_lark(lark)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise UnsupportedValue(param, f"this JSON Schema cannot be enforced: {exc}") from exc


def _schema_grammar(schema: dict[str, Any], param: str) -> str:
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=_OPTIONS)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise UnsupportedValue(param, f"this JSON Schema cannot be enforced: {exc}") from exc


def _checked(grammar: str, param: str) -> str:
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise UnsupportedValue(param, f"this JSON Schema cannot be enforced: {error}")
    return grammar
