"""Convert one GGUF file into a safetensors snapshot: `python -m neuron.worker.gguf_convert`.

A GGUF file (llama.cpp's and Ollama's format) holds the config, the tokenizer with its
chat template, and the (often quantized) weights in one file. transformers reads it
(`load_gguf_checkpoint`, its GGUF tokenizer converter) and dequantizes the weights. This
module does that once and writes what the rest of the neuron reads for any model: a
snapshot directory with `config.json`, `generation_config.json`, the tokenizer files and
`model.safetensors`. Weights are stored as float32 (dequantized values are exact there);
`config.json` declares bfloat16, which is what `dtype = "auto"` then loads.

Why a converted snapshot instead of loading the GGUF on every load: for SmolLM2-135M
(Q4_1, 98 MB) reading and dequantizing the GGUF took 17-20 s on a 2-core box, loading the
converted snapshot about 1 s (bench/README.md has the figures).

It runs in its own short-lived process, started by the torch-free parent
(`neuron.worker.gguf`), so the parent never imports torch and a converter crash or a
hostile file costs no worker. Exit status: 0 done, 3 unsupported architecture or
quantization type, 2 the file is unreadable or corrupt; the reason is the last line on
stderr.

Not for: finding GGUF files or caching (`neuron.worker.gguf`), loading (`loader`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXIT_CORRUPT = 2
EXIT_UNSUPPORTED = 3
DECLARED_DTYPE = "bfloat16"


class Unsupported(Exception):
    """The file is readable, but transformers cannot build a model from it."""


def convert(gguf: Path, destination: Path) -> None:
    """Write the snapshot for `gguf` into `destination` (an existing, empty directory)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    metadata = _read(load_gguf_checkpoint, gguf)
    config = _config(AutoConfig, metadata["config"])
    with torch.device("meta"):
        shell = AutoModelForCausalLM.from_config(config)
    tensors = _read(load_gguf_checkpoint, gguf, return_tensors=True, model_to_load=shell,
                    torch_dtype=torch.float32)["tensors"]  # fmt: skip
    missing = set(shell.state_dict()) - set(tensors) - _tied(config)
    if missing:
        raise Unsupported(f"the file lacks {len(missing)} weights, e.g. {sorted(missing)[0]}")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config.dtype = DECLARED_DTYPE
    config.architectures = [type(shell).__name__]  # e.g. LlamaForCausalLM, as hub configs say
    config.save_pretrained(destination)
    GenerationConfig.from_model_config(config).save_pretrained(destination)
    tokenizer.save_pretrained(destination)
    contiguous = {name: t.contiguous() for name, t in tensors.items()}
    save_file(contiguous, str(destination / "model.safetensors"), metadata={"format": "pt"})


def _read(load_gguf_checkpoint, gguf: Path, **kwargs):
    try:
        return load_gguf_checkpoint(str(gguf), **kwargs)
    except (NotImplementedError, KeyError) as exc:
        # transformers' GGUF reader: NotImplementedError for a quantization type it
        # cannot dequantize, KeyError for an architecture it has no mapping for.
        raise Unsupported(_reason(exc)) from exc
    except ValueError as exc:
        if "not supported" in str(exc):
            raise Unsupported(_reason(exc)) from exc
        raise


def _config(auto_config, fields: dict):
    model_type = fields.get("model_type")
    try:
        return auto_config.for_model(**fields)
    except (ValueError, KeyError) as exc:
        raise Unsupported(f"model type {model_type!r}: {_reason(exc)}") from exc


def _tied(config) -> set[str]:
    return {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()


def _reason(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neuron.worker.gguf_convert",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("gguf", type=Path, help="the .gguf file")
    parser.add_argument("destination", type=Path, help="an empty directory to write into")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["TQDM_DISABLE"] = "1"  # load_gguf_checkpoint's own progress bar
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        convert(args.gguf, args.destination)
    except Unsupported as exc:
        print(f"unsupported: {exc}", file=sys.stderr)
        return EXIT_UNSUPPORTED
    except Exception as exc:  # the file is the only input: anything else means it is bad
        print(f"unreadable: {type(exc).__name__}: {_reason(exc)}", file=sys.stderr)
        return EXIT_CORRUPT
    print(json.dumps({"converted": str(args.gguf), "into": str(args.destination)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
