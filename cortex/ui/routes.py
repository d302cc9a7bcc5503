"""The dashboard's routes: its static files, `/admin/traffic`, and `/` for browsers.

`install(app, gateway)` is called by `cortex.http.create_app`. It adds

- `GET /ui` (→ `/ui/`) and `GET /ui/<file>`: the page and its assets, read
  once from the package (`cortex/ui/static`) and served with a strict
  Content-Security-Policy (nothing but this origin; no inline script). They
  are public (`cortex.auth.PUBLIC_PREFIXES`): they hold no data — the page
  asks the API for everything, with the key the operator types in;
- `GET /admin/traffic`: the gateway's recent requests and their rates
  (`cortex.traffic.Traffic`, fed by the metrics' `on_finished`); an admin
  route like the others;
- a redirect of `GET /` to `/ui/` for a browser (one that prefers
  `text/html`); every other client still gets the health document there.

Everything else the page shows comes from routes that already exist:
`/admin/fleet`, `/admin/actors/stream`, `/v1/models`, `/admin/models/*`,
`/admin/nodes/<name>/(un)drain` and `/v1/chat/completions`.

Not for: what the page does (`static/app.js`) or any data of its own.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

from quart import Response, redirect, request
from quart_trio import QuartTrio

from cortex.traffic import Traffic
from protocol.errors import NotFound
from protocol.http import json_response

if TYPE_CHECKING:
    from cortex.gateway import Gateway

__all__ = ["install"]

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _assets() -> dict[str, bytes]:
    """The files of `static/` by name: an allow-list, so no path reaches the disk."""
    folder = resources.files("cortex.ui") / "static"
    return {
        entry.name: entry.read_bytes()
        for entry in folder.iterdir()
        if entry.is_file() and any(entry.name.endswith(ext) for ext in _TYPES)
    }


def install(app: QuartTrio, gateway: Gateway) -> None:
    assets = _assets()
    traffic = Traffic()
    gateway.metrics.on_finished.append(traffic.record)

    def asset(name: str) -> Response:
        body = assets.get(name)
        if body is None:
            raise NotFound(f"no dashboard file {name!r}", code="not_found")
        kind = next(t for ext, t in _TYPES.items() if name.endswith(ext))
        return Response(body, 200, {"Content-Type": kind, **_HEADERS})

    @app.get("/ui/")
    async def ui_index():
        return asset("index.html")

    @app.get("/ui/<name>")
    async def ui_asset(name: str):
        return asset(name)

    @app.get("/admin/traffic")
    async def admin_traffic():
        return json_response(traffic.to_dict())

    @app.before_request
    async def browsers_to_the_dashboard():
        if request.method == "GET" and request.path == "/" and _prefers_html():
            return redirect("/ui/", 302)
        return None


def _prefers_html() -> bool:
    accept = request.accept_mimetypes
    return accept.best_match(["application/json", "text/html"]) == "text/html"
