"""Tool use in the Hermes / Qwen3 wire format, for endpoints that do not render `tools`.

An endpoint that passes the OpenAI `tools` field to nothing leaves the model
unaware of its tools; in this mode the bridge writes them into the prompt
itself, the way the Qwen3 chat template does, and reads calls back out of the
streamed text:

* `tools_block(tools)` is the `# Tools` section appended to the system prompt;
* `CallSplitter` separates streamed text from `<tool_call>…</tool_call>`
  blocks whatever the chunk boundaries (a marker split over two chunks is held
  back, never shown as text);
* `parse_call(body)` reads a block's body: Hermes JSON `{"name", "arguments"}`
  or Qwen-XML `<function=NAME><parameter=KEY>VALUE</parameter></function>`;
* `render_messages(history, tools)` re-serialises the OpenAI-shaped history:
  assistant turns with inline `<tool_call>` blocks, tool results as a user turn
  of `<tool_response>` blocks.

Not for: the OpenAI `tools` path, where the endpoint parses calls itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

__all__ = [
    "CLOSE",
    "OPEN",
    "CallBlock",
    "CallSplitter",
    "ParsedCall",
    "parse_call",
    "render_messages",
    "tools_block",
]

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_FUNCTION = re.compile(r"<function=([^>\n]+)>(.*?)(?:</function>|$)", re.DOTALL)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>(.*?)(?:</parameter>|(?=<parameter=)|$)", re.DOTALL)


@attrs.frozen
class CallBlock:
    """The text between one `<tool_call>` and its `</tool_call>`."""

    body: str


@attrs.frozen
class ParsedCall:
    name: str
    arguments: dict[str, Any]


class CallSplitter:
    """Streamed text in, text pieces and `CallBlock`s out, in order."""

    def __init__(self) -> None:
        self._buffer = ""
        self._in_call = False

    def feed(self, text: str) -> list[str | CallBlock]:
        self._buffer += text
        out: list[str | CallBlock] = []
        while True:
            marker = CLOSE if self._in_call else OPEN
            at = self._buffer.find(marker)
            if at < 0:
                break
            before, self._buffer = self._buffer[:at], self._buffer[at + len(marker) :]
            out.append(CallBlock(before) if self._in_call else before)
            self._in_call = not self._in_call
        if not self._in_call:
            keep = _partial_marker(self._buffer, OPEN)
            out.append(self._buffer[: len(self._buffer) - keep])
            self._buffer = self._buffer[len(self._buffer) - keep :]
        return [piece for piece in out if piece != ""]

    def finish(self) -> str:
        """What is left at the end of the stream: a cut-off block is shown as text."""
        rest = (OPEN if self._in_call else "") + self._buffer
        self._buffer, self._in_call = "", False
        return rest


def _partial_marker(text: str, marker: str) -> int:
    """How long a tail of `text` could be the start of `marker`."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


Schemas = Mapping[str, Mapping[str, Any]]  # tool name → its parameters' `properties`


def parse_call(body: str, schemas: Schemas | None = None) -> ParsedCall | None:
    """A block's call, or None when the body is neither format (the caller shows it as text).

    `schemas` maps a tool name to its parameters' JSON schema `properties`: a
    Qwen-XML value is kept as a string where the schema says string, else read
    as JSON when it is JSON.
    """
    return _parse_json(body) or _parse_xml(body, schemas or {})


def _parse_json(body: str) -> ParsedCall | None:
    call = _json_or(body.strip(), None)
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
        return None
    arguments = call.get("arguments", call.get("parameters", {}))
    if isinstance(arguments, str):
        arguments = _json_or(arguments, None)
    return ParsedCall(call["name"], arguments) if isinstance(arguments, dict) else None


def _parse_xml(body: str, schemas: Mapping[str, Mapping[str, Any]]) -> ParsedCall | None:
    match = _FUNCTION.search(body)
    if match is None or body[: match.start()].strip() or not match.group(1).strip():
        return None
    name = match.group(1).strip()
    properties = schemas.get(name, {})
    arguments = {}
    for key, raw in _PARAMETER.findall(match.group(2)):
        value = raw.removeprefix("\n").removesuffix("\n")
        kind = (properties.get(key.strip()) or {}).get("type")
        arguments[key.strip()] = value if kind == "string" else _json_or(value.strip(), value)
    return ParsedCall(name, arguments)


def _json_or(text: str, default: Any) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return default


# -- the prompt side -----------------------------------------------------------------------

_TOOLS_HEADER = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
"""
_TOOLS_FOOTER = """
</tools>

For each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>"""


def tools_block(tools: Sequence[Mapping[str, Any]]) -> str:
    """The `# Tools` section of the Qwen3 template, for OpenAI-shaped `tools`."""
    lines = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return _TOOLS_HEADER + lines + _TOOLS_FOOTER


def render_messages(
    history: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The OpenAI-shaped history as plain-text turns with the tools in the system prompt."""
    out: list[dict[str, Any]] = []
    for message in history:
        role = message["role"]
        if role == "system":
            content = f"{message['content']}\n\n{tools_block(tools)}"
            out.append({"role": "system", "content": content})
        elif role == "assistant":
            out.append({"role": "assistant", "content": _assistant_text(message)})
        elif role == "tool":
            response = f"<tool_response>\n{message['content']}\n</tool_response>"
            if out and out[-1].get("tool_responses"):
                out[-1]["content"] += "\n" + response
            else:
                out.append({"role": "user", "content": response, "tool_responses": True})
        else:
            out.append(dict(message))
    for message in out:
        message.pop("tool_responses", None)
    return out


def _assistant_text(message: Mapping[str, Any]) -> str:
    parts = [message.get("content") or ""]
    for call in message.get("tool_calls") or ():
        function = call["function"]
        arguments = _json_or(function.get("arguments") or "{}", {})
        payload = json.dumps({"name": function["name"], "arguments": arguments}, ensure_ascii=False)
        parts.append(f"{OPEN}\n{payload}\n{CLOSE}")
    return "\n".join(part for part in parts if part)
