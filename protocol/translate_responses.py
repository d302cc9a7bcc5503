"""OpenAI Responses request → chat completions request (dialect translation).

A neuron serves the Responses API through the same pipeline as chat: the
request's `instructions` become a leading system message, a string `input`
one user message, and input items their chat equivalents — `message`
items by role (`developer` as system), `function_call` items as assistant
tool calls (consecutive calls grouped into one assistant turn),
`function_call_output` items as tool messages, `input_text`/`output_text`
parts as text and `input_image` parts as `image_url` parts; `text.format`
becomes `response_format` and `include: ["message.output_text.logprobs"]`
with `top_logprobs` chat's `logprobs` / `top_logprobs`. Reasoning items
and item kinds we do not serve are dropped (a model never sees its previous
reasoning in a Qwen-style template anyway); hosted tools are dropped, flat
function tools reshaped. `previous_response_id` is refused: this server
stores no conversation state.

Not for: the response direction (rendering Responses output is the
renderer's job).
"""

from __future__ import annotations

from typing import Any

from protocol import openai as chat
from protocol import responses as rs
from protocol.errors import InvalidRequest

__all__ = ["responses_to_chat"]


def responses_to_chat(request: rs.ResponsesRequest) -> chat.ChatCompletionRequest:
    if request.previous_response_id is not None:
        raise InvalidRequest(
            "previous_response_id is not supported: this server keeps no conversation "
            "state; send the whole conversation in `input`",
            param="previous_response_id", code="chained_conversation_not_supported",
        )  # fmt: skip
    messages: list[Any] = []
    if request.instructions:
        messages.append(chat.SystemMessage(content=request.instructions))
    if isinstance(request.input, str):
        messages.append(chat.UserMessage(content=request.input))
    else:
        for item in request.input:
            _append_item(messages, item)
    return chat.ChatCompletionRequest(
        model=request.model,
        messages=tuple(messages),
        tools=_tools(request.tools),
        tool_choice=_tool_choice(request.tool_choice),
        parallel_tool_calls=request.parallel_tool_calls,
        max_completion_tokens=request.max_output_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        stream=request.stream,
        chat_template_kwargs=request.chat_template_kwargs,
        user=request.user,
        response_format=_response_format(request.text),
        **_logprobs(request),
    )


def _logprobs(request: rs.ResponsesRequest) -> dict[str, Any]:
    """`include: ["message.output_text.logprobs"]` (+ `top_logprobs`) as chat's pair."""
    if "message.output_text.logprobs" not in (request.include or ()):
        return {}
    return {"logprobs": True, "top_logprobs": request.top_logprobs}


def _response_format(text: rs.TextConfig | None) -> chat.ResponseFormat | None:
    """`text.format` as chat's `response_format` (structured outputs)."""
    match None if text is None else text.format:
        case rs.TextFormatJsonSchema(name=name, schema=schema, strict=strict, description=about):
            spec = chat.JsonSchemaFormat(name=name, schema=schema, strict=strict, description=about)
            return chat.ResponseFormatJsonSchema(json_schema=spec)
        case rs.TextFormatJsonObject():
            return chat.ResponseFormatJsonObject()
    return None


def _append_item(messages: list[Any], item: Any) -> None:
    match item:
        case rs.Message(role=role, content=content):
            messages.append(_message(role, _content(content)))
        case rs.FunctionCall(call_id=call_id, name=name, arguments=arguments):
            call = chat.ToolCall(
                id=call_id, function=chat.FunctionCall(name=name, arguments=arguments)
            )
            last = messages[-1] if messages else None
            if isinstance(last, chat.AssistantMessage) and last.tool_calls is not None:
                messages[-1] = chat.AssistantMessage(
                    content=last.content, tool_calls=(*last.tool_calls, call)
                )
            else:
                messages.append(chat.AssistantMessage(tool_calls=(call,)))
        case rs.FunctionCallOutput(call_id=call_id, output=output):
            messages.append(chat.ToolMessage(content=_content(output), tool_call_id=call_id))


def _message(role: str, content: Any) -> Any:
    if role in ("system", "developer"):
        return chat.SystemMessage(content=content)
    if role == "assistant":
        return chat.AssistantMessage(content=content)
    return chat.UserMessage(content=content)


def _content(content: str | tuple[Any, ...]) -> str | tuple[Any, ...]:
    if isinstance(content, str):
        return content
    parts: list[Any] = []
    for part in content:
        match part:
            case rs.InputText(text=text) | rs.OutputText(text=text):
                parts.append(chat.TextPart(text=text))
            case rs.InputImage(image_url=url) if url:
                parts.append(chat.ImageUrlPart(image_url=chat.ImageUrl(url=url)))
            case rs.Refusal(refusal=text):
                parts.append(chat.TextPart(text=text))
    return tuple(parts)


def _tools(tools: tuple[Any, ...] | None) -> tuple[chat.FunctionTool, ...] | None:
    if not tools:
        return None
    functions = tuple(
        chat.FunctionTool(
            function=chat.FunctionDefinition(
                name=t.name,
                description=t.description,
                parameters=t.parameters,
                strict=t.strict,
            )
        )
        for t in tools
        if isinstance(t, rs.FunctionTool)
    )
    return functions or None


def _tool_choice(choice: Any) -> Any:
    match choice:
        case "none" | "auto" | "required":
            return choice
        case rs.ToolChoiceFunction(name=name):
            return chat.NamedToolChoice(function=chat.FunctionName(name=name))
    return None
