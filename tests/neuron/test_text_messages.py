"""Protocol chat messages and tools → template dicts, and content refusals."""

from __future__ import annotations

import pytest

from neuron.text.errors import ContentUnsupported, ImageNotDataUri, VisionUnsupported
from neuron.text.messages import chat_messages, chat_tools, is_data_image_uri
from neuron.text.tokenizer import ModelTokenizer
from protocol._converter import structure
from protocol.openai import ChatCompletionRequest

PNG = "data:image/png;base64,iVBORw0KGgo="


def _request(messages: list, tools: list | None = None) -> ChatCompletionRequest:
    body = {"model": "m", "messages": messages}
    if tools is not None:
        body["tools"] = tools
    return structure(body, ChatCompletionRequest)


def _convert(messages: list, **kwargs) -> list[dict]:
    return chat_messages(_request(messages).messages, **kwargs)


def test_roles_and_fields():
    converted = _convert(
        [
            {"role": "developer", "content": "Rules."},
            {"role": "user", "content": "Hi", "name": "ann"},
            {
                "role": "assistant",
                "content": None,
                "reasoning_content": "thinking",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q": 1}'},
                    }
                ],
            },
            {"role": "tool", "content": "42", "tool_call_id": "call_1"},
            {"role": "function", "name": "legacy", "content": "old"},
        ]
    )
    assert converted == [
        {"role": "system", "content": "Rules."},
        {"role": "user", "content": "Hi", "name": "ann"},
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "thinking",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q": 1}'},
                }
            ],
        },
        {"role": "tool", "content": "42", "tool_call_id": "call_1", "name": "lookup"},
        {"role": "tool", "content": "old", "name": "legacy"},
    ]


def test_text_parts_are_joined_for_a_text_only_model():
    content = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    assert _convert([{"role": "user", "content": content}]) == [
        {"role": "user", "content": "one\ntwo"}
    ]


def test_text_bearing_unknown_parts_are_text():
    content = [{"type": "input_text", "text": "a"}, {"type": "refusal", "refusal": "no"}]
    converted = _convert([{"role": "assistant", "content": content}])
    assert converted == [{"role": "assistant", "content": "a\nno"}]


def test_images_are_refused_by_a_text_only_model():
    content = [{"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": PNG}}]
    with pytest.raises(VisionUnsupported) as caught:
        _convert(
            [{"role": "user", "content": "x"}, {"role": "user", "content": content}], model_id="m"
        )
    error = caught.value
    assert (error.status, error.code) == (400, "vision_unsupported")
    assert error.param == "messages[1].content[1]"
    assert error.to_openai()["error"]["model_id"] == "m"
    assert "suggestion" in error.to_openai()["error"]


def test_a_vision_model_keeps_parts_and_takes_data_uris():
    content = [{"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": PNG}}]
    assert _convert([{"role": "user", "content": content}], vision=True) == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "see"},
                {"type": "image_url", "image_url": {"url": PNG}},
            ],
        }
    ]


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/cat.png",
        "http://169.254.169.254/latest/meta-data",
        "file:///etc/passwd",
        "data:text/plain;base64,aGk=",
        "data:image/png,rawbytes",
    ],
)
def test_image_urls_that_are_not_data_uris_are_refused(url):
    content = [{"type": "image_url", "image_url": {"url": url}}]
    with pytest.raises(ImageNotDataUri) as caught:
        _convert([{"role": "user", "content": content}], vision=True)
    error = caught.value
    assert (error.status, error.code) == (400, "invalid_image_url")
    assert error.param == "messages[0].content[0].image_url.url"


def test_is_data_image_uri_is_case_insensitive():
    assert is_data_image_uri("DATA:IMAGE/JPEG;BASE64,/9j/")
    assert not is_data_image_uri("data:image/jpeg;charset=x,abc")


def test_audio_and_files_are_refused():
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    with pytest.raises(ContentUnsupported, match="input_audio") as caught:
        _convert([{"role": "user", "content": [audio]}])
    assert caught.value.code == "unsupported_content"
    file_part = {"type": "file", "file": {"file_id": "f"}}
    with pytest.raises(ContentUnsupported, match="file"):
        _convert([{"role": "user", "content": [file_part]}])


def test_tools_keep_function_tools_only():
    request = _request(
        [{"role": "user", "content": "x"}],
        tools=[
            {"type": "function", "function": {"name": "f", "description": "does f"}},
            {"type": "custom", "custom": {"name": "grammar"}},
        ],
    )
    assert chat_tools(request.tools) == [
        {
            "type": "function",
            "function": {
                "name": "f",
                "description": "does f",
                "parameters": {"type": "object", "properties": {}},
            },
        }
    ]
    assert chat_tools(None) is None
    assert chat_tools(request.tools[1:]) is None


def test_converted_messages_render(demo_models):
    tokenizer = ModelTokenizer.from_snapshot(demo_models.plain_path)
    request = _request(
        [
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_9",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "content": "cold", "tool_call_id": "call_9"},
        ],
        tools=[{"type": "function", "function": {"name": "get_weather"}}],
    )
    text = tokenizer.render_chat(chat_messages(request.messages), chat_tools(request.tools))
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>' in text
    )
    assert "<tool_response>\ncold\n</tool_response>" in text
    assert text.endswith("<|im_start|>assistant\n")
