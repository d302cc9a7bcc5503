"""Gateway-only headers on a neuron without a token: a client cannot pass as the gateway.

The gateway names the API key a request came with in `x-helexa-key-id` /
`x-helexa-account-id`. A node without `[auth] token` cannot tell the gateway
from anyone else, so it ignores them (and says so in its log); the request
itself is served. With a token they are honoured only on requests that carry
it (tests/cortex/test_gateway_auth.py).
"""

from __future__ import annotations

import httpx
import pytest
from daemon_harness import QWEN

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SPOOF = {"x-helexa-key-id": "spoofed-admin", "x-helexa-account-id": "spoofed-account"}


def test_a_tokenless_neuron_ignores_gateway_headers(neuron_daemon):
    assert neuron_daemon.token is None
    body = {"model": QWEN, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    with httpx.Client(base_url=neuron_daemon.url, timeout=30) as client:
        response = client.post("/v1/chat/completions", json=body,
                               headers={**SPOOF, "x-request-id": "spoof-check-1"})  # fmt: skip
    assert response.status_code == 200
    lines = [line for line in neuron_daemon.log().splitlines() if "spoof-check-1" in line]
    answered = [line for line in lines if "answered method=POST" in line]
    assert len(answered) == 1 and "key=-" in answered[0]
    assert "spoofed-admin" not in neuron_daemon.log()
    assert any("ignored gateway-only headers" in line and "x-helexa-key-id" in line
               for line in lines)  # fmt: skip
