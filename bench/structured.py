"""Constrained decoding's cost: N concurrent streams under a JSON Schema vs without.

Loads one model in this process (SmolLM2-135M by default, its real 49k-token
vocabulary; or `--model synth`) and runs the worker's `Engine` — the production
batcher and sampler — over `--streams` ragged prompts, `--new-tokens` each, greedy,
twice per round: once plain and once with every sequence under a JSON Schema
grammar (`neuron.worker.grammar`, the matchers the worker would build). The schema
(an array of at least `--new-tokens` short strings) cannot be complete before the
token cap, so both sides generate the same number of tokens. Rounds alternate which
side goes first; the report is the median aggregate tok/s of each and their ratio
(target: constrained ≥ 0.9 x plain). Not a test: compare figures from one run only.

`--grammar strict-tools` runs the plain side against the grammar a request with
25 `strict` tools under `tool_choice` auto gets (`neuron.text.constraints`: free
text, reasoning markers, or calls whose arguments obey the tools' parameters) —
what every such request pays while the model writes text. It needs a model whose
vocabulary has `<tool_call>` tokens (`--model synth`).

`--masks` times the sampler's mask alone (`apply_masks`, `--streams` rows) per
step while the rows write free text under the strict-tools grammar, and inside the
JSON array schema — the cost without the model's forward. On a model without
`<tool_call>` tokens (SmolLM2) two other special tokens stand in for the markers.

`--compile` also times the parent's and worker's one-off work for a 25-tool
`anyOf` schema (each tool with string, bounded integer, enum, array and nested
object arguments): schema → grammar text, grammar → matcher (compile), a cached
matcher, and one mask.

    python bench/structured.py                      # SmolLM2-135M, 16 streams
    python bench/structured.py --model synth --size tiny --compile
    python bench/structured.py --streams 4 --new-tokens 32 --repeats 2
    python bench/structured.py --model synth --size small --grammar strict-tools
    python bench/structured.py --masks --repeats 0   # mask cost only, 49k vocabulary
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import build_and_load

from neuron.text.constraints import chat_grammar
from neuron.text.prompt import ChatPrompt
from neuron.text.reasoning import REASONING_PAIRS, TOOL_CALL_PAIRS, MarkerPair, Markers
from neuron.worker.engine import Engine, EngineConfig, SeqId
from neuron.worker.grammar import Grammars, apply_masks, json_schema_grammar
from neuron.worker.sampler import SamplingParams
from protocol import structure
from protocol.openai import ChatCompletionRequest

_seq_ids = itertools.count(1)


def stream_schema(new_tokens: int) -> dict:
    item = {"type": "string", "maxLength": 6}
    return {"type": "array", "items": item, "minItems": new_tokens}


def tool_schema(tools: int = 25) -> dict:
    def tool(i: int) -> dict:
        arguments = {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
                "unit": {"enum": ["c", "f"]},
                "tags": {"type": "array", "items": {"type": "string"}},
                "nested": {
                    "type": "object",
                    "properties": {"a": {"type": "number"}, "b": {"type": "boolean"}},
                    "required": ["a"],
                },
            },
            "required": ["city", "days"],
            "additionalProperties": False,
        }
        return {
            "type": "object",
            "properties": {"name": {"const": f"tool_{i}"}, "arguments": arguments},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }

    return {"anyOf": [tool(i) for i in range(tools)]}


def strict_tools_grammar(snapshot: Path, tools: int = 25, *, stand_in: bool = False) -> str:
    """The grammar of a request offering `tools` strict tools under `tool_choice` auto."""
    added = json.loads((snapshot / "tokenizer.json").read_text()).get("added_tokens", [])
    ids = {t["content"]: t["id"] for t in added}

    def pair(pairs) -> MarkerPair | None:
        found = [(a, b) for a, b in pairs if a in ids and b in ids]
        return MarkerPair(*found[0], ids[found[0][0]], ids[found[0][1]]) if found else None

    markers = Markers(reasoning=pair(REASONING_PAIRS), tool_call=pair(TOOL_CALL_PAIRS))
    if markers.tool_call is None and stand_in and len(added) > 1:
        a, b = [(t["content"], t["id"]) for t in added[:2]]
        markers = Markers(tool_call=MarkerPair(a[0], b[0], a[1], b[1]))
    if markers.tool_call is None:
        raise SystemExit("--grammar strict-tools: this model has no <tool_call> tokens")
    functions = [
        {"name": f"tool_{i}", "parameters": tool["properties"]["arguments"]}
        for i, tool in enumerate(tool_schema(tools)["anyOf"])
    ]
    rendered = tuple({"type": "function", "function": f} for f in functions)
    strict = [{"type": "function", "function": {**f, "strict": True}} for f in functions]
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": strict,
            "tool_choice": "auto"}  # fmt: skip
    prompt = ChatPrompt(text="", token_ids=(), tools=rendered, parse_tool_calls=True,
                        opens_reasoning=False)  # fmt: skip
    return chat_grammar(structure(body, ChatCompletionRequest), prompt, markers)


def mask_figures(grammars: Grammars, path: Path, vocab: int, rows: int, steps: int = 24):
    """Median ms of one `rows`-row mask, writing text under the strict-tools grammar and
    writing a JSON array under the stream schema."""
    sides = (
        ("strict tools, free text", strict_tools_grammar(path, stand_in=True),
         "The weather in Berlin is mild today, with a light wind from the west and no rain."),
        ("JSON array schema", json_schema_grammar(stream_schema(steps)), '["ab","cd","ef","gh"'
         ',"ij","kl","mn","op","qr","st","uv","wx","yz"'),
    )  # fmt: skip
    logits = torch.zeros(rows, vocab)
    for name, grammar, text in sides:
        matchers = [grammars.matcher(grammar) for _ in range(rows)]
        times = []
        for token in grammars.tokenizer.tokenize_str(text)[:steps]:
            started = time.perf_counter()
            apply_masks(logits, matchers)
            times.append((time.perf_counter() - started) * 1000)
            for matcher in matchers:
                matcher.consume_token(token)
        print(f"{rows}-row mask, {name}: median {statistics.median(times):.2f} ms "
              f"over {len(times)} steps (vocab {vocab})")  # fmt: skip


def run(engine: Engine, prompts, new_tokens: int, grammars: Grammars | None, grammar) -> float:
    """Aggregate tok/s of one batch, prompts added at once, stepped until done."""
    started = time.perf_counter()
    for prompt in prompts:
        matcher = None if grammars is None else grammars.matcher(grammar)
        params = SamplingParams(
            max_tokens=new_tokens, temperature=0.0, ignore_eos=True, grammar=matcher
        )
        engine.add(SeqId(next(_seq_ids)), prompt, params)
    tokens = 0
    while engine.has_work:
        tokens += sum(len(o.token_ids) for o in engine.step().outputs)
    return tokens / (time.perf_counter() - started)


def compile_figures(grammars: Grammars, vocab: int) -> None:
    schema = tool_schema()
    started = time.perf_counter()
    grammar = json_schema_grammar(schema)
    text_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    matcher = grammars.matcher(grammar)
    compile_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    grammars.matcher(grammar)
    cached_ms = (time.perf_counter() - started) * 1000
    logits = torch.zeros(1, vocab)
    started = time.perf_counter()
    apply_masks(logits, [matcher])
    mask_ms = (time.perf_counter() - started) * 1000
    print(
        f"25-tool schema: grammar text {text_ms:.1f} ms, compile {compile_ms:.1f} ms, "
        f"cached {cached_ms:.2f} ms, first mask {mask_ms:.2f} ms (vocab {vocab})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["smollm2", "synth"], default="smollm2")
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--arch", default="qwen3")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--device", default="cpu:0")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/helexa/bench-models")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--grammar", choices=["schema", "strict-tools"], default="schema")
    parser.add_argument("--masks", action="store_true")
    args = parser.parse_args()
    path, loaded = build_and_load(args)
    vocab = loaded.model.get_output_embeddings().weight.shape[0]
    grammars = Grammars.from_snapshot(path, vocab, loaded.info.eos_token_ids)
    if args.compile:
        compile_figures(Grammars.from_snapshot(path, vocab, loaded.info.eos_token_ids), vocab)
    if args.masks:
        mask_figures(grammars, path, vocab, args.streams)
    if args.repeats < 1:
        return
    if args.grammar == "strict-tools":
        grammar = strict_tools_grammar(path)
    else:
        grammar = json_schema_grammar(stream_schema(args.new_tokens))
    rng = random.Random(0)
    prompts = [
        [rng.randrange(100, 4000) for _ in range(rng.randrange(16, 49))]
        for _ in range(args.streams)
    ]
    engine = Engine(loaded, EngineConfig(max_batch_size=args.streams))
    run(engine, prompts[:2], 4, grammars, grammar)  # warm up both paths
    run(engine, prompts[:2], 4, None, None)
    plain, constrained = [], []
    for repeat in range(args.repeats):
        sides = [(plain, None, None), (constrained, grammars, grammar)]
        for rates, with_grammars, text in sides if repeat % 2 == 0 else sides[::-1]:
            rates.append(run(engine, prompts, args.new_tokens, with_grammars, text))
            side = "plain" if with_grammars is None else args.grammar
            print(f"  round {repeat + 1}: {side} {rates[-1]:.1f} tok/s", flush=True)
    plain_rate, constrained_rate = statistics.median(plain), statistics.median(constrained)
    print(
        f"{args.streams} streams x {args.new_tokens} tokens, {loaded.info.snapshot.model_id} "
        f"(vocab {vocab}), median of {args.repeats}: plain {plain_rate:.1f} tok/s, "
        f"{args.grammar} {constrained_rate:.1f} tok/s, ratio {constrained_rate / plain_rate:.3f}"
    )


if __name__ == "__main__":
    main()
