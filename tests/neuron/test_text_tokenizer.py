"""ModelTokenizer: loading a snapshot's tokenizer and chat template, rendering prompts
the way transformers does (without importing it or torch), and the fallbacks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from neuron.text.errors import InvalidParameter, TemplateRenderFailed, TokenizerLoadFailed
from neuron.text.tokenizer import ModelTokenizer

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
CHATML_START = "<|im_start|>"


@pytest.fixture(scope="module")
def snapshot(demo_models) -> Path:
    return demo_models.plain_path


@pytest.fixture(scope="module")
def tokenizer(snapshot) -> ModelTokenizer:
    return ModelTokenizer.from_snapshot(snapshot)


@pytest.fixture(scope="module")
def hf_tokenizer(snapshot):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(snapshot))


def _copy_tokenizer(src: Path, dest: Path, *, template: str | None = None) -> Path:
    """A snapshot-like directory holding only the tokenizer files (and a template)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        shutil.copy(src / name, dest / name)
    if template is not None:
        (dest / "chat_template.jinja").write_text(template)
    return dest


def _user(text: str = "Hello") -> dict:
    return {"role": "user", "content": text}


# -- import hygiene -------------------------------------------------------------------


def test_the_text_pipeline_imports_neither_torch_nor_transformers():
    modules = [
        "chat_template",
        "detokenize",
        "errors",
        "messages",
        "output",
        "prompt",
        "reasoning",
        "sampling",
        "stop",
        "tokenizer",
        "tokenizer_files",
        "tool_calls",
    ]
    code = (
        "import sys\n"
        + "".join(f"import neuron.text.{m}\n" for m in modules)
        + "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        + "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- loading --------------------------------------------------------------------------


def test_loads_the_demo_snapshot(tokenizer):
    assert tokenizer.vocab_size == 4096
    assert tokenizer.special_tokens == {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    assert tokenizer.has_chat_template
    im_end, endoftext = tokenizer.token_to_id("<|im_end|>"), tokenizer.token_to_id("<|endoftext|>")
    # The tokenizer's eos plus generation_config's list.
    assert tokenizer.eos_token_ids == tuple(sorted({im_end, endoftext}))
    assert {im_end, endoftext} <= tokenizer.special_token_ids
    think = tokenizer.token_to_id("<think>")
    assert think in tokenizer.added_token_ids
    assert think not in tokenizer.special_token_ids


def test_loads_the_hf_cache_layout_through_its_symlinks(demo_models, tokenizer):
    cached = ModelTokenizer.from_snapshot(demo_models.hf_cache_path)
    assert cached.eos_token_ids == tokenizer.eos_token_ids
    assert cached.render_chat([_user()]) == tokenizer.render_chat([_user()])


def test_eos_ids_given_by_the_caller_are_merged(snapshot):
    merged = ModelTokenizer.from_snapshot(snapshot, eos_token_ids=[7])
    assert 7 in merged.eos_token_ids


def test_encode_keeps_special_tokens_and_adds_none(tokenizer):
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == tokenizer.token_to_id("<|im_start|>")
    assert ids[-1] == tokenizer.token_to_id("<|im_end|>")
    assert tokenizer.decode(ids, skip_special_tokens=False) == "<|im_start|>user\nhi<|im_end|>"
    assert tokenizer.decode(ids) == "user\nhi"


def test_single_token_id(tokenizer):
    assert tokenizer.single_token_id("<tool_call>") == tokenizer.token_to_id("<tool_call>")
    assert tokenizer.single_token_id("<tool_call><think>") is None
    assert tokenizer.single_token_id("no such token, surely") is None


def test_missing_tokenizer_json_is_a_load_error(tmp_path):
    with pytest.raises(TokenizerLoadFailed, match=r"tokenizer\.json"):
        ModelTokenizer.from_snapshot(tmp_path)


def test_unreadable_tokenizer_config_is_a_load_error(snapshot, tmp_path):
    path = _copy_tokenizer(snapshot, tmp_path)
    (path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(TokenizerLoadFailed, match=r"tokenizer_config\.json"):
        ModelTokenizer.from_snapshot(path)


def test_template_priority_jinja_then_json_then_tokenizer_config(snapshot, tmp_path):
    path = _copy_tokenizer(snapshot, tmp_path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = "from-config"
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    assert ModelTokenizer.from_snapshot(path).render_chat([_user()]) == "from-config"
    (path / "chat_template.json").write_text(json.dumps({"chat_template": "from-json"}))
    assert ModelTokenizer.from_snapshot(path).render_chat([_user()]) == "from-json"
    (path / "chat_template.jinja").write_text("from-jinja")
    assert ModelTokenizer.from_snapshot(path).render_chat([_user()]) == "from-jinja"


def test_named_templates_prefer_tool_use_for_requests_with_tools(snapshot, tmp_path):
    path = _copy_tokenizer(snapshot, tmp_path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = [
        {"name": "default", "template": "plain"},
        {"name": "tool_use", "template": "tools:{{ tools | length }}"},
    ]
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = ModelTokenizer.from_snapshot(path)
    assert tok.render_chat([_user()]) == "plain"
    assert tok.render_chat([_user()], [WEATHER_TOOL]) == "tools:1"


# -- rendering like transformers --------------------------------------------------------

CONVERSATIONS = {
    "plain": ([{"role": "system", "content": "Be brief."}, _user("Hi")], None, {}),
    "no thinking": ([_user("Hi")], None, {"enable_thinking": False}),
    "tools": ([_user("Weather in Paris?")], [WEATHER_TOOL], {}),
    "tool round trip": (
        [
            {"role": "system", "content": "You help."},
            _user("Weather in Paris?"),
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                    }
                ],
            },
            {"role": "tool", "content": '{"temp": 18}', "tool_call_id": "call_1"},
            {"role": "tool", "content": '{"wind": 3}', "tool_call_id": "call_1"},
        ],
        [WEATHER_TOOL],
        {},
    ),
    "reasoning history": (
        [
            _user("2+2?"),
            {"role": "assistant", "content": "4", "reasoning_content": "Add them."},
            _user("3+3? Ünïcödé ✓"),
        ],
        None,
        {},
    ),
}


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_renders_exactly_like_transformers(tokenizer, hf_tokenizer, name):
    messages, tools, kwargs = CONVERSATIONS[name]
    ours = tokenizer.render_chat(messages, tools, template_kwargs=kwargs)
    theirs = hf_tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=True, **kwargs
    )
    assert ours == theirs
    assert tokenizer.encode(ours) == hf_tokenizer.encode(theirs, add_special_tokens=False)


def test_without_generation_prompt(tokenizer):
    text = tokenizer.render_chat([_user("Hi")], add_generation_prompt=False)
    assert text == "<|im_start|>user\nHi<|im_end|>\n"


def test_string_tool_call_arguments_are_rendered_as_objects(tokenizer):
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    messages = [_user(), {"role": "assistant", "content": None, "tool_calls": [call]}]
    text = tokenizer.render_chat(messages, add_generation_prompt=False)
    assert '{"name": "f", "arguments": {"a": 1}}' in text
    assert "None" not in text  # a null content is dropped, never printed


def test_invalid_argument_json_is_kept_as_given(tokenizer):
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
    messages = [_user(), {"role": "assistant", "content": "", "tool_calls": [call]}]
    text = tokenizer.render_chat(messages, add_generation_prompt=False)
    assert '"arguments": {oops}' in text


def test_count_chat_tokens(tokenizer):
    messages = [_user("Hello there")]
    assert tokenizer.count_chat_tokens(messages) == len(
        tokenizer.encode(tokenizer.render_chat(messages))
    )


def test_template_kwargs_reach_the_template_and_override_special_tokens(snapshot, tmp_path):
    template = "{{ eos_token }}|{{ flavour }}|{{ add_generation_prompt }}"
    tok = ModelTokenizer.from_snapshot(_copy_tokenizer(snapshot, tmp_path, template=template))
    assert tok.render_chat([_user()], template_kwargs={"flavour": "mint"}) == "<|im_end|>|mint|True"
    assert (
        tok.render_chat([_user()], template_kwargs={"eos_token": "X", "flavour": 1}) == "X|1|True"
    )


@pytest.mark.parametrize("key", ["messages", "tools", "add_generation_prompt"])
def test_reserved_template_kwargs_are_refused(tokenizer, key):
    with pytest.raises(InvalidParameter) as caught:
        tokenizer.render_chat([_user()], template_kwargs={key: []})
    assert caught.value.status == 400
    assert caught.value.param == "chat_template_kwargs"


def test_transformers_template_helpers(snapshot, tmp_path):
    template = (
        "{{ {'b': 'ü', 'a': 1} | tojson(sort_keys=True) }}"
        "|{{ strftime_now('%Y') | length }}"
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% if loop.index > 1 %}"
        "{% break %}{% endif %}{% set ns.n = ns.n + 1 %}{% endfor %}|{{ ns.n }}"
        "|{% generation %}gen{% endgeneration %}|{{ dict(x=1).x }}"
    )
    tok = ModelTokenizer.from_snapshot(_copy_tokenizer(snapshot, tmp_path, template=template))
    assert tok.render_chat([_user(), _user()]) == '{"a": 1, "b": "ü"}|4|1|gen|1'


# -- failures and fallbacks ---------------------------------------------------------------

STRICT_SYSTEM = (
    "{% for m in messages %}"
    "{% if m.role == 'system' and not loop.first %}"
    "{{ raise_exception('System message must be at the beginning.') }}{% endif %}"
    "<{{ m.role }}>{{ m.content }}"
    "{% endfor %}{% if tools %}[{{ tools | length }} tools]{% endif %}"
)


def test_misplaced_system_messages_are_merged_when_the_template_refuses(snapshot, tmp_path):
    tok = ModelTokenizer.from_snapshot(_copy_tokenizer(snapshot, tmp_path, template=STRICT_SYSTEM))
    messages = [
        {"role": "system", "content": "A"},
        _user("hi"),
        {"role": "system", "content": [{"type": "text", "text": "B"}]},
    ]
    assert tok.render_chat(messages) == "<system>A\n\nB<user>hi"
    assert tok.render_chat(messages, [WEATHER_TOOL]) == "<system>A\n\nB<user>hi[1 tools]"


def test_a_failing_template_with_tools_is_a_422(snapshot, tmp_path):
    template = "{{ raise_exception('no tools for you') }}"
    tok = ModelTokenizer.from_snapshot(_copy_tokenizer(snapshot, tmp_path, template=template))
    with pytest.raises(TemplateRenderFailed, match="no tools for you") as caught:
        tok.render_chat([_user()], [WEATHER_TOOL])
    error = caught.value
    assert (error.status, error.type, error.code) == (
        422,
        "invalid_request_error",
        "template_render_failed",
    )


def test_a_failing_template_without_tools_falls_back_to_chatml(snapshot, tmp_path, caplog):
    template = "{{ messages[0].content + 1 }}"  # TypeError inside the template
    tok = ModelTokenizer.from_snapshot(_copy_tokenizer(snapshot, tmp_path, template=template))
    messages = [{"role": "system", "content": "S"}, _user([{"type": "text", "text": "hi"}])]
    text = tok.render_chat(messages)
    assert text == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert "ChatML fallback" in caplog.text


def test_no_template_falls_back_to_chatml_but_refuses_tools(snapshot, tmp_path):
    tok = ModelTokenizer.from_snapshot(_copy_tokenizer(snapshot, tmp_path))
    assert not tok.has_chat_template
    assert tok.render_chat([_user("x")]).startswith(CHATML_START + "user\nx")
    with pytest.raises(TemplateRenderFailed, match="no chat template"):
        tok.render_chat([_user("x")], [WEATHER_TOOL])


def test_a_template_that_does_not_compile_is_treated_as_absent(snapshot, tmp_path):
    tok = ModelTokenizer.from_snapshot(_copy_tokenizer(snapshot, tmp_path, template="{% if %}"))
    assert not tok.has_chat_template
    assert tok.render_chat([_user("x")]).startswith(CHATML_START)


def test_the_sandbox_hides_internals(snapshot, tmp_path):
    template = "[{{ messages.__class__ }}]"
    tok = ModelTokenizer.from_snapshot(_copy_tokenizer(snapshot, tmp_path, template=template))
    assert tok.render_chat([_user()], [WEATHER_TOOL]) == "[]"


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{% set ns = namespace(_x=1) %}",
        "{{ cycler.__init__.__globals__ }}",
    ],
)
def test_the_sandbox_refuses_escapes(snapshot, tmp_path, template):
    tok = ModelTokenizer.from_snapshot(_copy_tokenizer(snapshot, tmp_path, template=template))
    with pytest.raises(TemplateRenderFailed):
        tok.render_chat([_user()], [WEATHER_TOOL])


def test_reasoning_is_aliased_like_transformers(snapshot, tmp_path):
    template = "{% for m in messages %}[{{ m.thinking }}|{{ m.reasoning_content }}]{% endfor %}"
    tok = ModelTokenizer.from_snapshot(_copy_tokenizer(snapshot, tmp_path, template=template))
    messages = [
        {"role": "assistant", "content": "a", "reasoning_content": "r1"},
        {"role": "assistant", "content": "b", "reasoning": "r2"},
        {"role": "assistant", "content": "c"},
    ]
    assert tok.render_chat(messages) == "[r1|r1][r2|r2][|]"
