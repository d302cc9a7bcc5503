"""The gateway's OpenAPI description: its routes, described with the wire types.

`ROUTES` lists every route `cortex.http` serves, with the protocol type of
each body; `description()` builds the OpenAPI 3.1 document served at `GET
/openapi.json` and committed as docs/openapi/cortex.json (a test checks both
that the list matches the app's routes and that the copy is current).
`python -m cortex.openapi` prints it. Not for: schema rules
(`protocol.openapi`) or serving anything.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from typing import Any

from protocol import anthropic, completions, models, node, openai, responses
from protocol.openapi import Body, Route, document

__all__ = ["ROUTES", "description"]

_SSE = "text/event-stream"
_OBJECT = {"type": "object"}
_TEXT = {"type": "string"}
_INFERENCE_ERRORS = (400, 401, 404, 413, 415, 429, 500, 502, 503)
_DRAIN = {
    "type": "object",
    "properties": {
        "node": {"type": "string"},
        "state": {"enum": ["draining", "drained", "active"]},
        "in_flight": {"type": "integer"},
    },
}
_ADMIN_MODEL = {
    "type": "object",
    "properties": {"model": {"type": "string"}, "node": {"type": ["string", "null"]}},
    "required": ["model"],
}
_PIN = {
    "type": "object",
    "properties": {"model": {"type": "string"}},
    "required": ["model"],
}
_PIN_RESULT = {
    "type": "object",
    "properties": {
        "status": {"enum": ["pinned", "unpinned"]},
        "model": {"type": "string", "description": "the concrete id (an alias is resolved)"},
        "changed": {"type": "boolean", "description": "false: it already was"},
    },
}
_ADMIN_RESULT = {
    "type": "object",
    "properties": {
        "status": {"enum": ["loaded", "unloaded"]},
        "model": {"type": "string"},
        "node": {"type": "string"},
    },
}


def _inference(
    path: str,
    summary: str,
    request: Any,
    reply: Any,
    event: Any,
    *,
    errors: str = "openai",
    tag: str = "inference",
) -> Route:
    """A POST answered with `reply`, or with an SSE stream of `event`s when `stream` is set."""
    return Route(
        "POST", path, summary, request=Body(request),
        responses=(Body(reply), Body(event, media_type=_SSE)),
        errors=errors, error_statuses=_INFERENCE_ERRORS, tags=(tag,),
    )  # fmt: skip


def _info(path: str, summary: str, body: Body, tag: str = "info") -> Route:
    return Route("GET", path, summary, responses=(body,), error_statuses=(500,), tags=(tag,))


def _admin(method: str, path: str, summary: str, **kwargs: Any) -> Route:
    kwargs.setdefault("error_statuses", (400, 404, 413, 500, 502, 503))
    return Route(method, path, summary, tags=("admin",), **kwargs)


ROUTES: tuple[Route, ...] = (
    _inference("/v1/chat/completions", "OpenAI chat completion (relayed to a node)",
               openai.ChatCompletionRequest, openai.ChatCompletion,
               openai.ChatCompletionChunk),
    _inference("/v1/completions", "OpenAI legacy completion (relayed to a node)",
               completions.CompletionRequest, completions.Completion, completions.Completion),
    _inference("/v1/responses", "OpenAI Responses (relayed to a node)",
               responses.ResponsesRequest, responses.Response, responses.ResponseStreamEvent),
    _inference("/v1/messages", "Anthropic Messages, translated to chat",
               anthropic.MessagesRequest, anthropic.Message, anthropic.StreamEvent,
               errors="anthropic", tag="anthropic"),
    Route("POST", "/v1/messages/count_tokens", "Anthropic token count of a Messages request",
          request=Body(anthropic.CountTokensRequest),
          responses=(Body(anthropic.CountTokensResponse),),
          errors="anthropic", error_statuses=_INFERENCE_ERRORS, tags=("anthropic",)),
    _info("/v1/models", "the catalogue, loaded state and aliases", Body(models.ModelList)),
    _info("/health", "the fleet's health (always 200)", Body(schema=_OBJECT)),
    _info("/", "the fleet's health (as /health); a browser is redirected to /ui/",
          Body(schema=_OBJECT)),
    _info("/version", "build information", Body(node.BuildInfo)),
    _info("/openapi.json", "this description", Body(schema=_OBJECT)),
    _info("/admin/fleet", "nodes, devices and models, as `cortex status` shows them",
          Body(schema=_OBJECT), tag="admin"),
    _info("/admin/traffic", "recent requests, tokens/s and time to first token (the dashboard's)",
          Body(schema=_OBJECT), tag="admin"),
    _info("/admin/actors", "the gateway's actor tree", Body(schema=_OBJECT), tag="admin"),
    _info("/admin/actors/stream", "the gateway's actor tree, an SSE event per change",
          Body(schema=_OBJECT, media_type=_SSE), tag="admin"),
    _admin("GET", "/admin/nodes/{name}/actors", "a node's actor tree, through the gateway",
           responses=(Body(schema=_OBJECT),)),
    _admin("GET", "/admin/nodes/{name}/actors/stream", "a node's actor tree as SSE",
           responses=(Body(schema=_OBJECT, media_type=_SSE),)),
    _admin("POST", "/admin/models/load", "load a model (placed unless a node is named)",
           request=Body(schema=_ADMIN_MODEL), responses=(Body(schema=_ADMIN_RESULT),)),
    _admin("POST", "/admin/models/unload", "unload a model (409 model_pinned if pinned)",
           request=Body(schema=_ADMIN_MODEL), responses=(Body(schema=_ADMIN_RESULT),),
           error_statuses=(400, 404, 409, 413, 500, 502, 503)),
    _admin("POST", "/admin/models/pin",
           "pin a model on every node (eviction never unloads it); in memory, idempotent",
           request=Body(schema=_PIN), responses=(Body(schema=_PIN_RESULT),),
           error_statuses=(400, 404, 413, 500)),
    _admin("POST", "/admin/models/unpin", "drop a model's runtime pin; idempotent",
           request=Body(schema=_PIN), responses=(Body(schema=_PIN_RESULT),),
           error_statuses=(400, 404, 413, 500)),
    _admin("POST", "/admin/nodes/{name}/drain", "stop placing requests and loads on a node",
           responses=(Body(schema=_DRAIN),)),
    _admin("POST", "/admin/nodes/{name}/undrain", "place on a node again",
           responses=(Body(schema=_DRAIN),)),
    Route("GET", "/ui/", "the dashboard (public: it asks the API with the operator's key)",
          responses=(Body(schema=_TEXT, media_type="text/html"),), error_statuses=(500,),
          tags=("dashboard",)),
    Route("GET", "/ui/{name}", "a file of the dashboard: app.js, app.css, icon.svg",
          responses=(Body(schema=_TEXT, media_type="text/plain"),), error_statuses=(404,),
          tags=("dashboard",)),
)  # fmt: skip


def description() -> dict[str, Any]:
    """The gateway's OpenAPI document."""
    return document(
        "helexa cortex", version("helexa"),
        "The gateway: one OpenAI + Anthropic compatible API over a fleet of neurons. "
        "Errors use the OpenAI envelope, except under /v1/messages (Anthropic's). "
        "See docs/api.md.",
        ROUTES,
    )  # fmt: skip


if __name__ == "__main__":
    json.dump(description(), sys.stdout, indent=2)
    sys.stdout.write("\n")
