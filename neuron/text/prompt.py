"""One chat request's way through the text pipeline, composed: prompt in, parser out.

`ChatPrompt.build` turns a `ChatCompletionRequest` into the rendered prompt, its
token ids, the template-ready tools and whether the prompt opened a reasoning
block; `ChatPrompt.output_parser` then makes the matching `OutputParser` (tool
calls parsed only when the request has tools and `tool_choice` is not `none`,
EOS ids hidden, the prompt's tail as detokenizer context). The serving code
adds sampling (`neuron.text.sampling`) and stop strings (`neuron.text.stop`).

`tool_choice` `"required"` and a named function are enforced by the prompt:
the generation is started inside a tool-call block (the model's `<tool_call>`
marker is appended to the prompt, after closing a reasoning block the
template left open), so the first thing the model writes is a call's body;
a named choice also renders only that function. Without a tool-call marker
in the vocabulary neither can be honoured, and the request is refused (400)
rather than answered with prose.

Not for: policy such as upstream's "thinking off unless asked" — the caller
passes `default_template_kwargs`, which the request's `chat_template_kwargs`
override.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from neuron.text.errors import InvalidParameter, UnsupportedValue
from neuron.text.images import ImageInputs, ImageLimits
from neuron.text.messages import chat_messages, chat_tools
from neuron.text.output import OutputParser
from neuron.text.reasoning import Markers, prompt_opens_reasoning
from neuron.text.tokenizer import ModelTokenizer
from neuron.text.tool_calls import ToolSchemas
from protocol.openai import ChatCompletionRequest, NamedToolChoice
from protocol.worker import RawTensor

__all__ = ["ChatPrompt"]

# Enough prompt ids before the output for any tokenizer's spacing rules.
_CONTEXT_IDS = 4


@attrs.frozen
class ChatPrompt:
    text: str
    token_ids: tuple[int, ...]
    tools: tuple[dict[str, Any], ...] | None  # template-ready; None when none apply
    parse_tool_calls: bool
    opens_reasoning: bool
    opens_tool_call: bool = False  # `tool_choice` forced a call: output starts inside one
    # A vision model's image tensors for the worker (`neuron.text.images`); the
    # token ids then hold each image's placeholder tokens, so they count in its length.
    inputs: Mapping[str, RawTensor] = attrs.field(factory=dict)

    @classmethod
    def build(
        cls,
        request: ChatCompletionRequest,
        tokenizer: ModelTokenizer,
        markers: Markers,
        *,
        images: ImageInputs | None = None,
        image_limits: ImageLimits | None = None,
        model_id: str | None = None,
        default_template_kwargs: Mapping[str, Any] | None = None,
    ) -> ChatPrompt:
        """Raises the content errors of `messages`, the image errors of
        `neuron.text.images` and the template errors of `ModelTokenizer.render_chat`.
        `images`: the model's image side (None: a text-only model, images refused)."""
        vision = images is not None
        messages = chat_messages(request.messages, vision=vision, model_id=model_id)
        tools = _chosen_tools(chat_tools(request.tools), request.tool_choice)
        kwargs = {**(default_template_kwargs or {}), **(request.chat_template_kwargs or {})}
        text, token_ids = tokenizer.chat_prompt(messages, tools, template_kwargs=kwargs)
        inputs = {}
        if images is not None:
            limits = image_limits or ImageLimits()
            token_ids, inputs = images.prompt_inputs(messages, token_ids, limits)
        opens_reasoning = prompt_opens_reasoning(text, markers)
        forced = tools is not None and request.tool_choice not in (None, "auto", "none")
        if forced:
            prefix = _forced_call_prefix(markers, opens_reasoning)
            text, token_ids = text + prefix, [*token_ids, *tokenizer.encode(prefix)]
        return cls(
            text=text,
            token_ids=tuple(token_ids),
            tools=None if tools is None else tuple(tools),
            parse_tool_calls=tools is not None and request.tool_choice != "none",
            opens_reasoning=opens_reasoning and not forced,
            opens_tool_call=forced,
            inputs=inputs,
        )

    def output_parser(
        self, tokenizer: ModelTokenizer, markers: Markers, **kwargs: Any
    ) -> OutputParser:
        """The parser for this prompt's output; `kwargs` go to `OutputParser`."""
        return OutputParser(
            tokenizer,
            markers if self.parse_tool_calls else markers.without_tool_calls(),
            schemas=ToolSchemas.from_tools(self.tools),
            starts_in_reasoning=self.opens_reasoning,
            starts_in_tool_call=self.opens_tool_call,
            context=self.token_ids[-_CONTEXT_IDS:],
            hidden_ids=tokenizer.eos_token_ids,
            **kwargs,
        )


def _chosen_tools(
    tools: list[dict[str, Any]] | None, choice: object
) -> list[dict[str, Any]] | None:
    """The tools to render: all of them, or only the one a named `tool_choice` picks."""
    if choice in (None, "auto", "none"):
        return tools
    if tools is None:
        raise InvalidParameter("tool_choice", f"{_describe(choice)} needs function tools")
    if not isinstance(choice, NamedToolChoice):
        return tools
    chosen = [t for t in tools if t["function"]["name"] == choice.function.name]
    if not chosen:
        names = ", ".join(repr(t["function"]["name"]) for t in tools)
        raise InvalidParameter(
            "tool_choice", f"no tool named {choice.function.name!r}; the tools are {names}"
        )
    return chosen


def _forced_call_prefix(markers: Markers, opens_reasoning: bool) -> str:
    if markers.tool_call is None:
        raise UnsupportedValue(
            "tool_choice",
            "this model's vocabulary has no tool-call marker, so a call cannot be forced;"
            " use tool_choice 'auto'",
        )
    close = f"\n{markers.reasoning.close_text}\n\n" if opens_reasoning and markers.reasoning else ""
    return f"{close}{markers.tool_call.open_text}"


def _describe(choice: object) -> str:
    if isinstance(choice, NamedToolChoice):
        return f"tool_choice naming {choice.function.name!r}"
    return f"tool_choice {choice!r}"
