"""`bench/device_check.sh --dry-run`: the GPU readiness check's own steps, on CPU.

The script exists for a lent GPU machine where set-up time is scarce, so CI runs its
CPU dry run end to end: a real neuron with a spawned worker, the tiny synthesized model
in bf16 and an fp32 twin, greedy identity against `generate`, a SIGKILLed worker
mid-stream and its replacement, and the throughput table. A broken step fails here
instead of on the GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(240)
def test_dry_run_passes_every_check(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEURON_", "DEVICE_CHECK"))}
    env.update(
        OUT=str(tmp_path / "out"),
        TMPDIR=str(tmp_path),
        PYTHON=sys.executable,
        DEVICE_CHECK_WHEELS=str(tmp_path / "no-wheels"),  # use this venv's packages
        DEVICE_CHECK_BUDGET="200",
    )
    result = subprocess.run(
        ["bash", "bench/device_check.sh", "--dry-run"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=230,
    )  # fmt: skip
    report = (tmp_path / "out" / "device-check.txt").read_text()
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "[PASS] (b) fp32 greedy: node == generate: 4/4 prompts identical" in report
    assert "[PASS] (c) every stream ended in-band" in report
    assert "[PASS] (c) a replacement worker reloaded both models and serves" in report
    assert "summary: 3/3 checks passed" in report
    lines = report.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["streams", "neuron"])
    rows = [line.split() for line in lines[header + 1 : header + 3]]
    assert [row[0] for row in rows] == ["1", "4"], report
    assert all(float(value) > 0 for row in rows for value in row[1:]), report
    assert (tmp_path / "out" / "neuron.log").stat().st_size > 0
