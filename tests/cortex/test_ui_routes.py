"""The dashboard's routes (`cortex.ui.routes`) on the gateway's app, without a fleet:
public static files behind a strict CSP, an allow-list of names, `/` for browsers,
and `/admin/traffic` under the admin rules. The page itself: tests/cortex/test_dashboard.py."""

from __future__ import annotations

import pytest

from cortex.config import ApiKey, CortexConfig, Entitlements
from cortex.gateway import Gateway
from cortex.http import create_app

ADMIN, USER = "sk-admin-ui-1a2b3c", "sk-user-ui-4d5e6f"
BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.fixture
def client():
    keys = (ApiKey(key=ADMIN, account_id="ops", admin=True), ApiKey(key=USER, account_id="t"))
    config = CortexConfig(entitlements=Entitlements(require_auth=True, keys=keys))
    return create_app(Gateway(config)).test_client()


@pytest.mark.parametrize(("name", "kind"), [("", "text/html"), ("app.js", "text/javascript"),
                                            ("app.css", "text/css"),
                                            ("icon.svg", "image/svg+xml")])  # fmt: skip
async def test_the_files_are_public_and_allow_only_this_origin(client, name, kind):
    response = await client.get(f"/ui/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(kind)
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_the_page_fetches_nothing_from_elsewhere(client):
    for name in ("", "app.js", "app.css"):
        body = (await (await client.get(f"/ui/{name}")).get_data()).decode()
        assert "http://" not in body.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in body and "//cdn" not in body and "@import" not in body


@pytest.mark.parametrize("path", ["/ui/nothing.js", "/ui/routes.py", "/ui/__init__.py"])
async def test_only_the_shipped_files_are_served(client, path):
    response = await client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert (await response.get_json())["error"]["message"].startswith("no dashboard file")


async def test_ui_without_a_slash_and_a_browser_at_root_land_on_the_page(client):
    response = await client.get("/ui")
    assert (response.status_code, response.headers["location"].endswith("/ui/")) == (308, True)
    response = await client.get("/", headers={"accept": BROWSER})
    assert (response.status_code, response.headers["location"]) == (302, "/ui/")


@pytest.mark.parametrize(("key", "status"), [(None, 401), ("sk-wrong", 401), (USER, 403),
                                             (ADMIN, 200)])  # fmt: skip
async def test_traffic_follows_the_admin_rules(client, key, status):
    headers = {"authorization": f"Bearer {key}"} if key else {}
    response = await client.get("/admin/traffic", headers=headers)
    assert response.status_code == status
    if status == 200:
        body = await response.get_json()
        assert (body["recent"], body["bucket_s"], len(body["series"])) == ([], 10, 60)
