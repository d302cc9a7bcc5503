"""Named hostile inputs against a real neuron and a real gateway: each gets a clear
error in its route's envelope, and nothing is lost — both keep serving.

Sizes (the default 32 MiB body limit, an oversized head), shapes (100 000
nested `[`, invalid UTF-8, `NaN` literals, `1e400`), absurd values (token
budgets of 10^12 or below 1, out-of-range sampling), volume (thousands of
messages, tools, stop strings), model ids that try to leave the model roots,
and image URLs that must never be fetched (a local listener proves no
connection is made). The shared fleet is tests/hostile/conftest.py.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.hostile.hostile_harness import assert_no_crash_logged, check_envelope
from tests.neuron.daemon_harness import HTTPX_ASYNCGEN_WARNING, LLAMA, QWEN, chat_body

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.filterwarnings(HTTPX_ASYNCGEN_WARNING),
]

MIB = 1024 * 1024
DEFAULT_LIMIT = 32 * MIB

# (daemon, path, dialect) of every route that reads a JSON body (but /admin/models/pin and
# unpin, read as /admin/models/load reads its body and fuzzed by test_fuzz_routes.py).
BODY_ROUTES = [
    ("neuron", "/v1/chat/completions", "openai"),
    ("neuron", "/v1/completions", "openai"),
    ("neuron", "/v1/responses", "openai"),
    ("neuron", "/v1/chat/tokenize", "openai"),
    ("neuron", "/models/load", "flat"),
    ("neuron", "/models/unload", "flat"),
    ("cortex", "/v1/chat/completions", "openai"),
    ("cortex", "/v1/completions", "openai"),
    ("cortex", "/v1/responses", "openai"),
    ("cortex", "/v1/messages", "anthropic"),
    ("cortex", "/v1/messages/count_tokens", "anthropic"),
    ("cortex", "/admin/models/load", "openai"),
    ("cortex", "/admin/models/unload", "openai"),
]
ROUTE_IDS = [f"{d} {p}" for d, p, _ in BODY_ROUTES]


def _url(fleet, daemon: str) -> str:
    return fleet.neuron.url if daemon == "neuron" else fleet.gateway.url


def post(fleet, daemon: str, path: str, content: bytes, **kwargs) -> httpx.Response:
    headers = {"content-type": "application/json", **kwargs.pop("headers", {})}
    with httpx.Client(base_url=_url(fleet, daemon), timeout=120) as client:
        return client.post(path, content=content, headers=headers, **kwargs)


def refused(response: httpx.Response, status: int, dialect: str) -> dict:
    assert response.status_code == status, (response.status_code, response.text[:500])
    return check_envelope(response, dialect)


def code_of(body: dict, dialect: str) -> str | None:
    if dialect == "flat":
        return body["code"]
    if dialect == "anthropic":
        return None  # Anthropic's envelope has a type, not a code
    return body["error"]["code"]


@pytest.fixture(autouse=True)
def still_serving(fleet) -> Iterator[None]:
    """After every test: both processes up, a real chat works, no crash in the logs."""
    yield
    assert fleet.neuron.process.poll() is None and fleet.gateway.process.poll() is None
    fleet.neuron.assert_serving()
    with fleet.gateway.http() as client:
        reply = client.post("/v1/chat/completions", json=chat_body(max_tokens=1))
    assert reply.status_code == 200, reply.text
    assert_no_crash_logged(fleet.neuron.log(), fleet.gateway.log())


# -- sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("daemon", "path", "dialect"), BODY_ROUTES, ids=ROUTE_IDS)
def test_a_body_over_the_default_limit_is_a_413_in_the_routes_envelope(fleet, daemon, path,
                                                                        dialect):  # fmt: skip
    body = refused(post(fleet, daemon, path, b" " * (DEFAULT_LIMIT + 1)), 413, dialect)
    assert code_of(body, dialect) in ("request_too_large", None)
    if dialect == "openai":
        assert body["error"]["max_bytes"] == DEFAULT_LIMIT


@pytest.mark.parametrize("daemon", ["neuron", "cortex"])
def test_a_chunked_body_without_a_length_is_cut_at_the_limit(fleet, daemon):
    def chunks() -> Iterator[bytes]:
        for _ in range(DEFAULT_LIMIT // MIB + 2):
            yield b" " * MIB

    body = refused(post(fleet, daemon, "/v1/chat/completions", chunks()), 413, "openai")
    assert body["error"]["code"] == "request_too_large"


@pytest.mark.parametrize(("daemon", "path", "dialect"), [
    ("neuron", "/v1/chat/completions", "openai"),
    ("cortex", "/v1/chat/completions", "openai"),
    ("cortex", "/v1/messages", "anthropic"),
])  # fmt: skip
def test_a_30_mib_image_fits_the_default_limit(fleet, daemon, path, dialect):
    """Base64 images fit: the body is read and parsed, and the text-only model refuses
    the image itself (not the size)."""
    data = "A" * (30 * MIB)
    if dialect == "anthropic":
        block = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": data}}  # fmt: skip
        request = {"model": QWEN, "max_tokens": 1, "messages": [{"role": "user",
                                                                 "content": [block]}]}  # fmt: skip
    else:
        part = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}
        request = chat_body(content=[part], max_tokens=1)  # type: ignore[arg-type]
    body = refused(post(fleet, daemon, path, json.dumps(request).encode()), 400, dialect)
    assert "does not accept images" in json.dumps(body)


@pytest.mark.parametrize("daemon", ["neuron", "cortex"])
@pytest.mark.parametrize("size", [256 * 1024, 4 * MIB])
def test_an_oversized_request_head_is_refused_and_the_server_carries_on(fleet, daemon, size):
    """Far over the 64 KiB head limit: h11 refuses the head with 431 (400 for a head it
    cannot parse) and closes, or the connection is dropped. (h11 checks the buffer of an
    unfinished head, so a head up to one 64 KiB read over the limit can get through.)"""
    try:
        response = post(fleet, daemon, "/v1/chat/completions", b"{}",
                        headers={"x-padding": "a" * size})  # fmt: skip
    except (httpx.RemoteProtocolError, httpx.WriteError, httpx.ReadError):
        return  # closed without an answer is also a refusal
    assert response.status_code in (400, 431), response.text[:200]
    assert response.headers.get("connection") == "close"


@pytest.mark.parametrize("daemon", ["neuron", "cortex"])
def test_a_body_the_route_never_reads_does_not_cost_the_next_request(fleet, daemon):
    """A GET sent with a body, and a POST refused before its body is parsed (415 on the
    node; 404 for an unknown route), on one kept-alive connection: the next request on
    that connection is answered, never cut off by a silent close."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    with httpx.Client(base_url=_url(fleet, daemon), timeout=30, limits=limits) as client:
        for i in range(40):
            assert client.request("GET", "/health", content=b"x" * (i * 4099)).status_code == 200
            refused = client.post("/nowhere", content=b"{" * (i * 997),
                                  headers={"content-type": "text/plain"})  # fmt: skip
            assert refused.status_code == 404
            if daemon == "neuron":
                response = client.post("/v1/chat/completions", content=b"{}" * i,
                                       headers={"content-type": "text/plain"})  # fmt: skip
                assert response.status_code == 415


# -- shapes ---------------------------------------------------------------------------------


MALFORMED = {
    "nested 100k": b"[" * 100_000,
    "nested in a field": b'{"model": "' + QWEN.encode() + b'", "messages": ' + b"[" * 100_000,
    "invalid utf-8": b'{"model": "\xff\xfe"}',
    "NaN literal": b'{"model": "helexa/qwen3-tiny", "temperature": NaN, "messages": []}',
    "Infinity literal": b'{"model": "helexa/qwen3-tiny", "max_tokens": Infinity}',
    "truncated": b'{"model": "helexa/qwen3-tiny", "messages": [',
    "empty": b"",
}


@pytest.mark.parametrize(("daemon", "path", "dialect"), BODY_ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_json_is_a_400_naming_why(fleet, daemon, path, dialect, raw):
    body = refused(post(fleet, daemon, path, raw), 400, dialect)
    assert code_of(body, dialect) in ("malformed_json", None)


@pytest.mark.parametrize("daemon", ["neuron", "cortex"])
@pytest.mark.parametrize("model", [QWEN, "fast"])
def test_deep_but_parseable_nesting_in_an_extra_field_is_harmless(fleet, daemon, model):
    """900 levels parse; the gateway re-encodes a body whose alias it rewrites."""
    deep = "[" * 900 + "]" * 900
    raw = json.dumps(chat_body(model=model, max_tokens=1)).encode()[:-1] + (
        f', "vendor_extra": {deep}}}'.encode()
    )
    response = post(fleet, daemon, "/v1/chat/completions", raw)
    if daemon == "neuron" and model == "fast":
        refused(response, 404, "openai")  # aliases are the gateway's
    else:
        assert response.status_code in (200, 400), response.text[:500]
        if response.status_code == 400:
            check_envelope(response, "openai")


# -- absurd values --------------------------------------------------------------------------


SAMPLING = {
    "temperature 1e400": b'"temperature": 1e400',
    "temperature -1": b'"temperature": -1',
    "top_p 7": b'"top_p": 7',
    "top_k -5": b'"top_k": -5',
    "max_tokens 1e12 (a float)": b'"max_tokens": 1e12',
    "max_tokens -1": b'"max_tokens": -1',
    "max_tokens 0": b'"max_tokens": 0',
    "max_completion_tokens -7": b'"max_completion_tokens": -7',
    "seed 10^30": b'"seed": 1000000000000000000000000000000',
    "presence_penalty 1e300": b'"presence_penalty": 1e300',
    "logit_bias key 10^11": b'"logit_bias": {"99999999999": 5}',
    "logit_bias value 1e9": b'"logit_bias": {"5": 1e9}',
    "17 stop strings": b'"stop": ' + json.dumps(["x"] * 17).encode(),
    "n 1000": b'"n": 1000',
}


@pytest.mark.parametrize("daemon", ["neuron", "cortex"])
@pytest.mark.parametrize("field", SAMPLING.values(), ids=SAMPLING.keys())
def test_out_of_range_values_are_a_400_naming_the_field(fleet, daemon, field):
    raw = b'{"model": "helexa/qwen3-tiny", "messages": [{"role": "user", "content": "hi"}], ' + (
        field + b"}"
    )
    body = refused(post(fleet, daemon, "/v1/chat/completions", raw), 400, "openai")
    assert body["error"]["param"], body


ANTHROPIC_VALUES = {
    "max_tokens -5": {"max_tokens": -5},
    "max_tokens 1e12 (a float)": {"max_tokens": 1e12},
    "temperature -3": {"max_tokens": 1, "temperature": -3},
    "top_k -1": {"max_tokens": 1, "top_k": -1.5},
    "no max_tokens": {},
}


@pytest.mark.parametrize("extra", ANTHROPIC_VALUES.values(), ids=ANTHROPIC_VALUES.keys())
def test_anthropic_out_of_range_values_are_a_400(fleet, extra):
    request = {"model": QWEN, "messages": [{"role": "user", "content": "hi"}], **extra}
    refused(post(fleet, "cortex", "/v1/messages", json.dumps(request).encode()), 400,
            "anthropic")  # fmt: skip


@pytest.mark.parametrize(("daemon", "path"), [
    ("neuron", "/v1/chat/completions"),
    ("cortex", "/v1/chat/completions"),
    ("cortex", "/v1/messages"),
])  # fmt: skip
def test_a_token_budget_of_10_to_the_12_is_capped_and_the_slot_comes_back(fleet, daemon, path):
    """Capped by the room left in the context (documented); a client that hangs up
    mid-stream gives its admission slot back."""
    request = {"model": QWEN, "messages": [{"role": "user", "content": "hi"}],
               "max_tokens": 10**12, "stream": True}  # fmt: skip
    with (
        httpx.Client(base_url=_url(fleet, daemon), timeout=60) as client,
        client.stream("POST", path, json=request) as response,
    ):
        assert response.status_code == 200
        for _, _ in zip(range(5), response.iter_lines(), strict=False):
            pass  # a few events, then hang up
    _wait_idle(fleet)


@pytest.mark.parametrize(("daemon", "path", "dialect"), [
    ("neuron", "/v1/chat/completions", "openai"),
    ("cortex", "/v1/chat/completions", "openai"),
    ("cortex", "/v1/messages", "anthropic"),
])  # fmt: skip
def test_a_request_id_already_in_flight_is_a_409(fleet, daemon, path, dialect):
    """The id names the request's actor: a second request with it, while the first
    streams, is refused clearly (it was a 500); the first is unaffected."""
    rid = {"x-request-id": f"same-id-{daemon}-{path.rsplit('/', 1)[1]}"}
    request = {"model": QWEN, "messages": [{"role": "user", "content": "hi"}],
               "max_tokens": 10**12, "stream": True}  # fmt: skip
    with (
        httpx.Client(base_url=_url(fleet, daemon), timeout=60) as client,
        client.stream("POST", path, json=request, headers=rid) as first,
    ):
        assert first.status_code == 200
        lines = first.iter_lines()
        next(lines)
        second = client.post(path, json={**request, "stream": False, "max_tokens": 1},
                             headers=rid)  # fmt: skip
        body = refused(second, 409, dialect)
        if dialect == "openai":
            assert (body["error"]["code"], body["error"]["param"]) == ("request_id_in_use",
                                                                       "x-request-id")  # fmt: skip
        assert next(lines) is not None  # the first one still streams
    _wait_idle(fleet)


def _wait_idle(fleet) -> None:
    from tests.neuron.daemon_harness import wait_for

    wait_for(lambda: fleet.neuron.model_load(QWEN)["in_flight"] == 0, within=30,
             what="the abandoned stream's slot")  # fmt: skip


@pytest.mark.parametrize(("daemon", "path", "dialect"), [
    ("neuron", "/v1/chat/completions", "openai"),
    ("neuron", "/v1/chat/tokenize", "openai"),
    ("cortex", "/v1/chat/completions", "openai"),
    ("cortex", "/v1/messages", "anthropic"),
    ("cortex", "/v1/messages/count_tokens", "anthropic"),
])  # fmt: skip
def test_an_empty_conversation_is_a_400_not_a_fallback_prompt(fleet, daemon, path, dialect):
    request = {"model": QWEN, "max_tokens": 1, "messages": []}
    body = refused(post(fleet, daemon, path, json.dumps(request).encode()), 400, dialect)
    assert "at least one message" in json.dumps(body)


# -- volume ---------------------------------------------------------------------------------


@pytest.mark.parametrize("daemon", ["neuron", "cortex"])
def test_thousands_of_messages_are_a_context_length_refusal(fleet, daemon):
    request = chat_body(max_tokens=1)
    request["messages"] = [{"role": "user", "content": "hello there"}] * 5000
    body = refused(post(fleet, daemon, "/v1/chat/completions", json.dumps(request).encode()),
                   400, "openai")  # fmt: skip
    assert body["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize("daemon", ["neuron", "cortex"])
def test_thousands_of_tools_are_a_context_length_refusal(fleet, daemon):
    parameters = {"type": "object", "properties": {"x": {"type": "string"}}}
    tools = [{"type": "function", "function": {"name": f"tool_{i}", "parameters": parameters}}
             for i in range(3000)]  # fmt: skip
    request = chat_body(max_tokens=1, tools=tools)
    body = refused(post(fleet, daemon, "/v1/chat/completions", json.dumps(request).encode()),
                   400, "openai")  # fmt: skip
    assert body["error"]["code"] == "context_length_exceeded"


def test_thousands_of_anthropic_blocks_are_refused_cleanly(fleet):
    blocks = [{"type": "text", "text": "word"}] * 20_000
    request = {"model": QWEN, "max_tokens": 1, "messages": [{"role": "user", "content": blocks}]}
    refused(post(fleet, "cortex", "/v1/messages", json.dumps(request).encode()), 400,
            "anthropic")  # fmt: skip


# -- model ids ------------------------------------------------------------------------------


ESCAPES = ["../../etc", "helexa/../../../etc", "/etc", "/", "..", ".", "a\\..\\b", "a\x00b",
           "helexa/./qwen3-tiny", "x" * 5000]  # fmt: skip


@pytest.mark.parametrize("model_id", ESCAPES)
def test_model_ids_that_leave_the_roots_are_refused_by_the_node(fleet, model_id):
    for path in ("/models/load", "/models/unload"):
        response = post(fleet, "neuron", path, json.dumps({"model_id": model_id}).encode())
        assert response.status_code in (400, 404), response.text
        body = check_envelope(response, "flat")
        if path == "/models/load":
            assert body["code"] == "invalid_model_id", body


@pytest.mark.parametrize("model_id", ESCAPES)
def test_model_ids_that_leave_the_roots_are_unknown_to_the_gateway(fleet, model_id):
    for path, dialect in [("/v1/chat/completions", "openai"), ("/v1/messages", "anthropic"),
                          ("/admin/models/load", "openai")]:  # fmt: skip
        request = {"model": model_id, "max_tokens": 1,
                   "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
        response = post(fleet, "cortex", path, json.dumps(request).encode())
        refused(response, 404, dialect)
    assert {m["id"] for m in fleet.neuron.get("/models")} == {QWEN}  # nothing was loaded


def test_a_model_path_in_the_url_cannot_escape(fleet):
    with fleet.neuron.http() as client:
        for path in ("/models/..%2f..%2fetc%2fpasswd/endpoint", "/models/%2fetc/endpoint",
                     "/models/../../etc/passwd/endpoint"):  # fmt: skip
            response = client.get(path)
            assert response.status_code == 404, response.text
            check_envelope(response, "flat" if response.json().get("code") else "openai")
    with fleet.gateway.http() as client:
        response = client.post("/admin/nodes/..%2f/drain")
        refused(response, 404, "openai")  # not an HTML redirect to /admin/nodes/../drain


# -- images ---------------------------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[tuple[str, list]]:
    """A local TCP port that records every connection made to it."""
    accepted: list = []
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            accepted.append(conn)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/image.png", accepted
    stop.set()
    thread.join(5)
    server.close()


def _image_requests(url: str) -> list[tuple[str, str, str, dict]]:
    part = {"type": "image_url", "image_url": {"url": url}}
    chat = chat_body(content=[part], max_tokens=1)  # type: ignore[arg-type]
    responses = {"model": QWEN, "max_output_tokens": 1, "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": url}]}]}  # fmt: skip
    anthropic = {"model": QWEN, "max_tokens": 1, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": url}}]}]}  # fmt: skip
    return [
        ("neuron", "/v1/chat/completions", "openai", chat),
        ("neuron", "/v1/responses", "openai", responses),
        ("cortex", "/v1/chat/completions", "openai", chat),
        ("cortex", "/v1/responses", "openai", responses),
        ("cortex", "/v1/messages", "anthropic", anthropic),
        ("cortex", "/v1/messages/count_tokens", "anthropic", anthropic),
    ]


@pytest.mark.parametrize("kind", ["listener", "metadata", "file", "gopher", "bad base64",
                                  "not an image"])  # fmt: skip
def test_image_urls_are_refused_and_never_fetched(fleet, listener, kind):
    local, accepted = listener
    url = {
        "listener": local,
        "metadata": "http://169.254.169.254/latest/meta-data/",
        "file": "file:///etc/passwd",
        "gopher": "gopher://127.0.0.1:1/",
        "bad base64": "data:image/png;base64,!!!not base64!!!",
        "not an image": "data:text/plain;base64,aGVsbG8=",
    }[kind]
    for daemon, path, dialect, request in _image_requests(url):
        response = post(fleet, daemon, path, json.dumps(request).encode())
        body = refused(response, 400, dialect)
        text = json.dumps(body)
        assert "image" in text, (path, body)
    assert accepted == [], "an image URL was fetched"


def test_a_vision_model_would_refuse_urls_too():
    """No vision model is served today; the rule that would apply is already there."""
    from neuron.text.errors import ImageNotDataUri
    from neuron.text.messages import chat_messages
    from protocol import structure
    from protocol.openai import ChatCompletionRequest

    for url in ("http://169.254.169.254/", "file:///etc/passwd", "data:text/plain,hi"):
        part = {"type": "image_url", "image_url": {"url": url}}
        request = structure(chat_body(content=[part]), ChatCompletionRequest)  # type: ignore[arg-type]
        with pytest.raises(ImageNotDataUri):
            chat_messages(request.messages, vision=True, model_id=QWEN)


def test_loading_a_model_for_an_escaping_id_loads_nothing(fleet):
    before = {m["id"] for m in fleet.neuron.get("/models")}
    post(fleet, "neuron", "/models/load", json.dumps({"model_id": f"../{LLAMA}"}).encode())
    assert {m["id"] for m in fleet.neuron.get("/models")} == before
