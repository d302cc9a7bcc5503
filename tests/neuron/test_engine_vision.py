"""Images through the engine: the tiny Qwen3-VL against transformers' own `generate`.

The synthetic `qwen3_vl` build (a two-block vision tower with deepstack, multimodal
rope) and `qwen3_5_vl` (the same tower without deepstack in front of Qwen3.5's Gated
DeltaNet hybrid) are loaded by the production loader; images go through the snapshot's own image
processor, their placeholders are expanded to the processor's token counts, and the
engine's greedy tokens must equal `model.generate` given the same processor outputs —
for one image request alone, and for image and text requests batched together,
joining at different steps, prefilled in 8-token chunks that split images.
"""

from __future__ import annotations

import pytest

from neuron.worker.errors import InvalidRequest
from neuron.worker.sampler import SamplingParams

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")
pytest.importorskip("PIL")
engine_module = pytest.importorskip("neuron.worker.engine")
vision_module = pytest.importorskip("neuron.worker.vision")
Engine, EngineConfig, SeqId = engine_module.Engine, engine_module.EngineConfig, engine_module.SeqId

from neuron.synth import TOKEN_IDS, VISION_TOKEN_IDS  # noqa: E402

NEW_TOKENS = 10
GREEDY = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
PAD = VISION_TOKEN_IDS["<|image_pad|>"]
START, END = VISION_TOKEN_IDS["<|vision_start|>"], VISION_TOKEN_IDS["<|vision_end|>"]
IM_START, IM_END = TOKEN_IDS["<|im_start|>"], TOKEN_IDS["<|im_end|>"]


@pytest.fixture(scope="module")
def vl_of(synth_model, synth_snapshot):
    """`vl_of(arch)`: (loaded model, its image processor, its `VisionModel`)."""
    from transformers import AutoImageProcessor

    def build(arch: str):
        loaded = synth_model(arch)
        processor = AutoImageProcessor.from_pretrained(synth_snapshot(arch))
        return loaded, processor, vision_module.VisionModel.of(loaded.model)

    return build


@pytest.fixture(scope="module")
def vl(vl_of):
    return vl_of("qwen3_vl")


def _image_prompt(processor, sizes: list[tuple[int, int]], seed: int, text=(1395, 198)):
    """A chat-shaped prompt with one placeholder run per image, and the tensors."""
    rng = np.random.RandomState(seed)
    images = [(rng.rand(h, w, 3) * 255).astype(np.uint8) for h, w in sizes]
    out = processor(images=images, return_tensors="np")
    grid = torch.tensor(out["image_grid_thw"])
    ids = [IM_START, *text]
    for count in (grid.prod(-1) // 4).tolist():
        ids += [START, *[PAD] * count, END, 2444, 13]
    ids += [IM_END, 198, IM_START, 1918, 198]
    return ids, {"pixel_values": torch.tensor(out["pixel_values"]), "image_grid_thw": grid}


def _reference(model, ids, inputs=None) -> list[int]:
    x = torch.tensor([ids])
    extra = {} if inputs is None else {**inputs, "mm_token_type_ids": (x == PAD).int()}
    out = model.generate(
        input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=TOKEN_IDS["<|endoftext|>"],
        **extra,
    )  # fmt: skip
    return out[0, len(ids) :].tolist()


def _drive(engine, vision, joins: dict[int, list]) -> dict:
    results: dict = {}
    step = 0
    while engine.has_work or any(s >= step for s in joins):
        for seq_id, (ids, inputs) in joins.get(step, []):
            prepared = None if inputs is None else vision.prepare(ids, inputs)
            engine.add(seq_id, ids, GREEDY, prepared)
            results[seq_id] = []
        for output in engine.step().outputs:
            results[output.seq_id].extend(output.token_ids)
        step += 1
    return results


@pytest.mark.parametrize("arch", ["qwen3_vl", "qwen3_5_vl"])
def test_image_and_text_requests_batch_together_and_match_generate(vl_of, arch):
    loaded, processor, vision = vl_of(arch)
    config = EngineConfig(
        max_batch_size=6, max_seq_len=512, prefill_chunk_tokens=8, prefill_tokens_per_step=12,
        prefix_cache_bytes=1 << 20,
    )  # fmt: skip
    engine = Engine(loaded, config)
    one = _image_prompt(processor, [(80, 120)], seed=0)  # 8 image tokens, a 2x4 grid
    two = _image_prompt(processor, [(64, 64), (96, 64)], seed=1, text=(77, 88))
    text = ([IM_START, 5, 6, 7, 8, 9, 10, 11, 198], None)
    same_ids_other_image = (one[0], _image_prompt(processor, [(80, 120)], seed=9)[1])
    # Two short text prompts joining together are packed into one prefill forward.
    short = ([IM_START, 12, 13, 198], None), ([IM_START, 14, 198], None)
    requests = {SeqId(0): one, SeqId(1): text, SeqId(2): two, SeqId(3): same_ids_other_image,
                SeqId(4): short[0], SeqId(5): short[1]}  # fmt: skip
    joins = {0: [SeqId(0)], 2: [SeqId(1)], 3: [SeqId(2)], 6: [SeqId(3)],
             9: [SeqId(4), SeqId(5)]}  # fmt: skip
    packed, pack = [], engine._prefill_together
    engine._prefill_together = lambda group: packed.append(len(group)) or pack(group)
    results = _drive(engine, vision, {k: [(s, requests[s]) for s in v] for k, v in joins.items()})
    # The two short text prompts, never an image prompt (Qwen3.5's recurrent layers
    # are never packed).
    assert packed == ([2] if arch == "qwen3_vl" else [])

    for seq_id, (ids, inputs) in requests.items():
        assert results[seq_id] == _reference(loaded.model, ids, inputs), seq_id
    # The images matter: the same token ids with another image (and with none) differ,
    # and the prefix cache did not hand the second one the first one's prompt.
    assert results[SeqId(0)] != results[SeqId(3)]
    assert results[SeqId(0)] != _reference(loaded.model, one[0])
    assert engine.statistics().prefix_cache_hit_tokens == 0
    assert engine.statistics().kv_bytes_allocated == 0


def test_one_image_request_alone_matches_generate(vl):
    loaded, processor, vision = vl
    engine = Engine(loaded, EngineConfig(max_batch_size=2, max_seq_len=512))
    ids, inputs = _image_prompt(processor, [(128, 96)], seed=3)
    results = _drive(engine, vision, {0: [(SeqId(7), (ids, inputs))]})
    assert results[SeqId(7)] == _reference(loaded.model, ids, inputs)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda ids, t: (ids[:-12] + ids[-11:], t), "placeholder runs"),
        (lambda ids, t: (ids, {**t, "pixel_values": t["pixel_values"][:-1]}), "shape"),
        (lambda ids, t: (ids, {"pixel_values": t["pixel_values"]}), "exactly"),
        (lambda ids, t: (ids, {**t, "image_grid_thw": t["image_grid_thw"] * 0}), "non-empty"),
        (lambda ids, t: (ids, {**t, "image_grid_thw": t["image_grid_thw"].float()}), "integer"),
    ],
)
def test_inputs_that_do_not_fit_the_prompt_are_refused(vl, change, message):
    _, processor, vision = vl
    ids, inputs = change(*_image_prompt(processor, [(64, 64), (64, 64)], seed=4))
    with pytest.raises(InvalidRequest, match=message):
        vision.prepare(ids, inputs)


def test_text_models_have_no_image_side(synth_model):
    assert vision_module.VisionModel.of(synth_model("qwen3").model) is None
