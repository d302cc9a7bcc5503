"""Greedy output of the real model through a device worker equals `model.generate`.

A real `python -m neuron.worker` process (under an actor root, as the daemon runs it)
loads SmolLM2-135M-Instruct's converted snapshot; the same snapshot is loaded in this
process through the production loader. Chat prompts of different lengths, rendered
with the model's own template, must produce token-identical greedy continuations: one
alone, and eight at once, joining the batch at different steps.
"""

from __future__ import annotations

import pytest
import trio

import actors
from cortex import demo
from neuron.devices import Device, DeviceSpec, ModelPlacement, WorkerTimeouts, start_devices
from protocol import worker as wire

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TIMEOUTS = WorkerTimeouts(ready=90, heartbeat_interval=0.2, heartbeat=5, step=30)
NEW_TOKENS = 12
GREEDY = wire.SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0)
QUESTIONS = [
    "What is the capital of France?",
    "Name a primary colour.",
    "Write one sentence about the sea.",
    "What is 2 + 2?",
    "Give me a synonym for 'happy', and explain briefly why it fits.",
    "Hi",
    "List three fruits that are red, then say which one you like best and why.",
    "Translate 'good morning' into Spanish.",
]


@pytest.fixture(scope="module")
def prompts(smollm2) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2.info.snapshot.path)
    chats = [[{"role": "user", "content": q}] for q in QUESTIONS]
    rendered = [tokenizer.apply_chat_template(c, add_generation_prompt=True) for c in chats]
    return [list(r["input_ids"] if hasattr(r, "keys") else r) for r in rendered]


def reference(smollm2, prompt: list[int]) -> list[int]:
    """`model.generate`, greedy, cut where the worker stops: after an eos token."""
    import torch

    with torch.no_grad():
        out = smollm2.model.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=NEW_TOKENS, do_sample=False,
        )  # fmt: skip
    tokens = out[0, len(prompt) :].tolist()
    eos = set(smollm2.info.eos_token_ids)
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[: i + 1]
    return tokens


@pytest.fixture
async def worker(smollm2_snapshot):
    async with actors.open_root("neuron") as root:
        device = Device(DeviceSpec("cpu:0", threads=1, max_batch_size=8), TIMEOUTS)
        await start_devices(root, [device])
        await device.load(ModelPlacement(demo.DEMO_ID, str(smollm2_snapshot), dtype="fp32"))
        yield device
        await root.cancel()


async def collect(stream) -> list[int]:
    tokens: list[int] = []
    async for step in stream:
        tokens.extend(step.token_ids)
    return tokens


def without_eos(tokens: list[int], eos: tuple[int, ...]) -> list[int]:
    return tokens[:-1] if tokens and tokens[-1] in eos else tokens


async def test_one_sequence_is_token_identical_to_generate(worker, smollm2, prompts):
    expected = reference(smollm2, prompts[0])
    tokens = await collect(await worker.generate(demo.DEMO_ID, tuple(prompts[0]), GREEDY))
    eos = smollm2.info.eos_token_ids
    assert without_eos(tokens, eos) == without_eos(expected, eos)
    assert "Paris" in _decode(smollm2, expected)


async def test_eight_ragged_sequences_are_token_identical_to_generate(worker, smollm2, prompts):
    assert len({len(p) for p in prompts}) >= 6  # ragged
    results: dict[int, list[int]] = {}
    joined = [trio.Event() for _ in prompts]
    joined[0].set()

    async def run(i: int) -> None:
        await joined[i].wait()
        stream = await worker.generate(demo.DEMO_ID, tuple(prompts[i]), GREEDY)
        tokens: list[int] = []
        async for step in stream:
            tokens.extend(step.token_ids)
            if i + 1 < len(joined) and len(tokens) >= 1:
                joined[i + 1].set()  # the next one joins while this one decodes
        if i + 1 < len(joined):
            joined[i + 1].set()
        results[i] = tokens

    async with trio.open_nursery() as nursery:
        for i in range(len(prompts)):
            nursery.start_soon(run, i)
    eos = smollm2.info.eos_token_ids
    for i, prompt in enumerate(prompts):
        expected = without_eos(reference(smollm2, prompt), eos)
        assert without_eos(results[i], eos) == expected, (i, QUESTIONS[i])


def _decode(smollm2, tokens: list[int]) -> str:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(smollm2.info.snapshot.path / "tokenizer.json")).decode(tokens)
