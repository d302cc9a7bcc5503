"""OpenAI legacy Completions (`POST /v1/completions`) on the wire.

The request takes a raw `prompt` (text, texts, token ids or lists of token
ids) instead of chat messages; the reply and its stream chunks share one
shape, `text_completion`, whose choices carry `text`. Usage and stream
options are the chat ones from `protocol.openai`. Nothing here renders
templates or decides defaults.
"""

from typing import Literal

import attrs

from protocol._converter import keep_null
from protocol.ids import ModelId
from protocol.openai import CompletionId, StreamOptions, Usage

__all__ = [
    "Completion",
    "CompletionChoice",
    "CompletionLogprobs",
    "CompletionRequest",
    "Prompt",
]

# A text, a batch of texts, one tokenised prompt, or a batch of them.
Prompt = str | tuple[str, ...] | tuple[int, ...] | tuple[tuple[int, ...], ...]


@attrs.frozen(kw_only=True)
class CompletionRequest:
    """`POST /v1/completions`. Unknown fields are dropped when parsed."""

    model: ModelId
    prompt: Prompt
    suffix: str | None = None
    echo: bool | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | tuple[str, ...] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # vendor
    min_p: float | None = None  # vendor
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None  # vendor
    logit_bias: dict[int, float] | None = None
    logprobs: int | None = None  # how many top tokens to report
    n: int | None = None
    best_of: int | None = None
    seed: int | None = None
    user: str | None = None

    @property
    def prompts(self) -> tuple[str | tuple[int, ...], ...]:
        """The prompt as a batch: each entry a text or a list of token ids."""
        prompt = self.prompt
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            return (prompt,)  # one text, or one tokenised prompt
        return prompt

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else self.stop


@attrs.frozen(kw_only=True)
class CompletionLogprobs:
    tokens: tuple[str, ...] | None = None
    token_logprobs: tuple[float | None, ...] | None = None
    top_logprobs: tuple[dict[str, float] | None, ...] | None = None
    text_offset: tuple[int, ...] | None = None


@attrs.frozen(kw_only=True)
class CompletionChoice:
    index: int = 0
    text: str
    # null in every stream chunk but the last one of a choice
    finish_reason: Literal["stop", "length", "content_filter"] | None = keep_null()
    logprobs: CompletionLogprobs | None = keep_null()


@attrs.frozen(kw_only=True)
class Completion:
    """A legacy completion, or one chunk of a streamed one (same shape)."""

    id: CompletionId
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: ModelId
    choices: tuple[CompletionChoice, ...] = ()
    usage: Usage | None = None
    system_fingerprint: str | None = None
