"""Both daemons against their own `/openapi.json`, by an outside fuzzer: schemathesis
with every check on (status codes and bodies as described, schema-valid requests
accepted, invalid ones refused, 405 with `Allow` for other methods, …).

Bounded for CI: a fixed seed and a few examples per operation (about half a minute
a daemon here). Left out: the routes that change the shared fleet (loading,
unloading, draining — tests/hostile/test_fuzz_routes.py fuzzes them with names
that cannot hit the loaded model) and the actor-tree streams, which never end.
A long run: `HELEXA_SCHEMATHESIS_EXAMPLES=200` draws more per operation.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

EXAMPLES = os.environ.get("HELEXA_SCHEMATHESIS_EXAMPLES", "5")
EXCLUDED = {
    "neuron": ["--exclude-path-regex", "^/models/(load|unload)$",
               "--exclude-path", "/admin/actors/stream"],
    "cortex": ["--exclude-path-regex", "^/admin/(models|nodes)/",
               "--exclude-path", "/admin/actors/stream"],
}  # fmt: skip


@pytest.mark.parametrize("which", ["neuron", "cortex"])
def test_the_daemon_keeps_every_promise_of_its_openapi_description(fleet, which, tmp_path):
    daemon = fleet.neuron if which == "neuron" else fleet.gateway
    cli = Path(sys.executable).with_name("schemathesis")
    run = subprocess.run(
        [str(cli), "run", f"{daemon.url}/openapi.json", "--checks", "all", "--seed", "1",
         "--max-examples", EXAMPLES, "--no-shrink", "--request-timeout", "20",
         "--workers", "1", *EXCLUDED[which]],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"},
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
