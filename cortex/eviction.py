"""Eviction rules: who may be unloaded to make room, in which order, and defrag.

This module is for the pure rules over a `FleetSnapshot`: which residents an
incoming model may displace, which of those may go *now*, the smallest set
of them that makes room on a node, and the defrag plan. It is not for
choosing a node (`cortex.placement`) or for unloading anything (the node
actors carry decisions out and count the cycles).

The rules:

* A resident is *displaceable* by an incoming model when it is `loaded` and
  its residency priority is at most the incoming model's (equal ranks
  displace each other: upstream's cold-swap rule). The catalogue's
  `pinned_on` gives no immunity of its own (it is affinity); a pinned
  profile's default priority of 1000 does. A pinned resident
  (`Residency.pinned`: the neuron's `[[models]] pinned`, or the gateway's
  runtime pin) is never displaceable: it may not be unloaded.
* It is *evictable* when it is also idle — nothing in flight or queued, a
  rule nothing overrides — and settled: loaded at least
  `min_residency_seconds` ago, which stops two models from swapping each
  other out on every request. An operator's `force` lifts only that guard.
* Order: `lru` is least recently used first (never used sorts first);
  `priority` is lowest priority first, then LRU. The model id breaks ties.
* The victim set on a node is the smallest set of evictable residents after
  which the incoming model fits (`Demand.devices_on`); among sets of that
  size, the least disruptive: the one whose most valuable victim (in
  strategy order) is least valuable, then the next, and so on. The search is
  exhaustive over the `MAX_CANDIDATES` most evictable residents that would
  free memory on a device the incoming model can use.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Iterable

import attrs

from cortex.fleet_snapshot import (
    Demand,
    FleetSnapshot,
    NodeSnapshot,
    NodeState,
    Residency,
    ResidencyStatus,
    freed_by,
    priority_of,
)
from protocol.ids import ModelId, NodeName

__all__ = [
    "MAX_CANDIDATES",
    "EvictionPolicy",
    "EvictionStrategy",
    "Room",
    "defrag_plan",
    "displaceable",
    "evictable",
    "eviction_key",
    "make_room",
    "may_displace",
    "settled",
]

# Bounds the subset search (2**12 sets at worst); a node rarely holds more.
MAX_CANDIDATES = 12

EvictionKey = tuple[object, ...]


class EvictionStrategy(enum.Enum):
    LRU = "lru"
    PRIORITY = "priority"


@attrs.frozen(kw_only=True)
class EvictionPolicy:
    """cortex.toml `[eviction]`. `defrag_after_cycles` 0 turns defrag off."""

    strategy: EvictionStrategy = EvictionStrategy.LRU
    min_residency_seconds: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    defrag_after_cycles: int = attrs.field(default=0, validator=attrs.validators.ge(0))


def may_displace(incoming_priority: int, resident_priority: int) -> bool:
    return resident_priority <= incoming_priority


def settled(residency: Residency, now: float, policy: EvictionPolicy) -> bool:
    """Loaded long enough ago to be evicted (unknown load time counts as long ago)."""
    if residency.loaded_at is None:
        return True
    return now - residency.loaded_at >= policy.min_residency_seconds


def eviction_key(
    snapshot: FleetSnapshot, residency: Residency, strategy: EvictionStrategy
) -> EvictionKey:
    """Sort key: the smaller, the sooner the resident goes."""
    used = -math.inf if residency.last_used_at is None else residency.last_used_at
    if strategy is EvictionStrategy.PRIORITY:
        return (priority_of(snapshot, residency.model), used, residency.model)
    return (used, residency.model)


def displaceable(
    snapshot: FleetSnapshot, node: NodeSnapshot, incoming: ModelId
) -> tuple[Residency, ...]:
    """Residents of `node` that `incoming` outranks or equals, busy or not; never one
    the node itself pins."""
    rank = priority_of(snapshot, incoming)
    return tuple(
        r
        for r in node.residencies
        if r.status is ResidencyStatus.LOADED
        and not r.pinned
        and r.model != incoming
        and may_displace(rank, priority_of(snapshot, r.model))
    )


def evictable(
    snapshot: FleetSnapshot,
    node: NodeSnapshot,
    incoming: ModelId,
    now: float,
    policy: EvictionPolicy,
    *,
    force: bool = False,
) -> tuple[Residency, ...]:
    """Displaceable residents that may be unloaded right now."""
    return tuple(
        r
        for r in displaceable(snapshot, node, incoming)
        if not r.busy and (force or settled(r, now, policy))
    )


@attrs.frozen
class Room:
    """Room for a model on `node`: load it on `devices` after unloading `victims`."""

    node: NodeName
    devices: tuple[int, ...]
    victims: tuple[Residency, ...]  # in eviction order
    disruption: tuple[EvictionKey, ...]  # the victims' keys, most valuable first
    spare_mb: int  # least free memory left on a chosen device once loaded


def make_room(
    snapshot: FleetSnapshot,
    node: NodeSnapshot,
    demand: Demand,
    candidates: Iterable[Residency],
    strategy: EvictionStrategy,
) -> Room | None:
    """The least disruptive smallest set of `candidates` after which `demand`
    fits on `node` (no victims when it fits already), or None."""
    keyed = sorted(
        ((eviction_key(snapshot, r, strategy), r) for r in candidates),
        key=lambda pair: pair[0],
    )
    useful = [pair for pair in keyed if _frees_usable_memory(snapshot, node, demand, pair[1])]
    useful = useful[:MAX_CANDIDATES]
    if _room_after(snapshot, node, demand, tuple(useful)) is None:
        return None  # not even all of them together would do
    for size in range(len(useful) + 1):
        rooms = [
            room
            for chosen in itertools.combinations(useful, size)
            if (room := _room_after(snapshot, node, demand, chosen)) is not None
        ]
        if rooms:
            return min(rooms, key=lambda room: room.disruption)
    return None


def _frees_usable_memory(
    snapshot: FleetSnapshot, node: NodeSnapshot, demand: Demand, victim: Residency
) -> bool:
    freed = freed_by(snapshot, node, [victim])
    return any(demand.qualifies(d) and freed.get(d.index, 0) > 0 for d in node.devices)


def _room_after(
    snapshot: FleetSnapshot,
    node: NodeSnapshot,
    demand: Demand,
    chosen: tuple[tuple[EvictionKey, Residency], ...],
) -> Room | None:
    victims = tuple(r for _, r in chosen)
    freed = freed_by(snapshot, node, victims)
    devices = demand.devices_on(node, freed)
    if devices is None:
        return None
    disruption = tuple(key for key, _ in reversed(chosen))
    spare = min(
        d.free_mb + freed.get(d.index, 0) - demand.per_device_mb
        for d in node.devices
        if d.index in devices
    )
    return Room(node.name, devices, victims, disruption, spare)


def defrag_plan(
    snapshot: FleetSnapshot, node: NodeName, policy: EvictionPolicy, now: float
) -> tuple[ModelId, ...]:
    """The models to unload from `node` so its device memory can be reclaimed.

    Every load and unload leaves device memory a little more fragmented
    (allocator caches, scattered blocks), so a node's free figure slowly
    overstates what a large load can get; upstream only logs a warning when
    the count reaches `defrag_after_cycles`. Here, when that setting is above
    0, the node's `lifecycle_cycles` has reached it, and the node is up and
    idle — no resident has requests in flight or queued, none is loading or
    recovering — the plan is every `loaded` model on the node that is not
    pinned there (`Residency.pinned`, or the node is in its profile's
    `pinned_on`) and is settled (loaded at least `min_residency_seconds`
    ago), in the policy's eviction order. In every other case the plan is
    empty. Unloading, letting the node release the freed memory, and
    resetting the node's cycle count after a non-empty plan is carried out
    are the caller's job. Raises `KeyError` for a node not in the snapshot.
    """
    found = snapshot.node(node)
    if found is None:
        raise KeyError(node)
    if not _defrag_due(found, policy):
        return ()
    unpinned = [
        r
        for r in found.residencies
        if r.status is ResidencyStatus.LOADED
        and not _pinned_here(snapshot, found, r)
        and settled(r, now, policy)
    ]
    unpinned.sort(key=lambda r: eviction_key(snapshot, r, policy.strategy))
    return tuple(r.model for r in unpinned)


def _defrag_due(node: NodeSnapshot, policy: EvictionPolicy) -> bool:
    if policy.defrag_after_cycles == 0 or node.lifecycle_cycles < policy.defrag_after_cycles:
        return False
    active = (ResidencyStatus.LOADING, ResidencyStatus.RECOVERING)
    idle = all(not r.busy and r.status not in active for r in node.residencies)
    return node.state is NodeState.UP and idle


def _pinned_here(snapshot: FleetSnapshot, node: NodeSnapshot, residency: Residency) -> bool:
    profile = snapshot.catalogue.profiles.get(residency.model)
    return residency.pinned or (profile is not None and node.name in profile.pinned_on)
