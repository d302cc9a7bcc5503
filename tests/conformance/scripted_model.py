"""A synthetic model that always says the same thing: a reply script for conformance tests.

`neuron.synth` builds a real Qwen3 snapshot with random weights, whose text is
gibberish — fine for checking structure, useless for checking that a tool call
or a thinking block survives the trip through the gateway. This module rewrites
such a snapshot's weights so that the model is a bigram machine: attention and
the second MLP are zeroed, every script token gets its own one-hot embedding
direction, and the first MLP maps each script token's direction to its
successor's, so the next token depends on the last token alone (and the
margin is wide enough that sampling cannot stray). The script is a chain of
distinct token ids, found in the snapshot's own tokenizer:

    "\\n"   <think> The user wants a file read! </think> "\\n\\n"
    "\\n\\n" Let me check. <tool_call> <function=read_file><parameter=path>notes.txt
            </tool_call> <|im_end|>

A prompt ends in "\\n" (`<|im_start|>assistant\\n`) when the template leaves
thinking on, and in "\\n\\n" (`</think>\\n\\n`) when `enable_thinking` is false,
so the model thinks exactly when asked, then says one sentence and calls
`read_file` (Qwen-XML form, which needs no repeated token) — or, without
tools, shows that call as text and stops.

Not for: anything but tests. Building needs torch and safetensors.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

SCRIPTED = "helexa/scripted"
THINKING = "The user wants a file read!"
TEXT = "Let me check."
CALL_BODY = " <function=read_file>\n<parameter=path>notes.txt"
TOOL = "read_file"
TOOL_INPUT = {"path": "notes.txt"}
_VERSION = 1
_MARKER = "helexa-scripted.json"
_SCALE = 8.0  # embedding scale: a logit margin of ~90 before the temperature


def build_scripted_model(root: Path) -> str:
    """The scripted snapshot under `root` (built once); returns its model id."""
    from neuron.synth import TOKEN_IDS, synthesize

    target = synthesize(root, arch="qwen3", size="tiny", name=SCRIPTED)
    marker = target / _MARKER
    if marker.exists() and json.loads(marker.read_text()).get("version") == _VERSION:
        return SCRIPTED
    chain = _chain(target, TOKEN_IDS)
    _rewrite_weights(target / "model.safetensors", chain)
    marker.write_text(json.dumps({"version": _VERSION, "chain": chain}))
    return SCRIPTED


def _chain(target: Path, tags: dict[str, int]) -> list[int]:
    """The script as token ids, each id once, so a bigram can follow it."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(target / "tokenizer.json"))
    newline, blank = tokenizer.encode("\n").ids, tokenizer.encode("\n\n").ids
    assert len(newline) == 1 and len(blank) == 1, (newline, blank)
    used = {newline[0], blank[0], *tags.values()}
    pieces = {}
    for name, text in (("call", CALL_BODY), ("text", TEXT), ("thinking", THINKING)):
        pieces[name] = _distinct_tokens(tokenizer, text, used)
    return [
        newline[0], tags["<think>"], *pieces["thinking"], tags["</think>"], blank[0],
        *pieces["text"], tags["<tool_call>"], *pieces["call"], tags["</tool_call>"],
        tags["<|im_end|>"],
    ]  # fmt: skip


def _distinct_tokens(tokenizer, text: str, used: set[int]) -> list[int]:
    """Token ids spelling `text`, none in `used` and none twice (they are added)."""
    by_text: dict[str, list[int]] = {}
    for i in range(tokenizer.get_vocab_size()):
        piece = tokenizer.decode([i], skip_special_tokens=False)
        if piece and "\ufffd" not in piece:
            by_text.setdefault(piece, []).append(i)

    def spell(rest: str) -> list[int] | None:
        if not rest:
            return []
        for length in range(min(len(rest), 24), 0, -1):
            for i in by_text.get(rest[:length], ()):
                if i in used:
                    continue
                used.add(i)
                tail = spell(rest[length:])
                if tail is not None:
                    return [i, *tail]
                used.discard(i)
        return None

    ids = spell(text)
    if ids is None:
        raise RuntimeError(f"cannot spell {text!r} with distinct tokens")
    return ids


def _rewrite_weights(path: Path, chain: list[int]) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(str(path))
    embed = weights["model.embed_tokens.weight"]
    hidden = embed.shape[1]
    dims = {token: d for d, token in enumerate(dict.fromkeys(chain))}
    gate = weights["model.layers.0.mlp.gate_proj.weight"]
    up = weights["model.layers.0.mlp.up_proj.weight"]
    down = weights["model.layers.0.mlp.down_proj.weight"]
    assert len(dims) <= hidden and len(chain) <= gate.shape[0]
    for token, d in dims.items():
        embed[token] = 0.0
        embed[token, d] = _SCALE
    for name, tensor in weights.items():
        if name.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight", "mlp.gate_proj.weight",
                          "mlp.up_proj.weight")):  # fmt: skip
            tensor.zero_()
        elif name.endswith("layernorm.weight") or name == "model.norm.weight":
            tensor.fill_(1.0)
    # After the RMS norm a script token's hidden state is sqrt(hidden) along its own
    # direction; unit u fires for token u only and adds (successor - itself) * scale.
    norm = hidden**0.5
    for unit, (token, successor) in enumerate(itertools.pairwise(chain)):
        gate[unit, dims[token]] = 1.0
        up[unit, dims[token]] = 1.0
        activation = torch.nn.functional.silu(torch.tensor(norm)) * norm
        down[dims[successor], unit] += _SCALE / activation
        down[dims[token], unit] -= _SCALE / activation
    save_file(weights, str(path), metadata={"format": "pt"})
