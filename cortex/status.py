"""`cortex status`: what a running gateway says about its fleet, as tables.

`cortex status [--url http://localhost:31313] [--json]` fetches `GET /health`
and `GET /admin/fleet` (`cortex.fleet_view`) and prints the fleet's health,
a table of nodes (state, devices, memory, models) and a table of models
(where each is resident, requests in flight and queued). A pinned copy (the
node's config or the gateway's runtime pin) reads `node (loaded, pinned)`; the
gateway's runtime pins are listed under the tables. `--json` prints
both bodies instead. An unreachable gateway or a bad answer is one line on
stderr and exit status 1; a gateway without `/admin/fleet` (upstream's)
still gets its `/health` shown. `render_status` is the pure rendering step.
Not for: anything live or interactive (`python -m cortex.inspect` is), or
changing the fleet.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cortex.fleet_view import FleetView, ModelView, NodeView
from protocol.errors import ValidationFailed

__all__ = [
    "DEFAULT_URL",
    "StatusError",
    "configure_parser",
    "fetch",
    "main",
    "render_status",
    "run",
    "run_args",
]

DEFAULT_URL = "http://localhost:31313"
URL_ENV = "CORTEX_URL"
API_KEY_ENV = "CORTEX_API_KEY"
_STYLES = {"ok": "green", "up": "green", "impaired": "yellow", "suspect": "yellow",
           "degraded": "red", "down": "red", "loaded": "green", "failed": "red"}  # fmt: skip


class StatusError(Exception):
    """The gateway could not be asked, or answered something unusable (one line)."""


# ------------------------------------------------------------------ fetching


def fetch(
    url: str,
    *,
    api_key: str | None = None,
    timeout: float = 5.0,
    transport: httpx.BaseTransport | None = None,
) -> tuple[dict[str, Any], FleetView | None]:
    """(`/health` body, `/admin/fleet` view or None if the gateway has no such route)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=url, headers=headers, timeout=timeout, transport=transport) as c:
        health = _get_json(c, "/health", url, timeout)
        fleet = _get_json(c, "/admin/fleet", url, timeout, missing_ok=True)
    if not isinstance(health, dict):
        raise StatusError(f"GET {url}/health: expected a JSON object")
    try:
        return health, None if fleet is None else FleetView.from_dict(fleet)
    except ValidationFailed as exc:
        raise StatusError(f"GET {url}/admin/fleet: unexpected body: {exc}") from None


def _get_json(
    client: httpx.Client, path: str, url: str, timeout: float, *, missing_ok: bool = False
) -> Any:
    try:
        response = client.get(path)
    except httpx.TimeoutException:
        raise StatusError(f"cannot reach the gateway at {url}: no answer in {timeout:g}s") from None
    except httpx.HTTPError as exc:
        raise StatusError(f"cannot reach the gateway at {url}: {_reason(exc)}") from None
    if response.status_code == 404 and missing_ok:
        return None
    if response.status_code in (401, 403):
        raise StatusError(f"GET {url}{path}: HTTP {response.status_code}: pass --api-key "
                          f"or set {API_KEY_ENV}")  # fmt: skip
    if response.status_code != 200:
        raise StatusError(f"GET {url}{path}: HTTP {response.status_code}")
    try:
        return response.json()
    except ValueError:
        raise StatusError(f"GET {url}{path}: the answer is not JSON") from None


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.split("] ", 1)[-1] if text.startswith("[Errno") else text


# ------------------------------------------------------------------ rendering


def render_status(health: dict[str, Any], fleet: FleetView | None, console: Console) -> None:
    """The health line, then node and model tables (when the gateway has them)."""
    console.print(_health_line(health, fleet))
    for item in health.get("unservable") or ():
        console.print(f"  unservable: {item.get('model')} on {item.get('node')}: "
                      f"{item.get('reason')} {item.get('detail') or ''}".rstrip(),
                      markup=False, highlight=False)  # fmt: skip
    if fleet is None:
        console.print("(this gateway has no /admin/fleet: node and model details unavailable)")
        return
    console.print(_nodes_table(fleet))
    console.print(_models_table(fleet))
    if fleet.pins:
        console.print(f"pinned at runtime: {', '.join(fleet.pins)}", markup=False,
                      highlight=False)  # fmt: skip


def _health_line(health: dict[str, Any], fleet: FleetView | None) -> Text:
    status = str(health.get("status") or (fleet.status if fleet else "unknown"))
    nodes = health.get("nodes") or {}
    line = Text("fleet ")
    line.append(status, style=f"bold {_STYLES.get(status, '')}".strip())
    if isinstance(nodes, dict) and "total" in nodes:
        line.append(f"  {nodes.get('healthy', 0)}/{nodes['total']} nodes healthy")
    return line


def _nodes_table(fleet: FleetView) -> Table:
    table = Table(title="nodes", title_justify="left")
    for column in ("node", "state", "devices", "memory used / free", "models", "last poll"):
        table.add_column(column)
    for node in fleet.nodes:
        table.add_row(
            Text(node.name), _state(node), _devices(node), _memory(node),
            Text("\n".join(f"{m.id} ({_residency(m)})" for m in node.models) or "—"),
            Text(_last_poll(node)),
        )  # fmt: skip
    return table


def _state(node: NodeView) -> Text:
    text = Text(node.state, style=_STYLES.get(node.state, ""))
    if node.draining:
        text.append(", draining", style="yellow")
    if node.error:
        text.append(f"\n{node.error}", style="dim")
    return text


def _devices(node: NodeView) -> Text:
    ids = [d.id or str(d.index) for d in node.devices]
    return Text(", ".join(ids) if ids else "—")


def _memory(node: NodeView) -> Text:
    if not node.devices:
        return Text("—")
    total = sum(d.total_mb for d in node.devices)
    free = sum(d.free_mb for d in node.devices)
    return Text(f"{_mib(total - free)} / {_mib(free)}")


def _last_poll(node: NodeView) -> str:
    return "never" if node.last_poll_age_s is None else f"{node.last_poll_age_s:.1f} s ago"


def _residency(model: ModelView) -> str:
    return f"{model.status}, pinned" if model.pinned else model.status


def _mib(value: int) -> str:
    return f"{value} MiB" if abs(value) < 1024 else f"{value / 1024:.1f} GiB"


def _models_table(fleet: FleetView) -> Table:
    table = Table(title="models", title_justify="left")
    for column, justify in (("model", "left"), ("where", "left"), ("in flight", "right"),
                            ("queued", "right"), ("memory", "right")):  # fmt: skip
        table.add_column(column, justify=justify)
    where: dict[str, list[str]] = {}
    totals: dict[str, list[int]] = {}
    for node in fleet.nodes:
        for m in node.models:
            where.setdefault(m.id, []).append(f"{node.name} ({_residency(m)})")
            total = totals.setdefault(m.id, [0, 0, 0])
            total[0], total[1] = total[0] + m.in_flight, total[1] + m.queued
            total[2] += m.memory_mb or 0
    for model in sorted(where):
        in_flight, queued, memory = totals[model]
        table.add_row(Text(model), Text(", ".join(where[model])), str(in_flight), str(queued),
                      _mib(memory) if memory else "—")  # fmt: skip
    return table


# ------------------------------------------------------------------ command line


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `cortex status`'s options to `parser` (a subcommand's, or its own)."""
    url_help = f"the gateway's API (default: ${URL_ENV} or {DEFAULT_URL})"
    parser.add_argument("--url", "-e", "--endpoint", dest="url", default=None, help=url_help)
    parser.add_argument("--json", action="store_true", help="print the raw JSON bodies")
    parser.add_argument("--api-key", default=None,
                        help=f"bearer key for /admin routes (default: ${API_KEY_ENV})")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    return parser


def run(
    url: str,
    *,
    as_json: bool = False,
    api_key: str | None = None,
    timeout: float = 5.0,
    console: Console | None = None,
) -> int:
    """Fetch and print; the exit status (1 when the gateway cannot be asked)."""
    url = (url if "://" in url else f"http://{url}").rstrip("/")
    try:
        health, fleet = fetch(url, api_key=api_key, timeout=timeout)
    except StatusError as exc:
        print(f"cortex status: {exc}", file=sys.stderr)
        return 1
    if as_json:
        body = {"health": health, "fleet": fleet.to_dict() if fleet else None}
        print(json.dumps(body, indent=2))
    else:
        render_status(health, fleet, console or Console())
    return 0


def run_args(args: argparse.Namespace) -> int:
    url = args.url or os.environ.get(URL_ENV) or DEFAULT_URL
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    return run(url, as_json=args.json, api_key=api_key, timeout=args.timeout)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cortex status", description=__doc__.split("\n")[0])
    return run_args(configure_parser(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
