"""The neuron's HTTP routes: parse → call the serving code → render.

Routes are thin. Inference routes (`/v1/*`, including our
`/v1/chat/tokenize`, which counts a chat request's prompt tokens without
generating) answer errors in the OpenAI envelope; management routes
(`/models/*`) answer upstream's flat `{"error": "...", "code": "..."}` body
so the upstream gateway can drive this node, and read their bodies strictly
(an unknown key is a 400, never a silently different load). An inference
request refused before it became a job is counted here (`request_refused`);
a job counts its own outcome. Every response carries `x-request-id` (the
client's, or a new one), and everything logged while handling the request
carries it as `request_id`; a stream's head also carries the prompt's size
(`X-Helexa-Prompt-Tokens`). With an auth token configured, every route but
`/health` needs `Authorization: Bearer <token>` or `x-api-key: <token>`.
The gateway names the API key a request came with in gateway-only headers
(`protocol.node.GATEWAY_HEADERS`); they are honoured — the request's log
lines name the key — only on a request that carried the valid token. Without
a token configured the node cannot tell the gateway from a client, so it
ignores them.
While draining for shutdown, inference and loads answer 503 `shutting_down`
with Retry-After.

Not for: serving logic (`neuron.serving`, `neuron.registry`) or process
lifecycle (`neuron.daemon`).
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any, TypeVar

import trio
from quart import Response, request
from quart_trio import QuartTrio

from actors import NameTaken
from neuron import openapi, render
from neuron.metrics import OTHER, refusal_reason
from protocol import node, sse, unstructure
from protocol.completions import CompletionRequest
from protocol.errors import ApiError, AuthenticationFailed
from protocol.errors import ServiceUnavailable as Unavailable
from protocol.http import (
    error_response,
    install_edge,
    json_response,
    parse_body,
    prepare_app,
    request_id,
)
from protocol.node import GATEWAY_HEADERS, KEY_ID_HEADER
from protocol.openai import ChatCompletionRequest
from protocol.responses import ResponsesRequest
from protocol.translate_responses import responses_to_chat

if TYPE_CHECKING:
    from neuron.daemon import Neuron

log = logging.getLogger(__name__)

T = TypeVar("T")

SHUTDOWN_RETRY_AFTER = 15  # seconds, on every 503 `shutting_down` (upstream's figure)
_PUBLIC = frozenset({"/health"})
# On a stream's head, before any usage: how the gateway's Anthropic `message_start`
# can report the prompt's size up front.
PROMPT_TOKENS_HEADER = "X-Helexa-Prompt-Tokens"
_GENERATION_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})


def create_app(neuron: Neuron) -> QuartTrio:
    http = neuron.config.http
    app = prepare_app(QuartTrio("neuron"), max_body_bytes=http.max_body_bytes,
                      body_timeout=http.body_timeout)  # fmt: skip

    async def api_error(error: ApiError) -> Response:
        _count_refusal(neuron, error)
        return await _api_error(error)

    install_edge(app, api_error, name_taken=NameTaken)

    @app.before_request
    async def authorize() -> None:
        _authorize(neuron)

    app.after_request(_stamp_request_id)
    _management_routes(app, neuron)
    _inference_routes(app, neuron)
    return app


# -- request plumbing --------------------------------------------------------------------


def _authorize(neuron: Neuron) -> None:
    token = neuron.config.auth.token
    if not token or request.path in _PUBLIC:
        request.helexa_key = _gateway_key(trusted=False)
        return
    given = request.headers.get("x-api-key") or ""
    bearer = request.headers.get("authorization", "")
    if bearer.lower().startswith("bearer "):
        given = bearer[7:].strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise AuthenticationFailed("missing or invalid API key; send 'Authorization: Bearer "
                                   "<key>' or 'x-api-key: <key>'")  # fmt: skip
    request.helexa_key = _gateway_key(trusted=True)


def _gateway_key(*, trusted: bool) -> str | None:
    """The gateway's name for the caller's API key; only from a holder of the token."""
    sent = [name for name in GATEWAY_HEADERS if name in request.headers]
    if sent and not trusted:
        log.info("ignored gateway-only headers from a caller without the node's token: %s",
                 ", ".join(sent))  # fmt: skip
    return request.headers.get(KEY_ID_HEADER) if sent and trusted else None


async def _stamp_request_id(response: Response) -> Response:
    response.headers["x-request-id"] = request_id()
    level = logging.DEBUG if request.method == "GET" else logging.INFO  # polls stay quiet
    log.log(level, "answered method=%s path=%s status=%s key=%s", request.method, request.path,
            response.status_code, getattr(request, "helexa_key", None) or "-")  # fmt: skip
    return response


def _management() -> bool:
    return request.path.startswith("/models")


async def _api_error(error: ApiError) -> Response:
    log.warning("request refused path=%s status=%s code=%s: %s", request.path, error.status,
                error.code, error.message)  # fmt: skip
    if _management():
        body = unstructure(node.ErrorBody(error.message, error.code))
        return json_response(body, error.status, error.headers())
    return error_response(error)


def _count_refusal(neuron: Neuron, error: ApiError) -> None:
    """Count an inference request refused before it became a job (jobs count their own)."""
    if request.path not in _GENERATION_ROUTES or getattr(request, "helexa_job", False):
        return
    model = getattr(request, "helexa_model", None)
    label = model if model in neuron.registry.models else OTHER
    neuron.metrics.request_refused(label, refusal_reason(error))


async def _parse_inference(cls: type[T]) -> T:
    body = await parse_body(request, cls)
    request.helexa_model = body.model  # the metrics label of a refusal
    return body


def _check_admitting(neuron: Neuron) -> None:
    if neuron.draining:
        raise Unavailable("this node is shutting down", code="shutting_down",
                          retry_after=SHUTDOWN_RETRY_AFTER)  # fmt: skip


# -- management ---------------------------------------------------------------------------


def _management_routes(app: QuartTrio, neuron: Neuron) -> None:
    @app.get("/health")
    async def health():
        return json_response(await neuron.health())

    @app.get("/discovery")
    async def discovery():
        return json_response(neuron.discovery)

    @app.get("/version")
    async def version():
        return json_response(neuron.build_info)

    description = openapi.description()

    @app.get("/openapi.json")
    async def openapi_json():
        return json_response(description)

    @app.get("/models")
    async def models():
        return json_response([unstructure(i) for i in neuron.registry.model_infos()])

    @app.post("/models/load")
    async def load():
        _check_admitting(neuron)
        spec = await parse_body(request, node.ModelSpec, internal=True)
        model = await neuron.load(spec)
        return json_response(node.LoadResult(model_id=model.id, memory_bytes=model.memory_bytes,
                                             load_seconds=model.load_seconds))  # fmt: skip

    @app.post("/models/unload")
    async def unload():
        body = await parse_body(request, node.UnloadRequest, internal=True)
        model = await neuron.registry.unload(body.model_id)
        return json_response(node.UnloadResult(model_id=model.id))

    @app.get("/models/<path:model_id>/endpoint")
    async def endpoint(model_id: str):
        neuron.registry.get(model_id)
        return json_response(node.Endpoint(url=neuron.public_url))

    @app.get("/metrics")
    async def metrics():
        await neuron.sample_metrics()
        body, content_type = await trio.to_thread.run_sync(
            neuron.metrics.render, request.headers.get("accept", "")
        )
        return Response(body, content_type=content_type)

    @app.get("/admin/actors")
    async def actors_tree():
        return json_response(neuron.root.registry.snapshot().to_dict())

    @app.get("/admin/actors/stream")
    async def actors_stream():
        async def body():
            async for snapshot in neuron.root.registry.watch(min_interval=0.1):
                yield sse.encode_json_event(snapshot.to_dict())

        return body(), 200, {"Content-Type": sse.CONTENT_TYPE, "Cache-Control": "no-cache"}


# -- inference ----------------------------------------------------------------------------


def _inference_routes(app: QuartTrio, neuron: Neuron) -> None:
    @app.get("/v1/models")
    async def list_models():
        return json_response(neuron.model_list())

    @app.post("/v1/chat/completions")
    async def chat():
        _check_admitting(neuron)
        body = await _parse_inference(ChatCompletionRequest)
        job = await neuron.serving.prepare_chat_job(body)
        cid, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), str(job.model.id)
        if body.stream:
            stream = render.ChatStream(
                cid, model, created, include_usage=_include_usage(body), choices=body.n or 1
            )
            return await _stream(neuron, job, stream)
        return json_response(render.collect_chat(cid, model, created, await _collect(neuron, job)))

    @app.post("/v1/chat/tokenize")
    async def chat_tokenize():
        body = await _parse_inference(ChatCompletionRequest)
        return json_response(await neuron.serving.prepare_chat_count(body))

    @app.post("/v1/completions")
    async def completions():
        _check_admitting(neuron)
        body = await _parse_inference(CompletionRequest)
        job = neuron.serving.completion_job(body)
        cid, created, model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), str(job.model.id)
        if body.stream:
            include = body.stream_options.include_usage if body.stream_options else None
            stream = render.CompletionStream(
                cid, model, created, include_usage=include is not False, choices=body.n or 1
            )
            return await _stream(neuron, job, stream)
        events = await _collect(neuron, job)
        return json_response(render.collect_completion(cid, model, created, events))

    @app.post("/v1/responses")
    async def responses():
        _check_admitting(neuron)
        body = await _parse_inference(ResponsesRequest)
        job = await neuron.serving.prepare_chat_job(responses_to_chat(body))
        rid, created, model = f"resp_{uuid.uuid4().hex}", int(time.time()), str(job.model.id)
        if body.stream:
            return await _stream(neuron, job, render.ResponsesStream(rid, model, created,
                                                                     request=body))  # fmt: skip
        events = await _collect(neuron, job)
        return json_response(render.collect_response(rid, model, created, events, request=body))


def _include_usage(body: ChatCompletionRequest) -> bool:
    """Upstream always sends the usage chunk; `include_usage: false` opts out."""
    options = body.stream_options
    return True if options is None or options.include_usage is None else options.include_usage


async def _stream(neuron: Neuron, job: Any, renderer: Any):
    request.helexa_job = True
    body = await neuron.serving.stream(job, renderer, request_id())
    headers = {"Content-Type": sse.CONTENT_TYPE, "Cache-Control": "no-cache",
               "X-Accel-Buffering": "no",
               PROMPT_TOKENS_HEADER: str(len(job.prompt_ids))}  # fmt: skip
    return Response(body, 200, headers)


async def _collect(neuron: Neuron, job: Any) -> list:
    request.helexa_job = True
    return await neuron.serving.collect(job, request_id())
