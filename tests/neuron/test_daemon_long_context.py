"""A long-context synthesized model (`neuron.synth --max-positions`) through a real neuron.

The 32k variant of the tiny test model serves a prompt longer than the default
model's whole 4,096-token context, once the node's `[limits] max_prompt_tokens` allows
it (as `cortex up --max-prompt-tokens` sets it): the size of a coding agent's requests.
"""

from __future__ import annotations

import httpx
import pytest
from daemon_harness import Models, start_daemon

from neuron.synth import synthesize

pytestmark = [pytest.mark.slow, pytest.mark.integration]

LONG = "helexa/qwen3-tiny-32k"
PROMPT_WORDS = 6000


@pytest.fixture(scope="module")
def long_context_models(demo_cache_dir) -> Models:
    """The 32k-position variant of the tiny Qwen3, built once into the test cache."""
    root = demo_cache_dir / "long-context"
    synthesize(root, arch="qwen3", size="tiny", name=LONG, max_positions=32768)
    return Models(root, qwen=LONG)


def test_a_prompt_past_the_default_context_is_served(long_context_models, tmp_path):
    settings = {"cpu": {"devices": 1}, "limits": {"max_prompt_tokens": 32768}}
    daemon = start_daemon(tmp_path, long_context_models, default_models=(LONG,),
                          settings=settings)  # fmt: skip
    try:
        models = httpx.get(f"{daemon.url}/models", timeout=30).json()
        assert models[0]["limit"]["context"] == 32768
        prompt = " ".join(f"word{i % 97}" for i in range(PROMPT_WORDS))
        reply = httpx.post(f"{daemon.url}/v1/completions", timeout=300,
                           json={"model": LONG, "prompt": prompt, "max_tokens": 2})  # fmt: skip
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["prompt_tokens"] > 4096
    finally:
        assert daemon.stop() == 0
