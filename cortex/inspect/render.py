"""Drawing a `Board` as one rich tree: pure, so tests render it to a recording console.

`render_board(board, now=time.time())` returns a header line and the target's
actor tree. For a gateway, each node actor under `fleet` gets its node's own
tree grafted beneath it (or a red "unreachable" line), and each request the
gateway relays borrows tokens and tok/s from the node's request actor of the
same id. Actors are drawn by kind — requests (model, node, phase, tokens,
tok/s, age), nodes (state, last poll, models, error), device workers (pid,
restarts, memory, resident models, running/waiting sequences, loads in
progress), loads (phase, elapsed) — and any other actor as `key=value`
status fields. Ages are measured on each tree's own clock (`taken_at`), so a
skewed local clock does not distort them. `needle` keeps the actors whose
name, path, kind, state, status or error contain it (case-insensitive),
with their ancestors and descendants.

Not for: fetching (`cortex.inspect.feed`) or the terminal (`cortex.inspect.live`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from rich.console import Group, RenderableType
from rich.text import Text
from rich.tree import Tree

from cortex.inspect.feed import Board, Source

__all__ = ["Row", "build_rows", "render_board"]

_STATE_STYLES = {"running": "green", "up": "green", "starting": "yellow", "suspect": "yellow",
                 "restarting": "yellow", "stopping": "yellow", "down": "red", "failed": "red",
                 "stopped": "red"}  # fmt: skip


@attrs.frozen
class Row:
    """One line of the tree: an actor (or a note where a tree could not be read)."""

    actor: Mapping[str, Any]
    clock: float  # its tree's wall clock "now", for ages
    children: tuple[Row, ...] = ()
    note: Text | None = None  # set on a synthetic row; `actor` is then empty
    via: str | None = None  # set on a node tree's root: read through the gateway


def render_board(board: Board, *, now: float | None = None, needle: str | None = None,
                 live: bool = False) -> RenderableType:  # fmt: skip
    now = time.time() if now is None else now
    header = _header(board, now, live)
    root = build_rows(board, now)
    if root is None:
        reason = board.target.error or "connecting…"
        return Group(header, Text(f"unreachable: {reason}", style="bold red"))
    if needle:
        root = _filtered(root, needle.lower())
        if root is None:
            return Group(header, Text(f"no actor matches {needle!r}", style="yellow"))
    requests = _node_requests(board, now)
    tree = Tree(_label(root, requests))
    _add_children(tree, root, requests)
    return Group(header, tree)


def build_rows(board: Board, now: float) -> Row | None:
    """The target's tree with the node trees grafted in; None until it answered."""
    if board.target.snapshot is None:
        return None
    grafts = {name: _node_row(name, source, now) for name, source in board.nodes.items()}
    return _rows(board.target.snapshot["root"], board.target.clock(now), grafts)


def _rows(actor: Mapping[str, Any], clock: float, grafts: Mapping[str, Row]) -> Row:
    children = [_rows(child, clock, grafts) for child in actor["children"]]
    if actor["kind"] == "node" and actor["name"] in grafts:
        children.append(grafts[actor["name"]])
    return Row(actor, clock, tuple(children))


def _node_row(name: str, source: Source, now: float) -> Row:
    if source.snapshot is not None:
        row = _rows(source.snapshot["root"], source.clock(now), {})
        return attrs.evolve(row, via=name)
    if source.error is not None:
        note = Text(f"{name}: unreachable: {source.error}", style="red")
    else:
        note = Text(f"{name}: connecting…", style="dim")
    return Row({}, now, note=note)


# ------------------------------------------------------------------ filtering


def _filtered(row: Row, needle: str) -> Row | None:
    if _matches(row, needle):
        return row
    kept = tuple(r for r in (_filtered(c, needle) for c in row.children) if r is not None)
    return attrs.evolve(row, children=kept) if kept else None


def _matches(row: Row, needle: str) -> bool:
    if row.note is not None:
        return needle in row.note.plain.lower()
    a = row.actor
    words = [a["name"], a["path"], a["kind"], a["state"], a["last_error"] or ""]
    words += [f"{k}={v}" for k, v in a["status"].items()]
    return any(needle in str(word).lower() for word in words)


# ------------------------------------------------------------------ drawing


def _header(board: Board, now: float, live: bool) -> Text:
    text = Text("helexa inspect ", style="bold")
    text.append(board.url)
    if board.kind:
        text.append(f"  {board.kind}", style="cyan")
    if board.nodes:
        up = sum(1 for s in board.nodes.values() if s.snapshot is not None)
        text.append(f"  nodes {up}/{len(board.nodes)} readable")
    text.append(time.strftime("  %H:%M:%S", time.localtime(now)), style="dim")
    if live:
        text.append("  (q to quit)", style="dim")
    return text


def _add_children(tree: Tree, row: Row, requests: Mapping[str, Row]) -> None:
    for child in row.children:
        branch = tree.add(_label(child, requests))
        _add_children(branch, child, requests)


def _label(row: Row, requests: Mapping[str, Row]) -> Text:
    if row.note is not None:
        return row.note
    a = row.actor
    text = Text(a["name"], style="bold")
    if row.via is not None:
        text.append(f" @ {row.via}", style="bold cyan")
    text.append(f" {a['kind']}", style="dim")
    if a["state"] != "running":
        text.append(f" {a['state']}", style=_STATE_STYLES.get(a["state"], ""))
    if a["restarts"] or a["kind"] == "device":
        text.append(f" restarts {a['restarts']}", style="yellow" if a["restarts"] else "dim")
    _KINDS.get(a["kind"], _generic)(text, row, requests)
    if a["last_error"]:  # a running actor's is from an earlier life: quieter
        error = a["last_error"] if a["state"] != "running" else f"last error: {a['last_error']}"
        text.append(f"  {error}", style="red" if a["state"] != "running" else "dim red")
    return text


def _request(text: Text, row: Row, requests: Mapping[str, Row]) -> None:
    status, age = row.actor["status"], _age_of(row)
    _field(text, status.get("model"), style="cyan")
    if status.get("node"):
        _field(text, f"on {status['node']}")
    _field(text, status.get("phase"), style="magenta")
    node = requests.get(row.actor["name"]) if "tokens" not in status else None
    tokens = status.get("tokens") if node is None else node.actor["status"].get("tokens")
    if tokens is not None:
        _field(text, f"{tokens} tok")
        rate_age = age if node is None else _age_of(node)
        if rate_age:
            _field(text, f"{tokens / rate_age:.1f} tok/s")
    _field(text, _seconds(age), style="dim")


def _node(text: Text, row: Row, _: Mapping[str, Row]) -> None:
    status = row.actor["status"]
    state = status.get("state")
    _field(text, state, style=_STATE_STYLES.get(state or "", ""))
    if status.get("draining"):
        _field(text, "draining", style="yellow")
    polled = status.get("last_poll_at")
    ago = None if polled is None else _seconds(max(0.0, row.clock - polled))
    _field(text, "never polled" if ago is None else f"polled {ago} ago", style="dim")
    _field(text, status.get("models"), style="cyan")
    if status.get("error"):
        _field(text, status["error"], style="red")


def _device(text: Text, row: Row, _: Mapping[str, Row]) -> None:
    status = row.actor["status"]
    _field(text, status.get("pid") and f"pid {status['pid']}")
    _field(text, status.get("memory_bytes") and _bytes(status["memory_bytes"]))
    models = status.get("models") or {}
    if isinstance(models, dict):
        _field(text, ", ".join(f"{m} ({_bytes(b)})" for m, b in models.items()), style="cyan")
    else:
        _field(text, str(models), style="cyan")
    if "running" in status:
        _field(text, f"running {status['running']} waiting {status.get('waiting', 0)}")
    _field(text, status.get("tok_s") and f"{status['tok_s']} tok/s")
    for model, since in (status.get("loading") or {}).items():
        _field(text, f"loading {model} {_seconds(row.clock - since)}", style="yellow")


def _load(text: Text, row: Row, _: Mapping[str, Row]) -> None:
    status = row.actor["status"]
    _field(text, status.get("model"), style="cyan")
    _field(text, status.get("phase"), style="yellow")
    _field(text, _seconds(_age_of(row)), style="dim")


def _generic(text: Text, row: Row, _: Mapping[str, Row]) -> None:
    for key, value in row.actor["status"].items():
        _field(text, f"{key}={value}", style="dim")


_KINDS: dict[str, Callable[[Text, Row, Mapping[str, Row]], None]] = {
    "request": _request,
    "node": _node,
    "device": _device,
    "load": _load,
}


def _node_requests(board: Board, now: float) -> dict[str, Row]:
    """The nodes' request actors by name (= request id), to join with the gateway's."""
    found: dict[str, Row] = {}
    for source in board.nodes.values():
        if source.snapshot is not None:
            clock, stack = source.clock(now), [source.snapshot["root"]]
            while stack:
                actor = stack.pop()
                if actor["kind"] == "request":
                    found[actor["name"]] = Row(actor, clock)
                stack.extend(actor["children"])
    return found


def _field(text: Text, value: Any, style: str = "") -> None:
    if value:
        text.append("  ")
        text.append(str(value), style=style)


def _age_of(row: Row) -> float | None:
    started = row.actor.get("started_at")
    return None if started is None else max(0.0, row.clock - started)


def _seconds(value: float | None) -> str | None:
    if value is None:
        return None
    if value < 60:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{int(value // 3600)}h{int(value % 3600 // 60):02d}m"


def _bytes(value: float) -> str:
    if abs(value) < 1024:
        return f"{value:.0f} B"
    for unit in ("KiB", "MiB"):
        value /= 1024
        if abs(value) < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} GiB"
