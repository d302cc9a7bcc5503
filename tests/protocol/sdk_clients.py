"""The official OpenAI and Anthropic SDK clients wired to an in-memory server.

`openai_client(reply)` / `anthropic_client(reply)` give a real SDK client
whose HTTP goes to `httpx.MockTransport`: every request the SDK builds is
recorded in `sent`, and `reply` (protocol values, or SSE events) is what the
SDK receives and parses. No socket, no process, no network.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import anthropic
import httpx
import httpx2  # what the anthropic SDK is built on
import openai

from protocol._converter import encode_json, unstructure

__all__ = ["Recorder", "Reply", "anthropic_client", "json_reply", "openai_client", "sse_reply"]


class Reply:
    """What the in-memory server answers: status, headers, body bytes."""

    def __init__(self, body: bytes, status: int = 200, headers: dict[str, str] | None = None):
        self.body, self.status, self.headers = body, status, headers or {}


def json_reply(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(
        encode_json(value), status, {"content-type": "application/json", **(headers or {})}
    )


def sse_reply(events: Iterable[Any], *, named: bool, done: bool = False) -> Reply:
    """A `text/event-stream` body; `named` adds `event: <type>` lines."""
    body = b""
    for event in events:
        if named:
            body += f"event: {unstructure(event)['type']}\n".encode()
        body += b"data: " + encode_json(event) + b"\n\n"
    if done:
        body += b"data: [DONE]\n\n"
    return Reply(body, headers={"content-type": "text/event-stream"})


class Recorder:
    """Records each request body and answers with `reply`."""

    def __init__(self, reply: Reply, response_cls: type) -> None:
        self.reply = reply
        self.response_cls = response_cls
        self.sent: list[Any] = []

    def __call__(self, request: Any) -> Any:
        request.read()
        self.sent.append(request)
        reply = self.reply
        return self.response_cls(reply.status, content=reply.body, headers=reply.headers)

    @property
    def body(self) -> bytes:
        return self.sent[-1].content


@contextlib.contextmanager
def openai_client(reply: Reply) -> Iterator[tuple[openai.OpenAI, Recorder]]:
    recorder = Recorder(reply, httpx.Response)
    with httpx.Client(transport=httpx.MockTransport(recorder)) as http:
        client = openai.OpenAI(
            api_key="sk-test", base_url="http://helexa.test/v1", http_client=http, max_retries=0
        )
        yield client, recorder


@contextlib.contextmanager
def anthropic_client(reply: Reply) -> Iterator[tuple[anthropic.Anthropic, Recorder]]:
    recorder = Recorder(reply, httpx2.Response)
    with httpx2.Client(transport=httpx2.MockTransport(recorder)) as http:
        client = anthropic.Anthropic(
            api_key="sk-ant-test", base_url="http://helexa.test", http_client=http, max_retries=0
        )
        yield client, recorder
