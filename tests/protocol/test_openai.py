"""OpenAI chat completions, legacy completions and the model list on the wire.

Conformance is checked against the official `openai` SDK in both directions:
what its client sends must parse, and what we send must validate with its
pydantic models and come out of its client (plain and streaming) intact.
"""

from __future__ import annotations

import json

import openai.types as oai
import openai.types.chat as oai_chat
import pytest
from sdk_clients import json_reply, openai_client, sse_reply

from protocol import completions, models
from protocol import openai as oa
from protocol._converter import parse, structure, unstructure
from protocol.errors import MalformedJson, RateLimited, ValidationFailed

MODEL = "Qwen/Qwen3-0.6B"
IDS = {"id": "chatcmpl-abc", "created": 1_700_000_000, "model": MODEL}


def _error(data, cls=oa.ChatCompletionRequest) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as info:
        structure(data, cls)
    return info.value


def _chat(**extra):
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}


# ------------------------------------------------------------------ requests


def test_request_sent_by_the_sdk_parses():
    reply = oa.ChatCompletion(
        **IDS,
        choices=(oa.Choice(message=oa.ChatCompletionMessage(content="ok"), finish_reason="stop"),),
    )
    with openai_client(json_reply(reply)) as (client, sent):
        client.chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "developer", "content": "Be terse."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in this image?"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,iVBO", "detail": "low"},
                        },
                        {"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "lookup", "arguments": '{"q": "cat"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
            ],
            tools=[
                {
                    "type": "function",
                    "function": {
                        "name": "lookup",
                        "description": "Search the web",
                        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
                        "strict": True,
                    },
                }
            ],
            tool_choice={"type": "function", "function": {"name": "lookup"}},
            parallel_tool_calls=False,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
            },
            stop=["\n\n", "END"],
            temperature=0.2,
            top_p=0.9,
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            max_tokens=100,
            max_completion_tokens=64,
            logit_bias={"50256": -100},
            logprobs=True,
            top_logprobs=3,
            seed=7,
            n=1,
            user="u-1",
            metadata={"team": "infra"},
            store=False,
            reasoning_effort="low",
            extra_body={
                "top_k": 20,
                "min_p": 0.05,
                "repetition_penalty": 1.1,
                "chat_template_kwargs": {"enable_thinking": False},
                "some_vendor_flag": True,
            },
        )
    request = parse(sent.body, oa.ChatCompletionRequest)

    developer, user, assistant, tool = request.messages
    assert developer == oa.DeveloperMessage(content="Be terse.")
    assert user.content == (
        oa.TextPart(text="What is in this image?"),
        oa.ImageUrlPart(image_url=oa.ImageUrl(url="data:image/png;base64,iVBO", detail="low")),
        oa.InputAudioPart(input_audio=oa.InputAudio(data="UklG", format="wav")),
    )
    assert assistant.content is None
    assert assistant.tool_calls == (
        oa.ToolCall(id="call_1", function=oa.FunctionCall(name="lookup", arguments='{"q": "cat"}')),
    )
    assert tool == oa.ToolMessage(content="a cat", tool_call_id="call_1")
    assert request.tools[0].function.strict is True
    assert request.tool_choice == oa.NamedToolChoice(function=oa.FunctionName(name="lookup"))
    assert request.response_format.json_schema.name == "answer"
    assert request.stop_sequences == ("\n\n", "END")
    assert request.effective_max_tokens == 64
    assert request.logit_bias == {50256: -100.0}
    assert (request.top_k, request.min_p, request.repetition_penalty) == (20, 0.05, 1.1)
    assert request.chat_template_kwargs == {"enable_thinking": False}
    assert (request.seed, request.n, request.user, request.store) == (7, 1, "u-1", False)
    assert request.stream is False and not request.include_usage


def test_streaming_request_options():
    request = structure(
        _chat(stream=True, stream_options={"include_usage": True}, stop="###"),
        oa.ChatCompletionRequest,
    )
    assert request.stream is True
    assert request.include_usage
    assert request.stop_sequences == ("###",)


@pytest.mark.parametrize(
    ("max_tokens", "max_completion_tokens", "cap"),
    [(None, None, None), (10, None, 10), (None, 20, 20), (10, 20, 20)],
)
def test_max_completion_tokens_wins(max_tokens, max_completion_tokens, cap):
    request = structure(
        _chat(max_tokens=max_tokens, max_completion_tokens=max_completion_tokens),
        oa.ChatCompletionRequest,
    )
    assert request.effective_max_tokens == cap


def test_unknown_fields_are_tolerated_everywhere():
    request = structure(
        {
            "model": MODEL,
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "x", "cache": 1}], "x": 1},
                {"role": "system", "content": "s", "weight": 2},
            ],
            "tools": [{"type": "function", "function": {"name": "f", "x": 1}, "y": 2}],
            "service_tier": "flex",
            "modalities": ["text"],
        },
        oa.ChatCompletionRequest,
    )
    assert request.messages == (
        oa.UserMessage(content=(oa.TextPart(text="x"),)),
        oa.SystemMessage(content="s"),
    )
    assert request.tools == (oa.FunctionTool(function=oa.FunctionDefinition(name="f")),)


def test_unknown_part_and_tool_kinds_are_kept_verbatim():
    part = {"type": "file", "file": {"file_id": "file-1"}}
    tool = {"type": "custom", "custom": {"name": "grammar"}}
    request = structure(
        _chat(messages=[{"role": "user", "content": [part]}], tools=[tool]),
        oa.ChatCompletionRequest,
    )
    assert request.messages[0].content == (oa.OtherPart(type="file", rest={"file": part["file"]}),)
    assert request.tools == (oa.OtherTool(type="custom", rest={"custom": {"name": "grammar"}}),)
    assert unstructure(request.messages[0].content[0]) == part
    assert unstructure(request.tools[0]) == tool


def test_legacy_function_message_and_object_arguments():
    request = structure(
        _chat(
            messages=[
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": {"a": 1}},
                        }
                    ],
                },
                {"role": "function", "name": "f", "content": "42"},
            ]
        ),
        oa.ChatCompletionRequest,
    )
    call = request.messages[0].tool_calls[0].function
    assert call.arguments == {"a": 1}  # as the upstream gateway's translation sends it
    assert call.arguments_json == '{"a":1}'
    assert request.messages[1] == oa.FunctionMessage(name="f", content="42")


def test_reasoning_content_on_assistant_history():
    request = structure(
        _chat(messages=[{"role": "assistant", "content": "4", "reasoning_content": "2+2"}]),
        oa.ChatCompletionRequest,
    )
    assert request.messages[0] == oa.AssistantMessage(content="4", reasoning_content="2+2")


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        (_chat(stream="false"), "expected bool, got string @ $.stream", "stream"),
        (_chat(stream=1), "expected bool, got integer @ $.stream", "stream"),
        (_chat(stream=None), "expected bool, got null @ $.stream", "stream"),
        (
            _chat(temperature="0.7"),
            "expected number or null, got string @ $.temperature",
            "temperature",
        ),
        (
            _chat(max_tokens=1.5),
            "expected integer or null, got number @ $.max_tokens",
            "max_tokens",
        ),
        (_chat(n=True), "expected integer or null, got bool @ $.n", "n"),
        ({"model": MODEL}, "required field missing @ $.messages", "messages"),
        ({"messages": []}, "required field missing @ $.model", "model"),
        (_chat(model=7), "expected string, got integer @ $.model", "model"),
        (_chat(messages={}), "expected array, got object @ $.messages", "messages"),
        (
            _chat(messages=[{"role": "user", "content": 5}]),
            "expected string or array, got integer @ $.messages[0].content",
            "messages[0].content",
        ),
        (
            _chat(messages=[{"role": "user"}]),
            "required field missing @ $.messages[0].content",
            "messages[0].content",
        ),
        (
            _chat(messages=[{"role": "tool", "content": "x"}]),
            "required field missing @ $.messages[0].tool_call_id",
            "messages[0].tool_call_id",
        ),
        (
            _chat(messages=[{"role": "robot", "content": "x"}]),
            "expected object with role 'assistant' or 'developer' or 'function' or 'system' "
            "or 'tool' or 'user', got object @ $.messages[0]",
            "messages[0]",
        ),
        (
            _chat(messages=[{"role": "user", "content": [{"type": "text", "text": 1}]}]),
            "expected string, got integer @ $.messages[0].content[0].text",
            "messages[0].content[0].text",
        ),
        (
            _chat(
                messages=[{"role": "user", "content": [{"type": "image_url", "image_url": "u"}]}]
            ),
            "expected object, got string @ $.messages[0].content[0].image_url",
            "messages[0].content[0].image_url",
        ),
        (
            _chat(tools=[{"type": "function", "function": {"description": "d"}}]),
            "required field missing @ $.tools[0].function.name",
            "tools[0].function.name",
        ),
        (
            _chat(tool_choice="sometimes"),
            "expected one of 'none', 'auto', 'required' or object or null, got string "
            "@ $.tool_choice",
            "tool_choice",
        ),
        (
            _chat(tool_choice={"type": "function", "function": {}}),
            "required field missing @ $.tool_choice.function.name",
            "tool_choice.function.name",
        ),
        (
            _chat(response_format={"type": "xml"}),
            "expected object with type 'json_object' or 'json_schema' or 'text', got object "
            "@ $.response_format",
            "response_format",
        ),
        (
            _chat(stop=["a", 1]),
            "expected string, got integer @ $.stop[1]",
            "stop[1]",
        ),
        (
            # The converter's mapping hook reports the mapping, not the key.
            _chat(logit_bias={"50256": "no"}),
            "expected number, got string @ $.logit_bias",
            "logit_bias",
        ),
        (
            _chat(logit_bias={"eos": 1}),
            "expected integer key, got 'eos' @ $.logit_bias",
            "logit_bias",
        ),
    ],
)
def test_validation_errors_name_the_path(body, message, param):
    error = _error(body)
    assert error.message == message
    assert error.param == param
    assert error.status == 400
    assert error.code == "invalid_request_body"


def test_all_errors_are_reported():
    error = _error(_chat(stream="yes", temperature="hot"))
    assert error.extra["errors"] == [
        "expected bool, got string @ $.stream",
        "expected number or null, got string @ $.temperature",
    ]


def test_null_optionals_are_accepted():
    request = structure(_chat(temperature=None, tools=None, user=None), oa.ChatCompletionRequest)
    assert (request.temperature, request.tools, request.user) == (None, None, None)


def test_non_finite_numbers_are_malformed_json():
    with pytest.raises(MalformedJson):
        parse(b'{"model": "m", "messages": [], "temperature": NaN}', oa.ChatCompletionRequest)


def test_request_output_omits_unset_fields():
    request = structure(_chat(), oa.ChatCompletionRequest)
    assert unstructure(request) == _chat(stream=False)


# ------------------------------------------------------------------ replies


def _tool_call_reply() -> oa.ChatCompletion:
    call = oa.ToolCall(id="call_9", function=oa.FunctionCall(name="lookup", arguments='{"q":1}'))
    message = oa.ChatCompletionMessage(reasoning_content="think", tool_calls=(call,))
    return oa.ChatCompletion(
        **IDS,
        choices=(oa.Choice(message=message, finish_reason="tool_calls"),),
        usage=oa.Usage.of(12, 5, cached=8, reasoning=3),
    )


def test_reply_keeps_null_content_and_omits_unset():
    wire = unstructure(_tool_call_reply())
    assert wire["choices"][0]["message"]["content"] is None
    assert "refusal" not in wire["choices"][0]["message"]
    assert "logprobs" not in wire["choices"][0]
    assert "system_fingerprint" not in wire
    assert wire["usage"] == {
        "prompt_tokens": 12,
        "completion_tokens": 5,
        "total_tokens": 17,
        "prompt_tokens_details": {"cached_tokens": 8},
        "completion_tokens_details": {"reasoning_tokens": 3},
    }


def test_usage_without_details():
    assert unstructure(oa.Usage.of(1, 2)) == {
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "total_tokens": 3,
    }


def test_reply_validates_with_the_sdk_and_reaches_the_client():
    reply = _tool_call_reply()
    validated = oai_chat.ChatCompletion.model_validate(unstructure(reply))
    assert validated.choices[0].message.tool_calls[0].function.name == "lookup"
    with openai_client(json_reply(reply)) as (client, _):
        got = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}]
        )
    assert got.choices[0].finish_reason == "tool_calls"
    assert got.choices[0].message.content is None
    assert got.choices[0].message.reasoning_content == "think"  # an extra the SDK keeps
    assert got.usage.prompt_tokens_details.cached_tokens == 8
    assert got.usage.completion_tokens_details.reasoning_tokens == 3


def test_reply_with_logprobs_validates():
    logprobs = oa.ChoiceLogprobs(
        content=(
            oa.TokenLogprob(
                token="hi",
                logprob=-0.1,
                bytes=(104, 105),
                top_logprobs=(oa.TopLogprob(token="hi", logprob=-0.1, bytes=(104, 105)),),
            ),
        )
    )
    reply = oa.ChatCompletion(
        **IDS,
        choices=(
            oa.Choice(
                message=oa.ChatCompletionMessage(content="hi"),
                finish_reason="length",
                logprobs=logprobs,
            ),
        ),
        system_fingerprint="fp_helexa",
    )
    validated = oai_chat.ChatCompletion.model_validate(unstructure(reply))
    assert validated.choices[0].logprobs.content[0].top_logprobs[0].logprob == -0.1


def test_sdk_dump_parses_back():
    dumped = oai_chat.ChatCompletion.model_validate(unstructure(_tool_call_reply())).model_dump()
    assert structure(dumped, oa.ChatCompletion) == _tool_call_reply()


# -------------------------------------------------------------------- stream


def _stream() -> list[oa.ChatCompletionChunk]:
    call = oa.ToolCallDelta(
        index=0,
        id="call_1",
        type="function",
        function=oa.ToolCallFunctionDelta(name="lookup", arguments='{"q": "x"}'),
    )
    timing = oa.HelexaTiming(prefill_ms=12.5, decode_ms=80, prefill_tokens=9)
    return [
        oa.ChatCompletionChunk.role_chunk(**IDS),
        oa.ChatCompletionChunk.of_delta(oa.ChoiceDelta(reasoning_content="hmm"), **IDS),
        oa.ChatCompletionChunk.of_delta(oa.ChoiceDelta(content="Hel"), **IDS),
        oa.ChatCompletionChunk.of_delta(oa.ChoiceDelta(content="lo"), **IDS),
        oa.ChatCompletionChunk.of_delta(oa.ChoiceDelta(tool_calls=(call,)), **IDS),
        oa.ChatCompletionChunk.finish_chunk("tool_calls", **IDS),
        oa.ChatCompletionChunk.usage_chunk(
            oa.Usage.of(9, 4, cached=2, reasoning=1, timing=timing), **IDS
        ),
    ]


def test_chunk_wire_shapes():
    role, reasoning, *_, finish, usage = (unstructure(c) for c in _stream())
    assert role["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    ]
    assert role["object"] == "chat.completion.chunk"
    assert "usage" not in role
    assert reasoning["choices"][0]["delta"] == {"reasoning_content": "hmm"}
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]
    assert usage["choices"] == []
    assert usage["usage"]["helexa_timing"] == {
        "prefill_ms": 12.5,
        "decode_ms": 80.0,
        "prefill_tokens": 9,
    }


def test_chunks_validate_with_the_sdk_and_parse_back():
    for chunk in _stream():
        validated = oai_chat.ChatCompletionChunk.model_validate(unstructure(chunk))
        assert structure(validated.model_dump(), oa.ChatCompletionChunk) == chunk


def test_sdk_client_reads_the_stream():
    with openai_client(sse_reply(_stream(), named=False, done=True)) as (client, _):
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "x"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert len(chunks) == 7
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello"
    (call,) = chunks[4].choices[0].delta.tool_calls
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "call_1",
        "lookup",
        {"q": "x"},
    )
    assert chunks[5].choices[0].finish_reason == "tool_calls"
    assert chunks[6].choices == [] and chunks[6].usage.total_tokens == 13


# ------------------------------------------------------- legacy completions


def test_completion_request_sent_by_the_sdk_parses():
    reply = completions.Completion(
        id="cmpl-1",
        created=1,
        model=MODEL,
        choices=(completions.CompletionChoice(text=" world", finish_reason="stop"),),
        usage=oa.Usage.of(2, 1),
    )
    with openai_client(json_reply(reply)) as (client, sent):
        got = client.completions.create(
            model=MODEL, prompt=["Hello", "Bye"], max_tokens=5, echo=True, suffix="!", logprobs=2
        )
    assert got.choices[0].text == " world"
    request = parse(sent.body, completions.CompletionRequest)
    assert request.prompts == ("Hello", "Bye")
    assert (request.max_tokens, request.echo, request.suffix, request.logprobs) == (5, True, "!", 2)


@pytest.mark.parametrize(
    ("prompt", "prompts"),
    [
        ("one", ("one",)),
        (["a", "b"], ("a", "b")),
        ([1, 2, 3], ((1, 2, 3),)),
        ([[1, 2], [3]], ((1, 2), (3,))),
        ([], ()),
    ],
)
def test_completion_prompt_shapes(prompt, prompts):
    request = structure({"model": MODEL, "prompt": prompt}, completions.CompletionRequest)
    assert request.prompts == prompts


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ([1, "a"], "expected integer, got string @ $.prompt[1]"),
        (["a", 1], "expected string, got integer @ $.prompt[1]"),
        ([[1], "a"], "expected array, got string @ $.prompt[1]"),
        (5, "expected string or array, got integer @ $.prompt"),
    ],
)
def test_completion_prompt_errors(prompt, message):
    error = _error({"model": MODEL, "prompt": prompt}, completions.CompletionRequest)
    assert error.message == message


def test_completion_reply_and_chunks_validate_with_the_sdk():
    chunk = completions.Completion(
        id="cmpl-1", created=1, model=MODEL, choices=(completions.CompletionChoice(text="x"),)
    )
    wire = unstructure(chunk)
    assert wire["choices"] == [{"index": 0, "text": "x", "finish_reason": None, "logprobs": None}]
    final = completions.Completion(
        id="cmpl-1",
        created=1,
        model=MODEL,
        choices=(
            completions.CompletionChoice(
                text="x",
                finish_reason="length",
                logprobs=completions.CompletionLogprobs(
                    tokens=("x",),
                    token_logprobs=(-0.5,),
                    top_logprobs=({"x": -0.5},),
                    text_offset=(0,),
                ),
            ),
        ),
        usage=oa.Usage.of(1, 1),
    )
    validated = oai.Completion.model_validate(unstructure(final))
    assert validated.choices[0].logprobs.tokens == ["x"]
    assert structure(validated.model_dump(), completions.Completion) == final


# ---------------------------------------------------------------- model list


def _model_list() -> models.ModelList:
    limit = models.ModelLimit(context=32768, output=8192)
    return models.ModelList(
        data=(
            models.ModelCard.with_limit(
                limit,
                id=MODEL,
                created=1,
                loaded=True,
                feasible_on=("beast", "benjy"),
                locations=(
                    models.ModelLocation(node="beast", status="loaded", vram_estimate_mb=1400),
                    models.ModelLocation(node="benjy", status="loading"),
                ),
                capabilities=("text",),
                cost=models.ModelCost(input=0.0, output=0.0),
                tool_call=True,
                reasoning=True,
            ),
            models.ModelCard(id="unpriced", created=1),
        )
    )


def test_model_list_wire_shape():
    wire = unstructure(_model_list())
    first, second = wire["data"]
    assert wire["object"] == "list"
    assert first["limit"] == {"context": 32768, "output": 8192}
    assert (first["max_model_len"], first["max_output_tokens"]) == (32768, 8192)
    assert "max_input_tokens" not in first
    assert first["cost"] == {"input": 0.0, "output": 0.0}  # zero is "free", not "unpriced"
    assert first["locations"][1] == {"node": "benjy", "status": "loading"}
    assert "cost" not in second and "limit" not in second
    assert second["owned_by"] == "helexa" and second["feasible_on"] == []


def test_model_list_reaches_the_sdk_client():
    with openai_client(json_reply(_model_list())) as (client, _):
        listed = list(client.models.list())
    assert [m.id for m in listed] == [MODEL, "unpriced"]
    assert listed[0].owned_by == "helexa"
    assert listed[0].model_extra["feasible_on"] == ["beast", "benjy"]


# -------------------------------------------------------------------- errors


def test_error_envelope_value_matches_to_openai():
    error = RateLimited("slow down", retry_after=2.5, extra={"limit": 10})
    envelope = oa.ErrorResponse.of(error)
    assert unstructure(envelope) == error.to_openai()
    assert unstructure(envelope) == {
        "error": {
            "message": "slow down",
            "type": "rate_limit_error",
            "code": "rate_limit_exceeded",
            "param": None,
            "limit": 10,
        }
    }
    assert structure(error.to_openai(), oa.ErrorResponse) == envelope
    assert oai.ErrorObject.model_validate(unstructure(envelope.error)).code == "rate_limit_exceeded"
