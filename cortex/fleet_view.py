"""The body of `GET /admin/fleet`: the gateway's view of its nodes, for people.

The gateway builds a `FleetView` from its node actors' state and serves
`view.to_dict()`; `cortex status` reads it back with `FleetView.from_dict`.
Shape (`null` fields are always present):

    {"status": "ok" | "impaired" | "degraded",
     "nodes": [{"name", "endpoint", "state": "up" | "suspect" | "down",
                "draining": bool, "last_poll_age_s": float | null,
                "error": str | null,
                "devices": [{"index", "id": str | null, "total_mb", "free_mb",
                             "utilization_pct": int | null}],
                "models": [{"id", "status", "in_flight", "queued",
                            "memory_mb": int | null, "devices": [int],
                            "pinned": bool, "error": str | null}]}],
     "pins": [str]}

`status` means what it means on `/health`. `last_poll_age_s` is seconds since
the last successful poll (null: never answered); `error` is the last poll's
failure (null after a good poll). A model's `status` is the node's word for it
(`loaded`, `loading`, `recovering`, `failed`, …), `error` its reason for a
failure, `pinned` whether it is pinned there — by the node's own config or by
the gateway's runtime pin — so that nothing evicts it, `devices` the device
indexes its memory counts on. `pins` lists the models the gateway pins at
runtime (`POST /admin/models/pin`), loaded or not; they last until unpinned or
the gateway restarts. These are plain values, built by
`cortex.gateway.Gateway.fleet_view` and read back by `cortex status`.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from protocol import keep_null, structure, unstructure
from protocol.ids import ModelId, NodeName

__all__ = ["DeviceView", "FleetStatus", "FleetView", "ModelView", "NodeStateName", "NodeView"]

FleetStatus = Literal["ok", "impaired", "degraded"]
NodeStateName = Literal["up", "suspect", "down"]


@attrs.frozen(kw_only=True)
class DeviceView:
    index: int
    id: str | None = keep_null()
    total_mb: int
    free_mb: int
    utilization_pct: int | None = keep_null()


@attrs.frozen(kw_only=True)
class ModelView:
    id: ModelId
    status: str
    in_flight: int = 0
    queued: int = 0
    memory_mb: int | None = keep_null()
    devices: tuple[int, ...] = ()
    pinned: bool = False
    error: str | None = keep_null()


@attrs.frozen(kw_only=True)
class NodeView:
    name: NodeName
    endpoint: str
    state: NodeStateName
    draining: bool = False
    last_poll_age_s: float | None = keep_null()
    error: str | None = keep_null()
    devices: tuple[DeviceView, ...] = ()
    models: tuple[ModelView, ...] = ()


@attrs.frozen(kw_only=True)
class FleetView:
    status: FleetStatus
    nodes: tuple[NodeView, ...] = ()
    pins: tuple[ModelId, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return unstructure(self)

    @classmethod
    def from_dict(cls, data: Any) -> FleetView:
        """Raises `protocol.errors.ValidationFailed` naming the bad field."""
        return structure(data, cls)
