"""Placement: where a request for a model goes — a replica, a load, a wait, or nowhere.

This module is for `place()`, the pure decision a request actor carries out,
plus `resolve_alias`, `feasible_nodes` (the `feasible_on` of `/v1/models`)
and `decision_error`, the one mapping from a refusal to its wire error. It is
not for talking to nodes, waiting or retrying: the actors do that, and place
again with a fresher snapshot. Eviction rules live in `cortex.eviction`, the
memory arithmetic in `cortex.fleet_snapshot`.

Node states: only `up` nodes that are not draining take new loads. Requests
go to loaded replicas on `up` nodes; to `suspect` ones only when no `up`
replica can take them (a node that missed a poll most likely still serves,
and that beats a cold load); never to a draining node (draining means
finishing what is there, so a replica only there is as good as absent) and
never to a `down` one.

`place` decides, in this order (aliases are resolved before):

1. `Route` to the least busy routable replica — `loaded`, servable not
   `false` — by in flight + queued, ties by node name; or, given `pick`
   (prefix-aware routing, `cortex.affinity`), to the one `pick` chooses
   among them.
2. `Wait` if the model is recovering, else loading, on an up or suspect node
   that is not draining: one copy at a time, no second load beside it.
3. `Impossible(model_not_found)` if neither the catalogue nor any node knows
   the model — unless no node is up or suspect, when we cannot tell: `Wait`.
4. `Impossible(no_feasible_node)` if no node's topology could ever host it:
   it must be in `pinned_on` (when set) and have `min_devices` devices each
   with a total of at least `min_device_vram_mb` and the per-device share of
   the model's memory (measured if known, else the catalogue's `vram_mb`).
5. `Wait` if feasible nodes exist but none takes placements, or the only
   copies sit there unservable.
6. `Load` on the best feasible node, ranked by: not where the model's last
   load failed; fewest evictions (fitting free beats evicting); least
   disruptive victims (`cortex.eviction`); a node that already has the
   model's files (it reports the model `unloaded`); most memory to spare on
   the chosen devices; node name.
7. Otherwise `Wait`: what it would displace is busy or too young to evict
   (retry when the youngest settles), or not even evicting everything it
   outranks would make room.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence

import attrs

from cortex.eviction import EvictionPolicy, Room, displaceable, evictable, make_room
from cortex.fleet_snapshot import (
    Catalogue,
    Demand,
    FleetSnapshot,
    ModelProfile,
    NodeSnapshot,
    NodeState,
    Residency,
    ResidencyStatus,
    profile_for,
)
from protocol.errors import ApiError, NotFound, ServiceUnavailable
from protocol.ids import ModelId, NodeName

__all__ = [
    "RETRY_AFTER",
    "Decision",
    "Impossible",
    "ImpossibleReason",
    "Load",
    "Route",
    "Wait",
    "WaitReason",
    "decision_error",
    "feasible_nodes",
    "place",
    "resolve_alias",
]


@attrs.frozen
class Route:
    """Send the request to the replica on `node`."""

    node: NodeName


@attrs.frozen
class Load:
    """Unload `evict` from `node` (in that order), then load on `devices`."""

    node: NodeName
    devices: tuple[int, ...]
    evict: tuple[ModelId, ...] = ()


class WaitReason(enum.Enum):
    LOADING = "loading"
    RECOVERING = "recovering"
    NOT_SERVABLE = "not_servable"  # copies exist but cannot take a request now
    NODES_UNAVAILABLE = "nodes_unavailable"  # feasible nodes down, suspect or draining
    BUSY = "busy"  # what it would displace is busy or too young to evict
    NO_ROOM = "no_room"  # not even evicting all it outranks would make room


# Seconds. RECOVERING and NODES_UNAVAILABLE follow upstream; the rest are ours.
RETRY_AFTER = {
    WaitReason.RECOVERING: 2.0,
    WaitReason.NODES_UNAVAILABLE: 3.0,
    WaitReason.LOADING: 5.0,
    WaitReason.NOT_SERVABLE: 5.0,
    WaitReason.BUSY: 5.0,
    WaitReason.NO_ROOM: 10.0,
}


@attrs.frozen
class Wait:
    """Not now: 503 with Retry-After. `node` is the node concerned, if one is."""

    reason: WaitReason
    message: str
    retry_after: float
    node: NodeName | None = None


class ImpossibleReason(enum.Enum):
    MODEL_NOT_FOUND = "model_not_found"
    NO_FEASIBLE_NODE = "no_feasible_node"


@attrs.frozen
class Impossible:
    """Never, with this catalogue and fleet: 404."""

    reason: ImpossibleReason
    message: str


Decision = Route | Load | Wait | Impossible


def resolve_alias(catalogue: Catalogue, name: str) -> ModelId:
    """One lookup in `[aliases]`, no chaining; other names pass through."""
    return catalogue.aliases.get(name, ModelId(name))


def decision_error(decision: Wait | Impossible) -> ApiError:
    """The wire error for a refusal: 404 with the reason as code, or 503 + Retry-After."""
    if isinstance(decision, Impossible):
        return NotFound(decision.message, code=decision.reason.value)
    return ServiceUnavailable(decision.message, retry_after=decision.retry_after)


def feasible_nodes(snapshot: FleetSnapshot, model: ModelId) -> tuple[NodeName, ...]:
    """Nodes whose topology could host `model`, whatever their state, by name."""
    profile = profile_for(snapshot, model)
    if profile is None:
        return ()
    demand = Demand.of(snapshot, profile)
    return tuple(sorted(n.name for n in snapshot.nodes if _feasible_on(profile, n, demand)))


def place(
    snapshot: FleetSnapshot,
    model: ModelId,
    now: float,
    policy: EvictionPolicy,
    *,
    force: bool = False,
    pick: Callable[[Sequence[tuple[int, NodeName]]], NodeName] | None = None,
) -> Decision:
    """Decide where a request for `model` goes (see the module docstring).

    `now` is monotonic seconds, on the clock of the snapshot's times.
    `force` (an operator's explicit load) lifts the minimum residency guard;
    busy models are never evicted. `pick` chooses among the routable replicas,
    given as (load, node) by load then name; by default the first.
    """
    decision = _route(snapshot, model, pick) or _hold(snapshot, model)
    if decision is not None:
        return decision
    profile = profile_for(snapshot, model)
    if profile is None:
        return _unknown(snapshot, model)
    return _cold(snapshot, profile, now, policy, force)


def _wait(reason: WaitReason, message: str, node: NodeName | None = None) -> Wait:
    return Wait(reason, message, RETRY_AFTER[reason], node)


def _serving(snapshot: FleetSnapshot, state: NodeState) -> list[NodeSnapshot]:
    return [n for n in snapshot.nodes if n.state is state and not n.draining]


def _route(
    snapshot: FleetSnapshot,
    model: ModelId,
    pick: Callable[[Sequence[tuple[int, NodeName]]], NodeName] | None = None,
) -> Route | None:
    for state in (NodeState.UP, NodeState.SUSPECT):
        replicas = sorted(
            (r.load, n.name)
            for n in _serving(snapshot, state)
            if (r := n.residency(model)) is not None and r.routable
        )
        if replicas:
            return Route(pick(replicas) if pick else replicas[0][1])
    return None


def _hold(snapshot: FleetSnapshot, model: ModelId) -> Wait | None:
    reachable = _serving(snapshot, NodeState.UP) + _serving(snapshot, NodeState.SUSPECT)
    for status, reason in (
        (ResidencyStatus.RECOVERING, WaitReason.RECOVERING),
        (ResidencyStatus.LOADING, WaitReason.LOADING),
    ):
        names = sorted(n.name for n in reachable if _status_on(n, model) is status)
        if names:
            message = f"model {model!r} is {status.value} on node {names[0]!r}; retry shortly"
            return _wait(reason, message, names[0])
    return None


def _status_on(node: NodeSnapshot, model: ModelId) -> ResidencyStatus | None:
    residency = node.residency(model)
    return None if residency is None else residency.status


def _unknown(snapshot: FleetSnapshot, model: ModelId) -> Wait | Impossible:
    if all(n.state is NodeState.DOWN for n in snapshot.nodes):
        return _wait(WaitReason.NODES_UNAVAILABLE, "no healthy nodes available")
    message = f"model {model!r} not found on any node and not in catalogue"
    return Impossible(ImpossibleReason.MODEL_NOT_FOUND, message)


def _feasible_on(profile: ModelProfile, node: NodeSnapshot, demand: Demand) -> bool:
    affine = not profile.pinned_on or node.name in profile.pinned_on
    return affine and demand.topology_fits(node)


def _hosts(node: NodeSnapshot, model: ModelId) -> bool:
    residency = node.residency(model)
    return residency is not None and residency.hosted


def _cold(
    snapshot: FleetSnapshot,
    profile: ModelProfile,
    now: float,
    policy: EvictionPolicy,
    force: bool,
) -> Decision:
    model = profile.id
    demand = Demand.of(snapshot, profile)
    feasible = [n for n in snapshot.nodes if _feasible_on(profile, n, demand)]
    if not feasible:
        return Impossible(ImpossibleReason.NO_FEASIBLE_NODE, _never_message(profile, demand))
    candidates = [n for n in feasible if n.takes_placements and not _hosts(n, model)]
    if not candidates:
        return _unavailable(model, feasible)

    def victims_on(node: NodeSnapshot) -> tuple[Residency, ...]:
        return evictable(snapshot, node, model, now, policy, force=force)

    rooms = _rooms(snapshot, candidates, demand, policy, victims_on)
    if not rooms:
        return _no_room(snapshot, model, candidates, demand, now, policy)
    node, room = min(rooms, key=lambda pair: _rank(model, *pair))
    return Load(node.name, room.devices, tuple(v.model for v in room.victims))


def _rooms(
    snapshot: FleetSnapshot,
    nodes: list[NodeSnapshot],
    demand: Demand,
    policy: EvictionPolicy,
    victims_on: Callable[[NodeSnapshot], tuple[Residency, ...]],
) -> list[tuple[NodeSnapshot, Room]]:
    """Room on each node that has some, taking victims from `victims_on(node)`."""
    rooms = ((n, make_room(snapshot, n, demand, victims_on(n), policy.strategy)) for n in nodes)
    return [(n, room) for n, room in rooms if room is not None]


def _rank(model: ModelId, node: NodeSnapshot, room: Room) -> tuple[object, ...]:
    here = node.residency(model)
    failed_here = here is not None and here.status is ResidencyStatus.FAILED
    victims = (len(room.victims), room.disruption)
    return (failed_here, victims, here is None, -room.spare_mb, node.name)


def _never_message(profile: ModelProfile, demand: Demand) -> str:
    per_device = max(demand.floor_mb, demand.per_device_mb)
    where = f" among nodes {', '.join(sorted(profile.pinned_on))}" if profile.pinned_on else ""
    return (
        f"no node can ever host model {profile.id!r}: it needs {demand.min_devices} "
        f"device(s) with at least {per_device} MiB each{where}"
    )


def _unavailable(model: ModelId, feasible: list[NodeSnapshot]) -> Wait:
    unservable = sorted(n.name for n in feasible if n.takes_placements)
    if unservable:  # each of them hosts a copy that says it cannot serve now
        message = f"model {model!r} is loaded on node {unservable[0]!r} but cannot serve now"
        return _wait(WaitReason.NOT_SERVABLE, message, unservable[0])
    states = ", ".join(
        f"{n.name} ({'draining' if n.draining else n.state.value})"
        for n in sorted(feasible, key=lambda n: n.name)
    )
    message = f"no node that can host model {model!r} is available: {states}"
    return _wait(WaitReason.NODES_UNAVAILABLE, message)


def _no_room(
    snapshot: FleetSnapshot,
    model: ModelId,
    candidates: list[NodeSnapshot],
    demand: Demand,
    now: float,
    policy: EvictionPolicy,
) -> Wait:
    """Why nothing fits even after evicting: blocked for now, or outranked."""
    rooms = _rooms(snapshot, candidates, demand, policy, lambda n: displaceable(snapshot, n, model))
    if not rooms:
        message = (
            f"no room for model {model!r}: the models resident where it fits "
            "outrank it or are still loading"
        )
        return _wait(WaitReason.NO_ROOM, message)
    node, room = min(rooms, key=lambda pair: _rank(model, *pair))
    message = (
        f"no room for model {model!r} yet: the models it would displace on node "
        f"{node.name!r} are busy or loaded less than {policy.min_residency_seconds:g}s ago"
    )
    return Wait(WaitReason.BUSY, message, _settle_time(room, now, policy), node.name)


def _settle_time(room: Room, now: float, policy: EvictionPolicy) -> float:
    """Seconds until every victim may go, when only youth holds them; else the default."""
    if any(v.busy for v in room.victims):
        return RETRY_AFTER[WaitReason.BUSY]
    young = [v.loaded_at for v in room.victims if v.loaded_at is not None]
    remaining = max((at + policy.min_residency_seconds - now for at in young), default=0.0)
    return max(1.0, remaining)
