"""Prepacked oneDNN linear layers (CPU, bfloat16) change speed and nothing else."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from neuron.worker import loader, packed_linear  # noqa: E402
from neuron.worker.engine import Engine, EngineConfig, SeqId  # noqa: E402
from neuron.worker.packed_linear import PackedLinear  # noqa: E402
from neuron.worker.sampler import SamplingParams  # noqa: E402
from neuron.worker.snapshot import resolve_snapshot  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    reason="oneDNN bfloat16 is not supported on this CPU",
)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 96), (16, 96), (3, 7, 96), (300, 96)])
def test_a_packed_linear_is_bit_identical_to_nn_linear(bias, shape):
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 200, bias=bias).to(torch.bfloat16)
    x = torch.randn(shape, dtype=torch.bfloat16)
    expected = linear(x)
    packed = PackedLinear(linear)
    assert torch.equal(packed(x), expected)
    assert torch.equal(packed.weight, linear.weight)
    assert packed.out_features == 200 and packed.in_features == 96


def _load(demo_models, dtype: str, pack: bool, monkeypatch):
    if not pack:
        monkeypatch.setattr(loader, "pack_linear_layers", lambda model, device: 0)
    snapshot = resolve_snapshot("helexa/tiny-chat", [demo_models.plain_root])
    loaded = loader.load_model(snapshot, dtype=dtype)
    monkeypatch.undo()
    return loaded


def test_a_bf16_load_packs_every_linear_and_counts_the_tied_heads_copy(demo_models, monkeypatch):
    plain = _load(demo_models, "bf16", False, monkeypatch)
    packed = _load(demo_models, "bf16", True, monkeypatch)
    linears = [m for m in plain.model.modules() if type(m) is torch.nn.Linear]
    packs = [m for m in packed.model.modules() if isinstance(m, PackedLinear)]
    assert linears and len(packs) == len(linears)
    assert not any(type(m) is torch.nn.Linear for m in packed.model.modules())
    # The head is tied to the embeddings: they stay dense, the head packs a copy.
    head, embed = packed.model.lm_head, packed.model.model.embed_tokens
    assert isinstance(head, PackedLinear) and torch.equal(head.weight, embed.weight)
    assert packed.report.num_parameters == plain.report.num_parameters
    assert packed.report.tensor_bytes == plain.report.tensor_bytes + head.packed_bytes
    ids = torch.tensor([[5, 17, 99, 3, 42, 7]])
    with torch.inference_mode():
        assert torch.equal(packed.model(ids).logits, plain.model(ids).logits)
    plain.unload()
    packed.unload()


def test_fp32_is_left_alone(demo_models, monkeypatch):
    loaded = _load(demo_models, "fp32", True, monkeypatch)
    assert not any(isinstance(m, PackedLinear) for m in loaded.model.modules())
    assert packed_linear.packed_bytes(loaded.model) == 0
    loaded.unload()


def test_the_engine_decodes_the_same_tokens_packed_or_not(demo_models, monkeypatch):
    """Ragged prompts, one joining mid-flight, greedy and seeded sampling: the same tokens."""
    prompts = [[(i * 37 + j * 11) % 500 + 3 for j in range(5 + 4 * i)] for i in range(5)]
    greedy = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    sampled = SamplingParams(max_tokens=12, temperature=0.9, seed=7, ignore_eos=True)

    def run(loaded) -> dict:
        engine = Engine(loaded, EngineConfig(max_batch_size=8, max_seq_len=256))
        for i, prompt in enumerate(prompts[:-1]):
            engine.add(SeqId(f"s{i}"), prompt, sampled if i % 2 else greedy)
        tokens: dict = {}
        step = 0
        while engine.has_work or step < 3:
            if step == 3:
                engine.add(SeqId("late"), prompts[-1], greedy)
            for output in engine.step().outputs:
                tokens.setdefault(output.seq_id, []).extend(output.token_ids)
            step += 1
        engine.close()
        return tokens

    plain = _load(demo_models, "bf16", False, monkeypatch)
    packed = _load(demo_models, "bf16", True, monkeypatch)
    expected, got = run(plain), run(packed)
    assert len(expected) == len(prompts) and all(len(t) == 12 for t in expected.values())
    assert got == expected
    plain.unload()
    packed.unload()
