"""A chat request through the whole text pipeline on the real demo tokenizer:
messages → prompt → ids, then model-like output ids → events → stop strings."""

from __future__ import annotations

import shutil

import pytest

from neuron.text.output import ContentDelta, ParsedOutput, ToolCallParsed
from neuron.text.prompt import ChatPrompt
from neuron.text.reasoning import probe_markers
from neuron.text.sampling import SamplingRequest, resolve_sampling
from neuron.text.stop import StopMatcher
from neuron.text.tokenizer import ModelTokenizer
from protocol._converter import structure
from protocol.openai import ChatCompletionRequest

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"days": {"type": "integer"}}},
        },
    }
]


@pytest.fixture(scope="module")
def tokenizer(demo_models) -> ModelTokenizer:
    return ModelTokenizer.from_snapshot(demo_models.plain_path)


def _request(**fields) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "Weather?"}], **fields}
    return structure(body, ChatCompletionRequest)


def _run(tokenizer, prompt: ChatPrompt, output: str, **kwargs) -> ParsedOutput:
    parser = prompt.output_parser(tokenizer, probe_markers(tokenizer), **kwargs)
    ids = tokenizer.encode(output)
    events = [e for i in ids for e in parser.feed([i])] + parser.finish()
    return ParsedOutput.collect(events)


def test_a_tool_call_round_trip(tokenizer):
    markers = probe_markers(tokenizer)
    prompt = ChatPrompt.build(
        _request(tools=TOOLS),
        tokenizer,
        markers,
        default_template_kwargs={"enable_thinking": False},
    )
    assert prompt.text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert prompt.token_ids == tuple(tokenizer.encode(prompt.text))
    assert prompt.parse_tool_calls and not prompt.opens_reasoning
    output = (
        "<tool_call>\n<function=get_weather>\n<parameter=days>\n2\n</parameter>\n"
        "</function>\n</tool_call><|im_end|>"
    )
    result = _run(tokenizer, prompt, output, new_id=lambda: "call_1")
    assert result == ParsedOutput(
        "", "", (ToolCallParsed(0, "call_1", "get_weather", '{"days":2}'),)
    )


def test_request_kwargs_override_the_defaults(tokenizer):
    markers = probe_markers(tokenizer)
    request = _request(chat_template_kwargs={"enable_thinking": True})
    prompt = ChatPrompt.build(
        request, tokenizer, markers, default_template_kwargs={"enable_thinking": False}
    )
    assert prompt.text.endswith("<|im_start|>assistant\n")


def test_tool_choice_none_turns_tool_call_parsing_off(tokenizer):
    markers = probe_markers(tokenizer)
    prompt = ChatPrompt.build(_request(tools=TOOLS, tool_choice="none"), tokenizer, markers)
    assert prompt.tools is not None and not prompt.parse_tool_calls
    text = '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>'
    assert _run(tokenizer, prompt, text) == ParsedOutput(text, "", ())


def test_a_prompt_that_opens_reasoning_starts_the_output_in_it(demo_models, tmp_path, tokenizer):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(demo_models.plain_path / name, tmp_path / name)
    template = "{% for m in messages %}{{ m.content }}{% endfor %}<|im_start|>assistant\n<think>\n"
    (tmp_path / "chat_template.jinja").write_text(template)
    thinking = ModelTokenizer.from_snapshot(tmp_path)
    markers = probe_markers(thinking)
    prompt = ChatPrompt.build(_request(), thinking, markers)
    assert prompt.opens_reasoning and prompt.tools is None
    result = _run(thinking, prompt, "Cold, probably.\n</think>\n\nBring a coat.<|im_end|>")
    assert result == ParsedOutput("Bring a coat.", "Cold, probably.", ())


def test_sampling_and_stop_strings_over_content(tokenizer):
    markers = probe_markers(tokenizer)
    request = _request(stop=["\nEND", "<|im_end|>"], max_tokens=50_000)
    prompt = ChatPrompt.build(request, tokenizer, markers)
    resolved = resolve_sampling(
        SamplingRequest.from_chat(request),
        tokenizer=tokenizer,
        defaults=None,
        prompt_len=len(prompt.token_ids),
        context_len=4096,
    )
    assert resolved.params.max_tokens == 4096 - len(prompt.token_ids)
    assert resolved.params.stop_token_ids == (tokenizer.token_to_id("<|im_end|>"),)
    matcher = StopMatcher(resolved.stop_strings)
    parser = prompt.output_parser(tokenizer, markers)
    shown = []
    for token_id in tokenizer.encode("Sunny all week.\nEND of forecast"):
        for event in parser.feed([token_id]):
            assert isinstance(event, ContentDelta)
            scan = matcher.push(event.text)
            shown.append(scan.text)
            if scan.stopped:
                break
    assert "".join(shown) == "Sunny all week."
    assert matcher.matched == "\nEND"
