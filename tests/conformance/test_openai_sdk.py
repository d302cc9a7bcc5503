"""The official `openai` SDK against cortex's OpenAI routes, over a real neuron.

Chat (reply and stream, with a tool call), the Responses API (relayed to the
neuron, which implements it), and the error envelope and status of each
failure, with the scripted model's known output.
"""

from __future__ import annotations

import json

import openai
import pytest
from gateway_thread import OPENAI_NAMES
from scripted_model import SCRIPTED, TEXT, THINKING, TOOL, TOOL_INPUT

from tests.neuron.daemon_harness import HTTPX_ASYNCGEN_WARNING

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.filterwarnings(HTTPX_ASYNCGEN_WARNING),
]

MODEL = OPENAI_NAMES[0]
ASK = [{"role": "user", "content": "What is in notes.txt?"}]
PARAMETERS = {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}
CHAT_TOOL = {"type": "function", "function": {"name": TOOL, "parameters": PARAMETERS}}
RESPONSES_TOOL = {"type": "function", "name": TOOL, "parameters": PARAMETERS}


@pytest.fixture
def client(gateway):
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-local", max_retries=0,
                       timeout=60) as client:  # fmt: skip
        yield client


def test_chat_reply_with_reasoning_and_a_tool_call(client):
    reply = client.chat.completions.create(model=MODEL, messages=ASK, tools=[CHAT_TOOL],
                                           max_tokens=200)  # fmt: skip
    assert reply.model == SCRIPTED  # the alias was resolved
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == TEXT
    assert choice.message.reasoning_content == THINKING  # the template thinks by default
    [call] = choice.message.tool_calls
    assert call.function.name == TOOL and json.loads(call.function.arguments) == TOOL_INPUT
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0


def test_chat_stream_with_tools(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[CHAT_TOOL], max_tokens=200, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    content, calls, finish, usage = "", {}, None, None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or ():
                name, args = calls.get(call.index, ("", ""))
                calls[call.index] = (name + (call.function.name or ""),
                                     args + (call.function.arguments or ""))  # fmt: skip
    assert content == TEXT and finish == "tool_calls"
    assert [(name, json.loads(args)) for name, args in calls.values()] == [(TOOL, TOOL_INPUT)]
    assert usage.completion_tokens > 0


def test_responses_reply_and_stream(client):
    response = client.responses.create(model=MODEL, input="What is in notes.txt?",
                                       tools=[RESPONSES_TOOL], max_output_tokens=200)  # fmt: skip
    assert response.status == "completed" and response.model == SCRIPTED
    assert response.output_text == TEXT
    [call] = [item for item in response.output if item.type == "function_call"]
    assert call.name == TOOL and json.loads(call.arguments) == TOOL_INPUT
    ask = {"model": MODEL, "input": "What is in notes.txt?", "tools": [RESPONSES_TOOL]}
    with client.responses.stream(**ask, max_output_tokens=200) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.function_call_arguments.done" in kinds
    assert final.output_text == TEXT


def test_errors_in_the_openai_envelope(client):
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-nope", messages=ASK, max_tokens=2)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=ASK, temperature=3)
    assert (bad.value.code, bad.value.param) == ("invalid_value", "temperature")
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="gpt-nope", input="hi")


def test_a_draining_gateway_answers_503_with_retry_after(draining_gateway):
    url = f"{draining_gateway.url}/v1"
    with (
        openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=30) as client,
        pytest.raises(openai.InternalServerError) as raised,
    ):
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=2)
    assert raised.value.status_code == 503 and raised.value.code == "shutting_down"
    assert raised.value.response.headers["retry-after"]
