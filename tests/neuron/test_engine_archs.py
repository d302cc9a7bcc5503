"""The engine on every model family it serves: windowed, hybrid, recurrent, MoE.

Each family's tiny synthesized model (fp32, CPU, 16-token sliding windows) runs
ragged prompts — several longer than the window — that join at different steps,
with chunked prefill on and a cancellation mid-flight: every surviving sequence's
greedy output must be token-identical to transformers' `generate` on that prompt
alone. Families or layer kinds the engine cannot hold exactly are refused at
construction, never served differently.
"""

from __future__ import annotations

import attrs
import pytest

from neuron.worker.errors import UnsupportedModel
from neuron.worker.sampler import SamplingParams

torch = pytest.importorskip("torch")
engine_module = pytest.importorskip("neuron.worker.engine")
kv_arena = pytest.importorskip("neuron.worker.kv_arena")
Engine, EngineConfig, SeqId = engine_module.Engine, engine_module.EngineConfig, engine_module.SeqId
LayerKind = kv_arena.LayerKind

ENDOFTEXT = 4087
NEW_TOKENS = 12
GREEDY = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
WINDOW = 16

# arch -> the layer kinds its tiny build must have (what makes the family the family)
FAMILIES = {
    "llama": {LayerKind("full")},
    "qwen3_moe": {LayerKind("full")},
    "mistral": {LayerKind("sliding", WINDOW)},
    "gemma3": {LayerKind("sliding", WINDOW), LayerKind("full")},
    "gemma4": {LayerKind("sliding", WINDOW), LayerKind("full")},
    "gpt_oss": {LayerKind("sliding", WINDOW), LayerKind("full")},
    "qwen3_5": {LayerKind(states=1), LayerKind("full")},
    "qwen3_5_moe": {LayerKind(states=1), LayerKind("full")},
    "qwen3_next": {LayerKind(states=1), LayerKind("full")},
    "lfm2": {LayerKind(states=1), LayerKind("full")},
    "granitemoehybrid": {LayerKind(states=1), LayerKind("full")},
}
LENGTHS = (3, 11, 29, 40, 7, 23)  # 29, 40 and 23 pass the 16-token window


def _prompt(length: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 4000, (length,), generator=generator).tolist()


PROMPTS = {SeqId(i): _prompt(n, 100 + i) for i, n in enumerate(LENGTHS)}


def _generate(model, prompt: list[int]) -> list[int]:
    out = model.generate(
        torch.tensor([prompt]),
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=False,
        pad_token_id=ENDOFTEXT,
    )
    return out[0, len(prompt) :].tolist()


def _drive(engine, joins: dict[int, list], cancel: dict[int, SeqId] | None = None) -> dict:
    """Add `joins[step]` before each step, cancel `cancel[step]`; collect every output."""
    results: dict = {}
    reasons: dict = {}
    step = 0
    while engine.has_work or any(s >= step for s in joins):
        for seq_id, prompt, params in joins.get(step, []):
            engine.add(seq_id, prompt, params)
            results[seq_id] = []
        if cancel and step in cancel:
            assert engine.cancel(cancel[step])
        for output in engine.step().outputs:
            results[output.seq_id].extend(output.token_ids)
            if output.finish_reason is not None:
                reasons[output.seq_id] = output.finish_reason
        step += 1
    return {s: (tokens, reasons.get(s)) for s, tokens in results.items()}


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_every_family_batched_matches_generate(synth_model, arch):
    loaded = synth_model(arch)
    config = EngineConfig(
        max_batch_size=8, max_seq_len=256, prefill_chunk_tokens=8, prefill_tokens_per_step=12
    )
    engine = Engine(loaded, config)
    assert set(engine._arena.kinds) == FAMILIES[arch]

    ids = list(PROMPTS)
    victim = ids[4]
    # Two start together, the rest join at staggered steps (some mid-prefill of others);
    # one is cancelled mid-flight and must not disturb anybody.
    joins = {0: ids[:2], 3: [ids[2]], 4: [ids[3], victim], 9: [ids[5]]}
    joins = {step: [(s, PROMPTS[s], GREEDY) for s in group] for step, group in joins.items()}
    results = _drive(engine, joins, cancel={7: victim})

    assert results.pop(victim)[1] == "cancelled"
    for seq_id, (tokens, reason) in results.items():
        assert reason == "length", seq_id
        assert tokens == _generate(loaded.model, PROMPTS[seq_id]), (arch, seq_id)
    assert len({tuple(t) for t, _ in results.values()}) == len(results)  # not degenerate
    stats = engine.statistics()
    assert (stats.active, stats.waiting, stats.prefilling, stats.kv_bytes_allocated) == (0, 0, 0, 0)


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_prompts_packed_into_one_prefill_match_generate(synth_model, arch):
    """Five prompts, three past the window, arrive together and fit one chunk: an
    attention-only family prefills them in one forward (windowed layers masked per
    prompt, each keeping its own last window); a recurrent one prefills one by one."""
    loaded = synth_model(arch)
    engine = Engine(loaded, EngineConfig(max_batch_size=8, max_seq_len=256))
    together = [SeqId(i) for i in (0, 1, 2, 3, 5)]  # 3 + 11 + 29 + 40 + 23 tokens
    for seq_id in together:
        engine.add(seq_id, PROMPTS[seq_id], GREEDY)
    results = {seq_id: [] for seq_id in [*together, SeqId(4)]}
    forwards = []
    hook = loaded.model.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        first = engine.step()
    finally:
        hook.remove()
    packs = all(k.attention is not None and not k.states for k in FAMILIES[arch])
    assert (first.prefill_tokens, len(forwards)) == (106, 1 if packs else 5)
    step = 1
    for output in first.outputs:
        results[output.seq_id].extend(output.token_ids)
    while engine.has_work:
        if step == 2:  # one more joins the packed rows' decode batch
            engine.add(SeqId(4), PROMPTS[SeqId(4)], GREEDY)
        for output in engine.step().outputs:
            results[output.seq_id].extend(output.token_ids)
        step += 1
    for seq_id, tokens in results.items():
        assert tokens == _generate(loaded.model, PROMPTS[seq_id]), (arch, seq_id)


@pytest.mark.parametrize("arch", ["gemma3", "qwen3_5", "lfm2"])
def test_seeded_sampling_is_reproducible_and_batch_independent(synth_model, arch):
    loaded = synth_model(arch)
    params = SamplingParams(max_tokens=10, temperature=0.9, top_p=0.95, seed=7, ignore_eos=True)

    def run(extra: int) -> list[int]:
        engine = Engine(loaded, EngineConfig(max_batch_size=8, max_seq_len=256))
        joins = {0: [(SeqId(0), PROMPTS[SeqId(3)], params)]}
        joins[0] += [(SeqId(1 + i), PROMPTS[SeqId(i)], GREEDY) for i in range(extra)]
        return _drive(engine, joins)[SeqId(0)][0]

    alone = run(0)
    assert run(0) == alone
    assert run(3) == alone


def test_sliding_window_cache_stays_bounded_past_the_window(synth_model):
    """Mistral-style: every layer windowed, so the cache never outgrows the window."""
    loaded = synth_model("mistral")
    engine = Engine(loaded, EngineConfig(max_batch_size=4, max_seq_len=512))
    prompt = PROMPTS[SeqId(3)]  # 40 tokens: already past the window
    engine.add(SeqId(0), prompt, attrs.evolve(GREEDY, max_tokens=200))
    tokens, sizes = [], set()
    while engine.has_work:
        for output in engine.step().outputs:
            tokens.extend(output.token_ids)
        stats = engine.statistics()
        if stats.active:
            sizes.add(stats.kv_bytes_allocated)
            assert stats.kv_tokens_used <= WINDOW
    assert len(tokens) == 200  # 240 tokens in context, 15x the window
    assert len(sizes) == 1  # allocated once, never grown
    layers, kv_heads, head_dim = 2, 2, 32  # the tiny shape
    assert sizes.pop() == 2 * layers * kv_heads * WINDOW * head_dim * 4  # keys+values, fp32
    model = loaded.model
    out = model.generate(torch.tensor([prompt]), max_new_tokens=200, min_new_tokens=200,
                         do_sample=False, pad_token_id=ENDOFTEXT)  # fmt: skip
    assert tokens == out[0, len(prompt) :].tolist()


def test_layer_kinds_are_read_from_the_models_own_cache(synth_model):
    kinds = kv_arena.layer_kinds(synth_model("qwen3_5").model.config, 256)
    assert kinds == [LayerKind(states=1)] * 3 + [LayerKind("full")]
    # A window no shorter than the context never hides a key: held as full attention.
    assert set(kv_arena.layer_kinds(synth_model("gemma3").model.config, WINDOW)) == {
        LayerKind("full")
    }


def test_chunked_attention_is_refused_naming_the_kind(synth_model):
    config = synth_model("llama").model.config.__class__.from_dict(
        {**synth_model("llama").model.config.to_dict(), "attention_chunk_size": 8}
    )
    with pytest.raises(UnsupportedModel, match="chunked attention"):
        kv_arena.layer_kinds(config, 256)


def test_an_unknown_cache_layer_kind_is_refused(synth_model, monkeypatch):
    from transformers.cache_utils import DynamicIndexedLayer

    loaded = synth_model("llama")
    real = kv_arena.DynamicCache

    class Indexed(real):
        def __init__(self, config):
            super().__init__(config=config)
            self.layers[0] = DynamicIndexedLayer.__new__(DynamicIndexedLayer)

    monkeypatch.setattr(kv_arena, "DynamicCache", Indexed)
    with pytest.raises(UnsupportedModel, match="DynamicIndexedLayer"):
        Engine(loaded, EngineConfig(max_batch_size=2, max_seq_len=64))


def _multimodal_checkpoint(text_dir, out, family: str):
    """A tiny vision-language checkpoint whose language model is `text_dir`'s config."""
    import shutil

    import transformers

    shutil.copytree(text_dir, out)
    (out / "model.safetensors").unlink()
    text = transformers.AutoConfig.from_pretrained(text_dir).to_dict()
    if family == "qwen3_5":
        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2,
                      out_hidden_size=text["hidden_size"])  # fmt: skip
        config = transformers.Qwen3_5Config(text_config=text, vision_config=vision,
                                            tie_word_embeddings=True)  # fmt: skip
        model = transformers.Qwen3_5ForConditionalGeneration(config)
    else:
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, image_size=28, patch_size=14)  # fmt: skip
        config = transformers.Gemma3Config(text_config=text, vision_config=vision,
                                           mm_tokens_per_image=4)  # fmt: skip
        model = transformers.Gemma3ForConditionalGeneration(config)
    model.save_pretrained(out)
    return model


@pytest.mark.parametrize("family", ["qwen3_5", "gemma3"])
def test_a_vision_language_checkpoint_serves_text_through_its_language_model(
    synth_snapshot, tmp_path, family
):
    from neuron.worker.loader import load_model
    from neuron.worker.snapshot import resolve_snapshot

    torch.manual_seed(0)
    saved = _multimodal_checkpoint(synth_snapshot(family), tmp_path / "vl" / "tiny", family)
    loaded = load_model(resolve_snapshot("vl/tiny", [tmp_path]), dtype="fp32")
    # The language model's weights are the checkpoint's, not a fresh initialisation.
    ours = loaded.model.get_input_embeddings().weight
    assert torch.equal(ours, saved.get_input_embeddings().weight)
    engine = Engine(loaded, EngineConfig(max_batch_size=2, max_seq_len=128))
    prompt = PROMPTS[SeqId(3)]
    engine.add(SeqId(0), prompt, GREEDY)
    tokens = []
    while engine.has_work:
        tokens.extend(t for output in engine.step().outputs for t in output.token_ids)
    assert tokens == _generate(loaded.model, prompt)


def test_a_kv_byte_budget_charges_only_the_layers_that_grow(synth_model):
    """Budgets turn into tokens by what a token costs in full-attention layers."""
    for arch, share in (("llama", 1), ("qwen3_5", 4), ("gemma3", 4), ("mistral", 1)):
        loaded = synth_model(arch)
        every_layer = loaded.info.kv_bytes_per_token(4)
        assert engine_module.kv_bytes_per_token(loaded) == every_layer // share, arch
