"""Request shapes real agents send (`fixtures/*.json`), each sent end to end.

A fixture records one request as an agent sends it — headers (beta flags,
`x-api-key`, user agents), the body (system blocks with `cache_control`,
system-role messages inside `messages`, thinking, tool_choice forms, tool
history) — and what the scripted model's answer must look like. Each is
posted unchanged to the gateway; the answer must validate with the official
SDK's types (every streamed event, in a well-formed sequence), have the
expected blocks and stop reason, and be billed exactly what
`count_tokens` says the same request costs. When the shape of what Claude
Code sends changes, record the new shape here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydantic
import pytest
from anthropic import types as ant

from tests.neuron.daemon_harness import HTTPX_ASYNCGEN_WARNING

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.filterwarnings(HTTPX_ASYNCGEN_WARNING),
]

FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("*.json"))
EVENTS = pydantic.TypeAdapter(ant.RawMessageStreamEvent)


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_recorded_request(gateway, path):
    fixture = load(path)
    expect = fixture["expect"]
    with gateway.http(headers=fixture["headers"]) as http:
        response = http.post(fixture["path"], json=fixture["body"])
        counted = http.post("/v1/messages/count_tokens", json=fixture["body"])
    assert response.status_code == expect["status"], response.text
    if expect["status"] != 200:
        error = ant.ErrorResponse.model_validate(response.json())
        assert error.error.type == expect["error_type"] and error.error.message
        return
    assert counted.status_code == 200, counted.text
    input_tokens = ant.MessageTokensCount.model_validate(counted.json()).input_tokens
    if fixture["path"].endswith("/count_tokens"):
        assert response.json() == counted.json() and input_tokens > 0
        return
    if fixture["body"].get("stream"):
        message = _accumulate(response.text)
    else:
        message = ant.Message.model_validate(response.json())
    assert [b.type for b in message.content] == expect["content"]
    assert message.stop_reason == expect["stop_reason"]
    cached = message.usage.cache_read_input_tokens or 0  # the prefix cache's share
    assert message.usage.input_tokens + cached == input_tokens


def _accumulate(body: str) -> ant.Message:
    """Validate each event and its place in the sequence; the message they build."""
    events = []
    for frame in body.split("\n\n"):
        if frame:
            name, data = frame.split("\n")
            payload = json.loads(data.removeprefix("data: "))
            if payload == {"type": "ping"}:  # the keepalive; not in the SDK's event union
                assert name == "event: ping"
                continue
            event = EVENTS.validate_python(payload)
            assert name == f"event: {event.type}"
            events.append(event)
    assert events[0].type == "message_start" and events[-1].type == "message_stop"
    message, open_index = events[0].message.model_dump(), None
    for event in events[1:-1]:
        if event.type == "content_block_start":
            assert open_index is None and event.index == len(message["content"])
            message["content"].append(event.content_block.model_dump())
            open_index = event.index
        elif event.type == "content_block_delta":
            assert event.index == open_index
        elif event.type == "content_block_stop":
            assert event.index == open_index
            open_index = None
        else:
            assert event.type == "message_delta" and open_index is None
            message.update(stop_reason=event.delta.stop_reason)
            message["usage"].update(event.usage.model_dump(exclude_none=True))
    return ant.Message.model_validate(message)
