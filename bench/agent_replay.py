"""Prefix caching on an agent's conversation: the same neuron with the cache on and off.

Replays the shape of a coding agent's session (Claude Code, Codex): a long system
prompt carrying ~25 tool definitions (as JSON text), then turns that each append the
model's answer and a new user message and resend everything. Two `neuron serve`
processes run the same model, one with `[cache] prefix_cache = true`, one with
`false`; each turn goes to both (alternating which goes first) as a streamed, greedy
chat completion. Printed: time to first token per turn on each, the ratio, and
`cached_tokens` as reported in the usage; then aggregate tok/s of 16 concurrent
unrelated streams on each (the cache must not cost throughput).

    python bench/agent_replay.py                       # SmolLM2-135M (8k context)
    python bench/agent_replay.py --model synth --size small   # 32k-context synthetic
    python bench/agent_replay.py --turns 4 --tools 10  # quicker

Targets (issue #13): from turn 2 on, median TTFT ≥ 5x lower with the cache; ≤ 5 %
throughput loss at 16 unrelated streams. Not a test: figures vary with the box's load,
ratios from one run hold.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import serve  # noqa: E402  (bench/serve.py: starting and stopping servers)

from cortex import demo  # noqa: E402
from neuron.synth import synthesize  # noqa: E402
from neuron.worker import gguf  # noqa: E402

USER_TURNS = [
    "Read src/app.py and tell me what the main function does.",
    "Now add a --verbose flag that prints every request.",
    "Run the tests and show me the failures.",
    "Fix the failing test in tests/test_app.py.",
    "Explain the change you just made in two sentences.",
    "Rename the helper function to something clearer.",
    "Add a docstring to every public function in src/app.py.",
    "Check the README still describes the flags correctly.",
    "Write a changelog entry for these changes.",
    "Summarise the whole session in three bullet points.",
]


def tool_definitions(count: int, words: int) -> list[dict]:
    """`count` OpenAI tool definitions, each with a long description and a schema."""
    filler = ("This tool operates on the workspace and returns structured results. "
              "Use it only when the user asks for it and never guess arguments. ")  # fmt: skip
    tools = []
    for i in range(count):
        description = f"Tool number {i}: " + " ".join((filler * words).split()[:words])
        tools.append({"type": "function", "function": {
            "name": f"tool_{i}",
            "description": description,
            "parameters": {"type": "object", "required": ["path"], "properties": {
                "path": {"type": "string", "description": "A path inside the workspace."},
                "limit": {"type": "integer", "description": "At most this many lines."},
                "mode": {"type": "string", "enum": ["read", "write", "append"]},
            }},
        }})  # fmt: skip
    return tools


@contextmanager
def neuron(snapshot: Path, *, cache: bool, threads: int, log_dir: Path) -> Iterator[serve.Server]:
    """`bench/serve.py`'s neuron, with the prefix cache on or off."""
    log_dir.mkdir(parents=True, exist_ok=True)
    extra = f"[cache]\nprefix_cache = {str(cache).lower()}\n"
    with serve.neuron_server(
        snapshot, dtype="fp32", threads=threads, batch=16, log_dir=log_dir, extra=extra
    ) as server:
        yield server


async def turn_ttft(
    client: httpx.AsyncClient, server: serve.Server, body: dict
) -> tuple[float, str, int, int]:
    """(TTFT seconds, answer text, prompt tokens, cached tokens) of one streamed turn."""
    started = time.perf_counter()
    first, text, usage = None, [], {}
    body = {**body, "model": server.model, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    async with client.stream("POST", f"{server.url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                piece = (delta.get("content") or "") + (delta.get("reasoning_content") or "")
                if piece and first is None:
                    first = time.perf_counter() - started
                text.append(delta.get("content") or "")
            usage = chunk.get("usage") or usage
    details = usage.get("prompt_tokens_details") or {}
    ttft = first if first is not None else time.perf_counter() - started
    return ttft, "".join(text), usage.get("prompt_tokens", 0), details.get("cached_tokens", 0)


async def replay(servers: dict[str, serve.Server], args: argparse.Namespace) -> dict:
    tools = tool_definitions(args.tools, args.tool_words)
    # The tools ride in the system prompt as JSON, as agents that describe their own
    # tools do: every chat template keeps a system message, not every one renders
    # `tools` (SmolLM2's drops them), and the shape — a long fixed prefix — is the same.
    system = "You are a careful coding agent. Your tools:\n" + "\n".join(
        json.dumps(t["function"]) for t in tools
    )
    histories = {name: [{"role": "system", "content": system}] for name in servers}
    rows = []
    async with httpx.AsyncClient(timeout=serve.REQUEST_TIMEOUT) as client:
        for turn in range(args.turns):
            row = {"turn": turn + 1}
            order = list(servers) if turn % 2 == 0 else list(reversed(servers))
            for name in order:
                history = histories[name]
                history.append({"role": "user", "content": USER_TURNS[turn % len(USER_TURNS)]})
                body = {"messages": history, "max_tokens": args.max_tokens, "temperature": 0}
                ttft, answer, prompt, cached = await turn_ttft(client, servers[name], body)
                history.append({"role": "assistant", "content": answer})
                row[name] = (ttft, prompt, cached)
            rows.append(row)
            on, off = row["cache on"], row["cache off"]
            print(f"turn {turn + 1:2d}: prompt {on[1]:6d} tok  cached {on[2]:6d}  "
                  f"TTFT on {on[0] * 1000:8.0f} ms  off {off[0] * 1000:8.0f} ms  "
                  f"off/on {off[0] / on[0]:6.1f}x", flush=True)  # fmt: skip
    return {"rows": rows}


async def throughput(servers: dict[str, serve.Server], args: argparse.Namespace) -> dict:
    questions = serve.prompts(16)
    cells: dict[str, list[float]] = {name: [] for name in servers}
    for round_ in range(args.repeats):
        order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
        for name in order:
            cell = await serve.run_cell(servers[name], questions, args.stream_tokens)
            cells[name].append(cell.tok_s)
    return {name: statistics.median(values) for name, values in cells.items()}


def snapshot_path(args: argparse.Namespace) -> Path:
    if args.model == "smollm2":
        file = demo.packaged_gguf()
        if file is not None:
            return gguf.converted(file)
        print(f"note: {demo.PACKAGE} is not installed; using a synthesized model")
    name = f"helexa/replay-{args.arch}-{args.size}"
    return synthesize(
        args.cache_dir, arch=args.arch, size=args.size, dtype="fp32", max_positions=32768, name=name
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["smollm2", "synth"], default="smollm2")
    parser.add_argument("--arch", default="qwen3")
    parser.add_argument("--size", default="small")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--tools", type=int, default=25)
    parser.add_argument(
        "--tool-words",
        type=int,
        default=None,
        help="words per tool description (default: fits the model's context)",
    )
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--stream-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--cache-dir", type=Path, default=Path.home() / ".cache" / "helexa" / "bench-models"
    )
    args = parser.parse_args(argv)
    if args.tool_words is None:  # ~8k tokens of tools for 32k models, ~5k for SmolLM2's 8k
        args.tool_words = 140 if args.model == "synth" else 90
    snapshot = snapshot_path(args)
    print(f"model {snapshot}  threads {args.threads}  tools {args.tools} "
          f"x {args.tool_words} words  turns {args.turns}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="agent-replay-") as tmp, ExitStack() as stack:
        servers = {
            name: stack.enter_context(neuron(snapshot, cache=on, threads=args.threads,
                                             log_dir=Path(tmp) / name.replace(" ", "-")))
            for name, on in (("cache on", True), ("cache off", False))
        }  # fmt: skip
        for server in servers.values():
            print(f"  {server.name}: {server.command}")
        result = trio.run(replay, servers, args)
        later = [r for r in result["rows"] if r["turn"] >= 2]
        on = statistics.median(r["cache on"][0] for r in later)
        off = statistics.median(r["cache off"][0] for r in later)
        print(f"median TTFT from turn 2: cache on {on * 1000:.0f} ms, off {off * 1000:.0f} ms, "
              f"off/on {off / on:.1f}x (target >= 5x)")  # fmt: skip
        tok_s = trio.run(throughput, servers, args)
        ratio = tok_s["cache on"] / tok_s["cache off"]
        print(f"16 unrelated streams: cache on {tok_s['cache on']:.1f} tok/s, off "
              f"{tok_s['cache off']:.1f} tok/s, on/off {ratio:.3f} (target >= 0.95)")  # fmt: skip


if __name__ == "__main__":
    main()
