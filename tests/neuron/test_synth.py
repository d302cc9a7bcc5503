"""The synthetic model builder: real snapshots, both archs and layouts, offline, cached,
deterministic, and a command line."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from neuron.synth import (
    CHATML_SPECIAL_TOKENS,
    DEMO_MODEL_NAME,
    REQUIRED_FILES,
    TAG_TOKENS,
    is_built,
    main,
    model_config,
    synthesize,
)

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def llama_tiny(demo_cache_dir: Path) -> Path:
    return synthesize(demo_cache_dir / "llama", arch="llama", name="helexa/llama-tiny")


def test_plain_layout_is_a_complete_snapshot(demo_models):
    path = demo_models.plain_path
    assert path == demo_models.plain_root / "helexa" / "tiny-chat"
    for name in REQUIRED_FILES:
        assert (path / name).is_file(), name
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "qwen3"
    assert config["tie_word_embeddings"] is True
    assert config["vocab_size"] == 4096
    assert config["dtype"] == "float32"


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
    again = synthesize(demo_cache_dir / "plain", name=DEMO_MODEL_NAME)
    assert again == demo_models.plain_path
    assert weights.stat().st_mtime_ns == before


def test_building_is_deterministic_per_seed(tmp_path, demo_models):
    fresh = synthesize(tmp_path, name=DEMO_MODEL_NAME, seed=0)
    other = synthesize(tmp_path, seed=1)
    assert other == tmp_path / "helexa" / "qwen3-tiny"
    reference = demo_models.plain_path
    for name in ("model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert _digest(fresh / name) == _digest(reference / name), name
    for name in ("model.safetensors", "tokenizer.json"):
        assert _digest(other / name) != _digest(reference / name), name


def test_the_command_line_writes_a_loadable_snapshot(tmp_path, llama_tiny):
    # A separate process, so this also shows builds agree across processes.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "neuron.synth", str(tmp_path), "--arch", "llama"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip())
    assert path == tmp_path / "helexa" / "llama-tiny"
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _digest(path / name) == _digest(llama_tiny / name), name
    marker = json.loads((path / "helexa-synth.json").read_text())
    assert marker | {"builder": None} == {
        "builder": None,
        "name": "helexa/llama-tiny",
        "arch": "llama",
        "size": "tiny",
        "seed": 0,
        "dtype": "fp32",
    }


def test_help_describes_the_options(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    usage = capsys.readouterr().out
    for option in ("OUT_DIR", "--arch", "--size", "--seed", "--name", "--layout", "--dtype"):
        assert option in usage
    assert "{tiny,small,0.5b}" in usage


def test_the_command_line_refuses_a_bad_name(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main([str(tmp_path / "out"), "--name", "no-org"])
    assert exited.value.code == 2
    assert "must look like 'org/name'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["../x", "org/../x", "a/b/c", "org\\name", "plain"])
def test_bad_names_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="org/name"):
        synthesize(tmp_path, name=name)


@pytest.mark.parametrize(
    ("option", "value"),
    [("arch", "gpt2"), ("size", "7b"), ("dtype", "fp16"), ("layout", "flat")],
)
def test_unknown_choices_are_refused(tmp_path, option, value):
    with pytest.raises(ValueError, match=f"unknown {option} '{value}'"):
        synthesize(tmp_path, **{option: value})
    assert list(tmp_path.iterdir()) == []


def _load(path: Path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    return tokenizer, model


@pytest.mark.parametrize(
    ("which", "architecture"),
    [
        ("plain", "Qwen3ForCausalLM"),
        ("hf-cache", "Qwen3ForCausalLM"),
        ("llama", "LlamaForCausalLM"),
    ],
)
def test_loads_offline_through_the_auto_classes(demo_models, llama_tiny, which, architecture):
    path = {
        "plain": demo_models.plain_path,
        "hf-cache": demo_models.hf_cache_path,
        "llama": llama_tiny,
    }[which]
    tokenizer, model = _load(path)
    assert type(model).__name__ == architecture
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert len(tokenizer) == model.config.vocab_size == 4096
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert model.generation_config.eos_token_id == [
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
        tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    ]
    with torch.no_grad():
        logits = model(torch.tensor([tokenizer.encode("Hello, world!")])).logits
    assert logits.shape[-1] == 4096
    assert torch.isfinite(logits).all()


def test_llama_shares_the_tokenizer_and_template(demo_models, llama_tiny):
    for name in ("tokenizer.json", "chat_template.jinja", "generation_config.json"):
        assert _digest(llama_tiny / name) == _digest(demo_models.plain_path / name), name
    config = json.loads((llama_tiny / "config.json").read_text())
    assert (config["model_type"], config["head_dim"], config["num_key_value_heads"]) == (
        "llama",
        32,
        2,
    )


def test_bf16_writes_the_fp32_weights_rounded(tmp_path, demo_models):
    from safetensors.torch import load_file

    path = synthesize(tmp_path, name=DEMO_MODEL_NAME, dtype="bf16")
    assert json.loads((path / "config.json").read_text())["dtype"] == "bfloat16"
    half = load_file(path / "model.safetensors")
    full = load_file(demo_models.plain_path / "model.safetensors")
    assert half.keys() == full.keys()
    for key, tensor in half.items():
        assert tensor.dtype == torch.bfloat16, key
        assert torch.equal(tensor, full[key].to(torch.bfloat16)), key


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_the_half_billion_size_has_qwen25_05b_body_shapes(arch):
    config = model_config(arch, "0.5b")
    shape = (
        config.hidden_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.intermediate_size,
        config.vocab_size,
    )
    assert shape == (896, 24, 14, 2, 4864, 4096)
    assert config.dtype == torch.bfloat16  # the size's default: ~0.72 GB of weights
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    body = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    assert 0.35e9 < body < 0.5e9


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


def test_chat_template_drops_reasoning_of_earlier_turns(tokenizer):
    messages = [
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "<think>\nEasy.\n</think>\n\n2"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nAlso easy.\n</think>\n\n4"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n2<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nAlso easy.\n</think>\n\n4<|im_end|>\n"
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
    assert not is_built(tmp_path, name=DEMO_MODEL_NAME, layout="hf-cache")
    built = synthesize(tmp_path, name=DEMO_MODEL_NAME, layout="hf-cache")
    assert is_built(tmp_path, name=DEMO_MODEL_NAME, layout="hf-cache")
    assert not is_built(tmp_path, name=DEMO_MODEL_NAME, layout="hf-cache", seed=1)
    (built / "tokenizer.json").unlink()
    assert not is_built(tmp_path, name=DEMO_MODEL_NAME, layout="hf-cache")
    check = [str(tmp_path), "--name", DEMO_MODEL_NAME, "--layout", "hf-cache", "--check"]
    with pytest.raises(SystemExit) as exited:
        main(check)  # `cortex up` asks before it says it is building
    assert exited.value.code == 1
    again = synthesize(tmp_path, name=DEMO_MODEL_NAME, layout="hf-cache")
    assert again == built
    reference = demo_models.hf_cache_path / "tokenizer.json"
    assert _digest(again / "tokenizer.json") == _digest(reference)
    with pytest.raises(SystemExit) as exited:
        main(check)
    assert exited.value.code == 0


def test_max_positions_makes_a_long_context_model_beside_the_default(tmp_path, demo_models):
    long = synthesize(tmp_path, name="helexa/qwen3-tiny-32k", max_positions=32768)
    config = json.loads((long / "config.json").read_text())
    assert config["max_position_embeddings"] == 32768
    tokenizer_config = json.loads((long / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == 32768
    assert is_built(tmp_path, name="helexa/qwen3-tiny-32k", max_positions=32768)
    assert not is_built(tmp_path, name="helexa/qwen3-tiny-32k")  # another build
    default = json.loads((demo_models.plain_path / "config.json").read_text())
    assert default["max_position_embeddings"] == 4096
    # The default marker is unchanged: builds made before the option stay valid.
    assert is_built(demo_models.plain_root, name=DEMO_MODEL_NAME)
    command = [str(tmp_path), "--name", "helexa/qwen3-tiny-32k", "--max-positions", "32768"]
    with pytest.raises(SystemExit) as exited:
        main([*command, "--check"])
    assert exited.value.code == 0
