"""The fleet: every node, the catalogue, and carrying out placement decisions.

`Fleet.snapshot()` freezes the nodes' current state for the pure decision
functions (`cortex.placement`); `Fleet.acquire(model)` loops over them until
the model is routable somewhere — loading it (single-flight, after the
decided evictions) when placement says so, waiting while it loads or
recovers elsewhere, and raising the decision's error (404 / 503 with
Retry-After) when it can never or cannot now be served. Given a request's
prefix key (computed only when there is a choice of replicas), it routes
among a model's replicas by prefix affinity (`cortex.affinity`) and reports
each such choice to `on_affinity`.

    cortex (actor root)
    ├── fleet        supervisor: one NodeActor per configured neuron
    └── requests     supervisor: one task actor per API request

Runtime pins (`pin`, `unpin`; `POST /admin/models/pin` and `unpin`) are a set
of model ids the gateway keeps in memory and shares with every node: a copy
of a pinned model on any node counts as pinned there (`Residency.pinned`),
exactly as one its node's config pins, so eviction and defrag never pick it
and the node refuses to unload it. They are lost when the gateway restarts;
a neuron's `[[models]] pinned` is the durable form.

Not for: HTTP or relaying bytes (`cortex.relay`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import attrs
import httpx
import trio

import actors
from cortex.affinity import AffinityOutcome, PrefixAffinity
from cortex.eviction import EvictionPolicy, defrag_plan
from cortex.fleet_snapshot import Catalogue, FleetSnapshot, NodeSnapshot, NodeState
from cortex.node import LifecycleObserver, Node, NodeActor, PollSettings
from cortex.placement import (
    Impossible,
    Load,
    Route,
    Wait,
    WaitReason,
    decision_error,
    place,
    resolve_alias,
)
from protocol.errors import ApiError
from protocol.ids import ModelId, NodeName

log = logging.getLogger(__name__)

# Decisions that end with the model loaded somewhere if we wait.
_WAITABLE = (WaitReason.LOADING, WaitReason.RECOVERING)


@attrs.frozen
class Acquired:
    node: Node
    model: ModelId
    cold: bool  # a load happened (or was awaited) for this request
    load_wait: float  # seconds spent waiting for loads
    head_wait: float = 0.0  # set by the relay: seconds from sending to the node's head
    retried_on: tuple[NodeName, ...] = ()  # set by the relay: nodes that failed it first


class Fleet:
    def __init__(
        self,
        nodes: list[Node],
        catalogue: Catalogue,
        policy: EvictionPolicy,
        *,
        load_timeout: float = 1800.0,
        affinity: PrefixAffinity | None = None,
        prefix_chars: int = 4096,
        on_affinity: Callable[[ModelId, AffinityOutcome], None] | None = None,
    ) -> None:
        self.nodes = {n.name: n for n in nodes}
        self.catalogue = catalogue
        self.policy = policy
        self.load_timeout = load_timeout
        self.measured_mb: dict[ModelId, int] = {}
        self._measured_from: dict[NodeName, NodeSnapshot] = {}  # node snapshots read for it
        # (the nodes' model lists it was worked out from, capabilities per model)
        self._capabilities: tuple[tuple[Any, ...], dict[ModelId, tuple[str, ...]]] = ((), {})
        self.pins: set[ModelId] = set()  # runtime pins, shared with every node
        for node in nodes:
            node.pins = self.pins
        self.affinity = affinity  # None: least busy replica only
        self.prefix_chars = prefix_chars  # `[routing] prefix_chars`: what `prefix_key` reads
        # told (model, outcome) of each affinity choice among two or more replicas
        self.on_affinity = on_affinity

    def snapshot(self) -> FleetSnapshot:
        nodes = tuple(n.snapshot() for n in self.nodes.values())
        for node in nodes:
            if self._measured_from.get(node.name) is node:
                continue  # the same snapshot as last time: its sizes are noted
            self._measured_from[node.name] = node
            for r in node.residencies:
                if r.memory_mb:
                    self.measured_mb[r.model] = r.memory_mb
        return FleetSnapshot(nodes=nodes, catalogue=self.catalogue, measured_mb=self.measured_mb)

    def resolve(self, name: str) -> ModelId:
        return resolve_alias(self.catalogue, name)

    def capabilities(self, model: ModelId) -> tuple[str, ...]:
        """What the catalogue and the nodes say `model` takes (empty: not known yet).
        Asked for every request: worked out once per model until a poll changes what
        some node reports."""
        reports = tuple(node.models for node in self.nodes.values())  # frozen: by identity
        if reports != self._capabilities[0]:
            self._capabilities = reports, {}
        known = self._capabilities[1]
        if (found := known.get(model)) is None:
            profile = self.catalogue.profiles.get(model)
            listed = list(profile.capabilities if profile is not None else ())
            for models in reports:
                for info in models:
                    if info.id == model:
                        listed += info.capabilities or ()
            found = tuple(dict.fromkeys(listed))
            if found:  # a model no one knows is not kept: clients name what they like
                known[model] = found
        return found

    def knows(self, model: ModelId) -> bool:
        """Catalogued, reported by some node, or pinned."""
        return (
            model in self.catalogue.profiles
            or model in self.pins
            or any(m.id == model for n in self.nodes.values() for m in n.models)
        )

    def pin(self, model: ModelId) -> bool:
        """Pin `model` on every node, now and after later loads; False if it already was."""
        if model in self.pins:
            return False
        self.pins.add(model)
        return True

    def unpin(self, model: ModelId) -> bool:
        """Drop the runtime pin; False if there was none."""
        if model not in self.pins:
            return False
        self.pins.discard(model)
        return True

    async def acquire(self, model: ModelId, *, status: Callable[..., None] | None = None,
                      exclude: frozenset[NodeName] = frozenset(),
                      prefix: Callable[[], bytes | None] | None = None) -> Acquired:  # fmt: skip
        """Return a node where `model` is routable now, loading it if need be; with
        `prefix` (the request's prefix key, asked for only when there are several
        replicas to choose from), the replica that prefix affinity picks."""
        status = status or (lambda **_: None)
        started, cold, repolled = trio.current_time(), False, False
        pick = self._picker(model, prefix)
        decision = place(self._without(exclude), model, time.monotonic(), self.policy, pick=pick)
        if isinstance(decision, Route):  # routable now (the common case): no timer
            node = self.nodes[decision.node]
            node.routed_here(model)
            return Acquired(node, model, False, 0.0)
        with trio.fail_after(self.load_timeout):
            while True:
                snapshot = self._without(exclude)
                decision = place(snapshot, model, time.monotonic(), self.policy, pick=pick)
                match decision:
                    case Route(node=name):
                        node = self.nodes[name]
                        node.routed_here(model)
                        waited = trio.current_time() - started if cold else 0.0
                        return Acquired(node, model, cold, waited)
                    case Load(node=name, devices=devices, evict=evict):
                        cold = True
                        status(phase="loading", node=name)
                        await self._load(self.nodes[name], model, devices, evict)
                    case Wait(reason=reason) if reason in _WAITABLE:
                        cold = True
                        status(phase="waiting for load")
                        await self.wait_changed()
                    case Wait(reason=WaitReason.BUSY) if not repolled:
                        # "busy" may be a poll taken mid-request: look again once
                        repolled = True
                        await self.repoll()
                    case Wait() | Impossible():
                        raise decision_error(decision)

    def _picker(self, model: ModelId, prefix: Callable[[], bytes | None] | None):
        """Placement's `pick` for this request: by prefix affinity, or None."""
        affinity = self.affinity
        if affinity is None or prefix is None:
            return None

        def pick(replicas) -> NodeName:
            key = prefix() if len(replicas) > 1 else None  # one replica: no body to read
            if key is None:
                return replicas[0][1]
            name, outcome = affinity.pick(model, key, replicas)
            affinity.served(model, key, name)
            if self.on_affinity is not None:
                self.on_affinity(model, outcome)
            return name

        return pick

    async def _load(self, node: Node, model: ModelId, devices, evict) -> None:
        try:
            await node.ensure_loaded(model, devices, evict)
        except ApiError as exc:
            log.error("cold load failed node=%s model=%s: %s", node.name, model, exc.message)
            raise
        await self._defrag(node)

    async def _defrag(self, node: Node) -> None:
        plan = defrag_plan(self.snapshot(), node.name, self.policy, time.monotonic())
        for model in plan:
            if model in self.pins:  # pinned while an earlier one was unloading
                continue
            log.info("defrag: unloading node=%s model=%s", node.name, model)
            await node.unload(model, reason="defrag")
        if plan:
            node.lifecycle_cycles = 0

    def _without(self, exclude: frozenset[NodeName]) -> FleetSnapshot:
        snap = self.snapshot()
        if not exclude:
            return snap
        nodes = tuple(
            attrs.evolve(n, state=NodeState.DOWN) if n.name in exclude else n for n in snap.nodes
        )
        return attrs.evolve(snap, nodes=nodes)

    async def repoll(self) -> None:
        """Poll every node now (concurrently) rather than at its next interval."""
        async with trio.open_nursery() as nursery:
            for node in self.nodes.values():
                nursery.start_soon(node.poll_once)

    async def wait_changed(self) -> None:
        """Until any node's state changes (a poll, a load finishing)."""
        async with trio.open_nursery() as nursery:
            for node in self.nodes.values():
                nursery.start_soon(_wait_and_cancel, node.changed, nursery.cancel_scope)

    def healthy(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.state is NodeState.UP]


async def _wait_and_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def build_fleet(endpoints: list[tuple[str, str]], catalogue: Catalogue, policy: EvictionPolicy,
                settings: PollSettings, client: httpx.AsyncClient, *,
                observer: LifecycleObserver | None = None, **routing: Any) -> Fleet:  # fmt: skip
    """The fleet of one Node per (name, endpoint), polled by nobody yet (`start_fleet`);
    `routing`: Fleet's affinity settings."""
    nodes = [Node(NodeName(name), url, client, settings, observer=observer)
             for name, url in endpoints]  # fmt: skip
    return Fleet(nodes, catalogue, policy, load_timeout=settings.load_timeout, **routing)


async def start_fleet(root: actors.SupervisorRef, fleet: Fleet) -> actors.SupervisorRef:
    """Start the `fleet` supervisor with one NodeActor per node; all polling on return."""
    supervisor = await root.start_supervisor(
        "fleet", intensity=actors.RestartIntensity(max_restarts=20, window=60),
        backoff=actors.Backoff(initial=0.5, maximum=10),
    )  # fmt: skip
    for node in fleet.nodes.values():
        await supervisor.start(NodeActor, node, name=node.name, kind="node")
    return supervisor
