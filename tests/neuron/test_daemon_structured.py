"""Structured outputs and forced tool calls on a random-weight model (issue #17).

The tiny Qwen3 writes gibberish, so whatever it produces under a grammar is the
test: for 20 random JSON Schemas (hypothesis, derandomized) and a curated set of 20 (one per schema
feature) the reply must parse and validate (`jsonschema`, formats checked) through
every dialect — chat, Responses `text.format`, and Anthropic
`output_config.format` through a real cortex, streamed and not; a forced tool call
must come back as a call to an allowed tool whose arguments validate, with
`finish_reason: "tool_calls"` / `stop_reason: "tool_use"`; under `tool_choice`
auto, every call to `strict` tools must validate; and LangChain's
`with_structured_output` must parse on the Responses API and on chat.
"""

from __future__ import annotations

import concurrent.futures
import json
import sys
from pathlib import Path

import anthropic
import jsonschema
import pydantic
import pytest
from daemon_harness import HTTPX_ASYNCGEN_WARNING, QWEN, assert_openai_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cortex.config import (
    ModelProfile,
)

sys.path.insert(0, str(Path(__file__).parents[1] / "conformance"))  # gateway_thread's imports
from gateway_thread import GatewayThread, gateway_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.filterwarnings(HTTPX_ASYNCGEN_WARNING),
]

USER = [{"role": "user", "content": "Describe the weather in Berlin as JSON."}]
MAX_TOKENS = 400  # every schema below is bounded well under this


# -- random bounded schemas ------------------------------------------------------------------

leaf = st.one_of(
    st.just({"type": "boolean"}),
    st.builds(lambda n: {"type": "string", "maxLength": n}, st.integers(0, 8)),
    st.builds(
        lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
        st.integers(-50, 50),
        st.integers(0, 100),
    ),
    st.builds(
        lambda values: {"enum": values},
        st.lists(
            st.sampled_from(["a", "b", "north", 1, 2, True, None]),
            min_size=1,
            max_size=4,
            unique=True,
        ),
    ),
    st.just({"type": "string", "pattern": "^[a-z]{1,6}$"}),
)


def _object(properties: dict, required: list) -> dict:
    return {
        "type": "object",
        "properties": properties,
        "required": sorted(required),
        "additionalProperties": False,
    }


def _extend(children):
    array = st.builds(
        lambda items, n: {"type": "array", "items": items, "maxItems": n},
        children,
        st.integers(0, 3),
    )
    obj = st.dictionaries(
        st.sampled_from(["city", "temp", "wind", "tags", "sky"]), children, min_size=1, max_size=3
    ).flatmap(
        lambda props: st.builds(
            _object, st.just(props), st.lists(st.sampled_from(sorted(props)), unique=True)
        )
    )
    return array | obj


schemas = st.recursive(leaf, _extend, max_leaves=5).map(
    lambda s: s if s.get("type") == "object" else _object({"value": s}, ["value"])
)


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def client(neuron_daemon):
    with neuron_daemon.openai() as client:
        yield client


@pytest.fixture(scope="module")
def gateway(neuron_daemon):
    profiles = [ModelProfile(id=QWEN, vram_mb=4)]
    config = gateway_config({"structured": neuron_daemon.url}, {}, profiles)
    with GatewayThread.running(config) as gw:
        gw.wait_healthy(nodes=1)
        yield gw


@pytest.fixture
def claude(gateway):
    with anthropic.Anthropic(
        base_url=gateway.url, api_key="sk-ant-local", max_retries=0, timeout=60
    ) as client:
        yield client


def _valid(text: str, schema: dict):
    value = json.loads(text)
    jsonschema.validate(value, schema)
    return value


# -- structured outputs through every dialect ----------------------------------------------


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
    derandomize=True,  # the same 20 schemas on every run: CI stays reproducible
)
@given(schema=schemas, seed=st.integers(0, 1000))
def test_random_schemas_always_validate(client, claude, schema, seed):
    fmt = {"type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": True}}
    body = dict(model=QWEN, messages=USER, max_tokens=MAX_TOKENS, seed=seed, response_format=fmt)
    reply = client.chat.completions.create(**body)
    assert reply.choices[0].finish_reason == "stop", reply.choices[0].message.content
    _valid(reply.choices[0].message.content, schema)
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(**body, stream=True)
        if chunk.choices
    )
    assert streamed == reply.choices[0].message.content  # same seed, same tokens
    response = client.responses.create(
        model=QWEN,
        input=USER[0]["content"],
        max_output_tokens=MAX_TOKENS,
        temperature=1.0,
        text={"format": {"type": "json_schema", "name": "out", "schema": schema}},
    )
    _valid(response.output_text, schema)
    message = claude.messages.create(
        model=QWEN,
        max_tokens=MAX_TOKENS,
        messages=USER,
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}},
    )
    assert message.stop_reason == "end_turn"
    _valid(message.content[0].text, schema)


# -- a curated set: one schema per feature, every dialect, streamed and not --------------------


def _props(props: dict, required: list | None = None) -> dict:
    return _object(props, list(props) if required is None else required)


DIGIT = {"type": "integer", "minimum": 0, "maximum": 9}
CURATED = {
    "nested": _props({"user": _props({"name": {"type": "string", "maxLength": 8},
                                      "age": {"type": "integer", "minimum": 0, "maximum": 120}})}),
    "array_bounds": _props({"digits": {"type": "array", "items": DIGIT, "minItems": 2,
                                       "maxItems": 4}}),
    "enum": _props({"sky": {"enum": ["clear", "cloudy", "rain"]}}),
    "any_of": _props({"v": {"anyOf": [{"type": "string", "maxLength": 5},
                                      {"type": "integer", "minimum": -5, "maximum": 5}]}}),
    "one_of": _props({"shape": {"oneOf": [_props({"r": DIGIT}),
                                          _props({"w": DIGIT, "h": DIGIT})]}}),
    "all_of": {"allOf": [_props({"a": DIGIT}), {"required": ["a"]}]},
    # A plain `number` has no bound on its fraction, which a random model can fill to
    # the cap ("9.2222…"); `multipleOf` bounds the digits (llguidance writes exactly
    # as many decimals as the step has).
    "number_bounds": _props({"p": {"type": "number", "minimum": 0, "maximum": 1,
                                   "multipleOf": 0.01},
                             "t": {"type": "number", "exclusiveMinimum": -40,
                                   "exclusiveMaximum": 50, "multipleOf": 0.25}}),
    "multiple_of": _props({"m": {"type": "integer", "minimum": 0, "maximum": 100,
                                 "multipleOf": 5}}),
    "pattern": _props({"code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}}),
    "string_lengths": _props({"s": {"type": "string", "minLength": 2, "maxLength": 5}}),
    "date": _props({"day": {"type": "string", "format": "date"}}),
    "uuid": _props({"id": {"type": "string", "format": "uuid"}}),
    "email": _props({"to": {"type": "string", "format": "email", "maxLength": 20}}),
    "ipv4": _props({"ip": {"type": "string", "format": "ipv4"}}),
    "optional": _props({"a": {"type": "boolean"}, "b": DIGIT,
                        "c": {"type": "string", "maxLength": 4}}, ["a"]),
    "const_and_null": _props({"kind": {"const": "weather"},
                              "note": {"type": ["string", "null"], "maxLength": 6}}),
    "array_of_objects": _props({"points": {"type": "array", "maxItems": 2,
                                           "items": _props({"x": DIGIT, "y": DIGIT})}}),
    "nested_arrays": _props({"grid": {"type": "array", "maxItems": 2,
                                      "items": {"type": "array", "maxItems": 2,
                                                "items": {"type": "boolean"}}}}),
    "tuple": _props({"pair": {"type": "array", "items": False,
                              "prefixItems": [{"type": "string", "maxLength": 3}, DIGIT]}}),
    "refs": {"$defs": {"P": _props({"x": DIGIT})}, **_props({"a": {"$ref": "#/$defs/P"},
                                                             "b": {"$ref": "#/$defs/P"}})},
}  # fmt: skip
CURATED_TOKENS = 160  # each schema's documents stay well under this


def _chat_run(client, schema: dict, stream: bool) -> tuple[str, str]:
    fmt = {"type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": True}}
    body = dict(model=QWEN, messages=USER, max_tokens=CURATED_TOKENS, response_format=fmt)
    if not stream:
        [choice] = client.chat.completions.create(**body).choices
        return choice.message.content, choice.finish_reason
    text, finish = "", None
    for chunk in client.chat.completions.create(**body, stream=True):
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    return text, finish


def _responses_run(client, schema: dict, stream: bool) -> tuple[str, str]:
    fmt = {"type": "json_schema", "name": "out", "schema": schema}
    body = dict(model=QWEN, input=USER[0]["content"], max_output_tokens=CURATED_TOKENS,
                text={"format": fmt})  # fmt: skip
    if not stream:
        response = client.responses.create(**body)
        return response.output_text, response.status
    for event in client.responses.create(**body, stream=True):
        if event.type in ("response.completed", "response.incomplete"):
            return event.response.output_text, event.response.status
    raise AssertionError("the stream ended without a response")


def _messages_run(claude, schema: dict, stream: bool) -> tuple[str, str]:
    fmt = {"type": "json_schema", "schema": schema}
    body = dict(model=QWEN, max_tokens=CURATED_TOKENS, messages=USER,
                extra_body={"output_config": {"format": fmt}})  # fmt: skip
    if not stream:
        message = claude.messages.create(**body)
    else:
        with claude.messages.stream(**body) as events:
            message = events.get_final_message()
    return "".join(b.text for b in message.content if b.type == "text"), message.stop_reason


def test_curated_schemas_validate_in_every_dialect(client, claude):
    """20 schemas, one per feature, each through chat, Responses and Anthropic
    Messages, streamed and not: 120 requests, sent 16 at a time so the worker
    decodes them as one batch."""
    dialects = ((_chat_run, client), (_responses_run, client), (_messages_run, claude))
    runs = [(run, where, stream) for run, where in dialects for stream in (False, True)]
    jobs = [(name, schema, run) for name, schema in CURATED.items() for run in runs]
    checker = jsonschema.FormatChecker()

    def one(job):
        name, schema, (run, where, stream) = job
        return name, schema, run.__name__, stream, run(where, schema, stream)

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(one, jobs))
    for name, schema, dialect, stream, (text, finish) in results:
        where = f"{name} via {dialect} (stream={stream}): {text!r}"
        assert finish in ("stop", "completed", "end_turn"), where
        jsonschema.validate(json.loads(text), schema, format_checker=checker)


def test_json_object_and_sdk_parse(client):
    reply = client.chat.completions.create(
        model=QWEN, messages=USER, max_tokens=60, seed=1, response_format={"type": "json_object"}
    )
    # Any object: a random model may run to the cap inside a free-form key or string.
    [choice] = reply.choices
    assert choice.message.content.startswith("{")
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content), dict)

    class Weather(pydantic.BaseModel):
        city: str = pydantic.Field(max_length=10)
        sunny: bool
        wind: int = pydantic.Field(ge=0, le=99)

    parsed = client.chat.completions.parse(
        model=QWEN, messages=USER, max_tokens=MAX_TOKENS, seed=2, response_format=Weather
    )
    assert isinstance(parsed.choices[0].message.parsed, Weather)
    response = client.responses.parse(
        model=QWEN, input=USER[0]["content"], max_output_tokens=MAX_TOKENS, text_format=Weather
    )
    assert isinstance(response.output_parsed, Weather)


def test_a_schema_the_library_cannot_enforce_is_a_400(neuron_daemon, client):
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": "(?=x)y"}}}
    body = {
        "model": QWEN,
        "messages": USER,
        "max_tokens": 5,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    }
    with neuron_daemon.http() as http:
        error = assert_openai_error(
            http.post("/v1/chat/completions", json=body), 400, "unsupported_value"
        )
    assert error["param"] == "response_format" and "look-around" in error["message"]
    assert client.chat.completions.create(model=QWEN, messages=USER, max_tokens=2).choices


# -- forced tool calls ------------------------------------------------------------------------

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"enum": ["c", "f"]},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"zone": {"type": "string", "maxLength": 8}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_time"}}]
)
def test_a_forced_tool_call_is_always_a_valid_call(client, claude, choice):
    for seed in range(3):
        reply = client.chat.completions.create(
            model=QWEN,
            messages=USER,
            max_tokens=MAX_TOKENS,
            tools=TOOLS,
            tool_choice=choice,
            seed=seed,
        )
        [result] = reply.choices
        assert result.finish_reason == "tool_calls", result.message
        [call] = result.message.tool_calls
        if isinstance(choice, dict):
            assert call.function.name == "get_time"
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    tools = [
        {"name": t["function"]["name"], "input_schema": t["function"]["parameters"]} for t in TOOLS
    ]
    message = claude.messages.create(
        model=QWEN, max_tokens=MAX_TOKENS, messages=USER, tools=tools, tool_choice={"type": "any"}
    )
    assert message.stop_reason == "tool_use"
    [use] = [b for b in message.content if b.type == "tool_use"]
    jsonschema.validate(use.input, SCHEMAS[use.name])


# -- strict tools under tool_choice auto ------------------------------------------------------

TOOL_CALL = 4092  # neuron.synth.TOKEN_IDS["<tool_call>"]
STRICT_TOOLS = [{"type": t["type"], "function": {**t["function"], "strict": True}} for t in TOOLS]


def test_strict_tools_under_auto_make_every_call_valid(client):
    # The random model rarely opens a call on its own: a bias on `<tool_call>` makes
    # it open one after a few words of text. Under `auto` it may write anything
    # before; inside the block the grammar holds.
    body = dict(model=QWEN, messages=USER, tool_choice="auto", logit_bias={str(TOOL_CALL): 6})
    reply = client.chat.completions.create(
        **body, tools=STRICT_TOOLS, max_tokens=120, n=8, seed=1, parallel_tool_calls=False
    )
    calls = [c for choice in reply.choices for c in choice.message.tool_calls or ()]
    assert len(calls) >= 4, [choice.message for choice in reply.choices]
    for call in calls:
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    for choice in reply.choices:
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
    # Without `strict` the same biased model opens calls it never writes validly.
    loose = client.chat.completions.create(**body, tools=TOOLS, max_tokens=30, n=3, seed=1)
    assert not any(choice.message.tool_calls for choice in loose.choices)
    assert any("<tool_call>" in (choice.message.content or "") for choice in loose.choices)


# -- LangChain's with_structured_output through the gateway ----------------------------------


def test_langchain_with_structured_output(gateway):
    from langchain_openai import ChatOpenAI

    class Forecast(pydantic.BaseModel):
        city: str = pydantic.Field(max_length=10)
        sunny: bool
        wind: int = pydantic.Field(ge=0, le=99)

    def model(**kwargs) -> ChatOpenAI:
        return ChatOpenAI(model=QWEN, base_url=f"{gateway.url}/v1", api_key="sk-local",
                          max_tokens=MAX_TOKENS, max_retries=0, timeout=60, **kwargs)  # fmt: skip

    prompt = USER[0]["content"]
    # LangChain's default method (json_schema: the SDK makes the model's schema strict),
    # on the Responses API and on chat; and the tool-calling method, which forces a call
    # to a `Forecast` function (strict, else the schema allows any extra key and the
    # random model writes them to the cap).
    for llm, method, strict in (
        (model(use_responses_api=True), "json_schema", None),
        (model(use_responses_api=False), "json_schema", None),
        (model(use_responses_api=False), "function_calling", True),
    ):
        structured = llm.with_structured_output(
            Forecast, method=method, strict=strict, include_raw=True
        )
        result = structured.invoke(prompt)
        assert result["parsing_error"] is None, result["raw"]
        assert isinstance(result["parsed"], Forecast), result["raw"]
        responses_api = result["raw"].response_metadata["id"].startswith("resp_")
        assert responses_api == llm.use_responses_api
        if method == "function_calling":
            assert result["raw"].tool_calls[0]["name"] == "Forecast"
        else:
            assert json.loads(result["raw"].text) == result["parsed"].model_dump()
