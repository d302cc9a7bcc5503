"""The read API (`helexa-bench serve`, and beside the sweep in `run`): JSON over HTTP.

GET /api/health      {"status": "ok", "run_count": N}
GET /api/dimensions  targets, models, scenarios, and each target's builds in order
GET /api/summary     `report.summary`: each target's latest build, medians
GET /api/scaling, /api/concurrency, /api/swap, /api/capability, /api/compare
GET /api/series?host=&model=&scenario=   medians per build, chronological
GET /api/runs?host=&model=&scenario=&sha=&ok=&limit=   rows, newest first

`host` is a target's name (upstream's word). Routes are thin: read the store
in a thread, call `report`, render. The same trio + quart-trio + hypercorn
stack and error edge as the daemons (`protocol.http`); a bad query parameter
is a 400 in the OpenAI error envelope. Not for: writing anything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio

from cortex.benchd import report
from cortex.benchd.store import Store
from protocol.errors import ApiError, InvalidRequest
from protocol.http import error_response, install_edge, json_response, prepare_app

__all__ = ["create_app"]

log = logging.getLogger(__name__)

MAX_LIMIT = 10_000


class _NoActors(Exception):
    """This app names no request actors, so no request id can be taken."""


def create_app(store: Store) -> QuartTrio:
    app = prepare_app(QuartTrio("helexa-bench"), max_body_bytes=64 * 1024)

    async def render(error: ApiError) -> Response:
        log.info("request refused path=%s status=%s: %s", request.path, error.status,
                 error.message)  # fmt: skip
        return error_response(error)

    install_edge(app, render, name_taken=_NoActors)

    async def read(fn: Callable[[], Any]) -> Response:
        return json_response(await trio.to_thread.run_sync(fn))

    @app.get("/api/health")
    async def health():
        return await read(lambda: {"status": "ok", "run_count": store.count()})

    @app.get("/api/dimensions")
    async def dimensions():
        return await read(lambda: _dimensions(store.runs({"ok": 1})))

    @app.get("/api/summary")
    async def summary():
        return await read(lambda: report.summary(store.runs()))

    for name in ("scaling", "concurrency", "swap", "compare"):
        app.add_url_rule(f"/api/{name}", name, _view(name, store, read), methods=["GET"])

    @app.get("/api/capability")
    async def capability():
        return await read(lambda: report.capability(store.runs()))

    @app.get("/api/series")
    async def series():
        args = _args("host", "model", "scenario")
        return await read(lambda: report.series(store.runs(), args["host"], args["model"],
                                                args["scenario"]))  # fmt: skip

    @app.get("/api/runs")
    async def runs():
        filters = _args("host", "model", "scenario", "sha")
        filters["ok"] = _int_arg("ok", None, 0, 1)
        limit = _int_arg("limit", 100, 1, MAX_LIMIT)
        return await read(lambda: store.runs(filters, limit, newest_first=True))

    return app


def _view(name: str, store: Store, read: Callable) -> Callable:
    fn = getattr(report, name)

    async def view():
        return await read(lambda: fn(report.summary(store.runs())))

    return view


def _args(*names: str) -> dict[str, str | None]:
    return {name: request.args.get(name) or None for name in names}


def _int_arg(name: str, default: int | None, low: int, high: int) -> int | None:
    text = request.args.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text, 10)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidRequest(f"query parameter {name!r} must be an integer from {low} to "
                             f"{high}, got {text!r}", param=name)  # fmt: skip
    return value


def _dimensions(rows: list[dict[str, Any]]) -> dict[str, Any]:
    builds: dict[str, list[str]] = {}
    for row in rows:  # oldest first: builds in the order they were first measured
        seen = builds.setdefault(row["target_name"], [])
        if row["git_sha"] not in seen:
            seen.append(row["git_sha"])
    return {"targets": sorted(builds), "models": sorted({r["model_id"] for r in rows}),
            "scenarios": sorted({r["scenario_id"] for r in rows}), "builds": builds}  # fmt: skip
