"""A scripted OpenAI-compatible endpoint for `helexa-acp` tests (asyncio, loopback).

Each `POST /v1/chat/completions` takes the next `Reply` off the script and
streams it as chat-completion chunks; the request bodies are kept for the test
to inspect. A reply with `hang=True` keeps its stream open after its chunks
until the client closes the connection, which sets `disconnected`. A reply
with `status` answers that error status with `body` instead.

Deterministic tool loops without a model; the real fleet is used in
tests/conformance/test_acp.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import attrs

MODELS = ("helexa/scripted-a", "helexa/scripted-b")


@attrs.frozen
class Reply:
    chunks: Sequence[dict[str, Any]] = ()  # each a `delta`; "finish" key for finish_reason
    hang: bool = False
    status: int = 200
    body: Any = None


def text(*pieces: str, finish: str = "stop") -> Reply:
    return Reply([{"content": p} for p in pieces] + [{"finish": finish}])


def tool_call(name: str, arguments: dict[str, Any], *, call_id: str = "call_1") -> Reply:
    """One structured call, its arguments streamed in three pieces."""
    raw = json.dumps(arguments)
    cut = [raw[: len(raw) // 3], raw[len(raw) // 3 : 2 * len(raw) // 3], raw[2 * len(raw) // 3 :]]
    first = {"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                             "function": {"name": name, "arguments": cut[0]}}]}  # fmt: skip
    rest = [{"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} for piece in cut[1:]]
    return Reply([{"content": "On it."}, first, *rest, {"finish": "tool_calls"}])


class ScriptedEndpoint:
    def __init__(self, replies: Sequence[Reply] = ()) -> None:
        self.replies = list(replies)
        self.requests: list[dict[str, Any]] = []
        self.disconnected = asyncio.Event()
        self.models_error: Reply | None = None  # what `GET /v1/models` answers instead
        self.url = ""

    def script(self, replies: Sequence[Reply]) -> ScriptedEndpoint:
        """A new script (between tests, while nothing is being served)."""
        self.replies, self.requests, self.disconnected = list(replies), [], asyncio.Event()
        self.models_error = None
        return self

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, replies: Sequence[Reply] = ()) -> AsyncIterator[ScriptedEndpoint]:
        endpoint = cls(replies)
        server = await asyncio.start_server(endpoint._serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        endpoint.url = f"http://127.0.0.1:{port}/v1"
        async with server:
            yield endpoint

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path, body = await _read_request(reader)
            if method == "GET" and path == "/v1/models" and self.models_error:
                await _respond(writer, self.models_error.status, self.models_error.body)
            elif method == "GET" and path == "/v1/models":
                data = [{"id": m, "object": "model"} for m in MODELS]
                await _respond(writer, 200, {"object": "list", "data": data})
            elif method == "POST" and path == "/v1/chat/completions":
                self.requests.append(json.loads(body))
                await self._chat(reader, writer, self.replies.pop(0))
            else:
                await _respond(writer, 404, {"error": {"message": f"no route {path}"}})
        except (ConnectionError, asyncio.IncompleteReadError):
            self.disconnected.set()
        finally:
            writer.close()

    async def _chat(self, reader, writer, reply: Reply) -> None:
        if reply.status != 200:
            await _respond(writer, reply.status, reply.body)
            return
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"connection: close\r\n\r\n")  # fmt: skip
        for delta in reply.chunks:
            writer.write(_event(delta))
            await writer.drain()
        if reply.hang:
            await reader.read()  # until the client closes its end
            self.disconnected.set()
            return
        writer.write(b"data: [DONE]\n\n")
        await writer.drain()


def _event(delta: dict[str, Any]) -> bytes:
    if "error" in delta:
        return b"data: " + json.dumps(delta).encode() + b"\n\n"
    finish = delta.get("finish")
    delta = {k: v for k, v in delta.items() if k != "finish"}
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": MODELS[0],
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    length = int({k.lower(): v for k, v in headers.items()}.get("content-length", 0))
    return method, path, await reader.readexactly(length)


async def _respond(writer: asyncio.StreamWriter, status: int, body: Any) -> None:
    payload = json.dumps(body).encode()
    writer.write(
        f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n".encode()
        + payload
    )
    await writer.drain()
