"""Frozen value types that describe actors from the outside.

This module is for what inspectors read: the lifecycle `ActorState`, the
`ActorPath` id, per-actor `ActorStatistics`, and the registry's tree
`ActorSnapshot`/`RegistrySnapshot` with their plain-dict (`to_dict`) rendering
for `GET /admin/actors` and `python -m cortex.inspect`. It is not for live
runtime state; `_cell` owns that and builds these on demand.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from typing import Any, NewType

import attrs

__all__ = ["ActorPath", "ActorSnapshot", "ActorState", "ActorStatistics", "RegistrySnapshot"]

ActorPath = NewType("ActorPath", str)
"""Slash-separated names from the root down, e.g. ``cortex/fleet/node-beast``."""


class ActorState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


@attrs.frozen
class ActorStatistics:
    """Counters for one actor, in the spirit of trio's `statistics()`."""

    path: ActorPath
    kind: str
    state: ActorState
    restarts: int
    children: int


@attrs.frozen
class ActorSnapshot:
    """One node of the actor tree at one instant, with its subtree.

    `started_at` is wall-clock seconds (epoch) of the current incarnation,
    None until it first runs. `status` holds the actor's own fields
    (`model=…`, `tokens=…`); `last_error` is ``"TypeName: message"``.
    """

    name: str
    path: ActorPath
    kind: str
    state: ActorState
    started_at: float | None
    restarts: int
    last_error: str | None
    status: Mapping[str, Any]
    children: tuple[ActorSnapshot, ...] = ()

    def walk(self) -> Iterator[ActorSnapshot]:
        """This node, then its descendants, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()

    def find(self, path: str) -> ActorSnapshot | None:
        return next((node for node in self.walk() if node.path == path), None)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (status values are passed through as given)."""
        return {
            "name": self.name,
            "path": self.path,
            "kind": self.kind,
            "state": self.state.value,
            "started_at": self.started_at,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "status": dict(self.status),
            "children": [child.to_dict() for child in self.children],
        }


@attrs.frozen
class RegistrySnapshot:
    """The whole tree; `version` grows with every change, `taken_at` is wall clock."""

    version: int
    taken_at: float
    root: ActorSnapshot

    def walk(self) -> Iterator[ActorSnapshot]:
        return self.root.walk()

    def find(self, path: str) -> ActorSnapshot | None:
        return self.root.find(path)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "taken_at": self.taken_at, "root": self.root.to_dict()}
