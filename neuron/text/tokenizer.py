"""A loaded model's tokenizer and chat template, for the torch-free neuron parent.

`ModelTokenizer.from_snapshot(path)` reads `tokenizer.json` (with the `tokenizers`
library), `tokenizer_config.json` (special tokens) and the chat template, in
upstream's priority: `chat_template.jinja`, then `chat_template.json`, then
`tokenizer_config.json`'s `chat_template` (a string, or named templates of which
`tool_use` is preferred for requests with tools, else `default`). EOS ids are the
union of the tokenizer's `eos_token` and the ids `config.json` /
`generation_config.json` declare.

`render_chat` renders template-ready message dicts (see `neuron.text.messages`).
When the template fails it retries once with all system messages merged into one
leading message (if that changes anything); if it still fails — or the snapshot
has no usable template — a request with tools raises `TemplateRenderFailed`
(422), and any other request falls back to plain ChatML, as upstream does. The
fallback is logged; it is right for ChatML models and a best effort for others.

Not for: decoding a stream (`neuron.text.detokenize`) or anything on the device
side. Neither transformers nor torch is imported here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import jinja2
from tokenizers import Tokenizer

from neuron.text import chat_template as ct
from neuron.text import tokenizer_files as files
from neuron.text.errors import InvalidParameter, TemplateRenderFailed
from neuron.text.special_text import SpecialTextGuard

__all__ = ["ModelTokenizer"]

log = logging.getLogger(__name__)

_RESERVED_KWARGS = frozenset({"messages", "tools", "documents", "add_generation_prompt"})


@attrs.frozen(eq=False)
class ModelTokenizer:
    tokenizer: Tokenizer
    special_tokens: Mapping[str, str]  # bos_token, eos_token, … → token text
    eos_token_ids: tuple[int, ...]
    templates: Mapping[str, jinja2.Template]  # "default", maybe "tool_use"
    added_token_ids: frozenset[int]
    special_token_ids: frozenset[int]
    special_token_texts: frozenset[str]  # their text, which client text may not spell
    # the same tokenizer with special-token text encoded as plain text (client text)
    plain: Tokenizer

    @classmethod
    def from_snapshot(cls, path: Path, *, eos_token_ids: Iterable[int] = ()) -> ModelTokenizer:
        """Load from a snapshot directory; `eos_token_ids` (e.g. `SnapshotInfo`'s) are
        merged with the ids the tokenizer and the model configs declare."""
        path = Path(path)
        tokenizer = files.load_tokenizer(path / "tokenizer.json")
        config = files.read_json(path / "tokenizer_config.json")
        special = files.special_tokens(config)
        added = tokenizer.get_added_tokens_decoder()
        eos = {tokenizer.token_to_id(special["eos_token"])} if "eos_token" in special else set()
        eos |= set(eos_token_ids) | files.config_eos_ids(path)
        plain = Tokenizer.from_str(tokenizer.to_str())
        plain.encode_special_tokens = True
        return cls(
            tokenizer=tokenizer,
            special_tokens=special,
            eos_token_ids=tuple(sorted(i for i in eos if i is not None)),
            templates=files.load_templates(path, config),
            added_token_ids=frozenset(added),
            special_token_ids=frozenset(i for i, t in added.items() if t.special),
            special_token_texts=frozenset(t.content for t in added.values() if t.special),
            plain=plain,
        )

    # -- tokens ------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Tokens the tokenizer knows, added ones included (the model may have more rows)."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; special-token text in it becomes those tokens.

        `add_special_tokens` adds the post-processor's tokens (e.g. a BOS); chat
        prompts never want that, since their template writes them.
        """
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_plain(self, text: str) -> list[int]:
        """Token ids of `text` with special-token text in it encoded as ordinary text."""
        return self.plain.encode(text, add_special_tokens=False).ids

    def special_texts(self) -> list[str]:
        """The text of every special (control) token."""
        return list(self.special_token_texts)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def single_token_id(self, text: str) -> int | None:
        """The id if `text` always encodes to exactly that one token, else None."""
        token_id = self.tokenizer.token_to_id(text)
        return token_id if token_id is not None and self.encode(text) == [token_id] else None

    # -- chat --------------------------------------------------------------------

    @property
    def has_chat_template(self) -> bool:
        return bool(self.templates)

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        add_generation_prompt: bool = True,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> str:
        """The prompt text for a conversation (see the module docstring for failures).

        `template_kwargs` (a request's `chat_template_kwargs`, e.g. `enable_thinking`)
        are passed as a mapping, not as `**kwargs`, because clients choose the keys;
        they override the special tokens, and the keys this method sets itself are
        refused (`InvalidParameter`, 400).
        """
        kwargs = dict(template_kwargs or {})
        _check_kwargs(kwargs)
        prepared = ct.prepare_messages(messages)
        render_kwargs = {
            "tools": list(tools) if tools else None,
            "add_generation_prompt": add_generation_prompt,
            "special_tokens": self.special_tokens,
            "template_kwargs": kwargs,
        }
        failure = self._try_render(prepared, render_kwargs)
        if isinstance(failure, str):
            return failure
        if tools:
            raise TemplateRenderFailed(_failure_message(failure)) from failure
        if failure is not None:  # a missing template was logged once, at load
            log.warning("chat template failed, using the ChatML fallback error=%r", failure)
        return ct.chatml_prompt(prepared, add_generation_prompt=add_generation_prompt)

    def chat_prompt(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> tuple[str, list[int]]:
        """The rendered prompt and its ids, with the client's text guarded: special-token
        text inside messages, tools or template kwargs is tokenised as plain text, never
        as the control token it spells (`neuron.text.special_text`)."""
        guard = SpecialTextGuard(self.special_token_texts)
        rendered = self.render_chat(
            guard.neutralise(list(messages)),
            guard.neutralise(list(tools)) if tools else tools,
            template_kwargs=guard.neutralise(dict(template_kwargs or {})),
        )
        if not guard.replaced:
            return rendered, self.encode(rendered)
        return guard.restore(rendered), guard.encode(rendered, self.encode, self.encode_plain)

    def count_chat_tokens(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> int:
        """Prompt tokens this conversation costs (with the generation prompt)."""
        return len(self.chat_prompt(messages, tools, template_kwargs=template_kwargs)[1])

    def _try_render(self, messages: list[dict], kwargs: dict) -> str | Exception | None:
        """The rendered text, or the failure (None when there is no template)."""
        template = self._template(bool(kwargs["tools"]))
        if template is None:
            return None
        try:
            return ct.render_template(template, messages, **kwargs)
        except ct.TEMPLATE_FAILURES as exc:
            if not ct.has_misplaced_system(messages):
                return exc
            failure = exc
        try:
            return ct.render_template(template, ct.merge_system_messages(messages), **kwargs)
        except ct.TEMPLATE_FAILURES:
            return failure

    def _template(self, with_tools: bool) -> jinja2.Template | None:
        if with_tools and "tool_use" in self.templates:
            return self.templates["tool_use"]
        return self.templates.get("default") or next(iter(self.templates.values()), None)


def _check_kwargs(template_kwargs: Mapping[str, Any]) -> None:
    reserved = sorted(_RESERVED_KWARGS & template_kwargs.keys())
    if reserved:
        raise InvalidParameter(
            "chat_template_kwargs", f"the keys {reserved} are set by the server, not the client"
        )


def _failure_message(failure: Exception | None) -> str:
    if failure is None:
        return "this model has no chat template, so it cannot be given tools"
    return f"the model's chat template could not render this request: {failure}"
