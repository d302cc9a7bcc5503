"""Every `neuron.synth` family builds offline, loads with transformers and generates.

One tiny build per family, kept in the session's demo cache (`synth_snapshot`): its
config names the right class and layer kinds, `AutoModelForCausalLM` loads it with the
attention implementation it supports, greedy `generate` on a 40-token prompt gives 16
tokens that are not one token repeated, and a window, where there is one, really
changes what the model computes past 16 tokens.
"""

from __future__ import annotations

import json

import pytest

from neuron.synth import ARCHS, TOKEN_IDS, VOCAB_SIZE

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# arch -> (config.json model_type, the layer kinds of its tiny build; None: no layer_types)
FAMILIES: dict[str, tuple[str, list[str] | None]] = {
    "qwen3": ("qwen3", ["full_attention"] * 2),
    "llama": ("llama", None),
    "mistral": ("mistral", None),
    "qwen3_moe": ("qwen3_moe", None),
    "qwen3_5": ("qwen3_5_text", ["linear_attention"] * 3 + ["full_attention"]),
    "qwen3_5_moe": ("qwen3_5_moe_text", ["linear_attention"] * 3 + ["full_attention"]),
    "qwen3_next": ("qwen3_next", ["linear_attention"] * 3 + ["full_attention"]),
    "gemma3": ("gemma3_text", ["sliding_attention"] * 3 + ["full_attention"]),
    "gemma4": ("gemma4_text", ["sliding_attention"] * 3 + ["full_attention"]),
    "gpt_oss": ("gpt_oss", ["sliding_attention", "full_attention"] * 2),
    "lfm2": ("lfm2", ["conv", "conv", "full_attention", "conv"]),
    # transformers writes Mamba2 layers as linear_attention, attention as full_attention
    "granitemoehybrid": ("granitemoehybrid", ["linear_attention"] * 3 + ["full_attention"]),
}
WINDOWED = ("mistral", "gemma3", "gemma4", "gpt_oss")
MOE = ("qwen3_moe", "qwen3_5_moe", "qwen3_next", "gpt_oss", "granitemoehybrid")
EAGER_ONLY = ("gpt_oss",)  # transformers 5.23 has no sdpa path for it


def test_every_family_is_covered():
    assert set(FAMILIES) == set(ARCHS)


def _load(path, arch: str, implementation: str | None = None):
    implementation = implementation or ("eager" if arch in EAGER_ONLY else "sdpa")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, local_files_only=True, attn_implementation=implementation
    )
    return model.eval()


def _prompt(seed: int, length: int = 40) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, TOKEN_IDS["<|endoftext|>"], (1, length), generator=generator)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_a_tiny_build_loads_and_generates(arch, synth_snapshot):
    torch.set_num_threads(1)
    path = synth_snapshot(arch)
    config = json.loads((path / "config.json").read_text())
    model_type, layer_types = FAMILIES[arch]
    assert config["model_type"] == model_type
    assert config["architectures"] == [ARCHS[arch][1]]
    assert config["vocab_size"] == VOCAB_SIZE
    assert config.get("layer_types") == layer_types
    if arch in WINDOWED:
        assert config["sliding_window"] == 16
    if arch in MOE:
        assert 4 in (config.get("num_experts"), config.get("num_local_experts"))

    model = _load(path, arch)
    assert model.dtype == torch.float32
    assert type(model).__name__ == ARCHS[arch][1]
    prompt = _prompt(seed=len(arch))
    with torch.no_grad():
        out = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=16,
            min_new_tokens=16, do_sample=False,
        )  # fmt: skip
    new = out[0, prompt.shape[1] :].tolist()
    assert len(new) == 16
    assert len(set(new)) > 4, f"{arch} greedy output is degenerate: {new}"


@pytest.mark.parametrize("arch", EAGER_ONLY)
def test_an_eager_only_family_refuses_sdpa(arch, synth_snapshot):
    """Recorded so the loader's fallback stays needed: this fails once transformers adds it."""
    with pytest.raises(ValueError, match="does not support"):
        _load(synth_snapshot(arch), arch, "sdpa")


@pytest.mark.parametrize("arch", WINDOWED)
def test_the_window_changes_logits_past_16_tokens(arch, synth_snapshot):
    torch.set_num_threads(1)
    path = synth_snapshot(arch)
    windowed = _load(path, arch)
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    config.sliding_window = 4096
    unbounded = transformers.AutoModelForCausalLM.from_pretrained(
        path,
        config=config,
        local_files_only=True,
        attn_implementation=windowed.config._attn_implementation,
    ).eval()
    prompt = _prompt(seed=7)
    with torch.no_grad():
        a, b = windowed(prompt).logits[0], unbounded(prompt).logits[0]
    torch.testing.assert_close(a[:16], b[:16])
    assert (a[16:] - b[16:]).abs().max() > 1.0


@pytest.mark.parametrize("arch", ["qwen3_5", "gemma3", "lfm2"])
def test_the_production_loader_serves_a_family(arch, synth_model):
    loaded = synth_model(arch)
    model_type, _ = FAMILIES[arch]
    assert loaded.model.config.model_type == model_type
    assert loaded.report.num_parameters > 0


def test_a_vision_build_has_a_real_image_processor_and_placeholder_template(synth_snapshot):
    from neuron.synth import VISION_TOKEN_IDS

    path = synth_snapshot("qwen3_vl")
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["Qwen3VLForConditionalGeneration"]
    assert config["image_token_id"] == VISION_TOKEN_IDS["<|image_pad|>"]
    processor = transformers.AutoImageProcessor.from_pretrained(path)
    np = pytest.importorskip("numpy")
    pytest.importorskip("PIL")
    out = processor(images=[np.zeros((100, 70, 3), dtype=np.uint8)], return_tensors="np")
    assert out["image_grid_thw"].tolist() == [[1, 6, 4]]  # resized to 96x64, 16-px patches
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    parts = [{"type": "image_url", "image_url": {"url": "data:"}}, {"type": "text", "text": "Hi"}]
    text = tokenizer.apply_chat_template([{"role": "user", "content": parts}], tokenize=False)
    assert "<|vision_start|><|image_pad|><|vision_end|>Hi" in text
    ids = tokenizer.encode("<|vision_start|><|image_pad|><|vision_end|>")
    assert ids == [
        VISION_TOKEN_IDS[t] for t in ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")
    ]
