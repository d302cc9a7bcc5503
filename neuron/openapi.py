"""The neuron's OpenAPI description: its routes, described with the wire types.

`ROUTES` lists every route `neuron.http` serves, with the protocol type of
each body and the error envelope it answers (the model management routes
answer upstream's flat `{"error", "code"}`); `description()` builds the
OpenAPI 3.1 document served at `GET /openapi.json` and committed as
docs/openapi/neuron.json (a test checks both that the list matches the
app's routes and that the copy is current). `python -m neuron.openapi`
prints it. Not for: schema rules (`protocol.openapi`) or serving anything.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from typing import Any

from protocol import completions, models, node, openai, responses
from protocol.openapi import Body, Route, document

__all__ = ["ROUTES", "description"]

_SSE = "text/event-stream"
_OBJECT = {"type": "object"}
_INFERENCE_ERRORS = (400, 401, 404, 413, 415, 422, 429, 500, 503)
_MANAGEMENT_ERRORS = (400, 401, 404, 413, 415, 422, 500, 503)


def _inference(path: str, summary: str, request: Any, reply: Any, event: Any) -> Route:
    """A POST answered with `reply`, or with an SSE stream of `event`s when `stream` is set."""
    return Route(
        "POST", path, summary, request=Body(request),
        responses=(Body(reply), Body(event, media_type=_SSE)),
        error_statuses=_INFERENCE_ERRORS, tags=("inference",),
    )  # fmt: skip


def _get(path: str, summary: str, body: Body, tag: str = "node", errors: str = "openai",
         statuses: tuple[int, ...] = (401, 500)) -> Route:  # fmt: skip
    return Route("GET", path, summary, responses=(body,), errors=errors,
                 error_statuses=statuses, tags=(tag,))  # fmt: skip


ROUTES: tuple[Route, ...] = (
    _inference("/v1/chat/completions", "OpenAI chat completion", openai.ChatCompletionRequest,
               openai.ChatCompletion, openai.ChatCompletionChunk),
    _inference("/v1/completions", "OpenAI legacy completion", completions.CompletionRequest,
               completions.Completion, completions.Completion),
    _inference("/v1/responses", "OpenAI Responses", responses.ResponsesRequest,
               responses.Response, responses.ResponseStreamEvent),
    Route("POST", "/v1/chat/tokenize", "the prompt tokens a chat request costs (ours)",
          request=Body(openai.ChatCompletionRequest), responses=(Body(node.TokenCount),),
          error_statuses=_INFERENCE_ERRORS, tags=("inference",)),
    _get("/v1/models", "the loaded models, OpenAI style", Body(models.ModelList), "inference"),
    _get("/health", "devices, activation and admission (never needs the token)",
         Body(node.Health)),
    _get("/discovery", "the host as probed at start-up", Body(node.Discovery)),
    _get("/version", "build information", Body(node.BuildInfo)),
    _get("/openapi.json", "this description", Body(schema=_OBJECT)),
    _get("/metrics", "Prometheus exposition",
         Body(schema={"type": "string"}, media_type="text/plain")),
    _get("/admin/actors", "the node's actor tree", Body(schema=_OBJECT), "admin"),
    _get("/admin/actors/stream", "the node's actor tree, an SSE event per change",
         Body(schema=_OBJECT, media_type=_SSE), "admin"),
    _get("/models", "models loaded or loading",
         Body(tuple[node.ModelInfo, ...]), "management", "flat"),
    Route("POST", "/models/load", "load a model (synchronous, single-flight)",
          request=Body(node.ModelSpec, internal=True), responses=(Body(node.LoadResult),),
          errors="flat", error_statuses=_MANAGEMENT_ERRORS, tags=("management",)),
    Route("POST", "/models/unload", "unload a model (drains requests in flight, bounded)",
          request=Body(node.UnloadRequest, internal=True), responses=(Body(node.UnloadResult),),
          errors="flat", error_statuses=_MANAGEMENT_ERRORS, tags=("management",)),
    _get("/models/{model_id}/endpoint", "where to send inference for a loaded model",
         Body(node.Endpoint), "management", "flat", (400, 401, 404, 500)),
)  # fmt: skip


def description() -> dict[str, Any]:
    """The neuron's OpenAPI document."""
    return document(
        "helexa neuron", version("helexa"),
        "One host's node API (model management, health, discovery) and its OpenAI "
        "inference routes. Errors use the OpenAI envelope, except on /models* "
        "(upstream helexa's flat body). See docs/api.md.",
        ROUTES,
    )  # fmt: skip


if __name__ == "__main__":
    json.dump(description(), sys.stdout, indent=2)
    sys.stdout.write("\n")
