"""Synthesise small, real Hugging Face model snapshots offline, for tests, benchmarks and demos.

`python -m neuron.synth OUT_DIR --arch ARCH --size tiny|small|0.5b` writes a
genuine causal LM snapshot: random weights (seeded) in safetensors, a byte-level BPE
tokenizer really trained with `tokenizers` on a bounded corpus that ships with Python
(stdlib sources picked by the seed, plus a little chat text embedded here), a
Qwen3-style ChatML chat template with tools, tool calls and thinking, and a
generation_config. It is written exactly as `save_pretrained` writes a hub snapshot,
in either the plain `org/name` layout or the Hugging Face cache layout
(`models--org--name/snapshots/<rev>` with blobs and `refs/main`), so everything
downstream loads it through the normal code path. The same seed gives bit-identical
files; a complete build with a matching marker is reused.

Every arch and size shares one 4096-token tokenizer and template. `0.5b` matches
Qwen2.5-0.5B's transformer body (896 hidden, 24 layers, 14/2 heads, 4864 MLP), not its
151,936-token vocabulary, so it has ~0.36 B parameters rather than 0.49 B.

ARCH is one of the families the engine must serve, each in its own shape on that
body (`_family_options`): plain full attention (`qwen3`, `llama`); every layer in a
sliding window and no `layer_types` (`mistral`); four small experts, two active
(`qwen3_moe`); Gated DeltaNet `linear_attention` layers with a `full_attention` layer
every fourth (`qwen3_5`, and with experts `qwen3_5_moe`, `qwen3_next`);
`sliding_attention` with `full_attention` every fourth (`gemma3`; `gemma4` adds wider
full-attention heads, per-layer input embeddings and a logit soft cap, no KV sharing);
alternating sliding and full attention with sinks and experts (`gpt_oss`, eager
attention only: transformers has no sdpa path for it); short-conv `conv` layers with
attention every third layer (`lfm2`); Mamba2 layers with NoPE attention every fourth
and experts (`granitemoehybrid`). Two vision-language families take images: `qwen3_vl`
(Qwen3-VL: mrope, a deepstack vision tower) and `qwen3_5_vl` (Qwen3.5's hybrid body with
the tower), each with the shared tokenizer plus Qwen-VL's vision tokens, a template that
renders image parts as placeholders, and a real `preprocessor_config.json`
(`VISION_ARCHS`). The windowed families use a 16-token window in
`tiny` and `small` (short prompts pass it) and 1024 in `0.5b`; hybrids get at least
four layers so every layer kind appears.

This module is not a model zoo and never downloads anything; the weights are noise,
so the text a synthetic model produces is gibberish. Heavy imports (torch,
transformers, tokenizers) happen inside the functions that need them. The module runs
past 500 lines because ~140 of them are the chat template and chat corpus: data kept
next to the one builder that writes it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import random
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from attrs import frozen

Arch = Literal[
    "qwen3",
    "llama",
    "mistral",
    "qwen3_moe",
    "qwen3_5",
    "qwen3_5_moe",
    "qwen3_next",
    "gemma3",
    "gemma4",
    "gpt_oss",
    "lfm2",
    "granitemoehybrid",
    "qwen3_vl",
    "qwen3_5_vl",
]
Size = Literal["tiny", "small", "0.5b"]
DType = Literal["fp32", "bf16"]
Layout = Literal["plain", "hf-cache"]

ARCHS: dict[str, tuple[str, str]] = {  # arch -> (config class, architecture)
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM"),
    "qwen3_5": ("Qwen3_5TextConfig", "Qwen3_5ForCausalLM"),
    "qwen3_5_moe": ("Qwen3_5MoeTextConfig", "Qwen3_5MoeForCausalLM"),
    "qwen3_next": ("Qwen3NextConfig", "Qwen3NextForCausalLM"),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
    "gemma4": ("Gemma4TextConfig", "Gemma4ForCausalLM"),
    "gpt_oss": ("GptOssConfig", "GptOssForCausalLM"),
    "lfm2": ("Lfm2Config", "Lfm2ForCausalLM"),
    "granitemoehybrid": ("GraniteMoeHybridConfig", "GraniteMoeHybridForCausalLM"),
}
# Vision-language families: a vision tower in front of the same language model body.
VISION_ARCHS: dict[str, tuple[str, str]] = {
    "qwen3_vl": ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration"),
    "qwen3_5_vl": ("Qwen3_5Config", "Qwen3_5ForConditionalGeneration"),
}
DTYPES: dict[str, str] = {"fp32": "float32", "bf16": "bfloat16"}
LAYOUTS = ("plain", "hf-cache")

DEMO_MODEL_NAME = "helexa/tiny-chat"
MARKER_FILE = "helexa-synth.json"
# Bump when the output of a build changes, so cached snapshots are rebuilt.
_BUILDER_VERSION = 3
_CORPUS_CHARS = 1_500_000
VOCAB_SIZE = 4096
_MAX_POSITIONS = 4096
# The sliding window of the windowed families: short prompts pass it in tiny and small.
_WINDOW = 16
_WINDOW_0_5B = 1024

CHATML_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Like Qwen3, the markup tags are single tokens but not "special": they survive
# `skip_special_tokens` so the parent's reasoning and tool-call parsers can see them.
TAG_TOKENS = (
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
)
# Like Qwen, the learned vocabulary comes first and the added tokens sit at the end, so
# their ids are fixed and a model config needs no tokenizer.
_LEARNED_VOCAB = VOCAB_SIZE - len(CHATML_SPECIAL_TOKENS) - len(TAG_TOKENS)
TOKEN_IDS = {t: _LEARNED_VOCAB + i for i, t in enumerate(CHATML_SPECIAL_TOKENS + TAG_TOKENS)}
REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    MARKER_FILE,
)
# A vision build's extra tokens sit after the shared 4096 (so every text build keeps
# its ids), in Qwen-VL's names; its vocabulary is rounded up to a multiple of 8.
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
VISION_TOKEN_IDS = {t: VOCAB_SIZE + i for i, t in enumerate(VISION_TOKENS)}
VISION_VOCAB_SIZE = VOCAB_SIZE + 8
# The vision tower's patches: 16-pixel patches merged 2x2 into one language token, so a
# 64x64 image (the smallest the preprocessor makes) costs 4 tokens, 1024x1024 1024.
VISION_PATCH = 16
VISION_MERGE = 2
VISION_MIN_PIXELS = 64 * 64
VISION_MAX_PIXELS = 1024 * 1024


@frozen
class ModelShape:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    dtype: DType = "fp32"  # what a build writes unless asked otherwise


SIZES: dict[str, ModelShape] = {
    # ~0.9M parameters: the test model; decode is dominated by Python overhead.
    "tiny": ModelShape(128, 2, 4, 2, 32, 384),
    # ~4.2M parameters: the stack-notes "tiny" model.
    "small": ModelShape(256, 4, 4, 2, 64, 768),
    # ~362M parameters, Qwen2.5-0.5B's body: ~0.72 GB in bf16 (1.45 GB in fp32).
    "0.5b": ModelShape(896, 24, 14, 2, 64, 4864, dtype="bf16"),
}


@frozen
class DemoModels:
    """Where `ensure_demo_models` put one synthetic model, in both layouts."""

    model_id: str
    plain_root: Path
    hf_cache_root: Path
    plain_path: Path
    hf_cache_path: Path


def synthesize(
    dest: Path,
    *,
    arch: Arch = "qwen3",
    size: Size = "tiny",
    seed: int = 0,
    name: str | None = None,
    layout: Layout = "plain",
    dtype: DType | None = None,
    max_positions: int | None = None,
) -> Path:
    """Build a synthetic model snapshot under `dest` (once) and return its directory.

    `name` defaults to `helexa/<arch>-<size>` and `dtype` to the size's own (bf16 for
    `0.5b`, else fp32). `layout="plain"` writes `dest/org/name/`; `layout="hf-cache"`
    writes `dest/models--org--name/snapshots/<rev>/` with blobs and `refs/main`. A
    complete snapshot with a matching marker is reused, so repeated calls are cheap;
    concurrent builders serialise on a lock file in `dest`. `max_positions` sets the
    context length (default 4096), e.g. 32768 to test agent-sized prompts.
    """
    target, marker = _plan(dest, arch, size, seed, name, layout, dtype, max_positions)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with _locked(dest):
        if _is_complete(target, marker):
            return target
        with tempfile.TemporaryDirectory(dir=dest, prefix=".build-") as tmp:
            staging = Path(tmp) / "snapshot"
            config = model_config(arch, size, dtype=dtype, max_positions=max_positions)
            _write_snapshot(staging, marker, config, seed, vision=arch in VISION_ARCHS)
            if layout == "plain":
                _install_plain(staging, target)
            else:
                _install_hf_cache(staging, target)
    return target


def is_built(
    dest: Path,
    *,
    arch: Arch = "qwen3",
    size: Size = "tiny",
    seed: int = 0,
    name: str | None = None,
    layout: Layout = "plain",
    dtype: DType | None = None,
    max_positions: int | None = None,
) -> bool:
    """Whether `synthesize` with these arguments would reuse a complete build (cheap)."""
    return _is_complete(*_plan(dest, arch, size, seed, name, layout, dtype, max_positions))


def _plan(
    dest, arch, size, seed, name, layout, dtype, max_positions=None
) -> tuple[Path, dict[str, object]]:
    """The checked arguments' target directory under `dest`, and its marker."""
    name = name or default_name(arch, size)
    org, repo = _split_name(name)
    dtype = _checked_dtype(arch, size, dtype)
    _check_choice("layout", layout, LAYOUTS)
    marker = _marker(name, arch, size, seed, dtype)
    if max_positions is not None and max_positions != _MAX_POSITIONS:
        if max_positions < 64:
            raise ValueError(f"max_positions must be at least 64, got {max_positions}")
        marker["max_positions"] = max_positions  # absent by default: older builds stay valid
    return _target_dir(Path(dest), layout, org, repo, _revision(marker)), marker


def model_config(
    arch: Arch, size: Size, *, dtype: DType | None = None, max_positions: int | None = None
):
    """The transformers config a build of `arch` and `size` writes (no weights made)."""
    import transformers

    dtype = _checked_dtype(arch, size, dtype)
    shape = SIZES[size]
    if arch in VISION_ARCHS:
        return _vision_config(arch, size, shape, dtype, max_positions)
    config_class, architecture = ARCHS[arch]
    options = {
        **_text_options(shape, VOCAB_SIZE, dtype, max_positions),
        "tie_word_embeddings": True,
        "architectures": [architecture],
    }
    options.update(_family_options(arch, size, shape))
    return getattr(transformers, config_class)(**options)


def _text_options(
    shape: ModelShape, vocab_size: int, dtype: str, max_positions: int | None
) -> dict[str, Any]:
    """The decoder's shape, ids and init every family (and the VLMs' text model) share."""
    return {
        "vocab_size": vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "head_dim": shape.head_dim,
        "max_position_embeddings": max_positions or _MAX_POSITIONS,
        # With tied embeddings and the usual 0.02, the residual stream is mostly the
        # input token's own embedding and greedy decoding repeats it forever; 0.2 gives
        # varied output and wide top-1 margins, which batching-equality tests rely on.
        "initializer_range": 0.2,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
        "bos_token_id": TOKEN_IDS["<|endoftext|>"],
        "eos_token_id": TOKEN_IDS["<|im_end|>"],
        "pad_token_id": TOKEN_IDS["<|endoftext|>"],
        "dtype": DTYPES[dtype],
    }


def _family_options(arch: str, size: str, shape: ModelShape) -> dict[str, object]:
    """What `arch` sets on top of the shared shape: its layer kinds, window, experts."""
    window = _WINDOW if size != "0.5b" else _WINDOW_0_5B
    layers = max(shape.num_hidden_layers, 4)  # so every layer kind of a hybrid appears
    # Four experts of a quarter of the dense MLP each, two of them active per token.
    expert = shape.intermediate_size // 4
    experts = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": expert}
    if arch == "mistral":  # a window and no layer_types: every layer slides
        return {"sliding_window": window}
    if arch == "qwen3_moe":
        return {**experts, "norm_topk_prob": True}
    if arch in ("qwen3_5", "qwen3_5_moe", "qwen3_next"):
        options = {
            "num_hidden_layers": layers,
            "layer_types": _interleave(layers, "linear_attention", "full_attention", 4),
            "linear_conv_kernel_dim": 4,
            "linear_key_head_dim": shape.head_dim,
            "linear_value_head_dim": shape.head_dim,
            "linear_num_key_heads": shape.num_key_value_heads,
            "linear_num_value_heads": shape.num_attention_heads,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1_000_000.0,
                "partial_rotary_factor": 0.25,
            },
        }
        if arch != "qwen3_5":
            options |= {**experts, "shared_expert_intermediate_size": expert}
        return options
    if arch in ("gemma3", "gemma4"):
        options = {
            # Gemma scales input embeddings by sqrt(hidden): tied, the residual stream
            # stays the input token's own embedding and greedy decoding repeats it.
            "tie_word_embeddings": False,
            "num_hidden_layers": layers,
            "layer_types": _interleave(layers, "sliding_attention", "full_attention", 4),
            "sliding_window": window,
            "rope_parameters": {
                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
            },
        }
        if arch == "gemma3":
            return options | {"query_pre_attn_scalar": shape.head_dim}
        # Gemma 4's own shape: wider full-attention heads, partial ("proportional")
        # rope on them, per-layer input embeddings (PLE) and a final logit soft cap.
        # No KV sharing between layers and no MoE block (both off in the dense models).
        options["rope_parameters"]["full_attention"] = {
            "rope_type": "proportional",
            "partial_rotary_factor": 0.25,
            "rope_theta": 1_000_000.0,
        }
        return options | {
            "global_head_dim": 2 * shape.head_dim,
            "hidden_size_per_layer_input": 16,
            "vocab_size_per_layer_input": VOCAB_SIZE,
            "num_kv_shared_layers": 0,
            "final_logit_softcapping": 30.0,
        }
    if arch == "gpt_oss":  # alternating like the real ones, with sinks and experts
        return {
            "num_hidden_layers": layers,
            "layer_types": _interleave(layers, "sliding_attention", "full_attention", 2),
            "sliding_window": window,
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "intermediate_size": expert,
        }
    if arch == "lfm2":  # attention at every third layer from the third, like LFM2-350M
        kinds = ["full_attention" if i % 3 == 2 else "conv" for i in range(layers)]
        return {
            "num_hidden_layers": layers,
            "layer_types": kinds,
            "block_auto_adjust_ff_dim": False,
            "conv_L_cache": 3,
        }
    if arch == "granitemoehybrid":  # Granite 4.0-H: Mamba2 layers, NoPE attention, MoE
        heads = 2 * shape.hidden_size // shape.head_dim
        return {
            "num_hidden_layers": layers,
            "layer_types": _interleave(layers, "mamba", "attention", 4),
            "mamba_n_heads": heads,
            "mamba_d_head": shape.head_dim,
            "mamba_expand": 2,
            "mamba_n_groups": 1,
            "mamba_d_state": 16,
            "mamba_d_conv": 4,
            "mamba_chunk_size": 64,
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "intermediate_size": expert,
            "shared_intermediate_size": expert,
            "position_embedding_type": None,
        }
    return {}


def _vision_config(arch: str, size: str, shape: ModelShape, dtype: str, max_positions: int | None):
    """A Qwen3-VL (`qwen3_vl`): the shared text body with multimodal rope (mrope, its
    three sections splitting the rotary half of a head), and a two-block vision tower
    whose first block also feeds the language model's first layer (deepstack). A
    Qwen3.5 (`qwen3_5_vl`): the `qwen3_5` hybrid text body (Gated DeltaNet and full
    attention, partial rotary) with mrope on its rotary part, and the tower without
    deepstack."""
    import transformers

    config_class, architecture = VISION_ARCHS[arch]
    text = _text_options(shape, VISION_VOCAB_SIZE, dtype, max_positions)
    text["rope_parameters"] |= {
        "mrope_section": _mrope_section(shape.head_dim // 2),
        "mrope_interleaved": True,
    }
    vision = {
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 2,
        "patch_size": VISION_PATCH,
        "spatial_merge_size": VISION_MERGE,
        "temporal_patch_size": 2,
        "out_hidden_size": shape.hidden_size,
        "num_position_embeddings": 256,  # a 16x16 grid, interpolated for other sizes
        "deepstack_visual_indexes": [0],
        "initializer_range": 0.2,
    }
    if arch == "qwen3_5_vl":
        text |= _family_options("qwen3_5", size, shape)
        rotary = int(shape.head_dim * 0.25)
        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 1_000_000.0,
            "partial_rotary_factor": 0.25,
            "mrope_section": _mrope_section(rotary // 2),
            "mrope_interleaved": True,
        }
        del vision["deepstack_visual_indexes"]
    return getattr(transformers, config_class)(
        text_config=text,
        vision_config=vision,
        image_token_id=VISION_TOKEN_IDS["<|image_pad|>"],
        video_token_id=VISION_TOKEN_IDS["<|video_pad|>"],
        vision_start_token_id=VISION_TOKEN_IDS["<|vision_start|>"],
        vision_end_token_id=VISION_TOKEN_IDS["<|vision_end|>"],
        tie_word_embeddings=True,
        dtype=DTYPES[dtype],
        architectures=[architecture],
    )


def _mrope_section(half: int) -> list[int]:
    """Split a head's rotary half into mrope's (time, height, width) sections."""
    third = half // 3
    return [half - 2 * third, third, third]


def preprocessor_config() -> dict[str, object]:
    """A vision build's `preprocessor_config.json`: transformers' Qwen2-VL image
    processor (Qwen3-VL's own), at the vision tower's patch and merge sizes."""
    return {
        "image_processor_type": "Qwen2VLImageProcessor",
        "do_resize": True,
        "do_rescale": True,
        "do_normalize": True,
        "do_convert_rgb": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "patch_size": VISION_PATCH,
        "temporal_patch_size": 2,
        "merge_size": VISION_MERGE,
        "size": {"shortest_edge": VISION_MIN_PIXELS, "longest_edge": VISION_MAX_PIXELS},
    }


def _interleave(layers: int, kind: str, full: str, every: int) -> list[str]:
    """`layers` layer kinds: `full` at every `every`-th layer, else `kind`."""
    return [full if (i + 1) % every == 0 else kind for i in range(layers)]


def default_name(arch: str, size: str) -> str:
    return f"helexa/{arch}-{size}"


def ensure_demo_models(
    cache_dir: Path,
    *,
    name: str = DEMO_MODEL_NAME,
    arch: Arch = "qwen3",
    size: Size = "tiny",
    seed: int = 0,
) -> DemoModels:
    """Build (once) one synthetic model in both layouts under `cache_dir`.

    Meant for a session-scoped pytest fixture (pass a persistent cache such as
    `request.config.cache.mkdir(...)`) and for `cortex up`'s demo.
    """
    plain_root = Path(cache_dir) / "plain"
    hf_root = Path(cache_dir) / "hf-cache"
    common = {"name": name, "arch": arch, "size": size, "seed": seed}
    plain = synthesize(plain_root, layout="plain", **common)
    cached = synthesize(hf_root, layout="hf-cache", **common)
    return DemoModels(name, plain_root, hf_root, plain, cached)


# -- command line ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m neuron.synth",
        description="Write a synthetic Hugging Face model snapshot (random weights, "
        "trained BPE tokenizer, Qwen3 chat template) and print its path.",
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    parser.add_argument(
        "--arch",
        choices=[*ARCHS, *VISION_ARCHS],
        default="qwen3",
        help="model family; windowed ones (mistral, gemma3, gemma4, gpt_oss) slide over "
        "16 tokens in tiny and small; hybrids (qwen3_5, qwen3_5_moe, qwen3_next, lfm2, "
        "granitemoehybrid) interleave their recurrent layers with full attention; qwen3_vl is a "
        "vision-language model (images in) with a real image preprocessor config",
    )
    parser.add_argument("--size", choices=list(SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", type=_model_name, help="org/name (default: helexa/<arch>-<size>)")
    parser.add_argument("--layout", choices=LAYOUTS, default="plain")
    parser.add_argument(
        "--dtype", choices=list(DTYPES), help="weight dtype (default: bf16 for 0.5b, else fp32)"
    )
    parser.add_argument(
        "--max-positions",
        type=int,
        help="context length, max_position_embeddings (default 4096; e.g. 32768)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="build nothing: exit 0 if a complete build is there, else 1",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.check:
        keys = ("arch", "size", "seed", "name", "layout", "dtype", "max_positions")
        options = {k: getattr(args, k) for k in keys}
        sys.exit(0 if is_built(args.out_dir, **options) else 1)
    path = synthesize(
        args.out_dir,
        arch=args.arch,
        size=args.size,
        seed=args.seed,
        name=args.name,
        layout=args.layout,
        dtype=args.dtype,
        max_positions=args.max_positions,
    )
    print(path)


def _model_name(value: str) -> str:
    try:
        _split_name(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return value


# -- naming and markers ---------------------------------------------------------------


def _split_name(name: str) -> tuple[str, str]:
    parts = name.split("/")
    ok = len(parts) == 2 and all(p and p not in (".", "..") and "--" not in p for p in parts)
    if not ok or any(c in name for c in "\\\0 "):
        raise ValueError(f"model name must look like 'org/name', got {name!r}")
    return parts[0], parts[1]


def _check_choice(what: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {sorted(choices)}")


def _checked_dtype(arch: str, size: str, dtype: str | None) -> DType:
    """Check arch and size, and return `dtype` (or the size's own), checked."""
    _check_choice("arch", arch, {**ARCHS, **VISION_ARCHS})
    _check_choice("size", size, SIZES)
    dtype = dtype or SIZES[size].dtype
    _check_choice("dtype", dtype, DTYPES)
    return dtype


def _marker(name: str, arch: str, size: str, seed: int, dtype: str) -> dict[str, object]:
    return {
        "builder": _BUILDER_VERSION,
        "name": name,
        "arch": arch,
        "size": size,
        "seed": seed,
        "dtype": dtype,
    }


def _revision(marker: dict[str, object]) -> str:
    return hashlib.sha1(json.dumps(marker, sort_keys=True).encode()).hexdigest()


def _target_dir(dest: Path, layout: Layout, org: str, repo: str, rev: str) -> Path:
    if layout == "plain":
        return dest / org / repo
    return dest / f"models--{org}--{repo}" / "snapshots" / rev


def _is_complete(target: Path, marker: dict[str, object]) -> bool:
    required = REQUIRED_FILES
    if marker.get("arch") in VISION_ARCHS:
        required = (*required, "preprocessor_config.json")
    if not all((target / f).is_file() for f in required):
        return False
    try:
        return json.loads((target / MARKER_FILE).read_text()) == marker
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _locked(dest: Path) -> Iterator[None]:
    with open(dest / ".helexa-synth.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# -- installing a staged snapshot -----------------------------------------------------


def _install_plain(staging: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        shutil.rmtree(target)  # an incomplete or outdated build
    os.replace(staging, target)


def _install_hf_cache(staging: Path, target: Path) -> None:
    repo_dir = target.parent.parent
    blobs = repo_dir / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    building = target.with_name(f".{target.name}.partial")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    for path in sorted(staging.iterdir()):
        digest = _sha256(path)
        os.replace(path, blobs / digest)
        (building / path.name).symlink_to(Path("..", "..", "blobs", digest))
    os.replace(building, target)
    refs = repo_dir / "refs"
    refs.mkdir(exist_ok=True)
    (refs / "main").write_text(target.name)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- building -------------------------------------------------------------------------


def _write_snapshot(
    out: Path, marker: dict[str, object], config, seed: int, *, vision: bool = False
) -> None:
    from neuron.worker.loader import quiet_transformers

    positions = config.get_text_config().max_position_embeddings
    tokenizer = _wrap_tokenizer(_trained_tokenizer(seed), positions, vision=vision)
    model = _build_model(config, seed)
    with quiet_transformers():
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    if vision:
        text = json.dumps(preprocessor_config(), indent=2, sort_keys=True)
        (out / "preprocessor_config.json").write_text(text + "\n")
    (out / MARKER_FILE).write_text(json.dumps(marker, sort_keys=True))
    for path in out.iterdir():
        path.chmod(0o644)  # save_pretrained leaves some files owner-only


def _corpus(seed: int) -> list[str]:
    """The chat sample plus stdlib sources picked by `seed`, bounded to keep training fast."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))
    random.Random(seed).shuffle(files)
    texts, total = [_CHAT_CORPUS] * 20, 0
    for path in files:
        if total >= _CORPUS_CHARS:
            break
        text = path.read_text(encoding="utf-8", errors="replace")
        texts.append(text)
        total += len(text)
    return texts


def _trained_tokenizer(seed: int):
    """A fresh copy of the tokenizer trained for `seed`: trained once per process (a test
    session builds many families with one seed), then copied from its JSON."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(_trained_tokenizer_json(seed))


@functools.lru_cache(maxsize=4)
def _trained_tokenizer_json(seed: int) -> str:
    return _train_tokenizer(seed).to_str()


def _train_tokenizer(seed: int):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_LEARNED_VOCAB,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(seed), trainer=trainer)
    return tokenizer


def _wrap_tokenizer(tokenizer, max_positions: int = _MAX_POSITIONS, *, vision: bool = False):
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in CHATML_SPECIAL_TOKENS]
    )
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    if {t: tokenizer.token_to_id(t) for t in TOKEN_IDS} != TOKEN_IDS:
        raise RuntimeError("the corpus is too small to train the full vocabulary")
    if vision:
        tokenizer.add_special_tokens(
            [AddedToken(t, special=True, normalized=False) for t in VISION_TOKENS]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=VISION_CHAT_TEMPLATE if vision else CHAT_TEMPLATE,
        model_max_length=max_positions,
        clean_up_tokenization_spaces=False,
    )


def _build_model(config, seed: int):
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    # Initialise in fp32 whatever the output dtype, so a bf16 build is the fp32 build
    # rounded; a private RNG stream keeps building from disturbing the caller's torch RNG.
    dtype = config.dtype
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if getattr(config, "vision_config", None) is not None:
            from transformers import AutoModelForImageTextToText

            model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
        else:
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=TOKEN_IDS["<|endoftext|>"],
        eos_token_id=[TOKEN_IDS["<|im_end|>"], TOKEN_IDS["<|endoftext|>"]],
        pad_token_id=TOKEN_IDS["<|endoftext|>"],
        do_sample=True,
        temperature=0.6,
        top_p=0.95,
        top_k=20,
    )
    return model.to(dtype)


# -- data ---------------------------------------------------------------------------

# Qwen3's chat template (ChatML), kept faithful so prompts look like production ones.
CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}
"""  # noqa: E501

# The vision build's template: content given as parts renders each image part as
# Qwen-VL's placeholder (`<|vision_start|><|image_pad|><|vision_end|>`, the pad expanded
# to the image's token count after tokenising) and text parts verbatim, as Qwen3-VL's
# own template does.
_TEXT_CONTENT = """    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}"""
_PARTS_CONTENT = """    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set parts = namespace(text='') %}
        {%- for part in message.content %}
            {%- if part.type in ('image', 'image_url') %}
                {%- set parts.text = parts.text + '<|vision_start|><|image_pad|><|vision_end|>' %}
            {%- elif part.type == 'text' %}
                {%- set parts.text = parts.text + part.text %}
            {%- endif %}
        {%- endfor %}
        {%- set content = parts.text %}
    {%- endif %}"""
assert _TEXT_CONTENT in CHAT_TEMPLATE
VISION_CHAT_TEMPLATE = CHAT_TEMPLATE.replace(_TEXT_CONTENT, _PARTS_CONTENT)

# Qwen2/Qwen3's pre-tokenizer split pattern.
_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# A little conversational text, so common English and chat markup get merges too.
_CHAT_CORPUS = """\
<|im_start|>system
You are a helpful assistant.<|im_end|>
<|im_start|>user
What is the capital of France?<|im_end|>
<|im_start|>assistant
<think>
The user asks a simple geography question.
</think>

The capital of France is Paris.<|im_end|>
<|im_start|>user
What's the weather like in Berlin today?<|im_end|>
<|im_start|>assistant
<tool_call>
{"name": "get_weather", "arguments": {"city": "Berlin", "unit": "celsius"}}
</tool_call><|im_end|>
<|im_start|>user
<tool_response>
{"temperature": 18, "conditions": "partly cloudy"}
</tool_response><|im_end|>
<|im_start|>assistant
It is 18 degrees and partly cloudy in Berlin.<|im_end|>
The quick brown fox jumps over the lazy dog. Hello, world! How are you today?
Please summarise the following document in three sentences. Thank you very much.
"""


if __name__ == "__main__":
    main()
