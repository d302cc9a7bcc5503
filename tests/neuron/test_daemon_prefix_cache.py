"""The prefix cache through a real `neuron serve` (#13): a prompt sent again is
served from the cache — `cached_tokens` in every API's usage, streamed and not,
with the same greedy output — and `/models` and `/metrics` show it.

The session's shared daemon (`neuron_daemon`, [cache] defaults: on) serves the
tiny random-weight Qwen3. Each test's prompt is its own (a fresh marker), so no
other test's requests make its first request a hit.
"""

from __future__ import annotations

import uuid

import pytest
from daemon_harness import HTTPX_ASYNCGEN_WARNING, QWEN, counter, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.filterwarnings(HTTPX_ASYNCGEN_WARNING),
]

IM_END, END_OF_TEXT = 4089, 4087  # neuron.synth.TOKEN_IDS
NO_EOS = {str(IM_END): -100, str(END_OF_TEXT): -100}  # run to max_tokens


def long_text() -> str:
    """~150 tokens no other request sends."""
    return f"Session {uuid.uuid4().hex}. " + "The quick brown fox jumps over the lazy dog. " * 15


def test_the_same_chat_twice_reuses_the_prompt_with_the_same_greedy_output(neuron_daemon):
    client = neuron_daemon.openai()
    messages = [{"role": "system", "content": long_text()},
                {"role": "user", "content": "Summarise that."}]  # fmt: skip
    ask = {"model": QWEN, "messages": messages, "max_tokens": 8, "temperature": 0,
           "logit_bias": NO_EOS}  # fmt: skip
    first = client.chat.completions.create(**ask)
    second = client.chat.completions.create(**ask)
    prompt = first.usage.prompt_tokens
    assert prompt > 100 and first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens == prompt
    assert second.usage.prompt_tokens_details.cached_tokens >= 0.9 * prompt
    assert second.usage.helexa_timing["prefill_tokens"] <= 0.1 * prompt
    answer = first.choices[0].message.content
    assert second.choices[0].message.content == answer and first.usage.completion_tokens == 8

    chunks = list(client.chat.completions.create(**ask, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage  # the neuron sends usage on every stream
    assert streamed == answer
    assert usage.prompt_tokens_details.cached_tokens >= 0.9 * prompt


def test_completions_and_responses_report_cached_tokens(neuron_daemon):
    client = neuron_daemon.openai()
    text = long_text()
    ask = {"model": QWEN, "prompt": text, "max_tokens": 4, "temperature": 0}
    cold, warm = (client.completions.create(**ask) for _ in range(2))
    assert cold.usage.prompt_tokens_details.cached_tokens == 0
    assert warm.usage.prompt_tokens_details.cached_tokens >= 0.9 * warm.usage.prompt_tokens
    assert warm.choices[0].text == cold.choices[0].text

    ask = {"model": QWEN, "input": long_text(), "max_output_tokens": 4, "temperature": 0}
    cold, warm = (client.responses.create(**ask) for _ in range(2))
    assert cold.usage.input_tokens_details.cached_tokens == 0
    assert warm.usage.input_tokens_details.cached_tokens >= 0.9 * warm.usage.input_tokens
    assert warm.output_text == cold.output_text


def test_models_and_metrics_show_the_cache(neuron_daemon):
    client = neuron_daemon.openai()
    ask = {"model": QWEN, "prompt": long_text(), "max_tokens": 1, "temperature": 0}
    before = neuron_daemon.metrics()
    hit_tokens = f'neuron_prefix_cache_hit_tokens_total{{model="{QWEN}"}}'
    client.completions.create(**ask)
    reused = client.completions.create(**ask).usage.prompt_tokens_details.cached_tokens
    assert reused > 0

    def entry() -> dict:
        return next(m for m in neuron_daemon.get("/models") if m["id"] == QWEN)

    assert entry()["prefix_cache_bytes"] > 0  # the budget the worker chose
    assert wait_for(lambda: entry().get("prefix_cache_used_bytes"), what="a heartbeat") > 0
    assert entry()["prefix_cache_used_bytes"] <= entry()["prefix_cache_bytes"]

    def grown() -> dict | None:
        after = neuron_daemon.metrics()
        return after if counter(after, hit_tokens) >= counter(before, hit_tokens) + reused else None

    after = wait_for(grown, what="hit tokens counted from a heartbeat")
    lookups = f'neuron_prefix_cache_lookups_total{{model="{QWEN}"}}'
    assert counter(after, lookups) >= counter(before, lookups) + 2
    assert after[f'neuron_prefix_cache_budget_bytes{{model="{QWEN}"}}'] > 0
