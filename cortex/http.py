"""The gateway's HTTP routes: thin; parse → fleet/relay → response.

Inference routes (`/v1/chat/completions`, `/v1/completions`,
`/v1/responses`) resolve the model (aliases), place it, and relay the
node's answer unchanged — status, headers that matter, body — with the
body's `model` rewritten to the concrete id when an alias was used.
Streams are relayed chunk by chunk as they arrive; while a stream waits for
a cold load the client gets SSE keepalive comments, and a failure after the
200 went out is an in-band error event followed by `data: [DONE]`.

The Anthropic routes (`/v1/messages`, `/v1/messages/count_tokens`) are
served by translating to and from chat (`cortex.messages`); every error on
them, whatever raised it, is rendered in the Anthropic envelope, and their
responses also carry the request id as `request-id`, where Anthropic's SDK
looks for it.

Every response carries `x-request-id` (the client's or a new one), which is
also sent to the node so one request can be followed across both logs: it is
bound to the request's logging context (`protocol.logs.set_request_id`), so
every line logged while handling it — in its request actor too — carries it.

`/admin/nodes/<name>/actors` (+ `/stream`) relay a node's own actor tree
through the gateway, for `python -m cortex.inspect`; a node that cannot be
asked answers 502.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

import attrs
import httpx
import trio
from quart import Response, request
from quart_trio import QuartTrio

import actors
from cortex import messages, openapi
from cortex.auth import Grant, Principal, with_usage
from cortex.fast_path import FastPath
from cortex.messages import COUNT_TOKENS_ROUTE, MESSAGES_ROUTE
from cortex.meter import Meter, metering, outcome_for_status
from cortex.relay import (
    SSE_HEADERS,
    Broken,
    Chunk,
    Head,
    answer_in_full,
    error_from_body,
    open_stream,
    refusal,
    response_headers,
)
from cortex.ui import routes as ui
from cortex.vision import check_vision
from protocol import decode_json, encode_json, sse, unstructure
from protocol.completions import Completion, CompletionChoice
from protocol.errors import ApiError, InvalidRequest, NotFound, UpstreamError
from protocol.http import (
    Dialect,
    error_for,
    error_response,
    install_edge,
    json_response,
    prepare_app,
    read_body,
    request_id,
)
from protocol.ids import ModelId, NodeName
from protocol.node import ACCOUNT_ID_HEADER, KEY_ID_HEADER
from protocol.openai import ChatCompletionChunk, CompletionId, FinishReason
from protocol.streaming import END, IDLE

if TYPE_CHECKING:
    from cortex.gateway import Gateway

log = logging.getLogger(__name__)

INFERENCE_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
# Every POST relayed to a node: served by `cortex.fast_path` (and `proxy` under Quart).
RELAYED_ROUTES = (*INFERENCE_ROUTES, MESSAGES_ROUTE, COUNT_TOKENS_ROUTE)


def create_app(gateway: Gateway) -> QuartTrio:
    http = gateway.config.http
    app = prepare_app(QuartTrio("cortex"), max_body_bytes=http.max_body_bytes,
                      body_timeout=http.body_timeout)  # fmt: skip
    install_edge(app, _api_error, name_taken=actors.NameTaken)
    app.before_request(_authorizer(gateway))
    app.after_request(_stamp_request_id)
    for path in INFERENCE_ROUTES:
        app.add_url_rule(path, path, _proxy_view(gateway, path), methods=["POST"])
    _messages_routes(app, gateway)
    _info_routes(app, gateway)
    _admin_routes(app, gateway)
    ui.install(app, gateway)  # the dashboard: /ui/, /admin/traffic
    # The relayed routes themselves, served before Quart sees them (the routes above
    # stay for the URL map: 405 + Allow, the OpenAPI description).
    fast = FastPath(
        app.asgi_app,
        RELAYED_ROUTES,
        fast_answer(gateway),
        max_body_bytes=http.max_body_bytes,
        body_timeout=http.body_timeout,
    )
    app.asgi_app = fast  # type: ignore[method-assign]
    return app


# -- plumbing ------------------------------------------------------------------------------


def _authorizer(gateway: Gateway):
    async def authorize() -> None:  # cortex.auth: 401/403 here, before any route runs
        request.helexa_principal = gateway.keyring.authenticate(request.headers, request.path)

    return authorize


def principal() -> Principal | None:
    return getattr(request, "helexa_principal", None)


async def _stamp_request_id(response: Response) -> Response:
    return stamp(response, request.method, request.path, request_id(), principal())


def stamp(response: Response, method: str, path: str, rid: str,
          caller: Principal | None) -> Response:  # fmt: skip
    """Every answer: its request id in the headers, one log line."""
    response.headers["x-request-id"] = rid
    if dialect(path) == "anthropic":
        response.headers["request-id"] = rid  # where the Anthropic SDK looks
    level = logging.DEBUG if method == "GET" else logging.INFO  # polls stay quiet
    log.log(level, "answered method=%s path=%s status=%s key=%s", method, path,
            response.status_code, caller.key_id if caller else "-")  # fmt: skip
    return response


async def _api_error(error: ApiError) -> Response:
    return refused(error, request.path)


def refused(error: ApiError, path: str) -> Response:
    """The answer for `error` on `path` (logged, in the route's envelope)."""
    log.warning("request refused path=%s status=%s code=%s: %s", path, error.status,
                error.code, error.message)  # fmt: skip
    return error_response(error, dialect(path))


def dialect(path: str) -> Dialect:
    """The error envelope of the route asked: Anthropic's under `/v1/messages`."""
    return "anthropic" if path.startswith(MESSAGES_ROUTE) else "openai"


# -- inference -----------------------------------------------------------------------------


@attrs.define
class Call:
    """An inference request as `proxy` sees it, whichever way it came in: through
    Quart (`request`) or the fast path (`cortex.fast_path`). `read` reads the body."""

    path: str
    headers: Mapping[str, str]  # `get` by lower-case name
    rid: str
    principal: Principal | None
    read: Callable[[], Awaitable[bytes]]
    grant: Grant | None = None


def fast_answer(gateway: Gateway):
    """The relayed routes' answer for `cortex.fast_path` (outside Quart): the caller
    authenticated, `proxy`, failures answered as `install_edge` answers them, stamped."""

    async def answer(path: str, headers: dict[str, str], rid: str,
                     read: Callable[[], Awaitable[bytes]]) -> Response:  # fmt: skip
        call = Call(path, headers, rid, None, read)
        try:
            call.principal = gateway.keyring.authenticate(headers, path)
            response = await proxy(gateway, call)
        except Exception as exc:
            error = error_for(exc, name_taken=actors.NameTaken, request_id=rid, path=path)
            response = refused(error, path)
        return stamp(response, "POST", path, rid, call.principal)

    return answer


def _proxy_view(gateway: Gateway, path: str):
    async def view():
        call = Call(path, request.headers, request_id(), principal(),
                    functools.partial(read_body, request))  # fmt: skip
        return await proxy(gateway, call)

    view.__name__ = "proxy_" + path.strip("/").replace("/", "_")
    return view


def _peek(raw: bytes, gateway: Gateway, call: Call) -> tuple[bytes, str, bool]:
    """(body with the concrete model id, that id, stream?) — 400 without a model;
    admitted for the caller's key (cortex.auth), which may refuse it."""
    data = decode_json(raw)  # not JSON: 400 malformed_json, saying why
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, str) or not model:
        raise InvalidRequest("missing 'model' field in request body", param="model",
                             code="missing_model_field")  # fmt: skip
    concrete = gateway.fleet.resolve(model)
    check_vision(data, concrete, gateway.fleet.capabilities(concrete))
    call.grant = gateway.keyring.admit(call.principal, model, concrete,
                                       estimate=max(1, len(raw) // 4))  # fmt: skip
    if concrete != model:
        data["model"] = concrete
        raw = encode_json(data)
    if call.grant is not None and call.grant.metered:
        raw = with_usage(raw)
    return raw, concrete, data.get("stream") is True


def _upstream_headers(call: Call) -> dict[str, str]:
    """Built afresh (nothing of the client's but `accept`): the node's token is added by
    the relay's client (cortex.auth.NeuronTokens); the key's name rides as gateway headers."""
    headers = {"content-type": "application/json", "x-request-id": call.rid}
    if accept := call.headers.get("accept"):
        headers["accept"] = accept
    if caller := call.principal:
        headers[KEY_ID_HEADER], headers[ACCOUNT_ID_HEADER] = caller.key_id, caller.account_id
    return headers


async def proxy(gateway: Gateway, call: Call) -> Response:
    """A relayed route (`RELAYED_ROUTES`): the node's answer, or an ApiError raised."""
    if call.path.startswith(MESSAGES_ROUTE):
        return await _anthropic(gateway, call)
    gateway.check_admitting()
    raw, model, stream = _peek(await call.read(), gateway, call)
    with metering(gateway.metrics, call.path, model, call.grant) as meter:
        if stream:
            return await _proxy_stream(gateway, call, raw, model, meter)
        return await _proxy_once(gateway, call, raw, model, meter)


async def _proxy_once(gateway: Gateway, call: Call, raw: bytes, model: str, meter: Meter):
    response, body = await answer_in_full(gateway.upstream, call.rid, model=model,
                                          route=call.path, path=call.path, body=raw,
                                          headers=_upstream_headers(call),
                                          meter=meter)  # fmt: skip
    meter.chunk(body)
    meter.finish(outcome_for_status(response.status_code, body))
    return Response(body, response.status_code, response_headers(response))


async def _proxy_stream(gateway: Gateway, call: Call, raw: bytes, model: str, meter: Meter):
    stream = await open_stream(gateway.upstream, call.rid, model=ModelId(model), route=call.path,
                               path=call.path, body=raw, headers=_upstream_headers(call),
                               meter=meter)  # fmt: skip
    if (head := refusal(stream)) is not None:  # the node's answer, status and all
        meter.head(head)
        meter.finish(outcome_for_status(head.status, head.body))
        return Response(head.body, head.status, dict(head.headers))
    return Response(stream.body(_RelayRenderer(meter)), 200, SSE_HEADERS)


class _RelayRenderer:
    """The node's SSE bytes as they came (keepalive comments while it is silent); a
    failure after the stream began becomes an in-band error (`_in_band`)."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.done = False
        self.outcome = "cancelled"  # unless the stream ends on its own: the client went away
        self.stream_id: bytes | None = None  # the node's completion id, for a final error chunk

    def render(self, event: Any) -> bytes:
        if isinstance(event, Chunk):
            self.meter.chunk(event.data)
            if self.stream_id is None and (found := _STREAM_ID.search(event.data)):
                self.stream_id = found.group(1)
            return event.data
        if event is IDLE:
            return sse.KEEPALIVE  # waiting for a load or a queue: keep the client
        if event is END:
            return self._end("ok", b"")  # the node's stream is complete
        if isinstance(event, Head):
            self.meter.head(event)
            if event.status == 200:
                return b""
            error = error_from_body(event.status, event.body, None)
            return self._end(outcome_for_status(event.status, event.body), self._in_band(error))
        if isinstance(event, Broken):
            return self._end("stream_error", self._in_band(event.error))
        raise TypeError(f"not a relay event: {event!r}")

    def closed(self) -> None:
        self.meter.finish(self.outcome)

    def _end(self, outcome: str, data: bytes) -> bytes:
        self.done, self.outcome = True, outcome
        return data

    def _in_band(self, error: ApiError) -> bytes:
        return _in_band(error, self.meter.route, self.meter.model, self.stream_id)


def _in_band(error: ApiError, route: str, model: str | None, stream_id: bytes | None) -> bytes:
    """An error after the stream began: an error event, on chat and completions streams
    a final chunk with `finish_reason: "error"` (as a neuron ends a stream that failed:
    a client reading `finish_reason` sees the end too), then the terminator."""
    return (
        sse.encode_json_event(error.to_openai()) + _error_finish(route, model, stream_id) + sse.DONE
    )


def _error_finish(route: str, model: str | None, stream_id: bytes | None) -> bytes:
    """The failed stream's final chunk (under its own id when one was relayed)."""
    created, model_id = int(time.time()), ModelId(model or "")
    if route == "/v1/chat/completions":
        id = CompletionId(stream_id.decode() if stream_id else f"chatcmpl-{uuid.uuid4().hex}")
        error = cast(FinishReason, "error")  # ours, as the neuron's in-band failures
        chunk: Any = ChatCompletionChunk.finish_chunk(error, id=id, created=created, model=model_id)
    elif route == "/v1/completions":
        id = CompletionId(stream_id.decode() if stream_id else f"cmpl-{uuid.uuid4().hex}")
        choice = CompletionChoice(text="", finish_reason=cast(Any, "error"))
        chunk = Completion(id=id, created=created, model=model_id, choices=(choice,))
    else:
        return b""  # a Responses stream ends with its `error` event
    return sse.encode_json_event(chunk)


# A completion id in a relayed chunk: `{"id":"chatcmpl-…"` or `{"id":"cmpl-…"`.
_STREAM_ID = re.compile(rb'"id":"((?:chatcmpl|cmpl)-[^"]{1,200})"')


# -- anthropic -----------------------------------------------------------------------------


def _messages_routes(app: QuartTrio, gateway: Gateway) -> None:
    for path in (MESSAGES_ROUTE, COUNT_TOKENS_ROUTE):
        app.add_url_rule(path, path, _proxy_view(gateway, path), methods=["POST"])


async def _anthropic(gateway: Gateway, call: Call) -> Response:
    """`/v1/messages` and its `count_tokens` (`cortex.messages`)."""
    gateway.check_admitting()
    answer = messages.create_message if call.path == MESSAGES_ROUTE else messages.count_tokens
    return await answer(gateway.upstream, gateway.keyring, gateway.metrics, await call.read(),
                        _upstream_headers(call), call.rid, call.principal)  # fmt: skip


# -- info ----------------------------------------------------------------------------------


def _info_routes(app: QuartTrio, gateway: Gateway) -> None:
    @app.get("/health")
    @app.get("/")
    async def health():
        return json_response(gateway.health())

    @app.get("/version")
    async def version():
        return json_response(gateway.build_info())

    description = openapi.description()

    @app.get("/openapi.json")
    async def openapi_json():
        return json_response(description)

    @app.get("/v1/models")
    async def models():
        return json_response(gateway.keyring.visible(principal(), gateway.model_list()))


# -- admin ---------------------------------------------------------------------------------


def _admin_routes(app: QuartTrio, gateway: Gateway) -> None:
    @app.get("/admin/actors")
    async def actors_tree():
        return json_response(gateway.root.registry.snapshot().to_dict())

    @app.get("/admin/actors/stream")
    async def actors_stream():
        async def body():
            async for snapshot in gateway.root.registry.watch(min_interval=0.1):
                yield sse.encode_json_event(snapshot.to_dict())

        return body(), 200, {"Content-Type": sse.CONTENT_TYPE, "Cache-Control": "no-cache"}

    @app.get("/admin/nodes/<name>/actors")
    async def node_actors(name: str):
        response = await _ask_node(gateway, name, "/admin/actors", stream=False)
        return Response(response.content, response.status_code, response_headers(response))

    @app.get("/admin/nodes/<name>/actors/stream")
    async def node_actors_stream(name: str):
        response = await _ask_node(gateway, name, "/admin/actors/stream", stream=True)
        if response.status_code != 200:
            body = await response.aread()
            await response.aclose()
            return Response(body, response.status_code, response_headers(response))
        return _relay_raw(response), 200, {"Content-Type": sse.CONTENT_TYPE,
                                            "Cache-Control": "no-cache"}  # fmt: skip

    @app.get("/admin/fleet")
    async def fleet():
        return json_response(gateway.fleet_view().to_dict())

    @app.post("/admin/models/load")
    async def admin_load():
        body = await _admin_body()
        node = await gateway.admin_load(body["model"], body.get("node"))
        return json_response({"status": "loaded", "model": body["model"], "node": node})

    @app.post("/admin/models/unload")
    async def admin_unload():
        body = await _admin_body()
        node = await gateway.admin_unload(body["model"], body.get("node"))
        return json_response({"status": "unloaded", "model": body["model"], "node": node})

    @app.post("/admin/models/pin")
    async def admin_pin():
        return json_response(gateway.set_pinned(await _pin_body(), True))

    @app.post("/admin/models/unpin")
    async def admin_unpin():
        return json_response(gateway.set_pinned(await _pin_body(), False))

    @app.post("/admin/nodes/<name>/drain")
    async def drain(name: str):
        return json_response(unstructure(gateway.set_draining(name, True)))

    @app.post("/admin/nodes/<name>/undrain")
    async def undrain(name: str):
        return json_response(unstructure(gateway.set_draining(name, False)))


async def _ask_node(gateway: Gateway, name: str, path: str, *, stream: bool) -> httpx.Response:
    """GET a node's admin route with the gateway's client; 404 unknown node, 502 unreachable.

    A stream gets no read timeout: a quiet actor tree sends nothing for as long as it
    stays quiet, and the node closing the connection ends the relay."""
    node = gateway.fleet.nodes.get(NodeName(name))
    if node is None:
        raise NotFound(f"no node named {name!r}", code="node_not_found")
    timeout = httpx.Timeout(5.0, read=None if stream else 5.0)
    upstream = gateway.client.build_request("GET", node.endpoint + path, timeout=timeout,
                                            headers={"x-request-id": request_id()})  # fmt: skip
    try:
        return await gateway.client.send(upstream, stream=stream)
    except httpx.HTTPError as exc:
        raise UpstreamError(f"node {name} unreachable: {type(exc).__name__}",
                            code="upstream_connection_error") from exc  # fmt: skip


async def _relay_raw(response: httpx.Response) -> AsyncIterator[bytes]:
    """A node's body chunk by chunk; a broken upstream just ends it (the reader retries)."""
    try:
        async with contextlib.aclosing(response.aiter_raw()) as chunks:
            async for data in chunks:
                yield data
    except httpx.HTTPError as exc:
        log.info("node stream ended url=%s: %r", response.url, exc)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            await response.aclose()


async def _pin_body() -> str:
    """The model of `{"model": <id>}`: a pin holds on every node, so no node is named."""
    data = decode_json(await read_body(request))
    if not isinstance(data, dict) or not isinstance(data.get("model"), str) or not data["model"]:
        raise InvalidRequest('expected {"model": <id>}', param="model")
    if "node" in data:
        raise InvalidRequest("a pin holds on every node that has the model; 'node' is not "
                             "accepted", param="node")  # fmt: skip
    return data["model"]


async def _admin_body() -> dict[str, Any]:
    data = decode_json(await read_body(request))
    if not isinstance(data, dict) or not isinstance(data.get("model"), str):
        raise InvalidRequest('expected {"model": <id>, "node": <name>?}', param="model")
    if data.get("node") is not None and not isinstance(data["node"], str):
        raise InvalidRequest("expected a node name", param="node")
    return data
