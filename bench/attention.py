"""Decode attention on CPU: transformers' `sdpa` against the worker's `helexa_cpu`.

Two parts, each printing ratios measured in this one run (`neuron/worker/attention.py`
says why the worker's CPU attention decodes by two matmuls):

1. the attention call alone, one query token per row over a left-padded context (the
   engine's decode shape, grouped-query heads, additive mask), bf16 and float32;
2. the worker's engine, in process, on a real model (SmolLM2-135M-Instruct, or a
   synthesized one with `--synth`): a batch of ragged rows decoding greedily, the model
   switched between the two implementations in place (same weights), rounds
   alternating; the median time of a step in which every row decodes.

    python bench/attention.py                 # SmolLM2-135M-Instruct, bf16, 1 thread
    python bench/attention.py --rows 1,16 --context 128,512 --threads 2
    python bench/attention.py --synth         # synthesized qwen3 `small`

Not for: engine throughput or the server comparison (`engine.py`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402

from neuron.worker import attention  # noqa: E402


def _median_us(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


class _Layer(torch.nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups = groups


def kernel_table(args: argparse.Namespace) -> None:
    heads, kv_heads, dim = 9, 3, 64  # SmolLM2-135M's attention shape
    layer = _Layer(heads // kv_heads)
    print(f"\n1. one decode attention call ({heads} heads, {kv_heads} kv heads, dim {dim}), µs")
    print(f"  {'dtype':<10}{'rows':>5}{'context':>9}{'sdpa':>10}{'helexa_cpu':>12}{'speed-up':>10}")
    for dtype in (torch.bfloat16, torch.float32):
        for rows in args.rows:
            for context in args.context:
                q = torch.randn(rows, heads, 1, dim, dtype=dtype)
                k = torch.randn(rows, kv_heads, context, dim, dtype=dtype)
                v = torch.randn(rows, kv_heads, context, dim, dtype=dtype)
                mask = torch.zeros(rows, 1, 1, context, dtype=dtype)
                for r in range(rows):  # ragged rows: left padding
                    mask[r, ..., : (r * context) // (2 * rows)] = torch.finfo(dtype).min
                inputs = (layer, q, k, v, mask)
                theirs = _median_us(partial(sdpa_attention_forward, *inputs), args.repeats)
                ours = _median_us(partial(attention.attention_forward, *inputs), args.repeats)
                name = str(dtype).removeprefix("torch.")
                print(f"  {name:<10}{rows:>5}{context:>9}{theirs:>10.0f}{ours:>12.0f}"
                      f"{theirs / ours:>9.2f}x")  # fmt: skip


def model_table(args: argparse.Namespace) -> None:
    from cortex import demo
    from neuron.synth import synthesize
    from neuron.worker import gguf
    from neuron.worker.loader import load_model
    from neuron.worker.snapshot import snapshot_at

    file = None if args.synth else demo.packaged_gguf()
    if file is not None:
        name, path = demo.DEMO_ID, gguf.converted(file)
    else:
        name = f"helexa/bench-qwen3-small-{args.dtype}"
        path = synthesize(args.cache, arch="qwen3", size="small", dtype=args.dtype, name=name)
    loaded = load_model(snapshot_at(name, path), dtype=args.dtype)
    print(f"\n2. the worker's engine (in process) on {name} ({args.dtype}): ragged prompts of "
          f"{args.prompt // 2}..{args.prompt} tokens, {args.steps} new tokens each; ms per "
          f"decode step with every row decoding, medians of {args.rounds} rounds")  # fmt: skip
    print(f"  {'rows':>5}{'sdpa':>9}{'helexa_cpu':>12}{'speed-up':>10}")
    for rows in args.rows:
        seeded = torch.Generator().manual_seed(rows)
        lengths = [args.prompt - (i * args.prompt) // (2 * rows) for i in range(rows)]
        prompts = [torch.randint(0, 4000, (n,), generator=seeded).tolist() for n in lengths]
        per: dict[str, list[float]] = {"sdpa": [], attention.NAME: []}
        for _ in range(args.rounds):
            for implementation, times in per.items():
                loaded.model.set_attn_implementation(implementation)
                times.append(_decode_step_ms(loaded, prompts, args.steps))
        loaded.model.set_attn_implementation(attention.NAME)
        theirs, ours = (statistics.median(v) for v in per.values())
        print(f"  {rows:>5}{theirs:>9.1f}{ours:>12.1f}{theirs / ours:>9.2f}x")


def _decode_step_ms(loaded, prompts: list[list[int]], steps: int) -> float:
    from neuron.worker.engine import Engine, EngineConfig, SeqId
    from neuron.worker.sampler import SamplingParams

    engine = Engine(loaded, EngineConfig(max_batch_size=len(prompts)))
    params = SamplingParams(max_tokens=steps, temperature=0.0, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add(SeqId(str(i)), prompt, params)
    times = []
    while engine.has_work:
        result = engine.step()
        if result.decode_rows == len(prompts) and not result.prefill_tokens:
            times.append(result.seconds)
    engine.close()
    return statistics.median(times) * 1e3


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=_ints, default=[1, 16])
    parser.add_argument("--context", type=_ints, default=[128, 512, 2048])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--synth", action="store_true")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/helexa/bench-models")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"decode attention bench: torch {torch.__version__}, {args.threads} thread(s), "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")  # fmt: skip
    kernel_table(args)
    model_table(args)


if __name__ == "__main__":
    main()
