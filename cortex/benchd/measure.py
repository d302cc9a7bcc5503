"""One streamed chat request, timed the way upstream's helexa-bench times it.

TTFT runs from sending the request to the first non-empty `content` or
`reasoning_content` delta. Decode tok/s is completion tokens over the server's
`helexa_timing.decode_ms` when that window is over 200 ms, else chunks over
the client's first→last chunk window when that is over 0.2 s, else unknown.
Completion tokens come from `usage`, else the chunk count. Not for: what the
request says (`scenarios`) or where it goes (`target`).
"""

from __future__ import annotations

import contextlib
import json
import statistics
from collections.abc import Sequence
from typing import Any

import attrs
import httpx
import trio

from cortex.benchd.errors import RequestFailed, Shed

__all__ = ["Measurement", "median", "p95", "stream_chat"]

MIN_DECODE_SECONDS = 0.2  # shorter windows say more about the clock than the target
_SHED = frozenset({429, 503})


@attrs.frozen
class Measurement:
    ttft_s: float | None
    total_s: float
    completion_tokens: int
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    prefill_ms: float | None = None
    decode_ms: float | None = None
    chunks: int = 0
    window_s: float = 0.0  # first → last content chunk, client clock
    text: str = ""

    @property
    def decode_tps(self) -> float | None:
        if self.decode_ms and self.decode_ms > MIN_DECODE_SECONDS * 1000:
            return self.completion_tokens / (self.decode_ms / 1000)
        if self.window_s > MIN_DECODE_SECONDS and self.chunks > 1:
            return (self.chunks - 1) / self.window_s
        return None

    @property
    def prefill_tps(self) -> float | None:
        if self.prefill_ms and self.prompt_tokens:
            return self.prompt_tokens / (self.prefill_ms / 1000)
        return None


@attrs.define
class _Reading:
    """What a stream said so far."""

    start: float
    first: float | None = None
    last: float | None = None
    chunks: int = 0
    text: list[str] = attrs.field(factory=list)
    usage: dict[str, Any] = attrs.field(factory=dict)

    def chunk(self, data: dict[str, Any], now: float) -> None:
        if error := data.get("error"):
            raise RequestFailed(f"error in stream: {_message(error)}")
        self.usage = data.get("usage") or self.usage
        for choice in data.get("choices") or ():
            if choice.get("finish_reason") == "error":
                raise RequestFailed("the stream ended with finish_reason 'error'")
            delta = choice.get("delta") or {}
            piece = (delta.get("content") or "") + (delta.get("reasoning_content") or "")
            if piece:
                self.first = now if self.first is None else self.first
                self.last, self.chunks = now, self.chunks + 1
                self.text.append(delta.get("content") or "")

    def result(self, now: float) -> Measurement:
        usage = self.usage
        timing = usage.get("helexa_timing") or {}
        details = usage.get("prompt_tokens_details") or {}
        return Measurement(
            ttft_s=None if self.first is None else self.first - self.start,
            total_s=now - self.start,
            completion_tokens=usage.get("completion_tokens", self.chunks),
            prompt_tokens=usage.get("prompt_tokens"),
            cached_tokens=details.get("cached_tokens"),
            prefill_ms=timing.get("prefill_ms"),
            decode_ms=timing.get("decode_ms"),
            chunks=self.chunks,
            window_s=(self.last - self.first) if self.first is not None else 0.0,
            text="".join(self.text),
        )


async def stream_chat(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str]
) -> Measurement:
    """Send `body` (streamed) to `url` and time it. Shed on 429/503,
    RequestFailed on any other failure."""
    reading = _Reading(trio.current_time())
    try:
        async with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                await _refused(response)
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                reading.chunk(_json(payload), trio.current_time())
    except httpx.HTTPError as exc:
        raise RequestFailed(f"{type(exc).__name__}: {exc or 'no detail'}") from exc
    return reading.result(trio.current_time())


async def _refused(response: httpx.Response) -> None:
    await response.aread()
    text = response.text[:300]
    with contextlib.suppress(ValueError, AttributeError):
        text = _message(response.json().get("error")) or text
    cls = Shed if response.status_code in _SHED else RequestFailed
    raise cls(f"HTTP {response.status_code}: {text}", response.status_code)


def _message(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)


def _json(payload: str) -> dict[str, Any]:
    try:
        data = json.loads(payload)
    except ValueError:
        raise RequestFailed(f"not JSON in stream: {payload[:100]!r}") from None
    if not isinstance(data, dict):
        raise RequestFailed(f"not a JSON object in stream: {payload[:100]!r}")
    return data


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def p95(values: Sequence[float]) -> float | None:
    """The nearest-rank 95th percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]
