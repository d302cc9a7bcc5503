"""The demo model builder: real snapshots, both layouts, offline, cached, deterministic."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from neuron.demo_model import (
    CHATML_SPECIAL_TOKENS,
    REQUIRED_FILES,
    TAG_TOKENS,
    build_demo_model,
)

transformers = pytest.importorskip("transformers")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_plain_layout_is_a_complete_snapshot(demo_models):
    path = demo_models.plain_path
    assert path == demo_models.plain_root / "helexa" / "tiny-chat"
    for name in REQUIRED_FILES:
        assert (path / name).is_file(), name
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "qwen3"
    assert config["tie_word_embeddings"] is True
    assert config["vocab_size"] == 4096


def test_hf_cache_layout_has_blobs_refs_and_symlinks(demo_models):
    path = demo_models.hf_cache_path
    repo = demo_models.hf_cache_root / "models--helexa--tiny-chat"
    assert path.parent == repo / "snapshots"
    assert (repo / "refs" / "main").read_text() == path.name
    for name in REQUIRED_FILES:
        link = path / name
        assert link.is_symlink(), name
        target = Path(os.readlink(link))
        assert target.parts[:3] == ("..", "..", "blobs")
        assert _digest(link) == target.name  # blobs are named by their sha256
    assert _digest(path / "model.safetensors") == _digest(
        demo_models.plain_path / "model.safetensors"
    )


def test_rebuilding_reuses_the_snapshot(demo_models, demo_cache_dir):
    weights = demo_models.plain_path / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again = build_demo_model(demo_cache_dir / "plain")
    assert again == demo_models.plain_path
    assert weights.stat().st_mtime_ns == before


def test_building_is_deterministic_per_seed(tmp_path, demo_models):
    fresh = build_demo_model(tmp_path, seed=0)
    other = build_demo_model(tmp_path, name="helexa/other-seed", seed=1)
    reference = demo_models.plain_path
    for name in ("model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert _digest(fresh / name) == _digest(reference / name), name
    assert _digest(other / "model.safetensors") != _digest(reference / "model.safetensors")


@pytest.mark.parametrize("name", ["../x", "org/../x", "a/b/c", "org\\name", "plain"])
def test_bad_names_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="org/name"):
        build_demo_model(tmp_path, name=name)


@pytest.mark.parametrize("layout", ["plain", "hf-cache"])
def test_loads_offline_through_the_auto_classes(demo_models, layout):
    path = demo_models.plain_path if layout == "plain" else demo_models.hf_cache_path
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert len(tokenizer) == model.config.vocab_size == 4096
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert model.generation_config.eos_token_id == [
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
        tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    ]


@pytest.fixture(scope="module")
def tokenizer(demo_models):
    return transformers.AutoTokenizer.from_pretrained(demo_models.plain_path, local_files_only=True)


@pytest.mark.parametrize("token", CHATML_SPECIAL_TOKENS + TAG_TOKENS)
def test_markup_tokens_are_single_ids(tokenizer, token):
    ids = tokenizer.encode(f"a{token}b", add_special_tokens=False)
    assert tokenizer.convert_ids_to_tokens(ids).count(token) == 1
    assert len(tokenizer.encode(token, add_special_tokens=False)) == 1


def test_tags_survive_skip_special_tokens(tokenizer):
    text = "<think>why</think>answer<|im_end|>"
    decoded = tokenizer.decode(tokenizer.encode(text), skip_special_tokens=True)
    assert decoded == "<think>why</think>answer"


def test_tokenizer_round_trips_text(tokenizer):
    text = "def f(x):\n    return {'naïve': x + 1}  # ünïcode ✓\n"
    assert tokenizer.decode(tokenizer.encode(text)) == text


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
            }
        ],
    },
    {"role": "tool", "content": '{"temp": 21}'},
    {"role": "tool", "content": '{"wind": 3}'},
    {"role": "assistant", "content": "21 degrees.", "reasoning_content": "The tool said 21."},
]


def test_chat_template_renders_tools_and_tool_calls(tokenizer):
    text = tokenizer.apply_chat_template(CONVERSATION, tools=[WEATHER_TOOL], tokenize=False)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert "<tools>\n" + json.dumps(WEATHER_TOOL) + "\n</tools>" in text
    assert (
        "<|im_start|>assistant\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
    ) in text
    # Consecutive tool results share one user turn, each in its own tool_response.
    assert (
        '<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response>\n'
        '<tool_response>\n{"wind": 3}\n</tool_response><|im_end|>'
    ) in text
    # The assistant turn after the last user query keeps its reasoning.
    assert text.endswith(
        "<|im_start|>assistant\n<think>\nThe tool said 21.\n</think>\n\n21 degrees.<|im_end|>\n"
    )


def test_chat_template_thinking_switch(tokenizer):
    messages = [{"role": "user", "content": "hi"}]
    thinking = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    quiet = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert thinking == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert quiet == thinking + "<think>\n\n</think>\n\n"


def test_chat_template_tokenizes_to_a_batch_encoding(tokenizer):
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True
    )
    ids = encoded["input_ids"]
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[0] == im_start
    assert ids.count(im_start) == 2


def test_an_incomplete_snapshot_is_rebuilt(tmp_path, demo_models):
    built = build_demo_model(tmp_path, layout="hf-cache")
    (built / "tokenizer.json").unlink()
    again = build_demo_model(tmp_path, layout="hf-cache")
    assert again == built
    reference = demo_models.hf_cache_path / "tokenizer.json"
    assert _digest(again / "tokenizer.json") == _digest(reference)
