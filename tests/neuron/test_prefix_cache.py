"""The engine's automatic prefix cache: reuse is exact, bounded and reported.

On an attention-only (qwen3), a windowed (gemma3, 16-token window) and a hybrid
recurrent (qwen3_5) tiny model: a prompt sent again, a conversation's next turn, and a
prompt that diverges from a cached one mid-way all give token-identical greedy output
to the same request on an engine without a cache; the reused token counts are what
each kind of layer allows; a tiny budget evicts whole entries and stays under budget.
"""

from __future__ import annotations

import pytest

from neuron.worker.sampler import SamplingParams

torch = pytest.importorskip("torch")
engine_module = pytest.importorskip("neuron.worker.engine")
Engine, EngineConfig, SeqId = engine_module.Engine, engine_module.EngineConfig, engine_module.SeqId

GREEDY = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
FAMILIES = ("qwen3", "gemma3", "qwen3_5")
BUDGET = 64 * 2**20


def _tokens(length: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 4000, (length,), generator=generator).tolist()


def _run(engine, prompt: list[int], seq_id: int = 0) -> tuple[list[int], int]:
    engine.add(SeqId(seq_id), prompt, GREEDY)
    tokens, cached = [], None
    while engine.has_work:
        for output in engine.step().outputs:
            tokens.extend(output.token_ids)
            cached = output.cached_tokens if cached is None else cached
    return tokens, cached


def _config(budget: int | None = BUDGET, chunk: int = 32) -> object:
    return EngineConfig(max_batch_size=4, max_seq_len=512, prefill_chunk_tokens=chunk,
                        prefix_cache_bytes=budget)  # fmt: skip


@pytest.mark.parametrize("arch", FAMILIES)
def test_the_same_prompt_again_is_served_from_the_cache(synth_model, arch):
    loaded = synth_model(arch)
    prompt = _tokens(100, 1)
    cold, _ = _run(Engine(loaded, _config(None)), prompt)
    engine = Engine(loaded, _config())
    first, first_cached = _run(engine, prompt)
    again, again_cached = _run(engine, prompt, 1)
    assert first == again == cold
    assert (first_cached, again_cached) == (0, len(prompt) - 1)
    stats = engine.statistics()
    assert (stats.prefix_cache_lookups, stats.prefix_cache_hit_lookups) == (2, 1)
    assert stats.prefix_cache_hit_tokens == len(prompt) - 1
    assert 0 < stats.prefix_cache_bytes <= BUDGET and stats.prefix_cache_entries == 1


@pytest.mark.parametrize("arch", FAMILIES)
def test_a_conversations_next_turn_reuses_the_previous_prompt(synth_model, arch):
    loaded = synth_model(arch)
    turn1 = _tokens(70, 2)
    engine = Engine(loaded, _config())
    answer, _ = _run(engine, turn1)
    turn2 = turn1 + answer + _tokens(30, 3)
    again, cached = _run(engine, turn2, 1)
    assert again == _run(Engine(loaded, _config(None)), turn2)[0]
    # Everything the first turn prefilled — all of it, or for windowed/recurrent layers
    # all but its last token, where the snapshot was taken.
    assert cached == (len(turn1) if arch == "qwen3" else len(turn1) - 1)


@pytest.mark.parametrize("arch", FAMILIES)
def test_a_prompt_diverging_mid_way_reuses_only_what_it_may(synth_model, arch):
    loaded = synth_model(arch)
    shared = _tokens(57, 4)  # diverges mid-chunk (chunks of 32)
    first, second = shared + _tokens(40, 5), shared + _tokens(40, 6)
    engine = Engine(loaded, _config())
    _run(engine, first)
    out, cached = _run(engine, second, 1)
    assert out == _run(Engine(loaded, _config(None)), second)[0]
    # Attention K/V is sliced at the divergence; a ring or a recurrent state cannot be
    # rewound, so those models recompute.
    assert cached == (len(shared) if arch == "qwen3" else 0)


@pytest.mark.parametrize("arch", ["qwen3", "qwen3_5"])
def test_a_tiny_budget_evicts_whole_entries_and_stays_correct(synth_model, arch):
    loaded = synth_model(arch)
    prompts = [_tokens(80, 10 + i) for i in range(4)]
    probe = Engine(loaded, _config())
    _run(probe, prompts[0])
    one_entry = probe.statistics().prefix_cache_bytes
    engine = Engine(loaded, _config(int(one_entry * 1.5)))  # room for one entry
    cold = Engine(loaded, _config(None))
    for i, prompt in enumerate(prompts):
        assert _run(engine, prompt, i)[0] == _run(cold, prompt, i)[0]
        stats = engine.statistics()
        assert stats.prefix_cache_entries == 1
        assert stats.prefix_cache_bytes <= int(one_entry * 1.5)
    # The oldest were evicted: only the last prompt is still a hit.
    assert _run(engine, prompts[3], 10)[1] == len(prompts[3]) - 1
    assert _run(engine, prompts[0], 11)[1] == 0


def test_off_means_off(synth_model):
    engine = Engine(synth_model("qwen3"), _config(None))
    prompt = _tokens(60, 7)
    assert _run(engine, prompt)[1] == _run(engine, prompt, 1)[1] == 0
    stats = engine.statistics()
    assert (stats.prefix_cache_lookups, stats.prefix_cache_bytes) == (0, 0)


def test_concurrent_sequences_sharing_a_cached_prefix(synth_model):
    loaded = synth_model("qwen3_5")
    system = _tokens(60, 8)
    engine = Engine(loaded, _config())
    _run(engine, system + _tokens(5, 9))
    prompts = {SeqId(i): system + _tokens(5, 9) + _tokens(10 + i, 20 + i) for i in range(3)}
    for seq_id, prompt in prompts.items():
        engine.add(seq_id, prompt, GREEDY)
    results: dict = {s: [] for s in prompts}
    while engine.has_work:
        for output in engine.step().outputs:
            results[output.seq_id].extend(output.token_ids)
    cold = Engine(loaded, _config(None))
    for seq_id, prompt in prompts.items():
        assert results[seq_id] == _run(cold, prompt, seq_id)[0]
    assert engine.statistics().prefix_cache_hit_lookups == 3
