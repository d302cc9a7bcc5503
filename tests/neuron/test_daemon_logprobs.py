"""logprobs / top_logprobs through a real `neuron serve` (issue #17).

The worker reports each sampled token's log-probability from the logits its
sampler used; here they are checked against a log-softmax computed in this
process by transformers over the same prefix (greedy, fp32), and for shape:
one entry per completion token, `top_logprobs` as long as asked and sorted;
Responses' `output_text` logprobs equal chat's. And n > 1: choices reproducible
with a seed, equal when greedy, interleaved when streamed, the prompt prefilled once.
"""

from __future__ import annotations

import json
import uuid

import pytest
import torch
from daemon_harness import HTTPX_ASYNCGEN_WARNING, QWEN, assert_openai_error, counter, wait_for
from transformers import AutoModelForCausalLM

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.filterwarnings(HTTPX_ASYNCGEN_WARNING),
]

IM_END, END_OF_TEXT = 4089, 4087  # neuron.synth.TOKEN_IDS
NO_EOS = {str(IM_END): -100, str(END_OF_TEXT): -100}
PROMPT = [11, 305, 97, 1203, 44, 8, 611, 2000]
USER = [{"role": "user", "content": "Tell me about the weather in Berlin."}]


@pytest.fixture
def client(neuron_daemon):
    with neuron_daemon.openai() as client:
        yield client


def test_completion_logprobs_match_transformers(client, daemon_models):
    steps = 4
    reply = client.completions.create(
        model=QWEN, prompt=PROMPT, max_tokens=steps, temperature=0, logprobs=5
    )
    logprobs = reply.choices[0].logprobs
    assert len(logprobs.token_logprobs) == steps == len(logprobs.top_logprobs)
    model = AutoModelForCausalLM.from_pretrained(daemon_models.root / QWEN, dtype=torch.float32)
    ids = list(PROMPT)
    with torch.no_grad():
        for step in range(steps):
            expected = model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
            top = expected.topk(5)
            # Greedy: the sampled token is the most likely one.
            assert logprobs.token_logprobs[step] == pytest.approx(float(top.values[0]), abs=1e-4)
            reported = sorted(logprobs.top_logprobs[step].values(), reverse=True)
            # Distinct ids may decode to one string; those collapse in the legacy dict.
            assert reported == pytest.approx(top.values.tolist()[: len(reported)], abs=1e-4)
            ids.append(int(top.indices[0]))


def _check_content(content, count: int, top: int) -> None:
    assert len(content) == count
    for entry in content:
        values = [t.logprob for t in entry.top_logprobs]
        assert len(values) == top
        assert values == sorted(values, reverse=True)
        assert entry.logprob <= 0.0
        assert entry.bytes == list(entry.token.encode())


def test_chat_logprobs_streamed_and_not(client):
    body = dict(model=QWEN, messages=USER, max_tokens=6, logit_bias=NO_EOS, seed=3)
    reply = client.chat.completions.create(**body, logprobs=True, top_logprobs=3)
    _check_content(reply.choices[0].logprobs.content, reply.usage.completion_tokens, 3)
    content = []
    stream = client.chat.completions.create(**body, logprobs=True, top_logprobs=3, stream=True)
    for chunk in stream:
        for choice in chunk.choices:
            if choice.logprobs is not None and choice.logprobs.content:
                content.extend(choice.logprobs.content)
    _check_content(content, 6, 3)
    # The same seed samples the same tokens with the same logprobs.
    assert [c.logprob for c in content] == pytest.approx(
        [c.logprob for c in reply.choices[0].logprobs.content], abs=1e-5
    )
    plain = client.chat.completions.create(**body)
    assert plain.choices[0].logprobs is None


def test_logprobs_bounds_are_a_400(client, neuron_daemon):
    body = dict(model=QWEN, messages=USER, max_tokens=2)
    with neuron_daemon.http() as http:
        for extra in ({"logprobs": True, "top_logprobs": 21}, {"top_logprobs": 2}):
            response = http.post("/v1/chat/completions", json=body | extra)
            error = assert_openai_error(response, 400, "invalid_value")
            assert error["param"] == "top_logprobs"
        response = http.post("/v1/completions", json={**body, "prompt": PROMPT, "logprobs": 21})
        assert assert_openai_error(response, 400, "invalid_value")["param"] == "logprobs"
    assert json.loads(client.chat.completions.create(**body).model_dump_json())["choices"]


# -- n > 1 ---------------------------------------------------------------------------------


def test_n_choices_are_reproducible_with_a_seed(client):
    body = dict(model=QWEN, messages=USER, max_tokens=5, logit_bias=NO_EOS, n=3, seed=11)
    first = client.chat.completions.create(**body)
    again = client.chat.completions.create(**body)
    assert [c.index for c in first.choices] == [0, 1, 2]
    texts = [c.message.content for c in first.choices]
    assert texts == [c.message.content for c in again.choices]
    assert len(set(texts)) > 1  # seed, seed + 1, seed + 2
    assert first.usage.completion_tokens == 15


def test_n_greedy_choices_are_equal_and_stream_interleaved(client):
    body = dict(model=QWEN, messages=USER, max_tokens=4, logit_bias=NO_EOS, n=3, temperature=0)
    reply = client.chat.completions.create(**body)
    assert len({c.message.content for c in reply.choices}) == 1
    assert [c.finish_reason for c in reply.choices] == ["length"] * 3
    texts, finishes, usage = ["", "", ""], {}, None
    for chunk in client.chat.completions.create(**body, stream=True):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == [reply.choices[0].message.content] * 3
    assert finishes == {0: "length", 1: "length", 2: "length"}
    assert usage.completion_tokens == 12
    legacy = client.completions.create(model=QWEN, prompt=PROMPT, max_tokens=3, n=2,
                                       temperature=0, logit_bias=NO_EOS)  # fmt: skip
    assert [c.index for c in legacy.choices] == [0, 1]
    assert legacy.choices[0].text == legacy.choices[1].text
    assert legacy.usage.completion_tokens == 6


def test_responses_output_text_logprobs_streamed_and_not(client):
    # Greedy, so the Responses reply and a chat reply on the same prompt sample the
    # same tokens; the synthetic template opens no reasoning, so all are text.
    body = dict(model=QWEN, input=USER[0]["content"], max_output_tokens=6, temperature=0)
    include = ["message.output_text.logprobs"]
    chat = client.chat.completions.create(
        model=QWEN, messages=USER, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2
    )
    expected = [(t.token, t.logprob) for t in chat.choices[0].logprobs.content]
    text_tokens = expected[: len(expected) - (chat.choices[0].finish_reason == "stop")]
    response = client.responses.create(**body, include=include, top_logprobs=2)
    [part] = response.output[0].content
    assert [e.token for e in part.logprobs] == [token for token, _ in text_tokens]
    assert [e.logprob for e in part.logprobs] == pytest.approx(
        [lp for _, lp in text_tokens], abs=1e-5
    )
    assert all(len(e.top_logprobs) == 2 for e in part.logprobs)
    deltas, done = [], None
    for event in client.responses.create(**body, include=include, top_logprobs=2, stream=True):
        if event.type == "response.output_text.delta":
            deltas += [(e.token, e.logprob) for e in event.logprobs]
        elif event.type == "response.output_text.done":
            done = [(e.token, e.logprob) for e in event.logprobs]
    assert deltas == done == [(e.token, e.logprob) for e in part.logprobs]
    assert client.responses.create(**body).output[0].content[0].logprobs is None


def test_n_choices_prefill_the_prompt_once(neuron_daemon, client):
    # A prompt no one sent before: the first choice prefills it, the other two find it
    # in the prefix cache (each prefills only its last token).
    messages = [{"role": "user", "content": f"A fresh prompt {uuid.uuid4()} " * 8}]
    hit_tokens = f'neuron_prefix_cache_hit_tokens_total{{model="{QWEN}"}}'
    before = counter(neuron_daemon.metrics(), hit_tokens)
    reply = client.chat.completions.create(model=QWEN, messages=messages, max_tokens=2, n=3,
                                           temperature=0, logit_bias=NO_EOS)  # fmt: skip
    assert len({c.message.content for c in reply.choices}) == 1
    shared = 2 * (reply.usage.prompt_tokens - 1)
    wait_for(
        lambda: counter(neuron_daemon.metrics(), hit_tokens) >= before + shared,
        what="the copies' prefix-cache hits counted from a heartbeat",
    )
