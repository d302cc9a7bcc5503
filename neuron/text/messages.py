"""Turn OpenAI chat messages and tools (protocol types) into the plain dicts a chat
template reads.

Roles are normalised (`developer` → `system`, legacy `function` → `tool`), tool
messages get the called function's `name` when an earlier assistant turn names it,
and content parts are checked here, before any template sees them: a text-only
model gets parts flattened to one string (text parts joined by newlines) and
refuses images with `VisionUnsupported`; a vision model keeps parts but takes
images only as `data:image/...;base64,` URIs (`ImageNotDataUri` otherwise — a URL
is never fetched). Audio and file parts are refused (`ContentUnsupported`).

Not for: rendering or tokenising (`neuron.text.tokenizer`), or the Responses and
Anthropic dialects, which are translated to chat messages before they get here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from neuron.text.errors import (
    ContentUnsupported,
    ImageNotDataUri,
    InvalidParameter,
    VisionUnsupported,
)
from protocol.openai import (
    AssistantMessage,
    ChatMessage,
    ChatTool,
    ContentPart,
    FunctionMessage,
    FunctionTool,
    ImageUrlPart,
    OtherPart,
    TextPart,
    ToolCall,
    ToolMessage,
)

__all__ = ["chat_messages", "chat_tools", "is_data_image_uri"]

_DATA_IMAGE = "data:image/"


def chat_messages(
    messages: Sequence[ChatMessage], *, vision: bool = False, model_id: str | None = None
) -> list[dict[str, Any]]:
    """Template-ready message dicts; raises the content errors named above."""
    if not messages:  # templates index messages[0]; an empty chat is a client error
        raise InvalidParameter("messages", "expected at least one message, but got none.")
    names = _call_names(messages)
    return [
        _message(m, f"messages[{i}]", vision=vision, model_id=model_id, names=names)
        for i, m in enumerate(messages)
    ]


def chat_tools(tools: Sequence[ChatTool] | None) -> list[dict[str, Any]] | None:
    """Function tools as `{"type": "function", "function": {...}}`; other kinds dropped.

    None when no function tool is left, so templates take their no-tools branch.
    """
    found = [_tool(t) for t in tools or () if isinstance(t, FunctionTool)]
    return found or None


def is_data_image_uri(url: str) -> bool:
    head = url[:256].lower()
    return head.startswith(_DATA_IMAGE) and ";base64," in head


def _tool(tool: FunctionTool) -> dict[str, Any]:
    function = tool.function
    spec: dict[str, Any] = {"name": function.name}
    if function.description is not None:
        spec["description"] = function.description
    spec["parameters"] = function.parameters or {"type": "object", "properties": {}}
    return {"type": "function", "function": spec}


def _call_names(messages: Sequence[ChatMessage]) -> dict[str, str]:
    return {
        call.id: call.function.name
        for m in messages
        if isinstance(m, AssistantMessage)
        for call in m.tool_calls or ()
    }


def _message(
    message: ChatMessage, path: str, *, vision: bool, model_id: str | None, names: dict
) -> dict[str, Any]:
    role = {"developer": "system", "function": "tool"}.get(message.role, message.role)
    content = _content(message.content, f"{path}.content", vision=vision, model_id=model_id)
    out: dict[str, Any] = {"role": role, "content": content}
    if isinstance(message, AssistantMessage):
        out["reasoning_content"] = message.reasoning_content
        if message.tool_calls:
            out["tool_calls"] = [_call(c) for c in message.tool_calls]
    if isinstance(message, ToolMessage):
        out["tool_call_id"] = message.tool_call_id
        out["name"] = names.get(message.tool_call_id)
    elif isinstance(message, FunctionMessage) or getattr(message, "name", None):
        out["name"] = message.name
    return {k: v for k, v in out.items() if v is not None}


def _call(call: ToolCall) -> dict[str, Any]:
    function = {"name": call.function.name, "arguments": call.function.arguments}
    return {"id": call.id, "type": "function", "function": function}


def _content(
    content: str | tuple[ContentPart, ...] | None, path: str, *, vision: bool, model_id
) -> str | list[dict[str, Any]]:
    if content is None:
        return ""  # templates concatenate content; an absent key breaks many of them
    if isinstance(content, str):
        return content
    parts = [
        _part(p, f"{path}[{j}]", vision=vision, model_id=model_id) for j, p in enumerate(content)
    ]
    if vision:
        return parts
    return "\n".join(p["text"] for p in parts)


def _part(part: ContentPart, path: str, *, vision: bool, model_id) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, ImageUrlPart):
        return _image(part, path, vision=vision, model_id=model_id)
    if isinstance(part, OtherPart) and isinstance(text := _other_text(part), str):
        return {"type": "text", "text": text}
    raise ContentUnsupported(
        f"content parts of type '{part.type}' are not supported by this model", param=path
    )


def _other_text(part: OtherPart) -> object:
    """Text-bearing parts we do not model: `refusal`, Responses-style `*_text`."""
    return part.rest.get("refusal") if part.type == "refusal" else part.rest.get("text")


def _image(part: ImageUrlPart, path: str, *, vision: bool, model_id) -> dict[str, Any]:
    if not vision:
        raise VisionUnsupported(path, model_id)
    if not is_data_image_uri(part.image_url.url):
        raise ImageNotDataUri(f"{path}.image_url.url")
    return {"type": "image_url", "image_url": {"url": part.image_url.url}}
