"""Device check: a real neuron on one device against transformers on the same device.

Run by `bench/device_check.sh` (which installs the carried wheels first); on its own:
`python bench/device_check.py --device cuda:0 --size 0.5b --report FILE`. It builds the
synthetic model with `neuron.synth` (`helexa/bench-qwen3-<size>-bf16`, the name
`bench/engine.py` uses, so that script reuses the build) and an fp32 twin of it.

Steps, in order, each printed to stdout and to `--report`:

(b) start `python -m neuron serve` with one `[[devices]]` entry (`--device`; its worker
    is a spawned process pinned with `CUDA_VISIBLE_DEVICES`) serving two models: the
    bench model in bf16 and an fp32 copy of it (same weights, hardlinked). Greedy
    completions through `/v1/completions` (token-id prompts, one alone, then several
    concurrently) are compared with transformers' `generate` of the same prompts on
    the same device after the neuron has stopped: the fp32 texts and token counts must
    be identical (the check); bf16 agreement is reported, not judged (bf16 kernels for
    a batch of one and a padded batch differ in rounding, and random weights give
    near-ties);
(c) SIGKILL the worker while streams run: each stream must end in-band (error event
    `worker_died`, a final `finish_reason: "error"` chunk, `[DONE]`), the replacement
    worker must reload both models and serve again, and on CUDA the killed process's
    memory must be gone (`nvidia-smi`: device memory back to the loaded level, the pid
    no longer listed) and, once the neuron stops, back near the baseline;
(d) aggregate tok/s at each `--streams` count (prefill included, ragged prompts, EOS
    suppressed with `logit_bias` so every stream runs to `--new-tokens`) through the
    neuron, against a static left-padded `generate` of the same prompts here, plus
    load time and memory. `transformers serve` is reported as not run (see bench/README).

Exit status 0 when every check passed, 1 when one failed, 2 on a set-up error. Not a
test: figures from one run only; the verdicts are the point of a run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20
_LISTENING = re.compile(r"neuron listening url=([^\s\"]+)")
_LOADED = re.compile(r"model loaded model=(\S+) device=(\S+) seconds=([\d.]+) memory_bytes=(\d+)")


class CheckFailed(Exception):
    """A check that did not pass; the run goes on where it can."""


class Report:
    """Lines to stdout and the report file as they come; verdicts for the summary."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("w", encoding="utf-8")
        self.verdicts: list[tuple[str, bool, str]] = []

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        self._file.write(text + "\n")
        self._file.flush()

    def verdict(self, what: str, passed: bool, detail: str = "") -> None:
        self.verdicts.append((what, passed, detail))
        self.line(f"  [{'PASS' if passed else 'FAIL'}] {what}{': ' + detail if detail else ''}")

    def summary(self) -> int:
        failed = [v for v in self.verdicts if not v[1]]
        self.line(
            f"\nsummary: {len(self.verdicts) - len(failed)}/{len(self.verdicts)} checks "
            f"passed{'; FAILED: ' + ', '.join(v[0] for v in failed) if failed else ''}"
        )
        self._file.close()
        return 1 if failed else 0


# -- versions -------------------------------------------------------------------------


def check_versions(report: Report, device: str) -> None:
    """Print what runs here; fail fast (SystemExit 2) if the worker cannot import."""
    import torch
    import transformers

    report.line(
        f"python {platform.python_version()}, torch {torch.__version__} "
        f"(CUDA {torch.version.cuda}), transformers {transformers.__version__}"
    )
    for name in ("tokenizers", "safetensors", "trio", "hypercorn", "quart", "cattrs", "attrs"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            report.line(f"  {name} {version(name)}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            _set_up_failed(report, f"{device} asked for, but torch sees no CUDA device")
        index = int(device.partition(":")[2])
        report.line(
            f"device {device}: {torch.cuda.get_device_name(index)}, "
            f"{torch.cuda.get_device_properties(index).total_memory / 2**30:.1f} GiB"
        )
    try:  # the worker's own imports: whatever transformers API they need must exist
        import neuron.worker.engine
        import neuron.worker.kv_arena
        import neuron.worker.loader  # noqa: F401
    except ImportError as exc:
        _set_up_failed(
            report,
            f"the worker cannot import with transformers {transformers.__version__}: {exc}. "
            "The project pins transformers 5.23.0: carry it (bench/prepare_device_wheels.sh "
            "--transformers) and run again.",
        )


def _set_up_failed(report: Report, message: str) -> None:
    report.line(f"device check: SET-UP FAILED: {message}")
    raise SystemExit(2)


# -- memory ---------------------------------------------------------------------------


def _nvidia_smi(*args: str) -> list[list[str]]:
    try:
        out = subprocess.run(
            ["nvidia-smi", *args, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [[cell.strip() for cell in row.split(",")] for row in out.splitlines() if row.strip()]


def gpu_used_mib(device: str) -> int | None:
    """Device-wide memory in use (every process), from nvidia-smi; None on CPU."""
    if not device.startswith("cuda"):
        return None
    rows = _nvidia_smi("--query-gpu=memory.used", "-i", device.partition(":")[2])
    return int(rows[0][0]) if rows and rows[0][0].isdigit() else None


def gpu_processes() -> dict[int, int]:
    """pid → MiB of every compute process nvidia-smi lists (may be empty in a VM)."""
    rows = _nvidia_smi("--query-compute-apps=pid,used_memory")
    return {int(r[0]): int(r[1]) for r in rows if len(r) == 2 and r[0].isdigit() and r[1].isdigit()}


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value} MiB"


# -- the neuron -----------------------------------------------------------------------


class Neuron:
    """A `neuron serve` process with the check's config; its log in a file."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.log_path = workdir / "neuron.log"
        config = workdir / "neuron.toml"
        config.write_text(neuron_toml(args))
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEURON_")}
        pythonpath = [str(REPO), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(pythonpath))
        self.started = time.perf_counter()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "neuron", "serve", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=REPO,
            )
        self.url = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, what: str, predicate: Callable[[], Any], within: float) -> Any:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise CheckFailed(
                    f"neuron exited ({self.process.returncode}) waiting for {what}:"
                    f"\n{self.log()[-4000:]}"
                )
            with contextlib.suppress(Exception):
                if value := predicate():
                    return value
            time.sleep(0.1)
        raise CheckFailed(
            f"timed out after {within:.0f}s waiting for {what}:\n{self.log()[-4000:]}"
        )

    def wait_listening(self) -> None:
        match = self.wait("the listening line", lambda: _LISTENING.search(self.log()), 120)
        self.url = match.group(1)

    def models(self) -> dict[str, dict[str, Any]]:
        import httpx

        body = httpx.get(f"{self.url}/models", timeout=10).json()
        entries = body["data"] if isinstance(body, dict) else body
        return {m["id"]: m for m in entries}

    def wait_models_loaded(self, within: float) -> dict[str, dict[str, Any]]:
        wanted = {self.args.model, self.args.exact_model}

        def loaded() -> dict[str, dict[str, Any]] | None:
            models = self.models()
            done = all(models.get(m, {}).get("status") == "loaded" for m in wanted)
            return models if done else None

        return self.wait("both models loaded", loaded, within)

    def load_lines(self) -> list[tuple[str, str, float, int]]:
        return [(m, d, float(s), int(b)) for m, d, s, b in _LOADED.findall(self.log())]

    def worker(self, other_than: int | None = None) -> Any:
        """The live worker process (psutil): the child running neuron.worker."""
        import psutil

        def find() -> Any:
            for child in psutil.Process(self.process.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if "neuron.worker" in " ".join(child.cmdline()) and _alive(child):
                        return child if child.pid != other_than else None
            return None

        return self.wait("a worker process", find, 120)

    def stop(self) -> int:
        """SIGTERM, bounded; SIGKILL it and its workers if it does not exit."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            import psutil

            for child in psutil.Process(self.process.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.kill()
            self.process.kill()
            self.process.wait(timeout=10)
            raise CheckFailed("neuron ignored SIGTERM for 60 s") from None


def neuron_toml(args: argparse.Namespace) -> str:
    batch = max(max(args.streams), args.check_prompts)
    lines = [
        f"model_roots = [{json.dumps(str(args.model_root))}]",
        "",
        "[listen]",
        'host = "127.0.0.1"',
        "port = 0",
        "[log]",
        'level = "info"',
        "[engine]",
        f"max_batch_size = {batch}",
        "[admission]",
        f"max_queue_depth = {4 * batch}",
        "queue_timeout = 300.0",
        "[timeouts]",
        "worker_ready = 300.0",
        "worker_step = 300.0",
        "worker_heartbeat = 60.0",
        "",
        "[[devices]]",
        f"id = {json.dumps(args.device)}",
        f"max_batch_size = {batch}",
    ]
    if args.device.startswith("cpu"):
        lines.append(f"threads = {args.threads}")
    for model, dtype in ((args.model, "bf16"), (args.exact_model, "fp32")):
        lines += [
            "",
            "[[models]]",
            f"id = {json.dumps(model)}",
            f'dtype = "{dtype}"',
            f"devices = [{json.dumps(args.device)}]",
        ]
    return "\n".join(lines) + "\n"


# -- requests -------------------------------------------------------------------------


def make_prompt(length: int, seed: int) -> list[int]:
    import random

    rng = random.Random(seed)
    return [rng.randrange(4000) for _ in range(length)]  # below the special/tag ids


def ragged_prompts(count: int, longest: int, seed: int) -> list[list[int]]:
    lengths = [max(1, longest - (i * longest) // (2 * count)) for i in range(count)]
    return [make_prompt(n, seed + i) for i, n in enumerate(lengths)]


def completion_body(model: str, prompt: list[int], max_tokens: int, **extra: Any) -> dict:
    return {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, **extra}


async def complete_all(url: str, bodies: list[dict]) -> tuple[list[dict], float]:
    """POST every body at once; the answers in order and the wall time."""
    import httpx
    import trio

    answers: list[dict] = [{} for _ in bodies]
    failures: list[str] = []  # not raised in the tasks: one clear error, not a group

    async def one(client: httpx.AsyncClient, i: int) -> None:
        try:
            response = await client.post("/v1/completions", json=bodies[i])
        except httpx.HTTPError as exc:
            failures.append(f"completion {i}: {type(exc).__name__}: {exc}")
            return
        if response.status_code != 200:
            failures.append(f"completion {i}: {response.status_code} {response.text[:300]}")
            return
        answers[i] = response.json()

    limits = httpx.Limits(max_connections=len(bodies) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(len(bodies)):
                nursery.start_soon(one, client, i)
        seconds = time.perf_counter() - started
    if failures:
        raise CheckFailed(f"{len(failures)} of {len(bodies)} requests failed; {failures[0]}")
    return answers, seconds


async def read_stream(client: Any, body: dict, started: Any) -> list[Any]:
    """The SSE `data:` payloads of one streamed completion; `started` set after 2 chunks."""
    data: list[Any] = []
    async with client.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            return [{"status": response.status_code, "body": (await response.aread()).decode()}]
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                payload = line[len("data: ") :]
                data.append(payload if payload == "[DONE]" else json.loads(payload))
                if sum(isinstance(d, dict) and "choices" in d for d in data) >= 2:
                    started.set()
    return data


# -- the steps ------------------------------------------------------------------------


def no_eos(args: argparse.Namespace) -> dict[str, float]:
    config = json.loads((args.model_root / args.model / "generation_config.json").read_text())
    eos = config.get("eos_token_id")
    ids = eos if isinstance(eos, list) else [eos]
    return {str(i): -100.0 for i in ids if i is not None}


async def node_outputs(args: argparse.Namespace, url: str) -> dict[str, list[tuple[str, int]]]:
    """(b): greedy answers from the node, one prompt alone then the rest concurrently."""
    prompts = ragged_prompts(args.check_prompts, args.prompt_tokens, seed=100)
    outputs: dict[str, list[tuple[str, int]]] = {}
    for model in (args.exact_model, args.model):
        bodies = [completion_body(model, p, args.check_tokens) for p in prompts]
        first, _ = await complete_all(url, bodies[:1])
        rest, _ = await complete_all(url, bodies[1:])
        outputs[model] = [
            (a["choices"][0]["text"], a["usage"]["completion_tokens"]) for a in first + rest
        ]
    return outputs


async def node_throughput(args: argparse.Namespace, url: str) -> dict[int, float]:
    """(d): aggregate tok/s through the node at each stream count (median of repeats)."""
    bias = no_eos(args)
    prompts = ragged_prompts(max(args.streams), args.prompt_tokens, seed=1)
    rates: dict[int, float] = {}
    for count in args.streams:
        bodies = [
            completion_body(args.model, p, args.new_tokens, logit_bias=bias)
            for p in prompts[:count]
        ]
        await complete_all(url, bodies)  # warm-up: shapes, allocator
        samples = []
        for _ in range(args.repeats):
            answers, seconds = await complete_all(url, bodies)
            tokens = sum(a["usage"]["completion_tokens"] for a in answers)
            if tokens != count * args.new_tokens:
                raise CheckFailed(
                    f"{count} streams produced {tokens} tokens, not {count * args.new_tokens}"
                )
            samples.append(tokens / seconds)
        rates[count] = statistics.median(samples)
    return rates


async def kill_mid_stream(args: argparse.Namespace, neuron: Neuron, report: Report) -> None:
    """(c): SIGKILL the worker under streams; in-band errors, recovery, memory released."""
    import httpx
    import trio

    loaded_mib = gpu_used_mib(args.device)
    victim = neuron.worker()
    victim_rss = victim.memory_info().rss // MIB
    body = completion_body(
        args.model, make_prompt(16, 7), args.kill_tokens, logit_bias=no_eos(args), stream=True
    )
    results: list[list[Any]] = []
    events = [trio.Event() for _ in range(args.kill_streams)]
    all_ended = trio.Event()
    async with httpx.AsyncClient(base_url=neuron.url, timeout=120) as client:

        async def one(event: trio.Event) -> None:
            try:
                results.append(await read_stream(client, body, event))
            except httpx.HTTPError as exc:  # not in-band: judged below
                results.append([{"exception": repr(exc)}])
                event.set()
            if len(results) == len(events):
                all_ended.set()

        async with trio.open_nursery() as nursery:
            for event in events:
                nursery.start_soon(one, event)
            with trio.fail_after(120):
                for event in events:
                    await event.wait()
            victim.send_signal(signal.SIGKILL)
            killed_at = time.perf_counter()
            with trio.move_on_after(60) as ended:
                await all_ended.wait()
            took = time.perf_counter() - killed_at
            nursery.cancel_scope.cancel()
    report.line(
        f"  SIGKILLed worker pid {victim.pid} ({victim_rss} MiB RSS) under "
        f"{len(events)} streams; they ended {took:.2f} s later"
    )
    in_band = [_in_band_error(r) for r in results]
    report.verdict(
        "(c) every stream ended in-band (worker_died error, finish 'error', [DONE])",
        not ended.cancelled_caught and len(in_band) == len(events) and all(in_band),
        "" if all(in_band) else repr([r[-3:] for r in results])[:600],
    )
    started = time.perf_counter()
    neuron.wait("the old worker to be gone", lambda: not _alive(victim), 30)
    replacement = neuron.worker(other_than=victim.pid)
    neuron.wait_models_loaded(within=300)
    recovered = time.perf_counter() - started
    answers, _ = await complete_all(neuron.url, [completion_body(args.model, make_prompt(8, 3), 4)])
    report.verdict(
        "(c) a replacement worker reloaded both models and serves",
        replacement.pid != victim.pid and answers[0]["usage"]["completion_tokens"] == 4,
        f"pid {replacement.pid}, {recovered:.1f} s from kill to both loaded",
    )
    if not args.device.startswith("cuda"):
        report.line(
            f"  (cpu) replacement worker RSS {replacement.memory_info().rss // MIB} MiB; "
            "CUDA memory checks skipped"
        )
        return
    after_mib, apps = gpu_used_mib(args.device), gpu_processes()
    report.line(
        f"  GPU memory used: loaded {_mib(loaded_mib)}, after recovery {_mib(after_mib)}; "
        f"compute processes {apps or 'not listed by nvidia-smi'}"
    )
    slack = max(1024, (loaded_mib or 0) // 10)
    report.verdict(
        "(c) the killed worker's GPU memory was released",
        victim.pid not in apps
        and loaded_mib is not None
        and after_mib is not None
        and after_mib <= loaded_mib + slack,
        f"after recovery {_mib(after_mib)} ≤ loaded {_mib(loaded_mib)} + {slack} MiB",
    )


def _in_band_error(data: list[Any]) -> bool:
    errors = [d["error"] for d in data if isinstance(d, dict) and "error" in d]
    finishes = [
        c.get("finish_reason") for d in data if isinstance(d, dict) for c in d.get("choices", ())
    ]
    return (
        bool(errors)
        and errors[0].get("code") == "worker_died"
        and [f for f in finishes if f][-1:] == ["error"]
        and data[-1:] == ["[DONE]"]
    )


def _alive(process: Any) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- the in-process side --------------------------------------------------------------


def load_here(args: argparse.Namespace, model_id: str, dtype: str) -> Any:
    from neuron.worker.loader import load_model
    from neuron.worker.snapshot import snapshot_at

    device = "cpu" if args.device.startswith("cpu") else args.device
    return load_model(snapshot_at(model_id, args.model_root / model_id), device=device, dtype=dtype)


def reference_outputs(args: argparse.Namespace, loaded: Any) -> list[tuple[str, int]]:
    """transformers `generate`, one prompt at a time, greedy, stopping at EOS like the node."""
    import torch
    from tokenizers import Tokenizer
    from transformers import GenerationConfig

    model = loaded.model
    tokenizer = Tokenizer.from_file(str(loaded.info.snapshot.path / "tokenizer.json"))
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=args.check_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=50,
        pad_token_id=model.config.pad_token_id,
        eos_token_id=list(loaded.info.eos_token_ids),
    )
    outputs = []
    for prompt in ragged_prompts(args.check_prompts, args.prompt_tokens, seed=100):
        ids = torch.tensor([prompt], device=model.device)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config
            )
        new = out[0, len(prompt) :].tolist()
        outputs.append((tokenizer.decode(new, skip_special_tokens=True), len(new)))
    return outputs


def generate_throughput(args: argparse.Namespace, loaded: Any) -> dict[int, float]:
    """(d) baseline: one static left-padded `generate` per stream count, forced length."""
    import torch
    from transformers import GenerationConfig

    model, device = loaded.model, loaded.model.device
    pad = model.config.pad_token_id
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=50,
        pad_token_id=pad,
        eos_token_id=list(loaded.info.eos_token_ids),
    )
    prompts = ragged_prompts(max(args.streams), args.prompt_tokens, seed=1)
    rates = {}
    for count in args.streams:
        batch = prompts[:count]
        width = max(len(p) for p in batch)
        ids = torch.full((count, width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(batch):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        samples = []
        for turn in range(args.repeats + 1):  # the first is a warm-up
            _synchronize(device)
            started = time.perf_counter()
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
            _synchronize(device)
            if turn:
                samples.append(count * args.new_tokens / (time.perf_counter() - started))
            assert out.shape[1] == width + args.new_tokens, "generate stopped early"
        rates[count] = statistics.median(samples)
    return rates


def _synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare(
    report: Report,
    what: str,
    node: list[tuple[str, int]],
    ref: list[tuple[str, int]],
    *,
    judged: bool,
) -> None:
    same = [a == b for a, b in zip(node, ref, strict=True)]
    detail = f"{sum(same)}/{len(same)} prompts identical (text and token count)"
    for i, ((text, count), (ref_text, ref_count)) in enumerate(zip(node, ref, strict=True)):
        if text != ref_text or count != ref_count:
            at = next(
                (k for k, (x, y) in enumerate(zip(text, ref_text, strict=False)) if x != y),
                min(len(text), len(ref_text)),
            )
            detail += (
                f"; first difference: prompt {i}, {count} vs {ref_count} tokens, "
                f"text differs at char {at}"
            )
            break
    if judged:
        report.verdict(what, all(same), detail)
    else:
        report.line(f"  [info] {what}: {detail}")


def build_models(args: argparse.Namespace) -> float:
    """The bench model (bf16 weights) and a twin of the same files served in fp32."""
    from neuron.synth import synthesize

    started = time.perf_counter()
    path = synthesize(args.model_root, arch="qwen3", size=args.size, dtype="bf16", name=args.model)
    twin = args.model_root / args.exact_model
    if not twin.exists():
        shutil.copytree(path, twin, copy_function=os.link)
    return time.perf_counter() - started


# -- main -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda:0", help="cuda:N or cpu:N")
    parser.add_argument("--size", default="0.5b", help="neuron.synth size (tiny, small, 0.5b)")
    parser.add_argument("--model-root", type=Path, help="where models are built (default: workdir)")
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument(
        "--workdir", type=Path, help="neuron config and log (default: beside report)"
    )
    parser.add_argument(
        "--streams", type=lambda t: sorted({int(x) for x in t.split(",")}), default=[1, 4, 16, 64]
    )
    parser.add_argument("--prompt-tokens", type=int, default=128, help="longest prompt")
    parser.add_argument("--new-tokens", type=int, default=64, help="(d) tokens per stream")
    parser.add_argument("--check-prompts", type=int, default=8, help="(b) prompts compared")
    parser.add_argument("--check-tokens", type=int, default=32, help="(b) tokens per prompt")
    parser.add_argument("--kill-streams", type=int, default=4)
    parser.add_argument("--kill-tokens", type=int, default=4000, help="(c) long enough to kill")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (cpu devices)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = Report(args.report)
    workdir = args.workdir or args.report.parent
    workdir.mkdir(parents=True, exist_ok=True)
    args.model_root = args.model_root or workdir / "models"
    args.model = f"helexa/bench-qwen3-{args.size}-bf16"
    args.exact_model = f"{args.model}-exact"
    report.line(
        f"device check: {args.device}, models {args.model} (bf16) and {args.exact_model} "
        f"(fp32), streams {args.streams}, {args.new_tokens} new tokens, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
    )
    check_versions(report, args.device)
    import torch
    import trio

    report.line(f"built {args.model} and its fp32 twin in {build_models(args):.1f} s")

    torch.set_num_threads(args.threads)
    baseline = gpu_used_mib(args.device)
    report.line(f"\n(b) neuron on {args.device}; GPU memory before: {_mib(baseline)}")
    neuron = Neuron(args, workdir)
    node: dict[str, list[tuple[str, int]]] = {}
    rates: dict[int, float] = {}
    try:
        neuron.wait_listening()
        models = neuron.wait_models_loaded(within=600)
        ready = time.perf_counter() - neuron.started
        for model, device, seconds, size in neuron.load_lines():
            report.line(f"  loaded {model} on {device} in {seconds:.2f} s, {size / MIB:.0f} MiB")
        report.line(
            f"  neuron start to both models loaded: {ready:.1f} s; GPU memory used "
            f"{_mib(gpu_used_mib(args.device))}; dtypes "
            f"{ {m: models[m].get('dtype') for m in models} }"
        )
        node = trio.run(node_outputs, args, neuron.url)
        report.line(f"\n(d) neuron throughput, {args.new_tokens} tokens per stream")
        rates = trio.run(node_throughput, args, neuron.url)
        for count, rate in rates.items():
            report.line(f"  {count:>3} streams: {rate:9.1f} tok/s")
        report.line("\n(c) SIGKILL the worker mid-stream")
        trio.run(kill_mid_stream, args, neuron, report)
    except CheckFailed as exc:
        report.verdict("neuron steps", False, str(exc))
    except Exception as exc:  # reported; the neuron is stopped and the rest still runs
        report.verdict("neuron steps", False, f"{type(exc).__name__}: {exc!r}"[:2000])
    finally:
        code = neuron.stop()
        report.line(f"  neuron stopped (exit {code}); log {neuron.log_path}")
    after_stop = gpu_used_mib(args.device)
    if baseline is not None and after_stop is not None:
        report.verdict(
            "(c) GPU memory back near the baseline after the neuron stopped",
            after_stop <= baseline + 256,
            f"{after_stop} MiB vs {baseline} MiB before",
        )
    if args.device.startswith("cuda"):
        free, total = torch.cuda.mem_get_info(int(args.device.partition(":")[2]))
        report.line(
            f"  torch.cuda.mem_get_info here: {free / MIB:.0f} of {total / MIB:.0f} MiB free"
        )

    report.line(f"\n(b) transformers generate here, on {args.device}")
    exact = load_here(args, args.exact_model, "fp32")
    if args.exact_model in node:
        compare(
            report,
            "(b) fp32 greedy: node == generate",
            node[args.exact_model],
            reference_outputs(args, exact),
            judged=True,
        )
    exact.unload()
    loaded = load_here(args, args.model, "bf16")
    r = loaded.report
    report.line(
        f"  in-process load of {r.model_id}: {r.load_seconds:.2f} s, "
        f"{r.tensor_bytes / MIB:.0f} MiB of tensors, CUDA allocated "
        f"{_mib((r.cuda_allocated_delta_bytes or 0) // MIB if r.device != 'cpu' else None)}"
    )
    if args.model in node:
        compare(
            report,
            "bf16 greedy: node vs generate",
            node[args.model],
            reference_outputs(args, loaded),
            judged=False,
        )
    report.line(
        f"\n(d) aggregate tok/s, prompts {args.prompt_tokens}..{(args.prompt_tokens + 1) // 2}"
        f" tokens, {args.new_tokens} new each, median of {args.repeats}"
    )
    generated = generate_throughput(args, loaded)
    report.line(f"  {'streams':>7}{'neuron':>10}{'generate':>10}{'neuron÷gen':>12}")
    for count in args.streams:
        mine, base = rates.get(count, math.nan), generated[count]
        report.line(f"  {count:>7}{mine:>10.1f}{base:>10.1f}{mine / base:>12.2f}")
    report.line(f"  transformers serve --continuous-batching: not run ({_serve_status()})")
    return report.summary()


def _serve_status() -> str:
    """Whether `transformers serve` could run here; this check does not drive it."""
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "starlette", "pydantic", "openai")
               if importlib.util.find_spec(m) is None]  # fmt: skip
    if missing:
        return f"its serving extra is missing here: {', '.join(missing)}"
    return "its serving extra is installed, but this check has no driver for it yet"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # device_check.sh's time budget ran out (SIGINT)
        print("device check: interrupted", file=sys.stderr)
        sys.exit(124)
