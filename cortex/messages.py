"""Anthropic Messages through the fleet: translate, relay as chat, translate back.

`create_message` serves `POST /v1/messages`. It parses the request (a 400
when it is not one — `max_tokens` is required), resolves the model (aliases
let an agent's `claude-…` name reach a local model), asks a node for the
equivalent chat completion (`protocol.translate_anthropic`) and answers a
`message`. A streaming request gets the node's chat stream re-framed as
Anthropic events as it arrives: if the node has not answered within the
keepalive interval (a cold load, a queue) the stream opens with
`message_start` and `ping` events follow; a failure before that is a plain
HTTP error, a failure after it one `error` event. `count_tokens` asks a node
to render and tokenise the same chat request (`/v1/chat/tokenize`), so the
count is the model's own.

It takes what it uses: the relay's `Upstream`, the keyring that admits the
caller, and the metrics; the gateway's admission check (draining) is the
route's. The meter sees the node's chat bytes, so time to first token and token
counts are recorded as for any chat request. Errors are raised here and
rendered in the Anthropic envelope by `cortex.http`.

Not for: the translation rules (`protocol.translate_anthropic`) or choosing
a node (`cortex.fleet`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from quart import Response

from cortex.auth import Keyring, Principal
from cortex.meter import Meter, metering
from cortex.relay import (
    SSE_HEADERS,
    Broken,
    Chunk,
    Head,
    Upstream,
    answer_in_full,
    error_from_body,
    open_stream,
    refusal,
)
from cortex.vision import check_vision
from protocol import anthropic as an
from protocol import encode_json, parse, unstructure
from protocol.errors import ApiError, UpstreamError
from protocol.http import json_response
from protocol.ids import ModelId
from protocol.node import TokenCount
from protocol.openai import ChatCompletion
from protocol.streaming import END, IDLE
from protocol.translate_anthropic import (
    ChatStreamToAnthropic,
    chat_to_message,
    count_tokens_to_chat,
    messages_to_chat,
)

if TYPE_CHECKING:
    from cortex.metrics import CortexMetrics

__all__ = ["COUNT_TOKENS_ROUTE", "MESSAGES_ROUTE", "count_tokens", "create_message"]

T = TypeVar("T")

MESSAGES_ROUTE = "/v1/messages"
COUNT_TOKENS_ROUTE = "/v1/messages/count_tokens"
_CHAT = "/v1/chat/completions"
_TOKENIZE = "/v1/chat/tokenize"
_PROMPT_TOKENS = "x-helexa-prompt-tokens"  # the node's stream head carries the prompt's size


async def create_message(upstream: Upstream, keyring: Keyring, metrics: CortexMetrics,
                         raw: bytes, headers: Mapping[str, str], rid: str,
                         principal: Principal | None = None):  # fmt: skip
    request = parse(raw, an.MessagesRequest)
    model = upstream.fleet.resolve(request.model)
    chat = messages_to_chat(request, model=model)
    check_vision(unstructure(chat), model, upstream.fleet.capabilities(model))
    body = encode_json(chat)
    grant = keyring.admit(principal, request.model, model, estimate=max(1, len(body) // 4))
    with metering(metrics, MESSAGES_ROUTE, model, grant) as meter:
        if request.stream:
            return await _stream(upstream, body, model, headers, rid, meter)
        return await _once(upstream, body, model, headers, rid, meter)


async def count_tokens(upstream: Upstream, keyring: Keyring, metrics: CortexMetrics,
                       raw: bytes, headers: Mapping[str, str], rid: str,
                       principal: Principal | None = None):  # fmt: skip
    """The prompt tokens of the request on the model's own template and tokenizer."""
    request = parse(raw, an.CountTokensRequest)
    model = upstream.fleet.resolve(request.model)
    body = encode_json(count_tokens_to_chat(request, model=model))
    grant = keyring.admit(principal, request.model, model)  # counting costs no tokens
    with metering(metrics, COUNT_TOKENS_ROUTE, model, grant) as meter:
        data = await _ask(upstream, _TOKENIZE, body, model, headers, rid, COUNT_TOKENS_ROUTE,
                          meter)  # fmt: skip
        counted = _node_reply(data, TokenCount)
        meter.finish("ok")
    return json_response(an.CountTokensResponse(input_tokens=counted.count))


# -- one reply -----------------------------------------------------------------------------


async def _once(upstream: Upstream, body: bytes, model: ModelId, headers: Mapping[str, str],
                rid: str, meter: Meter):  # fmt: skip
    data = await _ask(upstream, _CHAT, body, model, headers, rid, MESSAGES_ROUTE, meter)
    meter.chunk(data)  # the node's usage, for the metrics
    message = chat_to_message(_node_reply(data, ChatCompletion))
    meter.finish("ok")
    return json_response(message)


async def _ask(upstream: Upstream, path: str, body: bytes, model: ModelId,
               headers: Mapping[str, str], rid: str, route: str,
               meter: Meter) -> bytes:  # fmt: skip
    """POST `body` to a node serving `model` (as a request actor): its 200 body, or
    its refusal raised as an ApiError."""
    response, data = await answer_in_full(upstream, rid, model=model, route=route, path=path,
                                          body=body, headers=headers, meter=meter)  # fmt: skip
    if response.status_code != 200:
        raise error_from_body(response.status_code, data, response.headers.get("retry-after"))
    return data


def _node_reply(data: bytes, cls: type[T]) -> T:
    """The node's 200 body as `cls`; one we cannot read is the node's fault (502)."""
    try:
        return parse(data, cls)
    except ApiError as exc:
        raise UpstreamError(f"the node's reply is not a {cls.__name__}: {exc.message}",
                            code="upstream_bad_reply") from exc  # fmt: skip


# -- a stream ------------------------------------------------------------------------------


async def _stream(upstream: Upstream, body: bytes, model: ModelId, headers: Mapping[str, str],
                  rid: str, meter: Meter):  # fmt: skip
    stream = await open_stream(upstream, rid, model=model, route=MESSAGES_ROUTE, path=_CHAT,
                               body=body, headers=headers, meter=meter)  # fmt: skip
    if (head := refusal(stream)) is not None:  # a plain HTTP error, in our envelope
        meter.head(head)
        raise _node_error(head)
    translator = ChatStreamToAnthropic(model=model, input_tokens=_prompt_tokens(stream.first))
    return Response(stream.body(AnthropicRenderer(meter, translator)), 200, SSE_HEADERS)


def _node_error(head: Head) -> ApiError:
    return error_from_body(head.status, head.body, head.headers.get("retry-after"))


def _prompt_tokens(first: Any) -> int:
    """The prompt's size from the node's stream head, if it came before any keepalive."""
    value = first.headers.get(_PROMPT_TOKENS, "") if isinstance(first, Head) else ""
    return int(value) if value.isdigit() else 0


class AnthropicRenderer:
    """The node's chat stream re-framed as Anthropic events as it arrives (`ping`s
    while it is silent); a failure after `message_start` is one `error` event."""

    def __init__(self, meter: Meter, translator: ChatStreamToAnthropic) -> None:
        self.meter = meter
        self.translator = translator

    @property
    def done(self) -> bool:
        return self.translator.ended

    def render(self, event: Any) -> bytes:
        translator = self.translator
        if isinstance(event, Chunk):
            self.meter.chunk(event.data)
            return translator.feed(event.data)
        if event is IDLE:
            return translator.ping()  # waiting for a load or a queue: the Anthropic keepalive
        if event is END:
            return translator.close()
        if isinstance(event, Head):
            self.meter.head(event)
            return b"" if event.status == 200 else translator.fail(_node_error(event))
        if isinstance(event, Broken):
            return translator.fail(event.error)
        raise TypeError(f"not a relay event: {event!r}")

    def closed(self) -> None:
        self.meter.finish(self.translator.outcome or "cancelled")  # none: the client went away
