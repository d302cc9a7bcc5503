"""The official `anthropic` SDK against cortex's `/v1/messages`, over a real neuron.

The neuron serves the scripted model (`scripted_model`), so every reply is
known exactly: a thinking block when thinking is on, one sentence, one
`read_file` call. Checked: the reply's blocks, ids, stop reasons and usage;
the exact streaming event sequence and that it accumulates to the same
message; a tool round trip with tool_result; count_tokens equal to what the
same request is billed; pings while a stream waits for a cold load; the
error envelope and status of each failure; and the gateway's metrics.
"""

from __future__ import annotations

import anthropic
import pytest
from gateway_thread import CLAUDE_NAMES
from scripted_model import SCRIPTED, TEXT, THINKING, TOOL, TOOL_INPUT

from tests.neuron.daemon_harness import HTTPX_ASYNCGEN_WARNING

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.filterwarnings(HTTPX_ASYNCGEN_WARNING),
]

MODEL = CLAUDE_NAMES[0]
READ_FILE = {
    "name": TOOL,
    "description": "Read a file",
    "input_schema": {"type": "object", "properties": {"path": {"type": "string"}},
                     "required": ["path"]},
}  # fmt: skip
THINK = {"type": "enabled", "budget_tokens": 1024}
ASK = [{"role": "user", "content": "What is in notes.txt?"}]
FULL = {"model": MODEL, "max_tokens": 200, "messages": ASK, "tools": [READ_FILE], "thinking": THINK}


@pytest.fixture
def client(gateway):
    with anthropic.Anthropic(base_url=gateway.url, api_key="sk-ant-local", max_retries=0,
                             timeout=60) as client:  # fmt: skip
        yield client


def billed_input(usage) -> int:
    """All input tokens: Anthropic's `input_tokens` leaves out the prefix cache's reads."""
    return usage.input_tokens + (usage.cache_read_input_tokens or 0)


def _without_ids(message: anthropic.types.Message) -> dict:
    """The reply minus what is fresh per request (message and tool-call ids)."""
    dumped = message.model_dump(exclude={"id"})
    for block in dumped["content"]:
        block.pop("id", None)
    return dumped


# -- replies ------------------------------------------------------------------------------


def test_reply_has_thinking_text_and_tool_use(client):
    reply = client.messages.create(**FULL)
    assert reply.id.startswith("msg_") and reply.model == SCRIPTED
    thinking, text, call = reply.content
    assert (thinking.type, thinking.thinking) == ("thinking", THINKING)
    assert (text.type, text.text) == ("text", TEXT)
    assert (call.type, call.name, call.input) == ("tool_use", TOOL, TOOL_INPUT)
    assert (reply.stop_reason, reply.stop_sequence) == ("tool_use", None)
    usage = reply.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.cache_creation_input_tokens == 0  # both present, as agents need; a read
    assert usage.cache_read_input_tokens >= 0  # when an earlier test sent this prompt
    assert reply._request_id  # the `request-id` header


def test_without_thinking_there_is_no_thinking_block(client):
    reply = client.messages.create(**{**FULL, "thinking": {"type": "disabled"}})
    assert [b.type for b in reply.content] == ["text", "tool_use"]
    plain = client.messages.create(model=MODEL, max_tokens=200, messages=ASK)
    assert [b.type for b in plain.content] == ["text"]  # no tools: the call stays text
    assert plain.content[0].text.startswith(TEXT) and plain.stop_reason == "end_turn"


def test_stop_sequence_and_max_tokens(client):
    stopped = client.messages.create(model=MODEL, max_tokens=200, messages=ASK,
                                     stop_sequences=["check"])  # fmt: skip
    assert [b.text for b in stopped.content] == ["Let me "]
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "check")
    with client.messages.stream(model=MODEL, max_tokens=200, messages=ASK,
                                stop_sequences=["check"]) as stream:  # fmt: skip
        streamed = stream.get_final_message()
    assert (streamed.stop_reason, streamed.stop_sequence) == ("stop_sequence", "check")
    cut = client.messages.create(model=MODEL, max_tokens=3, messages=ASK)
    assert (cut.stop_reason, cut.usage.output_tokens) == ("max_tokens", 3)


# -- streams ------------------------------------------------------------------------------


def test_stream_is_the_exact_event_sequence(client):
    with client.messages.create(**FULL, stream=True) as stream:
        events = [e for e in stream if e.type != "ping"]
    start = events[0]
    assert start.type == "message_start" and start.message.id.startswith("msg_")
    assert start.message.usage.cache_read_input_tokens == 0  # present, as agents need
    assert start.message.usage.cache_creation_input_tokens == 0
    shape = [(e.type, getattr(e, "index", None)) for e in events]
    blocks = [(e.index, e.content_block.type) for e in events if e.type == "content_block_start"]
    assert blocks == [(0, "thinking"), (1, "text"), (2, "tool_use")]
    for index in range(3):
        opened = shape.index(("content_block_start", index))
        closed = shape.index(("content_block_stop", index))
        deltas = {shape[i] for i in range(opened + 1, closed)}
        assert deltas == {("content_block_delta", index)}
    deltas = [e.delta for e in events if e.type == "content_block_delta"]
    json_deltas = [d.partial_json for d in deltas if d.type == "input_json_delta"]
    assert "".join(json_deltas) == '{"path":"notes.txt"}'
    assert [t for t, _ in shape[-2:]] == ["message_delta", "message_stop"]
    delta = events[-2]
    assert (delta.delta.stop_reason, delta.delta.stop_sequence) == ("tool_use", None)
    assert delta.usage.input_tokens > 0 and delta.usage.output_tokens > 0
    # The prompt's size is known at message_start unless a keepalive had to open the stream.
    # (the whole prompt: its prefix cache share is known only once the node prefilled, and
    # message_delta's cumulative usage splits it into input_tokens + cache_read_input_tokens)
    assert start.message.usage.input_tokens in (0, billed_input(delta.usage))


def test_stream_accumulates_to_the_same_message_as_the_reply(client):
    with client.messages.stream(**FULL) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == TEXT
    assert _without_ids(final) == _without_ids(client.messages.create(**FULL))


def test_pings_while_a_stream_waits_for_a_cold_load(gateway):
    with gateway.http() as http:
        unloaded = http.post("/admin/models/unload", json={"model": SCRIPTED})
        assert unloaded.status_code == 200, unloaded.text
    with (
        gateway.http() as http,
        http.stream("POST", "/v1/messages", json={**FULL, "stream": True}) as response,
    ):
        assert response.status_code == 200
        names = [line[7:] for line in response.iter_lines() if line.startswith("event: ")]
    assert names[0] == "message_start" and names[1] == "ping"  # the load was waited for
    assert names[-1] == "message_stop"
    assert "content_block_start" in names and "error" not in names


# -- tools and counting -------------------------------------------------------------------


def test_tool_round_trip_with_tool_result(client):
    first = client.messages.create(**FULL)
    call = first.content[-1]
    history = [
        *ASK,
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call.id, "content": "buy milk"},
            {"type": "tool_result", "tool_use_id": "toolu_gone", "content": "no such call",
             "is_error": True},
        ]},
    ]  # fmt: skip
    second = client.messages.create(**{**FULL, "messages": history})
    assert [b.type for b in second.content] == ["thinking", "text", "tool_use"]
    counted = client.messages.count_tokens(model=MODEL, messages=history, tools=[READ_FILE],
                                           thinking=THINK)  # fmt: skip
    assert counted.input_tokens == billed_input(second.usage) > billed_input(first.usage)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"system": "Be brief."},
        {"system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
         "tools": [READ_FILE], "tool_choice": {"type": "any"}},
        {"tools": [READ_FILE], "thinking": THINK},
    ],
)  # fmt: skip
def test_count_tokens_is_what_the_request_is_billed(client, fields):
    counted = client.messages.count_tokens(model=MODEL, messages=ASK, **fields)
    billed = client.messages.create(model=MODEL, max_tokens=1, messages=ASK, **fields)
    assert counted.input_tokens == billed_input(billed.usage) > 0


# -- errors -------------------------------------------------------------------------------


def _assert_envelope(error: anthropic.APIStatusError, status: int, kind: str) -> None:
    assert error.status_code == status
    assert error.body["type"] == "error" and error.body["error"]["type"] == kind
    assert error.body["error"]["message"]


def test_unknown_model_is_not_found_streaming_or_not(client):
    for stream in (False, True):
        with pytest.raises(anthropic.NotFoundError) as raised:
            client.messages.create(model="claude-nope", max_tokens=5, messages=ASK, stream=stream)
        _assert_envelope(raised.value, 404, "not_found_error")
    with pytest.raises(anthropic.NotFoundError) as raised:
        client.messages.count_tokens(model="claude-nope", messages=ASK)
    _assert_envelope(raised.value, 404, "not_found_error")


def test_bad_requests_are_invalid_request_errors(client, gateway):
    with pytest.raises(anthropic.BadRequestError) as raised:  # refused by the node
        client.messages.create(model=MODEL, max_tokens=0, messages=ASK)
    _assert_envelope(raised.value, 400, "invalid_request_error")
    with gateway.http() as http:
        missing = http.post("/v1/messages", json={"model": MODEL, "messages": ASK})
        malformed = http.post("/v1/messages", content=b"{not json",
                              headers={"content-type": "application/json"})  # fmt: skip
        wrong_method = http.get("/v1/messages")
        no_route = http.post("/v1/messages/batches", json={})
    for response, status, kind in [
        (missing, 400, "invalid_request_error"),
        (malformed, 400, "invalid_request_error"),
        (wrong_method, 405, "invalid_request_error"),
        (no_route, 404, "not_found_error"),
    ]:
        assert response.status_code == status, response.text
        body = response.json()
        assert body["type"] == "error" and body["error"]["type"] == kind, body
        assert set(body["error"]) == {"type", "message"}
        assert response.headers["request-id"] == response.headers["x-request-id"]
    assert "max_tokens" in missing.json()["error"]["message"]


def test_a_draining_gateway_is_an_overload_with_retry_after(draining_gateway):
    with anthropic.Anthropic(base_url=draining_gateway.url, api_key="x", max_retries=0,
                             timeout=30) as client:  # fmt: skip
        for stream in (False, True):
            with pytest.raises(anthropic.ServiceUnavailableError) as raised:
                client.messages.create(model=MODEL, max_tokens=5, messages=ASK, stream=stream)
            _assert_envelope(raised.value, 503, "overloaded_error")
            assert raised.value.response.headers["retry-after"]


def test_api_key_headers_are_accepted(gateway):
    for headers in ({"x-api-key": "sk-ant-local"}, {"authorization": "Bearer sk-local"}):
        with gateway.http(headers=headers) as http:
            response = http.post("/v1/messages", json={"model": MODEL, "max_tokens": 2,
                                                       "messages": ASK})  # fmt: skip
        assert response.status_code == 200, response.text


# -- metrics ------------------------------------------------------------------------------


def test_metrics_record_translated_streams(client, gateway):
    node = f'model="{SCRIPTED}",node="conformance"'
    requests = f'cortex_requests_total{{{node},outcome="ok",route="/v1/messages"}}'
    before = gateway.metrics()
    with client.messages.stream(**FULL) as stream:
        final = stream.get_final_message()
    after = gateway.metrics()

    def grew(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew(requests) == 1
    assert grew(f"cortex_time_to_first_token_seconds_count{{{node}}}") == 1
    assert grew(f"cortex_prompt_tokens_total{{{node}}}") == billed_input(final.usage)
    assert grew(f"cortex_completion_tokens_total{{{node}}}") == final.usage.output_tokens
