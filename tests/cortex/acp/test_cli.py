"""`helexa-acp`'s command line: no torch, a clear word when the `acp` extra is missing,
flags over environment, and bad values refused before anything starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cortex.acp.config import DEFAULT_ENDPOINT, load_config


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_the_agent_imports_without_torch():
    out = run(
        "import sys, cortex.acp.agent, cortex.acp.__main__; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_without_the_acp_extra_it_names_the_extra():
    out = run("import sys; sys.modules['acp'] = None; from cortex.acp.__main__ import main; "
              "sys.exit(main([]))")  # fmt: skip
    assert out.returncode == 2
    assert out.stderr == "helexa-acp needs the `acp` extra: pip install 'helexa[acp]'\n"


def test_defaults_then_environment_then_flags(monkeypatch):
    for name in ("HELEXA_ACP_ENDPOINT", "HELEXA_ACP_MODEL", "HELEXA_ACP_MAX_STEPS",
                 "HELEXA_ACP_TOOL_FORMAT", "HELEXA_ACP_EXTRA_BODY", "HELEXA_API_KEY"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    config, _ = load_config([])
    assert (config.endpoint, config.api_key, config.model) == (DEFAULT_ENDPOINT, None, None)
    assert (config.max_steps, config.tool_format, dict(config.extra_body)) == (25, "auto", {})
    monkeypatch.setenv("HELEXA_ACP_MAX_STEPS", "7")
    monkeypatch.setenv("HELEXA_ACP_EXTRA_BODY", '{"temperature": 0.2}')
    monkeypatch.setenv("MY_KEY", "sk-secret")
    config, _ = load_config(["--api-key-env", "MY_KEY", "--tool-format", "hermes"])
    assert (config.max_steps, config.tool_format, config.api_key) == (7, "hermes", "sk-secret")
    assert dict(config.extra_body) == {"temperature": 0.2}
    assert load_config(["--max-steps", "3"])[0].max_steps == 3


@pytest.mark.parametrize(
    "flags",
    [
        ["--max-steps", "0"],
        ["--extra-body", "[1]"],
        ["--extra-body", "{nope"],
        ["--tool-format", "xml"],
    ],
)
def test_bad_values_are_refused(flags):
    with pytest.raises(SystemExit) as exited:
        load_config(flags)
    assert exited.value.code == 2
