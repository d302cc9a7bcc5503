"""Inference through a real `neuron serve` process, with the official OpenAI SDK.

The session's shared daemon (`neuron_daemon`) serves the tiny random-weight
Qwen3: its text is gibberish, so the tests assert structure and the effect of
each parameter (greedy determinism, stop strings, seeds, logit bias), never
wording. Every refusal checks status, envelope type and code, then that the
daemon still serves.
"""

from __future__ import annotations

import base64
import json

import httpx
import openai
import pytest
import trio
from daemon_harness import (
    HTTPX_ASYNCGEN_WARNING,
    QWEN,
    assert_openai_error,
    chat_body,
    next_data,
    open_sse,
    sse_events,
    wait_for,
)
from tokenizers import Tokenizer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.filterwarnings(HTTPX_ASYNCGEN_WARNING),
]

THINK, TOOL_CALL, IM_END, END_OF_TEXT = 4090, 4092, 4089, 4087  # neuron.synth.TOKEN_IDS
NO_EOS = {str(IM_END): -100, str(END_OF_TEXT): -100}  # run to max_tokens
USER = [{"role": "user", "content": "Tell me about the weather in Berlin."}]


@pytest.fixture(scope="module")
def tokenizer(daemon_models) -> Tokenizer:
    return Tokenizer.from_file(str(daemon_models.root / QWEN / "tokenizer.json"))


@pytest.fixture
def client(neuron_daemon):
    with neuron_daemon.openai() as client:
        yield client


def post(daemon, path: str, body=None, **kwargs) -> httpx.Response:
    with daemon.http() as client:
        return client.post(path, json=body, **kwargs)


def stream_lines(daemon, body: dict, path: str = "/v1/chat/completions") -> list[str]:
    with daemon.http() as client, client.stream("POST", path, json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(response.iter_lines())


# -- the four routes through the SDK ------------------------------------------------------


def test_chat_reply_carries_usage_and_finish_reason(client):
    reply = client.chat.completions.create(
        model=QWEN, messages=USER, max_tokens=7, logit_bias=NO_EOS
    )
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.model == QWEN
    [choice] = reply.choices
    assert choice.finish_reason == "length"
    assert choice.message.role == "assistant" and choice.message.content
    usage = reply.usage
    assert usage.completion_tokens == 7
    assert usage.prompt_tokens > 5
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_stream_through_the_sdk(client):
    stream = client.chat.completions.create(
        model=QWEN,
        messages=USER,
        max_tokens=6,
        stream=True,
        logit_bias=NO_EOS,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 6
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text


def test_chat_stream_ends_with_done_and_usage_is_optional(neuron_daemon):
    default = stream_lines(neuron_daemon, chat_body(max_tokens=3, stream=True))
    events = list(sse_events(default))
    assert events[-1] == "[DONE]"
    assert "usage" in json.loads(events[-2])  # upstream's default: always the usage chunk
    opted_out = chat_body(max_tokens=3, stream=True, stream_options={"include_usage": False})
    without = list(sse_events(stream_lines(neuron_daemon, opted_out)))
    assert without[-1] == "[DONE]"
    assert all("usage" not in json.loads(e) for e in without[:-1])


def test_completions_through_the_sdk(client):
    reply = client.completions.create(
        model=QWEN, prompt="def main(", max_tokens=5, logit_bias=NO_EOS
    )
    assert reply.object == "text_completion"
    assert reply.choices[0].finish_reason == "length" and reply.choices[0].text
    assert reply.usage.completion_tokens == 5
    assert reply.usage.prompt_tokens == 3
    chunks = list(
        client.completions.create(
            model=QWEN, prompt="def main(", max_tokens=5, stream=True, logit_bias=NO_EOS
        )
    )
    assert chunks[-1].usage.completion_tokens == 5
    assert any(c.choices and c.choices[0].finish_reason == "length" for c in chunks)


def test_completions_with_token_ids_as_the_prompt(client, tokenizer):
    ids = tokenizer.encode("def main(").ids
    reply = client.completions.create(model=QWEN, prompt=ids, max_tokens=2, temperature=0)
    assert reply.usage.prompt_tokens == len(ids)


def test_responses_through_the_sdk(client):
    reply = client.responses.create(
        model=QWEN, input="Hello there", max_output_tokens=6, instructions="Be brief."
    )
    assert reply.object == "response" and reply.id.startswith("resp_")
    assert reply.status in ("completed", "incomplete")
    assert reply.usage.output_tokens <= 6
    assert reply.usage.total_tokens == reply.usage.input_tokens + reply.usage.output_tokens
    events = list(
        client.responses.create(model=QWEN, input="Hello there", max_output_tokens=6, stream=True)
    )
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.usage.output_tokens <= 6


def test_unknown_model_is_404_on_every_route(client):
    with pytest.raises(openai.NotFoundError) as chat:
        client.chat.completions.create(model="helexa/nope", messages=USER)
    with pytest.raises(openai.NotFoundError) as completion:
        client.completions.create(model="helexa/nope", prompt="x")
    with pytest.raises(openai.NotFoundError) as response:
        client.responses.create(model="helexa/nope", input="x")
    for error in (chat.value, completion.value, response.value):
        assert error.code == "model_not_found"
        assert error.body["type"] == "invalid_request_error"
        assert error.body["model_id"] == "helexa/nope"


# -- what the parameters do ---------------------------------------------------------------


def test_greedy_is_deterministic_and_stop_strings_cut_it(client):
    def chat(**fields):
        return client.chat.completions.create(
            model=QWEN, messages=USER, max_tokens=24, temperature=0, logit_bias=NO_EOS, **fields
        ).choices[0]

    full = chat().message.content
    assert chat().message.content == full
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), full
    cut = chat(stop=[stop])
    assert cut.finish_reason == "stop"
    assert cut.message.content == full[: full.index(stop)]


def test_seed_makes_sampling_reproducible(client):
    def sample(seed: int) -> str:
        return (
            client.chat.completions.create(
                model=QWEN,
                messages=USER,
                max_tokens=16,
                temperature=1.0,
                seed=seed,
                logit_bias=NO_EOS,
            )
            .choices[0]
            .message.content
        )

    assert sample(42) == sample(42)
    assert len({sample(seed) for seed in (1, 2, 3)}) > 1


def test_logit_bias_forces_a_token(client, tokenizer):
    [the] = tokenizer.encode(" the").ids
    reply = client.chat.completions.create(
        model=QWEN, messages=USER, max_tokens=5, logit_bias={str(the): 100}
    )
    assert reply.choices[0].message.content == " the" * 5
    completion = client.completions.create(
        model=QWEN, prompt="x", max_tokens=3, logit_bias={str(the): 100}
    )
    assert completion.choices[0].text == " the" * 3


def test_reasoning_is_split_from_content(neuron_daemon):
    """A slight push towards `<think>` makes the random model open a reasoning block."""
    body = chat_body(max_tokens=30, temperature=0, logit_bias={str(THINK): 7})
    reply = post(neuron_daemon, "/v1/chat/completions", body).json()
    message = reply["choices"][0]["message"]
    assert message["reasoning_content"] and "<think>" not in message["reasoning_content"]
    assert "<think>" not in message["content"]
    assert reply["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
    lines = stream_lines(neuron_daemon, {**body, "stream": True})
    deltas = [
        json.loads(e)["choices"][0]["delta"]
        for e in sse_events(lines)
        if e.startswith("{") and json.loads(e)["choices"]
    ]
    streamed = "".join(d.get("reasoning_content", "") for d in deltas)
    assert streamed == message["reasoning_content"]


def test_usage_has_one_shape_streamed_or_not_reasoned_or_not(neuron_daemon):
    """The same greedy request streamed and not reports the same counts, and a reply
    without reasoning carries `completion_tokens_details` too (`reasoning_tokens: 0`)."""
    shapes = set()
    for bias in ({}, {str(THINK): 7}):  # no reasoning; a reasoning block
        body = chat_body(max_tokens=12, temperature=0, logit_bias={**NO_EOS, **bias})
        whole = post(neuron_daemon, "/v1/chat/completions", body).json()["usage"]
        lines = stream_lines(neuron_daemon, {**body, "stream": True})
        (streamed,) = [u for e in sse_events(lines) if e.startswith("{")
                       if (u := json.loads(e).get("usage"))]  # fmt: skip
        timing = whole.pop("helexa_timing"), streamed.pop("helexa_timing")  # times differ
        assert timing[0].keys() == timing[1].keys()
        assert whole == streamed
        assert (whole["completion_tokens_details"]["reasoning_tokens"] > 0) == bool(bias)
        shapes.add(tuple(whole))
    assert len(shapes) == 1, shapes


def test_chat_template_kwargs_reach_the_template(neuron_daemon):
    """`enable_thinking: false` makes the template close an empty think block."""
    default = post(neuron_daemon, "/v1/chat/completions", chat_body(max_tokens=1)).json()
    off = post(
        neuron_daemon,
        "/v1/chat/completions",
        chat_body(max_tokens=1, chat_template_kwargs={"enable_thinking": False}),
    ).json()
    # "<think>\n\n</think>\n\n": the two marker tokens and the blank lines after each
    assert off["usage"]["prompt_tokens"] == default["usage"]["prompt_tokens"] + 4
    reserved = post(
        neuron_daemon,
        "/v1/chat/completions",
        chat_body(chat_template_kwargs={"add_generation_prompt": False}),
    )
    error = assert_openai_error(reserved, 400, "invalid_value")
    assert error["param"] == "chat_template_kwargs"


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def test_tools_are_rendered_into_the_prompt(client):
    plain = client.chat.completions.create(model=QWEN, messages=USER, max_tokens=1)
    tools = client.chat.completions.create(
        model=QWEN, messages=USER, max_tokens=1, tools=[WEATHER_TOOL]
    )
    assert tools.usage.prompt_tokens > plain.usage.prompt_tokens + 20


def test_chat_tokenize_counts_the_prompt_generation_bills(neuron_daemon):
    """`/v1/chat/tokenize` (the gateway's Anthropic count_tokens) renders like generation."""
    body = chat_body(max_tokens=1, tools=[WEATHER_TOOL],
                     chat_template_kwargs={"enable_thinking": False})  # fmt: skip
    counted = post(neuron_daemon, "/v1/chat/tokenize", body).json()
    billed = post(neuron_daemon, "/v1/chat/completions", body).json()["usage"]["prompt_tokens"]
    assert (counted["model"], counted["count"]) == (QWEN, billed)
    assert counted["max_context"] > billed
    missing = post(neuron_daemon, "/v1/chat/tokenize", chat_body(model="helexa/nope"))
    assert_openai_error(missing, 404, "model_not_found")


def test_keepalive_comments_while_the_stream_is_idle(neuron_daemon):
    """An open `<tool_call>` block is held back until it closes: the stream is
    silent meanwhile, and `[http] keepalive_interval` (0.2 s here) keeps it alive."""
    body = chat_body(
        max_tokens=800, stream=True, tools=[WEATHER_TOOL], logit_bias={str(TOOL_CALL): 100}
    )
    events = list(sse_events(stream_lines(neuron_daemon, body)))
    assert events[-1] == "[DONE]"
    keepalives = [e for e in events if e.startswith(":")]
    assert keepalives and all(e == ": keepalive" for e in keepalives)
    chunks = [json.loads(e) for e in events if e.startswith("{")]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert content.startswith("<tool_call>")  # unterminated: shown as text at the end


# -- refusals -----------------------------------------------------------------------------


PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 32).decode()


@pytest.mark.parametrize(
    ("fields", "status", "code", "param"),
    [
        ({"n": 17}, 400, "invalid_value", "n"),
        ({"temperature": 3}, 400, "invalid_value", "temperature"),
        ({"max_tokens": 0}, 400, "invalid_value", "max_tokens"),
        ({"logit_bias": {"99999": 1}}, 400, "invalid_value", "logit_bias"),
        ({"stream": "yes"}, 400, "invalid_request_body", "stream"),
        ({"max_tokens": "5"}, 400, "invalid_request_body", "max_tokens"),
        ({"messages": "hi"}, 400, "invalid_request_body", "messages"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
                "type": "string", "pattern": "(?=a)"}}}},
            400, "unsupported_value", "response_format",
        ),
        (  # never fetched; a text-only model refuses any image before looking at its URL
            {"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "http://example.com/cat.png"}}]}]},
            400, "vision_unsupported", "messages[0].content[0]",
        ),
        (
            {"messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}]},
            400, "vision_unsupported", "messages[0].content[1]",
        ),
        ({"model": "helexa/nope"}, 404, "model_not_found", None),
    ],
)  # fmt: skip
def test_bad_chat_requests_are_refused(neuron_daemon, fields, status, code, param):
    response = post(neuron_daemon, "/v1/chat/completions", {**chat_body(), **fields})
    error = assert_openai_error(response, status, code)
    if param is not None:
        assert error["param"] == param
    neuron_daemon.assert_serving()


def test_prompt_longer_than_the_context_is_refused_naming_both_numbers(neuron_daemon):
    response = post(neuron_daemon, "/v1/chat/completions", chat_body("word " * 5000))
    error = assert_openai_error(response, 400, "context_length_exceeded")
    assert error["max"] == 4096 and error["prompt_len"] > 4096
    assert str(error["max"]) in error["message"] and str(error["prompt_len"]) in error["message"]
    completion = post(neuron_daemon, "/v1/completions", {"model": QWEN, "prompt": "word " * 5000})
    assert_openai_error(completion, 400, "context_length_exceeded")
    neuron_daemon.assert_serving()


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b'{"model": "helexa/qwen3-tiny", "messages": [', {}, 400, "malformed_json"),
        (b"\xff\xfe not utf-8", {}, 400, "malformed_json"),
        (b'{"model": NaN}', {}, 400, "malformed_json"),
        (b"[]", {}, 400, "invalid_request_body"),
        (b"{}", {"content-type": "text/plain"}, 415, "unsupported_media_type"),
    ],
)
def test_bodies_that_are_not_requests_are_refused(neuron_daemon, body, headers, status, code):
    headers = {"content-type": "application/json", **headers}
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses"):
        response = post(neuron_daemon, path, content=body, headers=headers)
        assert_openai_error(response, status, code)
    neuron_daemon.assert_serving()


def test_oversized_bodies_are_refused(neuron_daemon):
    """`[http] max_body_bytes` is 256 KiB here; with or without a Content-Length."""
    big = chat_body("x" * (300 * 1024))
    error = assert_openai_error(
        post(neuron_daemon, "/v1/chat/completions", big), 413, "request_too_large"
    )
    assert error["max_bytes"] == 256 * 1024

    def chunks():
        payload = json.dumps(big).encode()
        for start in range(0, len(payload), 64 * 1024):
            yield payload[start : start + 64 * 1024]

    chunked = post(
        neuron_daemon,
        "/v1/chat/completions",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert_openai_error(chunked, 413, "request_too_large")
    neuron_daemon.assert_serving()


# -- disconnects ----------------------------------------------------------------------------


async def test_client_disconnect_cancels_the_sequence_and_frees_the_slot(neuron_daemon):
    body = chat_body(max_tokens=3000, stream=True, logit_bias=NO_EOS)
    async with (
        neuron_daemon.async_http(timeout=30) as client,
        open_sse(client, "/v1/chat/completions", body) as (response, lines),
    ):
        assert response.status_code == 200
        for _ in range(5):
            await next_data(lines)
        assert neuron_daemon.model_load(QWEN)["in_flight"] == 1
        [actor] = neuron_daemon.request_actors()
        assert actor["status"]["phase"] == "streaming"
    # leaving the block closed the connection mid-stream
    wait_for(
        lambda: neuron_daemon.model_load(QWEN)["in_flight"] == 0,
        within=10,
        what="the admission slot back",
    )
    wait_for(lambda: not neuron_daemon.request_actors(), within=10, what="request actor gone")
    samples = neuron_daemon.metrics()
    assert samples[f'neuron_request_success_total{{finished_reason="abort",model="{QWEN}"}}'] >= 1
    neuron_daemon.assert_serving()


async def test_disconnect_while_a_non_streaming_request_runs(neuron_daemon):
    body = chat_body(max_tokens=3000, logit_bias=NO_EOS)
    async with neuron_daemon.async_http(timeout=30) as client:
        with trio.move_on_after(0.5):
            await client.post("/v1/chat/completions", json=body)
            raise AssertionError("3000 tokens in under 0.5 s")
    wait_for(
        lambda: neuron_daemon.model_load(QWEN)["in_flight"] == 0,
        within=10,
        what="the admission slot back",
    )
    wait_for(lambda: not neuron_daemon.request_actors(), within=10, what="request actor gone")
    neuron_daemon.assert_serving()
