"""Render a model's Jinja chat template exactly the way transformers does, without it.

The environment mirrors `transformers.utils.chat_template_utils` (5.x): an
`ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)` with the
`loopcontrols` extension, a pass-through `{% generation %}` block, `tojson`
without HTML escaping, `raise_exception`, `strftime_now`, and the guarded `dict`
and `namespace` globals. Messages are prepared like `apply_chat_template` prepares
them (keys whose value is None dropped), plus what upstream helexa adds: tool-call
`arguments` given as JSON strings are parsed into objects first, since Qwen-style
templates iterate them as mappings.

Not for: choosing a template, tokenising, or turning protocol types into message
dicts (`neuron.text.tokenizer`, `neuron.text.messages`). Templates are untrusted
code from a model repository; only the sandbox runs them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = [
    "TEMPLATE_FAILURES",
    "chatml_prompt",
    "compile_template",
    "content_text",
    "has_misplaced_system",
    "merge_system_messages",
    "prepare_messages",
    "render_template",
]

# What a template's own code can raise while rendering; mapped once by the caller.
TEMPLATE_FAILURES = (
    jinja2.TemplateError,
    ArithmeticError,
    LookupError,
    TypeError,
    ValueError,
    AttributeError,
    RecursionError,
)


_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}…{% endgeneration %}` (training masks): render the body as is."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return caller()


class _TemplateDict:
    """`dict(...)` for templates, without exposing the dict type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """`namespace(...)` that refuses underscore names (a way into CPython internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        values = dict(*rest, **kwargs)
        for name in values:
            _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, values)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} is not allowed")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


_ENV = _environment()


def compile_template(source: str) -> jinja2.Template:
    """Compile a chat template; raises `jinja2.TemplateSyntaxError` on a broken one."""
    return _ENV.from_string(source)


def render_template(
    template: jinja2.Template,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None,
    add_generation_prompt: bool,
    special_tokens: Mapping[str, str],
    template_kwargs: Mapping[str, Any],
) -> str:
    """Render prepared messages; template kwargs override the special tokens.

    Raises one of `TEMPLATE_FAILURES` when the template refuses or breaks.
    """
    context = {**special_tokens, **template_kwargs}
    return template.render(
        messages=list(messages),
        tools=None if tools is None else list(tools),
        documents=None,
        add_generation_prompt=add_generation_prompt,
        **context,
    )


def prepare_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Fresh message dicts: None values dropped, reasoning aliased, tool-call
    arguments parsed to objects."""
    prepared = []
    for message in messages:
        fresh = {k: v for k, v in message.items() if v is not None}
        if fresh.get("tool_calls"):
            fresh["tool_calls"] = [_parsed_call(call) for call in fresh["tool_calls"]]
        prepared.append(_alias_reasoning(fresh))
    return prepared


def _alias_reasoning(message: dict[str, Any]) -> dict[str, Any]:
    """Like transformers: reasoning under any of its names is also `reasoning_content`
    (what most templates read) and `thinking` (what gpt-oss templates read)."""
    found = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
    if found is None:
        return message
    return {"thinking": found, **message, "reasoning_content": found}


def _parsed_call(call: Mapping[str, Any]) -> dict[str, Any]:
    function = call.get("function")
    if not isinstance(function, Mapping):
        return dict(call)
    return {**call, "function": {**function, "arguments": _arguments(function.get("arguments"))}}


def _arguments(arguments: Any) -> Any:
    """A JSON-object string becomes its object; anything else is kept as given."""
    if not isinstance(arguments, str):
        return arguments
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return arguments
    return parsed if isinstance(parsed, dict) else arguments


def has_misplaced_system(messages: Sequence[Mapping[str, Any]]) -> bool:
    """More than one system message, or one that is not first."""
    positions = [i for i, m in enumerate(messages) if m.get("role") == "system"]
    return len(positions) > 1 or positions not in ([], [0])


def merge_system_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """All system messages joined (blank line between) into one leading system message.

    Clients such as Claude Code put system text mid-conversation; Qwen3.5-family
    templates refuse that ("System message must be at the beginning").
    """
    system = [m for m in messages if m.get("role") == "system"]
    rest = [dict(m) for m in messages if m.get("role") != "system"]
    if not system:
        return rest
    text = "\n\n".join(t for t in (content_text(m.get("content")) for m in system) if t)
    return [{"role": "system", "content": text}, *rest]


def content_text(content: Any) -> str:
    """A message's content as plain text: parts reduced to their text, None to ''."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = [p.get("text") for p in content if isinstance(p, Mapping)]
    return "\n".join(t for t in texts if isinstance(t, str))


def chatml_prompt(messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool) -> str:
    """The hard-coded ChatML fallback upstream uses when a template is absent or fails.

    `<|im_start|>role\\ncontent<|im_end|>\\n` per message, then the assistant header.
    Tool calls and non-text parts are not represented; it is a last resort.
    """
    turns = [
        f"<|im_start|>{m.get('role', 'user')}\n{content_text(m.get('content'))}<|im_end|>\n"
        for m in messages
    ]
    if add_generation_prompt:
        turns.append("<|im_start|>assistant\n")
    return "".join(turns)
