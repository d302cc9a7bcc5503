"""One chat request's way through the text pipeline, composed: prompt in, parser out.

`ChatPrompt.build` turns a `ChatCompletionRequest` into the rendered prompt, its
token ids, the template-ready tools and whether the prompt opened a reasoning
block; `ChatPrompt.output_parser` then makes the matching `OutputParser` (tool
calls parsed only when the request has tools and `tool_choice` is not `none`,
EOS ids hidden, the prompt's tail as detokenizer context). The serving code
adds sampling (`neuron.text.sampling`) and stop strings (`neuron.text.stop`).

Not for: policy such as upstream's "thinking off unless asked" — the caller
passes `default_template_kwargs`, which the request's `chat_template_kwargs`
override.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from neuron.text.messages import chat_messages, chat_tools
from neuron.text.output import OutputParser
from neuron.text.reasoning import Markers, prompt_opens_reasoning
from neuron.text.tokenizer import ModelTokenizer
from neuron.text.tool_calls import ToolSchemas
from protocol.openai import ChatCompletionRequest

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

    @classmethod
    def build(
        cls,
        request: ChatCompletionRequest,
        tokenizer: ModelTokenizer,
        markers: Markers,
        *,
        vision: bool = False,
        model_id: str | None = None,
        default_template_kwargs: Mapping[str, Any] | None = None,
    ) -> ChatPrompt:
        """Raises the content errors of `messages` and the template errors of
        `ModelTokenizer.render_chat`."""
        messages = chat_messages(request.messages, vision=vision, model_id=model_id)
        tools = chat_tools(request.tools)
        kwargs = {**(default_template_kwargs or {}), **(request.chat_template_kwargs or {})}
        text, token_ids = tokenizer.chat_prompt(messages, tools, template_kwargs=kwargs)
        return cls(
            text=text,
            token_ids=tuple(token_ids),
            tools=None if tools is None else tuple(tools),
            parse_tool_calls=tools is not None and request.tool_choice != "none",
            opens_reasoning=prompt_opens_reasoning(text, markers),
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
            context=self.token_ids[-_CONTEXT_IDS:],
            hidden_ids=tokenizer.eos_token_ids,
            **kwargs,
        )
