"""The live registry: the actor tree of one root, versioned and watchable.

This module is for reading the tree: `Registry.snapshot()` returns a frozen
`RegistrySnapshot`, `Registry.find(path)` a ref, and `Registry.watch()` an
async iterator of snapshots that wakes on change (a version counter and an
event, never a polling loop) and coalesces bursts. It is not for changing
the tree; cells change themselves and call `bump()`.

`Watch` is a plain async iterator, not an async generator: it never holds a
nursery or cancel scope across a yield (PEP 789), and needs no `aclosing`.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import attrs
import trio

from ._snapshot import RegistrySnapshot

if TYPE_CHECKING:
    from ._cell import Cell
    from ._ref import ActorRef

__all__ = ["Registry", "RegistryStatistics", "Watch"]


@attrs.frozen
class RegistryStatistics:
    version: int
    actors: int
    watchers: int
    closed: bool


class Registry:
    """Owned by a root (`open_root`); read it via `root.registry`."""

    def __init__(self) -> None:
        self._version = 0
        self._changed: trio.Event | None = None
        self._root: Cell | None = None
        self._watchers = 0
        self.closed = False

    @property
    def version(self) -> int:
        return self._version

    def bump(self) -> None:
        """Record a change. Cheap when nobody watches: an int increment."""
        self._version += 1
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _set_root(self, cell: Cell) -> None:
        self._root = cell
        self.bump()

    def _close(self) -> None:
        self.closed = True
        self.bump()

    def snapshot(self) -> RegistrySnapshot:
        assert self._root is not None
        return RegistrySnapshot(self._version, time.time(), self._root.snapshot())

    def find(self, path: str) -> ActorRef | None:
        """The `ActorRef` at `path` (e.g. ``"cortex/fleet/node-beast"``), or None."""
        cell = self._root
        if cell is None or cell.removed:
            return None
        first, *rest = path.split("/")
        if first != cell.name:
            return None
        for name in rest:
            cell = cell.children.get(name)
            if cell is None:
                return None
        ref: ActorRef = cell.ref
        return ref

    def watch(self, *, min_interval: float = 0.0) -> Watch:
        """Snapshots: the current one at once, then one per change, at most one per `min_interval`.

        Changes that land while the consumer is busy or inside `min_interval`
        fold into the next snapshot. The iterator ends after yielding the
        snapshot taken once the root has shut down.
        """
        return Watch(self, min_interval)

    async def _wait_changed(self, seen: int) -> None:
        while self._version == seen:
            if self._changed is None:
                self._changed = trio.Event()
            await self._changed.wait()

    def statistics(self) -> RegistryStatistics:
        actors = sum(1 for _ in self._root.walk()) if self._root and not self._root.removed else 0
        return RegistryStatistics(self._version, actors, self._watchers, self.closed)


class Watch:
    """Async iterator returned by `Registry.watch()`."""

    def __init__(self, registry: Registry, min_interval: float) -> None:
        if min_interval < 0:
            raise ValueError(f"min_interval must be >= 0, got {min_interval}")
        self._registry = registry
        self._min_interval = min_interval
        self._seen: int | None = None
        self._last_yield = -math.inf
        self._finished = False

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> RegistrySnapshot:
        registry = self._registry
        if self._finished:
            raise StopAsyncIteration
        if self._seen is None:
            await trio.lowlevel.checkpoint()
        else:
            registry._watchers += 1
            try:
                await trio.sleep_until(self._last_yield + self._min_interval)
                await registry._wait_changed(self._seen)
            finally:
                registry._watchers -= 1
        self._seen = registry.version
        self._last_yield = trio.current_time()
        self._finished = registry.closed
        return registry.snapshot()
