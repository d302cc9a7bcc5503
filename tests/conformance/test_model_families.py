"""A hybrid (Qwen3.5: gated delta net + full attention) and a windowed (Gemma 3:
sliding + full attention) model, end to end: a real neuron serving both from
synthesized snapshots in spawned device workers, a real gateway in front, and the
official OpenAI and Anthropic SDKs. Streamed and non-streamed greedy answers agree,
and the node reports what each model measured in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest
from gateway_thread import GatewayThread, gateway_config

from cortex.fleet_snapshot import ModelProfile
from tests.neuron.daemon_harness import Models, RunningDaemon, start_daemon

pytestmark = [pytest.mark.slow, pytest.mark.integration]

QWEN35, GEMMA3 = "helexa/qwen3_5-tiny", "helexa/gemma3-tiny"
FAMILIES = (QWEN35, GEMMA3)
# A user turn longer than the 16-token sliding window, so Gemma's window is exercised.
QUESTION = "Summarise the following in one word: " + "the quick brown fox jumps " * 6


@pytest.fixture(scope="module")
def families_root(request: pytest.FixtureRequest, tmp_path_factory) -> Path:
    from neuron.synth import synthesize

    cache = getattr(request.config, "cache", None)
    root = Path(cache.mkdir("helexa-families")) if cache else tmp_path_factory.mktemp("families")
    for name in FAMILIES:
        synthesize(root, arch=name.split("/")[1].removesuffix("-tiny"), size="tiny", name=name)
    return root


@pytest.fixture(scope="module")
def neuron(families_root: Path, tmp_path_factory) -> Iterator[RunningDaemon]:
    daemon = start_daemon(
        tmp_path_factory.mktemp("families-neuron"),
        Models(families_root),
        default_models=FAMILIES,
        settings={"cpu": {"devices": 2, "threads": 1, "memory_mb": 2048}},
    )
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def gateway(neuron: RunningDaemon) -> Iterator[GatewayThread]:
    profiles = [ModelProfile(id=m, vram_mb=4) for m in FAMILIES]
    config = gateway_config({"families": neuron.url}, {}, profiles)
    with GatewayThread.running(config) as gw:
        gw.wait_healthy(nodes=1)
        yield gw


def test_the_node_reports_each_familys_measured_memory(neuron: RunningDaemon):
    models = {m["id"]: m for m in neuron.get("/models")}
    assert set(models) == set(FAMILIES)
    for model in models.values():
        assert model["status"] == "loaded"
        assert model["memory_bytes"] > 100_000  # the tensors' measured bytes
        assert model["capabilities"] == ["text"]


@pytest.mark.parametrize("model", FAMILIES)
def test_openai_sdk_streamed_equals_non_streamed(gateway: GatewayThread, model: str):
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-local", max_retries=0) as client:
        request = {
            "model": model,
            "messages": [{"role": "user", "content": QUESTION}],
            "max_tokens": 12,
            "temperature": 0,
        }
        whole = client.chat.completions.create(**request)
        chunks = list(client.chat.completions.create(**request, stream=True))
    choice = whole.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens >= 1
    assert whole.usage.prompt_tokens > 16  # past the window
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(
        getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices
    )
    whole_reasoning = getattr(choice.message, "reasoning_content", None) or ""
    assert (streamed, reasoning) == (choice.message.content or "", whole_reasoning)
    assert streamed or reasoning


@pytest.mark.parametrize("model", FAMILIES)
def test_anthropic_sdk_streamed_equals_non_streamed(gateway: GatewayThread, model: str):
    with anthropic.Anthropic(base_url=gateway.url, api_key="sk-ant-local", max_retries=0) as client:
        request = {
            "model": model,
            "max_tokens": 12,
            "messages": [{"role": "user", "content": QUESTION}],
            # This SDK no longer takes `temperature`; the wire still does (greedy).
            "extra_body": {"temperature": 0},
        }
        whole = client.messages.create(**request)
        with client.messages.stream(**request) as stream:
            final = stream.get_final_message()
    assert whole.stop_reason in ("end_turn", "max_tokens")
    assert [b.model_dump() for b in final.content] == [b.model_dump() for b in whole.content]
    assert final.usage.output_tokens == whole.usage.output_tokens >= 1
