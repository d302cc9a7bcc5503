"""Every route of both daemons, fuzzed with hostile bodies over real sockets.

The routes come from the OpenAPI descriptions (`neuron.openapi`,
`cortex.openapi`), so a route added there is fuzzed here; a test in
test_openapi.py keeps the descriptions equal to the apps' real routes. Each
route gets bodies drawn from its request schema and then spoiled
(tests/hostile/wire_fuzz.py), random path parameters, query strings and
content types. For every answer:

* no 5xx, except a 503 with `Retry-After` (a model loading, the node busy);
* every 4xx carries the error envelope of its route's dialect (OpenAI,
  Anthropic under /v1/messages, the flat node body under /models);
* a 2xx is well-formed JSON or an event stream;

and after each route both processes still serve a real chat and neither has
logged a traceback or an internal error.

Examples per route: `HELEXA_FUZZ_EXAMPLES` (default 100 for routes with a
body, a fifth of that for the others). CI runs the default with a fixed seed;
a long run, e.g. `HELEXA_FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest
tests/hostile/test_fuzz_routes.py`, draws fresh examples.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cortex import openapi as cortex_openapi
from neuron import openapi as neuron_openapi
from tests.hostile.hostile_harness import assert_no_crash_logged, check_envelope
from tests.hostile.wire_fuzz import any_json, hostile_body
from tests.neuron.daemon_harness import LLAMA, QWEN, chat_body

pytestmark = [pytest.mark.slow, pytest.mark.integration]

LONG_RUN = "HELEXA_FUZZ_EXAMPLES" in os.environ
EXAMPLES = int(os.environ.get("HELEXA_FUZZ_EXAMPLES", "100"))

# Streams that never end on their own: read one event, then hang up.
ENDLESS = frozenset({"/admin/actors/stream", "/admin/nodes/{name}/actors/stream"})

_TRAVERSALS = ["../../etc/passwd", "/etc/passwd", "helexa/../../..", "~root", ".", "..",
               "helexa/qwen3-tiny/../../../etc", "a\\b", "a\x00b", "%2e%2e/x"]  # fmt: skip
_names = st.text(max_size=24) | st.sampled_from(_TRAVERSALS)
# Property hints: enough real ids that bodies reach the code behind the model lookup,
# never the loaded model where a body could unload it (the other routes need it).
_INFERENCE_HINTS = {"model": st.sampled_from([QWEN, "fast"]) | _names}
HINTS: dict[tuple[str, str], dict[str, st.SearchStrategy[Any]]] = {
    ("neuron", "/models/load"): {"model_id": st.sampled_from([QWEN]) | _names},
    ("neuron", "/models/unload"): {"model_id": st.sampled_from([LLAMA]) | _names},
    ("neuron", "/models/{model_id}/endpoint"): {"model_id": st.sampled_from([QWEN]) | _names},
    ("cortex", "/admin/models/load"): {"model": st.sampled_from([QWEN, "fast"]) | _names},
    ("cortex", "/admin/models/unload"): {"model": _names},
    # a pin left behind only keeps the loaded model (QWEN, "fast") where it is
    ("cortex", "/admin/models/pin"): {"model": st.sampled_from([QWEN, "fast"]) | _names},
    ("cortex", "/admin/models/unpin"): {"model": st.sampled_from([QWEN, "fast"]) | _names},
}
_CONTENT_TYPES = st.sampled_from(
    ["application/json"] * 6
    + ["", "text/plain", "application/json; charset=latin-1", "application/x-www-form-urlencoded",
       "multipart/form-data; boundary=x", "application/vnd.api+json"]
)  # fmt: skip


def _operations(daemon: str, doc: dict[str, Any]) -> Iterator[Any]:
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            yield pytest.param(daemon, method.upper(), path, operation,
                               id=f"{daemon} {method.upper()} {path}")  # fmt: skip


NEURON_DOC = neuron_openapi.description()
CORTEX_DOC = cortex_openapi.description()
OPERATIONS = [*_operations("neuron", NEURON_DOC), *_operations("cortex", CORTEX_DOC)]


def _dialect(operation: dict[str, Any]) -> str:
    errors = [r["$ref"] for s, r in operation["responses"].items() if s != "200"]
    return errors[0].rsplit("/", 1)[1].removesuffix(".Error")


def _path_value(daemon: str, path: str, name: str) -> st.SearchStrategy[str]:
    hint = HINTS.get((daemon, path), {}).get(name, _names)
    # Dots escaped too: a client would resolve a bare `..` segment before sending.
    return hint.map(lambda v: quote(v, safe="").replace(".", "%2E") if isinstance(v, str)
                    else "x")  # fmt: skip


@st.composite
def requests(draw: st.DrawFn, daemon: str, path: str, operation: dict, components: dict):
    """(url path with query, headers, body) for one hostile request."""
    concrete = path
    for part in path.split("/"):
        if part.startswith("{"):
            value = draw(_path_value(daemon, path, part[1:-1]))
            concrete = concrete.replace(part, value or "x", 1)
    query = draw(st.sampled_from(["", "", "", "?stream=true", "?model=x&x=%00"]))
    body = b""
    if "requestBody" in operation:
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        hints = {**_INFERENCE_HINTS, **HINTS.get((daemon, path), {})}
        body = draw(hostile_body(schema, components, hints))
    elif draw(st.booleans()):
        body = draw(any_json.map(lambda v: repr(v).encode()))
    headers = {"x-request-id": draw(st.text(st.characters(min_codepoint=32, max_codepoint=126),
                                            max_size=140).map(str.strip))}  # fmt: skip
    if content_type := draw(_CONTENT_TYPES):
        headers["content-type"] = content_type
    return concrete + query, headers, body


def _send(client: httpx.Client, method: str, url: str, headers: dict, body: bytes, path: str):
    if path in ENDLESS:
        with client.stream(method, url, headers=headers, content=body) as response:
            if response.status_code != 200:
                response.read()
                return response
            first = next(response.iter_raw(), b"")  # the current tree; then hang up
            return httpx.Response(200, headers=response.headers, content=first,
                                  request=response.request)  # fmt: skip
    return client.request(method, url, headers=headers, content=body)


def check_answer(response: httpx.Response, dialect: str) -> None:
    status = response.status_code
    where = f"{response.request.method} {response.request.url} -> {status}: {response.text[:600]}"
    if status >= 500:
        assert status == 503 and "retry-after" in response.headers, where
        check_envelope(response, dialect)
    elif status >= 400:
        check_envelope(response, dialect)
    else:
        assert status == 200, where
        kind = response.headers.get("content-type", "")
        if kind.startswith("application/json"):
            response.json()
        else:
            # Streams, plain text, and the dashboard's page and files (/ui/).
            assert kind.startswith(("text/event-stream", "text/plain", "text/html", "text/css",
                                    "text/javascript", "image/svg+xml")), where  # fmt: skip


@pytest.mark.parametrize(("daemon", "method", "path", "operation"), OPERATIONS)
def test_fuzz_route(fleet, daemon, method, path, operation):
    doc = NEURON_DOC if daemon == "neuron" else CORTEX_DOC
    base = fleet.neuron.url if daemon == "neuron" else fleet.gateway.url
    dialect = _dialect(operation)
    examples = EXAMPLES if "requestBody" in operation else max(10, EXAMPLES // 5)
    components = doc["components"]["schemas"]

    with httpx.Client(base_url=base, timeout=60) as client:

        @settings(max_examples=examples, deadline=None, derandomize=not LONG_RUN,
                  suppress_health_check=list(HealthCheck), print_blob=True)  # fmt: skip
        @given(requests(daemon, path, operation, components))
        def one(request):
            url, headers, body = request
            check_answer(_send(client, method, url, headers, body, path), dialect)

        one()

    assert fleet.neuron.process.poll() is None and fleet.gateway.process.poll() is None
    fleet.neuron.assert_serving()
    with fleet.gateway.http() as client:
        reply = client.post("/v1/chat/completions", json=chat_body(max_tokens=1))
    assert reply.status_code == 200, reply.text
    assert_no_crash_logged(fleet.neuron.log(), fleet.gateway.log())
