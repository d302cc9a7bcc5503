"""The gateway's packages import without torch; the CLIs answer --version."""

from __future__ import annotations

import subprocess
import sys

import pytest

GATEWAY_SIDE = ["protocol", "actors", "cortex"]


@pytest.mark.parametrize("package", [*GATEWAY_SIDE, "neuron"])
def test_imports_without_torch(package):
    code = (
        f"import sys, {package}; "
        "bad = sorted(m for m in ('torch', 'transformers') if m in sys.modules); "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing {package} pulled in {out.stdout.strip()}"


@pytest.mark.parametrize("program", ["cortex", "neuron"])
def test_version_flag(program):
    out = subprocess.run(
        [sys.executable, "-m", program, "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith(f"{program} 0.")
