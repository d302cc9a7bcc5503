"""The prefix cache as agents see it through cortex (#13): the official `anthropic`
SDK's `cache_read_input_tokens` and the `openai` SDK's `cached_tokens`, streamed and
not, with `cache_control` on every kind of block accepted (caching is automatic).

The neuron serves the scripted model, so a repeated request's reply is known to be
the same; each test's prompt carries a fresh marker, so it is cold the first time.
"""

from __future__ import annotations

import uuid

import anthropic
import openai
import pytest
from gateway_thread import CLAUDE_NAMES
from scripted_model import TEXT, TOOL

from tests.neuron.daemon_harness import HTTPX_ASYNCGEN_WARNING

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.filterwarnings(HTTPX_ASYNCGEN_WARNING),
]

MODEL = CLAUDE_NAMES[0]
EPHEMERAL = {"type": "ephemeral"}
READ_FILE = {
    "name": TOOL,
    "description": "Read a file",
    "input_schema": {"type": "object", "properties": {"path": {"type": "string"}},
                     "required": ["path"]},
    "cache_control": EPHEMERAL,
}  # fmt: skip


def preamble() -> str:
    """An agent's system prompt, ~300 tokens, that no other test sends."""
    return f"Agent {uuid.uuid4().hex}. " + "Follow the repository's conventions. " * 40


def test_anthropic_cache_read_input_tokens_streamed_and_not(gateway):
    ask = {
        "model": MODEL,
        "max_tokens": 200,
        "system": [{"type": "text", "text": preamble(), "cache_control": EPHEMERAL}],
        "tools": [READ_FILE],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in notes.txt?",
             "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        ]}],
    }  # fmt: skip
    with anthropic.Anthropic(base_url=gateway.url, api_key="sk-ant-local", max_retries=0,
                             timeout=60) as client:  # fmt: skip
        cold = client.messages.create(**ask)
        warm = client.messages.create(**ask)
        with client.messages.stream(**ask) as stream:
            streamed = stream.get_final_message()
    prompt = cold.usage.input_tokens
    assert prompt > 200
    assert (cold.usage.cache_read_input_tokens, cold.usage.cache_creation_input_tokens) == (0, 0)
    for reply in (warm, streamed):
        usage = reply.usage
        assert usage.input_tokens + usage.cache_read_input_tokens == prompt  # Anthropic's split
        assert usage.cache_read_input_tokens >= 0.9 * prompt
        assert usage.cache_creation_input_tokens == 0
        assert [b.type for b in reply.content] == [b.type for b in cold.content]
        assert reply.content[0].text == cold.content[0].text == TEXT
        assert reply.stop_reason == cold.stop_reason == "tool_use"


def test_openai_cached_tokens_through_the_gateway(gateway):
    messages = [{"role": "system", "content": preamble()},
                {"role": "user", "content": "What is in notes.txt?"}]  # fmt: skip
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-local", max_retries=0,
                       timeout=60) as client:  # fmt: skip
        cold = client.chat.completions.create(model=MODEL, messages=messages)
        warm = client.chat.completions.create(model=MODEL, messages=messages)
        chunks = list(client.chat.completions.create(
            model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
        ))  # fmt: skip
    prompt = cold.usage.prompt_tokens
    assert cold.usage.prompt_tokens_details.cached_tokens == 0  # present on a miss too
    assert warm.usage.prompt_tokens_details.cached_tokens >= 0.9 * prompt
    assert warm.choices[0].message.content == cold.choices[0].message.content
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens >= 0.9 * prompt
