"""The fleet as placement sees it: an immutable snapshot, and its memory arithmetic.

This module is for the frozen values that `cortex.placement` and
`cortex.eviction` decide over — nodes and their state, devices with total and
free memory, the models resident on each node, the model catalogue with its
aliases — and for the few queries every decision needs (a model's profile and
priority, how much memory it needs, what evicting a resident gives back). It
is not for polling nodes or parsing their answers (the node actors build a
snapshot from `protocol.node` bodies) and it decides nothing.

Memory accounting, in MiB. A node reports each device's total and free
memory, as measured on the node. A resident model occupies specific devices
(`Residency.devices`, the node's device indices; on a one-device node an
empty tuple means that device, elsewhere it means "unknown"). Its memory —
the measured `memory_mb`, else the catalogue's `vram_mb`, else unknown — is
split evenly over the devices it occupies, rounded down; that share is what
evicting it gives back on each of them. Rounding down and counting unknown
sizes and unknown devices as 0 never promises memory an eviction would not
free. An incoming model needs ``ceil(need / min_devices)`` free on each of
`min_devices` devices whose total is at least the per-device floor.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

import attrs

from protocol.ids import ModelId, NodeName
from protocol.models import ModelCost, ModelLimit

__all__ = [
    "DEFAULT_PRIORITY",
    "PINNED_PRIORITY",
    "Catalogue",
    "Demand",
    "Device",
    "FleetSnapshot",
    "ModelProfile",
    "NodeSnapshot",
    "NodeState",
    "Residency",
    "ResidencyStatus",
    "Servability",
    "freed_by",
    "memory_needed",
    "priority_of",
    "profile_for",
]

# Upstream's defaults: a catalogued model with `pinned_on` outranks the rest
# unless the operator says otherwise; anything not in the catalogue ranks 100.
DEFAULT_PRIORITY = 100
PINNED_PRIORITY = 1000


def _frozen_map(value: Mapping[Any, Any]) -> Mapping[Any, Any]:
    return MappingProxyType(dict(value))


class NodeState(enum.Enum):
    """How the gateway sees a node: answering, missed recent polls, or gone."""

    UP = "up"
    SUSPECT = "suspect"
    DOWN = "down"


class ResidencyStatus(enum.Enum):
    LOADED = "loaded"
    LOADING = "loading"
    RECOVERING = "recovering"
    UNLOADED = "unloaded"  # the node knows the model (its files) but holds no copy
    FAILED = "failed"  # the last load or recovery on this node failed


class Servability(enum.Enum):
    """The node's opinion on whether a minimal request fits now; absent = UNKNOWN."""

    OK = "ok"
    UNKNOWN = "unknown"
    NO = "false"


@attrs.frozen
class Device:
    index: int
    total_mb: int
    free_mb: int


@attrs.frozen(kw_only=True)
class Residency:
    """One model on one node. Times are gateway monotonic seconds.

    `loaded_at` None means it was loaded before the gateway was watching (so
    it counts as long settled); `last_used_at` None means never used since.
    `pinned` means the node's own config pins it there (`[[models]] pinned`
    on the neuron, which then refuses to unload it) or the gateway pins it at
    runtime (`cortex.fleet.Fleet.pins`); either way see `cortex.eviction`.
    """

    model: ModelId
    status: ResidencyStatus
    servable: Servability = Servability.UNKNOWN
    memory_mb: int | None = None
    devices: tuple[int, ...] = ()
    in_flight: int = 0
    queued: int = 0
    last_used_at: float | None = None
    loaded_at: float | None = None
    pinned: bool = False

    @property
    def load(self) -> int:
        return self.in_flight + self.queued

    @property
    def busy(self) -> bool:
        return self.load > 0

    @property
    def routable(self) -> bool:
        return self.status is ResidencyStatus.LOADED and self.servable is not Servability.NO

    @property
    def hosted(self) -> bool:
        """A copy exists or is being made: placing another here is pointless."""
        return self.status in (
            ResidencyStatus.LOADED,
            ResidencyStatus.LOADING,
            ResidencyStatus.RECOVERING,
        )


def _unique(attribute: str, what: str) -> Callable[[object, Any, tuple[Any, ...]], None]:
    """An attrs validator: no two items share `attribute`."""

    def check(_instance: object, _field: Any, items: tuple[Any, ...]) -> None:
        keys = [getattr(item, attribute) for item in items]
        if len(keys) != len(set(keys)):
            raise ValueError(f"duplicate {what} in {keys!r}")

    return check


@attrs.frozen(kw_only=True)
class NodeSnapshot:
    name: NodeName
    state: NodeState = NodeState.UP
    draining: bool = False
    devices: tuple[Device, ...] = attrs.field(default=(), validator=_unique("index", "device"))
    residencies: tuple[Residency, ...] = attrs.field(
        default=(), validator=_unique("model", "model")
    )
    lifecycle_cycles: int = 0  # loads + unloads the gateway carried out here

    @property
    def takes_placements(self) -> bool:
        return self.state is NodeState.UP and not self.draining

    def residency(self, model: ModelId) -> Residency | None:
        for residency in self.residencies:  # a few: a loop beats building an index
            if residency.model == model:
                return residency
        return None

    def occupied_devices(self, residency: Residency) -> tuple[int, ...]:
        """The devices a resident's memory counts on (see the module docstring)."""
        if not residency.devices and len(self.devices) == 1:
            return (self.devices[0].index,)
        known = {device.index for device in self.devices}
        return tuple(index for index in residency.devices if index in known)


@attrs.frozen(kw_only=True)
class ModelProfile:
    """A `[[models]]` entry of models.toml. `pinned_on` is affinity: the
    model is placed only on those nodes. `priority` decides eviction."""

    id: ModelId
    vram_mb: int | None = None
    min_devices: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    min_device_vram_mb: int | None = None
    pinned_on: tuple[NodeName, ...] = ()
    residency_priority: int | None = None
    capabilities: tuple[str, ...] = ()
    limit: ModelLimit | None = None
    cost: ModelCost | None = None
    source: str | None = None

    @property
    def priority(self) -> int:
        """`residency_priority`, else upstream's rule: 1000 if pinned, else 100."""
        if self.residency_priority is not None:
            return self.residency_priority
        return PINNED_PRIORITY if self.pinned_on else DEFAULT_PRIORITY


@attrs.frozen
class Catalogue:
    """Profiles by id, and `[aliases]` (alias → concrete id)."""

    profiles: Mapping[ModelId, ModelProfile] = attrs.field(factory=dict, converter=_frozen_map)
    aliases: Mapping[str, ModelId] = attrs.field(factory=dict, converter=_frozen_map)

    @classmethod
    def of(
        cls, profiles: Iterable[ModelProfile] = (), aliases: Mapping[str, ModelId] | None = None
    ) -> Catalogue:
        return cls({p.id: p for p in profiles}, aliases or {})


@attrs.frozen(kw_only=True)
class FleetSnapshot:
    """Everything placement reads. `measured_mb` remembers the measured size
    of earlier loads, so a model keeps its figure after it is unloaded."""

    nodes: tuple[NodeSnapshot, ...] = attrs.field(default=(), validator=_unique("name", "node"))
    catalogue: Catalogue = Catalogue()
    measured_mb: Mapping[ModelId, int] = attrs.field(factory=dict, converter=_frozen_map)

    def node(self, name: NodeName) -> NodeSnapshot | None:
        return next((n for n in self.nodes if n.name == name), None)


def profile_for(snapshot: FleetSnapshot, model: ModelId) -> ModelProfile | None:
    """The catalogue's profile; for a model only nodes know, one tied to them.

    A model missing from the catalogue but reported by some node (a node's
    own default, say) can be loaded only where its files are: those nodes.
    """
    profile = snapshot.catalogue.profiles.get(model)
    if profile is not None:
        return profile
    known = tuple(n.name for n in snapshot.nodes if n.residency(model) is not None)
    if not known:
        return None
    return ModelProfile(id=model, pinned_on=known, residency_priority=DEFAULT_PRIORITY)


def priority_of(snapshot: FleetSnapshot, model: ModelId) -> int:
    profile = snapshot.catalogue.profiles.get(model)
    return DEFAULT_PRIORITY if profile is None else profile.priority


def memory_needed(snapshot: FleetSnapshot, profile: ModelProfile) -> int:
    """The largest measured figure known for the model, else `vram_mb`, else 0."""
    measured = [r.memory_mb for n in snapshot.nodes if (r := n.residency(profile.id)) is not None]
    measured.append(snapshot.measured_mb.get(profile.id))
    known = [mb for mb in measured if mb is not None]
    if known:
        return max(known)
    return profile.vram_mb or 0


def _resident_mb(snapshot: FleetSnapshot, residency: Residency) -> int:
    if residency.memory_mb is not None:
        return residency.memory_mb
    profile = snapshot.catalogue.profiles.get(residency.model)
    return (profile.vram_mb or 0) if profile is not None else 0


def freed_by(
    snapshot: FleetSnapshot, node: NodeSnapshot, victims: Iterable[Residency]
) -> dict[int, int]:
    """MiB given back on each device of `node` by unloading `victims`."""
    freed: dict[int, int] = {}
    for victim in victims:
        devices = node.occupied_devices(victim)
        for index in devices:
            share = _resident_mb(snapshot, victim) // len(devices)
            freed[index] = freed.get(index, 0) + share
    return freed


@attrs.frozen
class Demand:
    """What an incoming model asks of a node's devices."""

    per_device_mb: int
    min_devices: int
    floor_mb: int = 0  # `min_device_vram_mb`: a device smaller than this never qualifies

    @classmethod
    def of(cls, snapshot: FleetSnapshot, profile: ModelProfile) -> Demand:
        per_device = math.ceil(memory_needed(snapshot, profile) / profile.min_devices)
        return cls(per_device, profile.min_devices, profile.min_device_vram_mb or 0)

    def qualifies(self, device: Device) -> bool:
        """Could this device ever hold its share (were it empty)?"""
        return device.total_mb >= max(self.floor_mb, self.per_device_mb)

    def topology_fits(self, node: NodeSnapshot) -> bool:
        return sum(self.qualifies(d) for d in node.devices) >= self.min_devices

    def devices_on(
        self, node: NodeSnapshot, freed: Mapping[int, int] | None = None
    ) -> tuple[int, ...] | None:
        """The `min_devices` qualifying devices with the most free memory
        (after `freed` is given back) if that many fit now, else None."""
        freed = freed or {}
        free = {d.index: d.free_mb + freed.get(d.index, 0) for d in node.devices}
        fitting = [
            d.index
            for d in node.devices
            if self.qualifies(d) and free[d.index] >= self.per_device_mb
        ]
        if len(fitting) < self.min_devices:
            return None
        fitting.sort(key=lambda index: (-free[index], index))
        return tuple(sorted(fitting[: self.min_devices]))
