"""A model the engine cannot serve exactly is refused at load, never served wrong.

Against the shared `neuron serve` (tests/neuron/conftest.py): a Llama snapshot whose
config asks for chunked attention (Llama 4's local layers) loads in transformers, but
the engine's cache has no such layer kind: the load is a 422 `unsupported_model`
naming it, nothing stays loaded, and the worker goes on serving.
"""

from __future__ import annotations

import json
import shutil

import pytest
from daemon_harness import LLAMA, QWEN, assert_flat_error, chat_body

pytestmark = [pytest.mark.slow, pytest.mark.integration]

CHUNKED = "helexa/llama-chunked"


def test_a_layer_kind_the_engine_lacks_is_a_422_naming_it(neuron_daemon, daemon_models):
    source = daemon_models.root / LLAMA
    target = daemon_models.root / CHUNKED
    if not target.exists():
        shutil.copytree(source, target)
        config = json.loads((source / "config.json").read_text())
        (target / "config.json").write_text(json.dumps({**config, "attention_chunk_size": 8}))
    with neuron_daemon.http() as client:
        response = client.post("/models/load", json={"model_id": CHUNKED, "dtype": "fp32"})
        body = assert_flat_error(response, 422, "unsupported_model")
        assert "chunked attention" in json.dumps(body)
        assert CHUNKED not in {m["id"] for m in client.get("/models").json()}
        served = client.post("/v1/chat/completions", json=chat_body(max_tokens=2))
        assert served.status_code == 200, served.text
    assert QWEN in {m["id"] for m in neuron_daemon.get("/health")["models"]}
