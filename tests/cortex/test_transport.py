"""The gateway's HTTP client: no cookies kept or sent between requests to the nodes."""

from __future__ import annotations

import httpx

from cortex.transport import Client, url


async def test_the_client_keeps_no_cookies_from_one_request_for_the_next():
    seen: list[str | None] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("cookie"))
        return httpx.Response(200, headers={"set-cookie": "session=abc; Path=/"}, json={})

    async with Client(transport=httpx.MockTransport(answer)) as client:
        for _ in range(2):
            response = await client.get(url("http://node.invalid/health"))
            assert response.status_code == 200
    assert seen == [None, None]
    assert url("http://node.invalid/health") is url("http://node.invalid/health")  # parsed once
