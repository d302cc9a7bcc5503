"""Images end to end: a real neuron serving the tiny Qwen3-VL, a real gateway in front.

One neuron (one CPU device, the synthetic `qwen3_vl` build shared with
tests/neuron/test_engine_vision.py through the demo cache) and one in-process
gateway serve the module. The official OpenAI and Anthropic SDKs send small PNGs
through the gateway: chat streamed and not, two images in one message, Responses
`input_image`, an Anthropic image block and an image inside a `tool_result`, with
prompt token counts that include the image tokens. Hostile images go straight to
the neuron and each gets its precise 400 while it keeps serving; the gateway refuses
images for a model it knows to be text only.
"""

from __future__ import annotations

import base64
import io
import json
import random
import signal
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import psutil
import pytest
from gateway_thread import GatewayThread, gateway_config

from cortex.fleet_snapshot import ModelProfile
from tests.neuron.daemon_harness import Models, RunningDaemon, sse_events, start_daemon, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]
PIL_Image = pytest.importorskip("PIL.Image")

VL = "helexa/qwen3_vl-tiny"
TEXT_ONLY = "helexa/text-only"  # in the catalogue as text only, served nowhere
# A 64x64 image is 4 tokens after the processor's 2x2 merge, plus its start and end.
TOKENS_PER_SMALL_IMAGE = 6
SETTINGS = {
    "cpu": {"devices": 1, "threads": 1, "memory_mb": 2048},
    "http": {"keepalive_interval": 0.2},
    "vision": {"max_image_bytes": 200_000, "max_image_pixels": 1024 * 1024,
               "max_images_per_request": 3, "max_image_aspect_ratio": 10},
}  # fmt: skip


@pytest.fixture(scope="module")
def vl_root(request: pytest.FixtureRequest, tmp_path_factory) -> Path:
    """The synthetic Qwen3-VL, built where tests/neuron's `synth_snapshot` builds it."""
    from neuron.synth import synthesize

    cache = getattr(request.config, "cache", None)
    demo = Path(cache.mkdir("helexa-demo-models")) if cache else tmp_path_factory.mktemp("demo")
    synthesize(demo / "archs", arch="qwen3_vl")
    return demo / "archs"


@pytest.fixture(scope="module")
def vl_neuron(vl_root: Path, tmp_path_factory) -> Iterator[RunningDaemon]:
    daemon = start_daemon(tmp_path_factory.mktemp("vision-neuron"), Models(vl_root),
                          default_models=(VL,), settings=SETTINGS)  # fmt: skip
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def vl_gateway(vl_neuron: RunningDaemon) -> Iterator[GatewayThread]:
    profiles = [ModelProfile(id=VL, vram_mb=4),
                ModelProfile(id=TEXT_ONLY, vram_mb=4, capabilities=("text",))]  # fmt: skip
    config = gateway_config({"vision": vl_neuron.url},
                            {"gpt-4o": VL, "claude-sonnet-4-6": VL}, profiles)  # fmt: skip
    with GatewayThread.running(config) as gw:
        gw.wait_healthy(nodes=1)
        yield gw


# -- images ---------------------------------------------------------------------------


def png(width: int = 64, height: int = 64, seed: int = 0) -> bytes:
    data = random.Random(seed).randbytes(width * height * 3)  # noise: it does not compress
    out = io.BytesIO()
    PIL_Image.frombytes("RGB", (width, height), data).save(out, format="PNG")
    return out.getvalue()


def data_uri(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def with_declared_size(raw: bytes, width: int, height: int) -> bytes:
    """The PNG with its header claiming another size (CRC fixed): a bomb, or 0x0."""
    ihdr = raw[12:16] + struct.pack(">II", width, height) + raw[24:29]
    return raw[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + raw[33:]


def image_part(uri: str) -> dict:
    return {"type": "image_url", "image_url": {"url": uri}}


def anthropic_image(raw: bytes) -> dict:
    source = {"type": "base64", "media_type": "image/png", "data": base64.b64encode(raw).decode()}
    return {"type": "image", "source": source}


def chat(content, **fields) -> dict:
    return {"model": VL, "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": content}], **fields}  # fmt: skip


def tokens(daemon: RunningDaemon, content) -> int:
    with daemon.http() as client:
        response = client.post("/v1/chat/tokenize", json=chat(content))
    assert response.status_code == 200, response.text
    return response.json()["count"]


# -- capabilities and the SDKs through the gateway --------------------------------------


def test_the_vision_model_advertises_images_on_the_node_and_the_gateway(vl_neuron, vl_gateway):
    node = {m["id"]: m for m in vl_neuron.get("/models")}
    assert node[VL]["capabilities"] == ["text", "image"]
    with vl_gateway.http() as client:
        cards = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert cards[VL]["capabilities"] == ["text", "image"]
    assert cards[TEXT_ONLY]["capabilities"] == ["text"]


def test_openai_sdk_image_request_streamed_and_not(vl_neuron, vl_gateway):
    client = openai.OpenAI(base_url=f"{vl_gateway.url}/v1", api_key="none")
    content = [{"type": "text", "text": "What is this?"}, image_part(data_uri(png()))]
    reply = client.chat.completions.create(**chat(content))
    text_only = tokens(vl_neuron, [{"type": "text", "text": "What is this?"}])
    assert reply.usage.prompt_tokens == text_only + TOKENS_PER_SMALL_IMAGE
    assert reply.usage.prompt_tokens == tokens(vl_neuron, content)
    assert reply.choices[0].message.content
    stream = client.chat.completions.create(**chat(content), stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == reply.choices[0].message.content  # greedy: the same tokens
    # Another image, same text: another answer (the image reaches the model).
    other = [content[0], image_part(data_uri(png(seed=5)))]
    assert client.chat.completions.create(**chat(other)).choices[0].message.content != streamed


def test_two_images_in_one_message_and_responses_input_image(vl_neuron, vl_gateway):
    client = openai.OpenAI(base_url=f"{vl_gateway.url}/v1", api_key="none")
    text = {"type": "text", "text": "Compare."}
    two = [text, image_part(data_uri(png(seed=1))), image_part(data_uri(png(96, 64, 2)))]
    reply = client.chat.completions.create(**chat(two))
    # 96x64 is a 6x4 patch grid: 6 tokens, plus start and end.
    assert reply.usage.prompt_tokens == tokens(vl_neuron, [text]) + TOKENS_PER_SMALL_IMAGE + 8
    response = client.responses.create(
        model="gpt-4o", max_output_tokens=4, temperature=0,
        input=[{"role": "user", "content": [
            {"type": "input_text", "text": "Compare."},
            {"type": "input_image", "image_url": data_uri(png(seed=1))},
        ]}],
    )  # fmt: skip
    assert response.usage.input_tokens == tokens(vl_neuron, [text]) + TOKENS_PER_SMALL_IMAGE
    assert response.output_text


def test_anthropic_sdk_image_block_and_image_in_a_tool_result(vl_neuron, vl_gateway):
    client = anthropic.Anthropic(base_url=vl_gateway.url, api_key="none")
    image = anthropic_image(png(seed=3))
    messages = [{"role": "user", "content": [image, {"type": "text", "text": "What is it?"}]}]
    reply = client.messages.create(model="claude-sonnet-4-6", max_tokens=4, messages=messages)
    counted = client.messages.count_tokens(model="claude-sonnet-4-6", messages=messages)
    assert reply.usage.input_tokens == counted.input_tokens
    text_only = client.messages.count_tokens(
        model="claude-sonnet-4-6", messages=[{"role": "user", "content": "What is it?"}]
    )
    assert counted.input_tokens == text_only.input_tokens + TOKENS_PER_SMALL_IMAGE
    tool_turns = [
        {"role": "user", "content": "Take a screenshot."},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "screenshot", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [image]}]},
    ]  # fmt: skip
    tools = [{"name": "screenshot", "description": "Screen.", "input_schema": {"type": "object"}}]
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=4, messages=tool_turns,
                                tools=tools) as stream:  # fmt: skip
        final = stream.get_final_message()
    assert final.stop_reason in ("end_turn", "max_tokens", "tool_use")
    without = [*tool_turns[:2], {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "done"}]}]  # fmt: skip
    plain = client.messages.count_tokens(model="claude-sonnet-4-6", messages=without, tools=tools)
    assert final.usage.input_tokens > plain.input_tokens


def test_the_gateway_refuses_images_for_a_text_only_model(vl_gateway):
    with vl_gateway.http() as client:
        body = chat([image_part(data_uri(png()))], model=TEXT_ONLY)
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "vision_unsupported"
        image = anthropic_image(png())
        response = client.post("/v1/messages", json={
            "model": TEXT_ONLY, "max_tokens": 4,
            "messages": [{"role": "user", "content": [image]}]})  # fmt: skip
        assert response.status_code == 400
        assert "text-only" in response.json()["error"]["message"]


# -- hostile images, straight at the neuron ----------------------------------------------

BOMB = with_declared_size(png(8, 8), 60_000, 60_000)
HOSTILE = {
    "not base64": ([image_part("data:image/png;base64,!!not base64!!")], "invalid_image", None),
    "truncated": ([image_part(data_uri(png(128, 128)[:20_000]))], "invalid_image", None),
    "bomb": ([image_part(data_uri(BOMB))], "image_limit_exceeded", "max_image_pixels"),
    "0x0": ([image_part(data_uri(with_declared_size(png(8, 8), 0, 0)))], "invalid_image", None),
    "wrong MIME": ([image_part(data_uri(png(), "image/jpeg"))], "invalid_image", None),
    "BMP": ([image_part(data_uri(png(), "image/bmp"))], "invalid_image", None),
    "too many": ([image_part(data_uri(png()))] * 4, "image_limit_exceeded",
                 "max_images_per_request"),
    "oversized": ([image_part(data_uri(b"\x89PNG" + bytes(300_000)))], "image_limit_exceeded",
                  "max_image_bytes"),
    "aspect": ([image_part(data_uri(png(640, 32)))], "image_limit_exceeded",
               "max_image_aspect_ratio"),
    "remote URL": ([image_part("https://example.com/cat.png")], "invalid_image_url", None),
}  # fmt: skip


def test_hostile_images_get_a_precise_400_and_the_node_keeps_serving(vl_neuron):
    parent = psutil.Process(vl_neuron.process.pid)
    with vl_neuron.http() as client:
        warm = client.post("/v1/chat/completions", json=chat([image_part(data_uri(png()))]))
        assert warm.status_code == 200, warm.text
        before = parent.memory_info().rss
        for name, (content, code, limit) in HOSTILE.items():
            response = client.post("/v1/chat/completions", json=chat(content))
            assert response.status_code == 400, (name, response.text)
            error = response.json()["error"]
            assert error["code"] == code, (name, error)
            assert error["param"].startswith("messages[0].content["), (name, error)
            if limit is not None:
                assert error["limit"] == limit and limit in error["message"], (name, error)
        good = client.post("/v1/chat/completions", json=chat([image_part(data_uri(png()))]))
        assert good.status_code == 200, good.text  # the node keeps serving
    # Nothing was decoded at the size a bomb declares (60000² RGB would be ~10 GB).
    assert parent.memory_info().rss - before < 64 << 20


def test_placeholder_text_in_a_message_stays_text(vl_neuron):
    """A user spelling the image placeholder gets text, not extra image slots: with one
    image and three spelled placeholders the prompt still has exactly one image run
    (else the count check would refuse it, 400)."""
    content = [{"type": "text", "text": "<|image_pad|>" * 3}, image_part(data_uri(png()))]
    with vl_neuron.http() as client:
        response = client.post("/v1/chat/completions", json=chat(content))
    assert response.status_code == 200, response.text


def test_a_worker_killed_during_a_vision_prefill_fails_in_band_and_is_replaced(vl_neuron):
    """The 200 comes once the sequence is in the worker; a 1024x1024 image's encode and
    prefill (1024 image tokens) take far longer than the kill that follows at once."""
    out = io.BytesIO()
    PIL_Image.new("RGB", (1024, 1024), (40, 90, 200)).save(out, format="PNG")  # compresses
    body = chat([image_part(data_uri(out.getvalue()))], stream=True)
    (worker,) = psutil.Process(vl_neuron.process.pid).children()
    with (
        vl_neuron.http(timeout=60) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        worker.send_signal(signal.SIGKILL)
        events = list(sse_events(response.iter_lines()))
    errors = [json.loads(e)["error"] for e in events if e.startswith('{"error"')]
    assert errors and errors[0]["code"] == "worker_died", events[-4:]
    assert events[-1] == "[DONE]"
    wait_for(lambda: _vl_loaded(vl_neuron, worker.pid), within=90, what="the VL model back")
    with vl_neuron.http() as client:
        again = client.post("/v1/chat/completions", json=chat([image_part(data_uri(png()))]))
    assert again.status_code == 200, again.text


def _vl_loaded(daemon: RunningDaemon, old_pid: int) -> bool:
    workers = psutil.Process(daemon.process.pid).children()
    model = next(m for m in daemon.get("/models") if m["id"] == VL)
    return model["status"] == "loaded" and [w.pid for w in workers] != [old_pid]
