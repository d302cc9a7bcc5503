"""Watching one relayed request go by, for the metrics: times, outcome, tokens.

A `Meter` is created when a request arrives and told what happens to it —
which node it was sent to (through `watching`, the request actor's status
callback: a request cancelled before its answer counts against that node),
which node answered, whether a load was waited for and how long the node
took to answer (a stream's head comes once the node admitted the request, so
for a stream that is the wait in the node's queue), each body chunk as it
is forwarded (only the time of the first chunk that carries generated
content — text, reasoning or a tool call, not a stream's opening role chunk
or a keepalive — and a bounded tail are kept, never the whole body), and
how it ended. `finish` turns that into one
`cortex.metrics.RequestRecord`, reading token usage from the tail (the
usage chunk of a chat/completions stream, `response.completed` of a
Responses stream, or the JSON body of a non-streaming answer). When the
caller's key is metered, `grant` (a `cortex.auth.Grant`) is settled with those
tokens — only if a node answered: a request refused before that used none.

Not for: changing what is relayed — the meter only looks.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import trio

from cortex.metrics import CortexMetrics, RequestRecord
from protocol.errors import ApiError

if TYPE_CHECKING:
    from cortex.auth import Grant
    from cortex.relay import Head

TAIL_BYTES = 64 * 1024

# A chunk with generated content in any of the node's dialects: a non-empty chat
# `content` / `reasoning_content`, `tool_calls`, a completion's `text`, or a
# Responses `…delta` event. A stream's first chunk (the role, empty content) and
# SSE comments do not match.
_GENERATED = re.compile(rb'"(?:content|reasoning_content|text|delta)":"[^"]|"tool_calls":\[')


class Meter:
    def __init__(self, metrics: CortexMetrics, route: str, model: str | None) -> None:
        self.metrics = metrics
        self.route = route
        self.model = model
        self.started = trio.current_time()
        self.node: str | None = None  # the node that answered
        self.routed_to: str | None = None  # the node it was last sent to (or loaded on)
        self.cold = False
        self.load_wait: float | None = None
        self.queue_wait: float | None = None
        self.upstream_at: float | None = None  # when the request went to the node
        self.first_token_at: float | None = None  # first chunk with generated content
        self.retried_on: tuple[str, ...] = ()
        self._tail = bytearray()
        self._done = False
        self.grant: Grant | None = None
        self._in_flight = metrics.in_flight(route)
        self._in_flight.inc()  # until `finish`: a stream counts until its body ends

    def answered(self, node: str, cold: bool, load_wait: float | None = None,
                 head_wait: float = 0.0, queue_wait: float | None = None,
                 retried_on: tuple[str, ...] = ()) -> None:  # fmt: skip
        """`node` answered, `head_wait` seconds after the request was sent to it, after
        the nodes `retried_on` failed it."""
        self.node, self.cold, self.load_wait, self.queue_wait = node, cold, load_wait, queue_wait
        self.upstream_at = trio.current_time() - head_wait
        self.retried_on = retried_on

    def watching(self, set_status: Callable[..., None]) -> Callable[..., None]:
        """A request actor's `set_status` that also notes the node the request goes to,
        so that one cancelled before an answer still counts against that node."""

        def status(**fields: Any) -> None:
            if fields.get("node") is not None:
                self.routed_to = fields["node"]
            set_status(**fields)

        return status

    def head(self, head: Head) -> None:
        """A stream's head. A node starts a stream once the request holds one of its
        slots, so the wait for a 200 head is the request's wait in the node's queue."""
        queued = head.head_wait if head.status == 200 else None
        self.answered(head.node, head.cold, head.load_wait or None, head.head_wait, queued,
                      head.retried_on)  # fmt: skip

    def chunk(self, data: bytes) -> None:
        if self.first_token_at is None and _GENERATED.search(data):
            self.first_token_at = trio.current_time()
        self._tail += data
        if len(self._tail) > TAIL_BYTES:
            del self._tail[: len(self._tail) - TAIL_BYTES]

    def finish(self, outcome: str) -> None:
        if self._done:
            return
        self._done = True
        self._in_flight.dec()
        now = trio.current_time()
        usage = _usage(bytes(self._tail))
        if self.grant is not None and self.node is not None:
            self.grant.settle(usage.get("prompt", 0) + usage.get("completion", 0), outcome)
        first = None if self.first_token_at is None else self.first_token_at - self.started
        overhead = None
        if self.upstream_at is not None:
            overhead = max(0.0, self.upstream_at - self.started - (self.load_wait or 0.0))
        self.metrics.request_finished(RequestRecord(
            route=self.route, model=self.model, node=self.node or self.routed_to, outcome=outcome,
            duration=now - self.started, first_token=first, load_wait=self.load_wait,
            queue_wait=self.queue_wait, overhead=overhead, cold_start=self.cold,
            decode=None if self.first_token_at is None else now - self.first_token_at,
            retried_on=self.retried_on,
            prompt_tokens=usage.get("prompt", 0), completion_tokens=usage.get("completion", 0),
            cached_prompt_tokens=usage.get("cached", 0),
        ))  # fmt: skip


@contextlib.contextmanager
def metering(metrics: CortexMetrics, route: str, model: str,
             grant: Grant | None) -> Iterator[Meter]:  # fmt: skip
    """A meter for the request, finished here if it fails (a stream's body finishes
    it); it settles the key's `grant` with the usage it reads."""
    meter = Meter(metrics, route, model)
    meter.grant = grant
    try:
        yield meter
    except ApiError as exc:
        meter.finish(outcome_for_status(exc.status, exc.type))
        raise
    except BaseException:
        meter.finish("cancelled")
        raise


def outcome_for_status(status: int, detail: str | bytes | None = None) -> str:
    """The `outcome` label of an answer: backpressure (429, or a 503 whose error `detail`
    — its type or its body — says `rate_limit`) is `rejected`, any other 503 is
    `unavailable`, 504 is `timeout`."""
    if status < 400:
        return "ok"
    if status == 429:
        return "rejected"
    if status == 503:
        text = detail.decode("utf-8", "replace") if isinstance(detail, bytes) else detail or ""
        return "rejected" if "rate_limit" in text else "unavailable"
    if status == 504:
        return "timeout"
    if status < 500:
        return "client_error"
    return "upstream_error"


def _usage(tail: bytes) -> dict[str, int]:
    """Token usage from the end of a body: JSON, or SSE events last to first (the usage
    is in the last few: the lines before them are not looked at)."""
    text = tail.decode("utf-8", "replace")
    if '"usage"' not in text:
        return {}
    if usage := _usage_of(text):
        return usage
    end = len(text)
    while end > 0:
        start = text.rfind("\n", 0, end) + 1
        line = text[start:end]
        if line.startswith("data:") and '"usage"' in line and (usage := _usage_of(line[5:])):
            return usage
        end = start - 1
    return {}


def _usage_of(candidate: str) -> dict[str, int]:
    try:
        data = json.loads(candidate)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    usage: Any = data.get("usage") or (data.get("response") or {}).get("usage")
    if not isinstance(usage, dict):
        return {}
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    return {
        "prompt": int(usage.get("prompt_tokens", usage.get("input_tokens", 0)) or 0),
        "completion": int(usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0),
        "cached": int(details.get("cached_tokens", 0) or 0) if isinstance(details, dict) else 0,
    }
