"""Constrained decoding in the worker: llguidance matchers over one model's tokenizer.

The parent sends a grammar (llguidance's JSON grammar text, built from a JSON Schema
or a Lark grammar by `neuron.text.constraints`, which has already validated it);
`Grammars` turns it into a fresh `llguidance.LLMatcher` per sequence. A grammar is
compiled once per (grammar text, tokenizer) — one `Grammars` per loaded model — and
each sequence gets a `deep_copy` of the compiled matcher, so n sequences with one
schema, or the same schema request after request, pay for compiling once (LRU of
`CACHE_SIZE` grammars).

`apply_masks` is the sampler's part of the batched step: for the rows whose sequence
has a matcher, each matcher writes its allowed-token bitmask into one `[rows, words]`
int32 tensor, and disallowed logits become -inf. Rows without a matcher are not
touched (a batch with no grammar at all costs one list comprehension). After a
token is sampled, `SequenceSampler.record` advances the matcher with it.

When the grammar is complete the matcher allows only the model's end-of-sequence
tokens, so the sequence ends with finish reason `stop`.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import llguidance
import numpy as np
import torch

from neuron.worker.errors import InvalidRequest

CACHE_SIZE = 64


class GrammarError(InvalidRequest):
    """The grammar does not compile against this tokenizer (a `bad_request`)."""


class Grammars:
    """Compiled matchers for one tokenizer, by grammar text."""

    def __init__(self, tokenizer: llguidance.LLTokenizer) -> None:
        self.tokenizer = tokenizer
        self._compiled: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()

    @classmethod
    def from_snapshot(cls, path: Path, vocab_size: int, eos_ids: Iterable[int]) -> Grammars:
        """From a snapshot's `tokenizer.json`, for a model with `vocab_size` logits."""
        try:
            text = (Path(path) / "tokenizer.json").read_text()
            eos = sorted(eos_ids)
            tokenizer = llguidance.LLTokenizer(text, n_vocab=vocab_size, eos_token=eos or None)
        except (OSError, ValueError, RuntimeError) as exc:
            message = f"constrained decoding needs the model's tokenizer.json: {exc}"
            raise GrammarError(message) from exc
        return cls(tokenizer)

    def matcher(self, grammar: str) -> llguidance.LLMatcher:
        """A fresh matcher for one sequence; raises `GrammarError`."""
        compiled = self._compiled.get(grammar)
        if compiled is None:
            compiled = llguidance.LLMatcher(self.tokenizer, grammar)
            if compiled.is_error():
                raise GrammarError(f"the grammar does not compile: {compiled.get_error()}")
            self._compiled[grammar] = compiled
            if len(self._compiled) > CACHE_SIZE:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(grammar)
        return compiled.deep_copy()

    @property
    def cached(self) -> int:
        return len(self._compiled)


def json_schema_grammar(schema: dict) -> str:
    """llguidance's grammar text for a JSON Schema (no whitespace freedom)."""
    return llguidance.LLMatcher.grammar_from_json_schema(
        json.dumps(schema), defaults={"whitespace_flexible": False}
    )


def apply_masks(logits: torch.Tensor, matchers: Sequence[llguidance.LLMatcher | None]) -> None:
    """Set the logits of tokens each row's matcher disallows to -inf (in place).

    The bitmask is unpacked with numpy and, on CPU, applied through a numpy view of
    the logits: a handful of small tensor ops would each wake torch's thread pool,
    which on a busy host cost more than the whole mask (tens of ms a step)."""
    rows = [i for i, m in enumerate(matchers) if m is not None]
    if not rows:
        return
    vocab = logits.shape[-1]
    words = (vocab + 31) // 32
    bitmask = np.empty((len(rows), words), dtype=np.int32)
    for j, i in enumerate(rows):
        matchers[i].unsafe_compute_mask_ptr(bitmask[j].ctypes.data, words * 4)
    bits = np.unpackbits(bitmask.view(np.uint8), axis=-1, bitorder="little")[:, :vocab]
    blocked = bits == 0
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.is_contiguous():
        view = logits.detach().numpy()
        if len(rows) == len(matchers):
            np.copyto(view, -np.inf, where=blocked)
        else:
            sub = view[rows]
            np.copyto(sub, -np.inf, where=blocked)
            view[rows] = sub
        return
    index = torch.tensor(rows, device=logits.device)
    mask = torch.from_numpy(blocked).to(logits.device)
    logits.index_copy_(0, index, logits[index].masked_fill(mask, float("-inf")))
