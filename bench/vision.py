"""Images through the engine on the tiny Qwen3-VL: preprocessing, encoding, TTFT, batching.

One invocation builds (once) the synthetic `qwen3_vl` model, loads it with the
production loader, and measures in this process, on the worker's `Engine`:

- **(a) per image size** (448x448 and 1024x1024 PNGs): the parent's work (decode the
  data URI and run the model's own image processor, `neuron.text.images`), the vision
  tower alone (`VisionModel.encode`), and the time to first token of one image request
  through the engine — next to transformers' own prefill forward of the same inputs
  (`model(input_ids, pixel_values, image_grid_thw)`), the baseline: TTFT ÷ baseline
  is the engine's overhead on an image prompt.
- **(b) batching**: 8 image requests (448x448, different images, 32 greedy tokens each)
  admitted together against the same 8 run one at a time: aggregate tok/s, and the
  ratio (batching must win, > 1).

Medians over `--rounds`. The machine is shared and noisy: compare lines of one run.
`python bench/vision.py` (~1-2 min on 2 cores).
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from neuron.synth import TOKEN_IDS, VISION_TOKEN_IDS, synthesize
from neuron.text.images import ImageInputs, ImageLimits
from neuron.worker.engine import Engine, EngineConfig, SeqId
from neuron.worker.loader import load_model
from neuron.worker.sampler import SamplingParams
from neuron.worker.snapshot import resolve_snapshot
from neuron.worker.vision import VisionModel

NAME = "helexa/qwen3_vl-tiny"
LIMITS = ImageLimits(max_image_bytes=64 << 20, max_image_pixels=4096 * 4096)


def png_uri(px: int, seed: int) -> str:
    from PIL import Image

    data = random.Random(seed).randbytes(px * px * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", (px, px), data).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def prompt_for(images: ImageInputs, uri: str):
    """Chat-shaped ids with one image, expanded, and the worker's tensors."""
    parts = [{"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": "x"}]
    messages = [{"role": "user", "content": parts}]
    pad = VISION_TOKEN_IDS["<|image_pad|>"]
    ids = [TOKEN_IDS["<|im_start|>"], 1395, 198, VISION_TOKEN_IDS["<|vision_start|>"], pad,
           VISION_TOKEN_IDS["<|vision_end|>"], 87, TOKEN_IDS["<|im_end|>"], 198,
           TOKEN_IDS["<|im_start|>"], 1918, 198]  # fmt: skip
    expanded, raw = images.prompt_inputs(messages, ids, LIMITS)
    return expanded, {name: tensor.to_torch() for name, tensor in raw.items()}


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run_engine(loaded, vision, requests, new_tokens: int, together: bool) -> tuple[float, int]:
    """Seconds and tokens for `requests`, all admitted at once or one after another."""
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    engine = Engine(loaded, EngineConfig(max_batch_size=8, max_seq_len=4096,
                                         prefill_chunk_tokens=2048))  # fmt: skip
    groups = [requests] if together else [[r] for r in requests]
    tokens, started = 0, time.perf_counter()
    for i, group in enumerate(groups):
        for j, (ids, inputs) in enumerate(group):
            engine.add(SeqId(i * 100 + j), ids, params, vision.prepare(ids, inputs))
        while engine.has_work:
            tokens += sum(len(o.token_ids) for o in engine.step().outputs)
    return time.perf_counter() - started, tokens


def ttft(loaded, vision, ids, inputs) -> float:
    engine = Engine(loaded, EngineConfig(max_batch_size=2, max_seq_len=4096,
                                         prefill_chunk_tokens=2048))  # fmt: skip
    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    started = time.perf_counter()
    engine.add(SeqId(1), ids, params, vision.prepare(ids, inputs))
    while not any(o.token_ids for o in engine.step().outputs):
        pass
    return time.perf_counter() - started


def one_image(px: int, loaded, vision, images, rounds: int) -> str:
    """Section (a)'s row for a px x px image."""
    uri = png_uri(px, seed=px)
    ids, inputs = prompt_for(images, uri)
    pixels, grid = inputs["pixel_values"], inputs["image_grid_thw"]
    x = torch.tensor([ids])
    mm = (x == vision.image_token_id).int()
    pre, enc, first, base = [], [], [], []
    for _ in range(rounds):
        pre.append(timed(lambda: prompt_for(images, uri)))
        enc.append(timed(lambda: vision.encode(pixels, grid, loaded.device)))
        first.append(ttft(loaded, vision, ids, inputs))
        forward = lambda: loaded.model(input_ids=x, mm_token_type_ids=mm, logits_to_keep=1,  # noqa: E731
                                       **inputs)  # fmt: skip
        base.append(timed(forward))
    t, b = statistics.median(first), statistics.median(base)
    return (f"    {px:>4}x{px:<4}    | {len(ids):>6} | {statistics.median(pre) * 1e3:>13.1f} "
            f"| {statistics.median(enc) * 1e3:>9.1f} | {t * 1e3:>7.1f} | {b * 1e3:>23.1f} "
            f"| {t / b:>14.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "helexa-bench")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = args.cache / "vision"
    path = synthesize(root, arch="qwen3_vl")
    loaded = load_model(resolve_snapshot(NAME, [root]), dtype="fp32")
    vision = VisionModel.of(loaded.model)
    images = ImageInputs.from_snapshot(path, "qwen3_vl")
    print(f"qwen3_vl tiny, fp32, {args.threads} threads, median of {args.rounds} rounds\n")
    print(
        "(a) one image    | tokens | preprocess ms | encode ms | TTFT ms | transformers "
        "prefill ms | TTFT / prefill"
    )
    with torch.no_grad():
        for px in (448, 1024):
            print(one_image(px, loaded, vision, images, args.rounds))
        requests = [prompt_for(images, png_uri(448, seed=s)) for s in range(8)]
        alone, together = [], []
        for _ in range(args.rounds):
            seconds, tokens = run_engine(loaded, vision, requests, args.new_tokens, False)
            alone.append(tokens / seconds)
            seconds, tokens = run_engine(loaded, vision, requests, args.new_tokens, True)
            together.append(tokens / seconds)
    a, g = statistics.median(alone), statistics.median(together)
    print(
        f"\n(b) 8 image requests (448x448, {args.new_tokens} tokens each): one at a time "
        f"{a:.1f} tok/s, batched {g:.1f} tok/s, batched / one at a time {g / a:.2f}"
    )


if __name__ == "__main__":
    main()
