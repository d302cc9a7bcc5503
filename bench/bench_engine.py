"""Decode throughput of the engine: N sequences batched vs the same N run one by one.

Builds (once, cached) a synthetic model with `neuron.synth`, loads it through the
worker's loader and runs the same ragged greedy workload two ways in the same
process, reporting decode tok/s (decode steps only: forward + sampling) and
end-to-end tok/s (wall time, prefill included) with the ratio against the sequential
baseline. A third line runs the peer, transformers' own left-padded `generate`, on
the same prompts.

Not a test: figures depend on the machine; compare lines from one run only.

    python bench/bench_engine.py --size small --sequences 8 --new-tokens 64
    python bench/bench_engine.py --arch llama --size 0.5b --dtype bf16 --new-tokens 16
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from neuron.synth import ARCHS, SIZES, default_cache_dir, synthesize
from neuron.worker.engine import Engine, EngineConfig, SeqId
from neuron.worker.loader import LoadedModel, load_model
from neuron.worker.sampler import SamplingParams
from neuron.worker.snapshot import resolve_snapshot


def main() -> None:
    args = _parse_args()
    torch.set_num_threads(args.threads)
    loaded = _load(args)
    prompts = _prompts(args.sequences, args.prompt_tokens, args.seed)
    params = SamplingParams(max_tokens=args.new_tokens, temperature=0.0, ignore_eos=True)
    config = EngineConfig(max_batch_size=max(args.sequences, 1), max_seq_len=1024)
    _run(loaded, config, prompts[:2], params, batched=True)  # warm-up
    sequential = _run(loaded, config, prompts, params, batched=False)
    batched = _run(loaded, config, prompts, params, batched=True)
    peer = _peer_generate(loaded, prompts, args.new_tokens)
    _report(args, loaded, sequential, batched, peer)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="qwen3", choices=list(ARCHS))
    parser.add_argument("--size", default="small", choices=list(SIZES))
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=32, help="longest prompt")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    # One thread by default: on a small shared box, two OpenMP threads contending with
    # anything else make the figures swing by 10x.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    return parser.parse_args()


def _load(args: argparse.Namespace) -> LoadedModel:
    name = f"helexa/bench-{args.arch}-{args.size}"
    root = args.cache_dir / "bench"
    synthesize(root, arch=args.arch, size=args.size, name=name)
    return load_model(resolve_snapshot(name, [root]), dtype=args.dtype)


def _prompts(count: int, longest: int, seed: int) -> list[list[int]]:
    """Ragged prompts: lengths spread from longest/2 to longest."""
    generator = torch.Generator().manual_seed(seed)
    lengths = [max(1, longest - (i * longest) // (2 * max(count, 1))) for i in range(count)]
    return [torch.randint(0, 4000, (n,), generator=generator).tolist() for n in lengths]


def _run(loaded, config, prompts, params, *, batched: bool) -> dict[str, float]:
    totals = {"tokens": 0.0, "decode_tokens": 0.0, "decode_seconds": 0.0, "wall": 0.0}
    groups = [prompts] if batched else [[p] for p in prompts]
    for group in groups:
        engine = Engine(loaded, config)
        started = time.perf_counter()
        for index, prompt in enumerate(group):
            engine.add(SeqId(index), prompt, params)
        while engine.has_work:
            engine.step()
        totals["wall"] += time.perf_counter() - started
        stats = engine.statistics()
        totals["tokens"] += stats.tokens_generated
        totals["decode_tokens"] += stats.decode_tokens
        totals["decode_seconds"] += stats.decode_seconds
        engine.close()
    return totals


def _peer_generate(loaded: LoadedModel, prompts, new_tokens: int) -> dict[str, float]:
    """transformers `generate` on the same prompts, left-padded into one batch."""
    model = loaded.model
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    started = time.perf_counter()
    with torch.no_grad():
        model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    wall = time.perf_counter() - started
    return {"tokens": float(len(prompts) * new_tokens), "wall": wall}


def _report(args, loaded, sequential, batched, peer) -> None:
    print(
        f"model={loaded.report.model_id} arch={args.arch} size={args.size} "
        f"dtype={loaded.report.dtype} params={loaded.report.num_parameters / 1e6:.1f}M "
        f"threads={args.threads} sequences={args.sequences} new_tokens={args.new_tokens}"
    )
    print(f"{'mode':<22}{'decode tok/s':>14}{'e2e tok/s':>12}{'wall s':>9}{'vs seq':>9}")
    base = sequential["decode_tokens"] / sequential["decode_seconds"]
    for label, run in (("engine sequential", sequential), ("engine batched", batched)):
        decode = run["decode_tokens"] / run["decode_seconds"]
        e2e = run["tokens"] / run["wall"]
        print(f"{label:<22}{decode:>14.1f}{e2e:>12.1f}{run['wall']:>9.2f}{decode / base:>8.2f}x")
    e2e = peer["tokens"] / peer["wall"]
    print(f"{'hf generate (padded)':<22}{'-':>14}{e2e:>12.1f}{peer['wall']:>9.2f}{'':>9}")


if __name__ == "__main__":
    main()
