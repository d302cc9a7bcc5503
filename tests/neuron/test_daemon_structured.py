"""Structured outputs and forced tool calls on a random-weight model (issue #17).

The tiny Qwen3 writes gibberish, so whatever it produces under a grammar is the
test: for random JSON Schemas (hypothesis) the reply must parse and validate
(`jsonschema`) through every dialect — chat (streamed and not), Responses
`text.format`, and Anthropic `output_config.format` through a real cortex — and a
forced tool call must come back as a call to an allowed tool whose arguments
validate, with `finish_reason: "tool_calls"` / `stop_reason: "tool_use"`.
"""

from __future__ import annotations

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
    Catalogue,
    CortexConfig,
    Eviction,
    Fleet,
    Gateway,
    Http,
    ModelProfile,
    Neuron,
)

sys.path.insert(0, str(Path(__file__).parents[1] / "conformance"))  # gateway_thread's imports
from gateway_thread import GatewayThread

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
    config = CortexConfig(
        models_config="",
        gateway=Gateway(listen="127.0.0.1:0", metrics_listen="127.0.0.1:0"),
        eviction=Eviction(min_residency_seconds=0),
        neurons=(Neuron(name="structured", endpoint=neuron_daemon.url),),
        fleet=Fleet(poll_interval=0.3, poll_timeout=2, failure_threshold=1, backoff_max=1),
        http=Http(keepalive_interval=0.2, retries=1, drain_timeout=5),
        catalogue=Catalogue.of([ModelProfile(id=QWEN, vram_mb=4)], {}),
    )
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


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck), database=None)
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
