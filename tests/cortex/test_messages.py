"""cortex.messages: an Anthropic stream body driven by relay events.

The body is fed what `cortex.relay.stream_events` produces (Head, Chunk,
Broken, the end) through `protocol.streaming`, on trio's autojump clock: silence
becomes `ping` events (after `message_start`), a failure once the stream has
begun one `error` event, and the meter records how the request ended, with
the node's chat usage.
"""

from __future__ import annotations

import json
from typing import Any

import trio

from cortex.messages import AnthropicRenderer, _prompt_tokens
from cortex.meter import Meter
from cortex.relay import Broken, Chunk, Head
from protocol import encode_json
from protocol import openai as chat
from protocol.errors import UpstreamError
from protocol.streaming import open_event_stream
from protocol.translate_anthropic import ChatStreamToAnthropic

MODEL = "helexa/m"
KEEPALIVE = 1.0
IDS = {"id": "chatcmpl-1", "created": 1, "model": MODEL}


class Gauge:
    value = 0

    def inc(self) -> None:
        self.value += 1

    def dec(self) -> None:
        self.value -= 1


class Records:
    def __init__(self) -> None:
        self.records: list[Any] = []
        self.gauge = Gauge()

    def in_flight(self, route: str) -> Gauge:
        return self.gauge

    def request_finished(self, record: Any) -> None:
        self.records.append(record)


class Ref:
    cancelled = False

    def cancel_nowait(self) -> None:
        self.cancelled = True


def frame(chunk: chat.ChatCompletionChunk) -> bytes:
    return b"data: " + encode_json(chunk) + b"\n\n"


BEGUN = frame(chat.ChatCompletionChunk.role_chunk(**IDS)) + frame(
    chat.ChatCompletionChunk.of_delta(chat.ChoiceDelta(content="Hello"), **IDS)
)
REPLY = (
    BEGUN
    + frame(chat.ChatCompletionChunk.finish_chunk("stop", **IDS))
    + frame(chat.ChatCompletionChunk.usage_chunk(chat.Usage.of(7, 1), **IDS))
    + b"data: [DONE]\n\n"
)


async def run(script: list[tuple[float, Any]]) -> tuple[list[dict], Records, Ref]:
    """Send each event after its delay; collect the body's events and the meter's record."""
    records, ref = Records(), Ref()
    meter = Meter(records, "/v1/messages", MODEL)  # type: ignore[arg-type]

    async def start(send: trio.MemorySendChannel) -> Ref:
        async def produce() -> None:
            async with send:
                for delay, event in script:
                    await trio.sleep(delay)
                    await send.send(event)

        nursery.start_soon(produce)
        return ref

    out = b""
    async with trio.open_nursery() as nursery:
        stream = await open_event_stream(start, keepalive=KEEPALIVE)
        translator = ChatStreamToAnthropic(model=MODEL, input_tokens=_prompt_tokens(stream.first))
        async for data in stream.body(AnthropicRenderer(meter, translator)):
            out += data
    assert records.gauge.value == 0  # counted in flight until the body ended
    events = [json.loads(f.split("\n")[1][6:]) for f in out.decode().split("\n\n") if f]
    return events, records, ref


def head(status: int = 200, body: bytes = b"") -> Head:
    headers = {"content-type": "text/event-stream", "x-helexa-prompt-tokens": "7"}
    return Head(status, headers, "node-a", cold=True, load_wait=2.5, body=body)


async def test_silence_becomes_pings_after_message_start(autojump_clock):
    events, records, ref = await run([(3.5, head()), (0, Chunk(REPLY))])
    types = [e["type"] for e in events]
    assert types[:4] == ["message_start", "ping", "ping", "ping"]
    assert types[4:] == ["content_block_start", "content_block_delta", "content_block_stop",
                         "message_delta", "message_stop"]  # fmt: skip
    assert events[0]["message"]["usage"]["input_tokens"] == 0  # sent before the node answered
    assert events[-2]["usage"]["input_tokens"] == 7
    [record] = records.records
    assert (record.outcome, record.node, record.cold_start) == ("ok", "node-a", True)
    assert (record.prompt_tokens, record.completion_tokens) == (7, 1)
    assert record.first_token is not None and ref.cancelled


async def test_a_failure_after_the_stream_began_is_one_error_event(autojump_clock):
    broken = Broken(UpstreamError("node a stream failed: ReadError", code="upstream_stream_error"))
    events, records, _ = await run([(0, head()), (0, Chunk(BEGUN)), (0, broken)])
    assert [e["type"] for e in events][-1] == "error"
    assert events[-1]["error"] == {"type": "api_error",
                                   "message": "node a stream failed: ReadError"}  # fmt: skip
    assert records.records[0].outcome == "stream_error"


async def test_a_refusal_after_pings_is_an_error_event_with_the_anthropic_type(autojump_clock):
    refusal = encode_json({"error": {"message": "busy", "type": "api_error", "code": "busy"}})
    events, records, _ = await run([(2.5, head(503, refusal))])
    assert [e["type"] for e in events] == ["message_start", "ping", "ping", "error"]
    assert events[-1]["error"] == {"type": "overloaded_error", "message": "busy"}
    assert records.records[0].outcome == "stream_error"


async def test_message_start_reports_the_prompt_size_from_the_node_head(autojump_clock):
    events, _, _ = await run([(0, head()), (0, Chunk(REPLY))])
    assert events[0]["message"]["usage"] == {"input_tokens": 7, "output_tokens": 0,
                                             "cache_creation_input_tokens": 0,
                                             "cache_read_input_tokens": 0}  # fmt: skip
    assert events[-2]["usage"]["input_tokens"] == 7


async def test_a_stream_cut_before_it_finished_is_an_error(autojump_clock):
    events, records, _ = await run([(0, head()), (0, Chunk(BEGUN))])
    assert events[-1]["type"] == "error"
    assert records.records[0].outcome == "stream_error"
