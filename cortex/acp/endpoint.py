"""The OpenAI-compatible endpoint the bridge talks to: its model list and streamed chats.

`Endpoint.stream_chat(body)` posts `/chat/completions` with `stream: true` and
yields the reply as small events (`TextDelta`, `ReasoningDelta`,
`ToolCallDelta`, `Finished`). Leaving the iteration early (a `session/cancel`
cancels the task reading it) closes the HTTP response, so the connection drops
and the gateway, then the neuron, end the sequence and free its slot.

Not for: turning the events into ACP updates (`cortex.acp.turn`) or parsing
`<tool_call>` text (`cortex.acp.hermes`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import attrs
import httpx

from cortex.acp.errors import EndpointRefused, EndpointUnreachable

__all__ = ["Endpoint", "Finished", "ReasoningDelta", "StreamEvent", "TextDelta", "ToolCallDelta"]

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 600.0  # a long prefill on a busy fleet sends keepalives, not tokens


@attrs.frozen
class TextDelta:
    text: str


@attrs.frozen
class ReasoningDelta:
    text: str


@attrs.frozen
class ToolCallDelta:
    """A piece of one structured tool call; `index` groups the pieces."""

    index: int
    id: str | None
    name: str | None
    arguments: str


@attrs.frozen
class Finished:
    reason: str | None


StreamEvent = TextDelta | ReasoningDelta | ToolCallDelta | Finished


class Endpoint:
    def __init__(self, base_url: str, api_key: str | None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT)
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def list_models(self) -> list[str]:
        """The ids of `GET /models`, in the endpoint's order."""
        try:
            response = await self._http.get("/models")
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        body = _json_or_none(response.content)
        if response.status_code != 200:
            raise _refused(response.status_code, body)
        entries = body.get("data") if isinstance(body, dict) else body
        return [m["id"] for m in entries or () if isinstance(m, dict) and _str(m.get("id"))]

    async def stream_chat(self, body: dict[str, Any]) -> AsyncIterator[StreamEvent]:
        """The reply to a chat request, streamed; raises `EndpointError` on any failure."""
        request = {**body, "stream": True}
        try:
            async with self._http.stream("POST", "/chat/completions", json=request) as response:
                if response.status_code != 200:
                    raise _refused(response.status_code, _json_or_none(await response.aread()))
                async with contextlib.aclosing(response.aiter_lines()) as lines:
                    async for line in lines:
                        for event in _events(line):
                            yield event
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: httpx.HTTPError) -> EndpointUnreachable:
        detail = f"{type(exc).__name__}: {exc}".rstrip(": ")
        return EndpointUnreachable(f"the endpoint {self.base_url} failed: {detail}")


def _events(line: str) -> list[StreamEvent]:
    if not line.startswith("data:"):
        return []  # blank lines, keepalive comments, `event:` names
    payload = line[len("data:") :].strip()
    if payload == "[DONE]":
        return []
    chunk = _json_or_none(payload.encode())
    if not isinstance(chunk, dict):
        return []
    if "error" in chunk:
        raise _refused(None, chunk)
    events: list[StreamEvent] = []
    for choice in chunk.get("choices") or ():
        events += _choice_events(choice)
    return events


def _choice_events(choice: dict[str, Any]) -> list[StreamEvent]:
    delta = choice.get("delta") or {}
    events: list[StreamEvent] = []
    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        events.append(ReasoningDelta(reasoning))
    if isinstance(delta.get("content"), str) and delta["content"]:
        events.append(TextDelta(delta["content"]))
    for position, call in enumerate(delta.get("tool_calls") or ()):
        function = call.get("function") or {}
        events.append(
            ToolCallDelta(
                index=call.get("index", position),
                id=call.get("id"),
                name=function.get("name"),
                arguments=function.get("arguments") or "",
            )
        )
    if choice.get("finish_reason"):
        events.append(Finished(choice["finish_reason"]))
    return events


def _refused(status: int | None, body: Any) -> EndpointRefused:
    fallback = f"the endpoint answered {status}" if status else "the endpoint's stream failed"
    return EndpointRefused.from_body(status, body, fallback)


def _str(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None
