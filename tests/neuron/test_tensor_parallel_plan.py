"""`tensor_parallel_plan`: which modules a rank splits, and which models are refused.

Models are built on the meta device from their default configs (no weights), so
any architecture's real module tree is checked in milliseconds.
"""

from __future__ import annotations

import pytest

from neuron.worker.errors import UnsupportedModel
from neuron.worker.tensor_parallel import tensor_parallel_plan

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def meta_model(model_type: str, **overrides):
    config = transformers.CONFIG_MAPPING[model_type](num_hidden_layers=2, **overrides)
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


def test_qwen3_splits_attention_and_mlp_projections_of_every_layer():
    plan = tensor_parallel_plan(meta_model("qwen3"), 2)
    parts = {"self_attn.q_proj": "colwise", "self_attn.k_proj": "colwise",
             "self_attn.v_proj": "colwise", "self_attn.o_proj": "rowwise",
             "mlp.gate_proj": "colwise", "mlp.up_proj": "colwise",
             "mlp.down_proj": "rowwise"}  # fmt: skip
    expected = {f"layers.{n}.{part}": style for n in range(2) for part, style in parts.items()}
    assert plan == expected  # norms, embeddings and the LM head stay replicated


def test_a_vision_language_model_splits_its_language_model_only():
    """Qwen3-VL: transformers ships no plan for its text model, whose layers are
    Qwen3's module for module: Qwen3's plan, on the language model; the vision tower
    stays whole on every rank."""
    config = transformers.CONFIG_MAPPING["qwen3_vl"](
        text_config={"num_hidden_layers": 2}, vision_config={"depth": 2}
    )
    with torch.device("meta"):
        model = transformers.AutoModelForImageTextToText.from_config(config)
    plan = tensor_parallel_plan(model, 2)
    assert plan == tensor_parallel_plan(meta_model("qwen3"), 2)
    names = {name for name, _ in model.model.language_model.named_modules()}
    assert set(plan) <= names and not any("visual" in name for name in plan)


REFUSED = [
    ("lfm2", {}, "'lfm2' has no tensor-parallel plan"),
    ("qwen3_moe", {}, "styles ['moe_tp_experts', 'packed_colwise'] are not supported"),
    ("llama", {"num_key_value_heads": 3, "num_attention_heads": 6, "hidden_size": 384},
     "num_key_value_heads = 3 does not divide by tensor_parallel = 2"),
]  # fmt: skip


@pytest.mark.parametrize(("model_type", "overrides", "message"), REFUSED)
def test_models_without_a_usable_plan_are_refused(model_type, overrides, message):
    with pytest.raises(UnsupportedModel) as refused:
        tensor_parallel_plan(meta_model(model_type, **overrides), 2)
    assert message in str(refused.value)
