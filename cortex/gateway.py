"""The gateway daemon's life and the fleet-wide views its routes serve.

A `Gateway` is built whole from its config: keyring, metrics, the client to
the nodes and the fleet (every node, its lifecycle observer, the routing
settings) exist from construction; inference goes to the nodes through its
own lean client (`cortex.upstream_http`), everything else through httpx.
`Gateway.run` opens what lives only while it runs — the actor root, the node
actors polling the fleet, the request supervisor, held together as `upstream`
(`cortex.relay.Upstream`, what the relay takes) — binds the API and the
metrics listener, and serves until `stop()`, then lets in-flight requests
finish (bounded) and stops. A gateway restarted with nodes running rebuilds
its whole view from the nodes' own answers on the first poll and serves at
once.

The views (`health`, `model_list`, `fleet_view`) are computed from the
nodes' last polled state; admin operations (load, unload, drain) go through
the same node actors as routing does, so they are serialised with it. Runtime
pins (`set_pinned`) live in the fleet, in memory (`cortex.fleet`).

Not for: route handling (`cortex.http`) or relaying (`cortex.relay`).
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import attrs
import httpx
import trio
from quart import Response, request
from quart_trio import QuartTrio

import actors
from cortex import upstream_http
from cortex.affinity import PrefixAffinity
from cortex.auth import Keyring, NeuronTokens, open_warning
from cortex.config import CortexConfig, split_listen
from cortex.fleet import Fleet, build_fleet, start_fleet
from cortex.fleet_snapshot import Catalogue, NodeState, ResidencyStatus
from cortex.fleet_view import DeviceView, FleetView, ModelView, NodeView
from cortex.http import create_app
from cortex.metrics import CortexMetrics
from cortex.node import Node, PollSettings
from cortex.placement import feasible_nodes
from cortex.relay import Upstream
from cortex.transport import Client, Transport
from protocol import sdnotify
from protocol.buildinfo import build_info
from protocol.errors import InvalidRequest, NotFound, ServiceUnavailable
from protocol.http import make_config, prepare_app, serve
from protocol.ids import ModelId, NodeName
from protocol.models import ModelCard, ModelList, ModelLocation

log = logging.getLogger(__name__)


@attrs.frozen
class _Running:
    """What exists only while the gateway runs."""

    root: actors.Root
    upstream: Upstream


class Gateway:
    def __init__(self, config: CortexConfig) -> None:
        self.config = config
        self.catalogue: Catalogue = config.catalogue
        self.keyring = Keyring(config.entitlements, config.catalogue)
        self.metrics = CortexMetrics.for_config(config)
        self.client = _client(config)
        self.relay_client = _relay_client(config)
        self.fleet = self._build_fleet()
        self.draining = False
        self.url = ""  # bound by run()
        self.metrics_url = ""
        self._stop = trio.Event()
        self._running: _Running | None = None

    @property
    def upstream(self) -> Upstream:
        """What the relay takes; there from the start of `run()` on."""
        return self._live().upstream

    @property
    def root(self) -> actors.Root:
        return self._live().root

    @property
    def requests(self) -> actors.SupervisorRef:
        return self._live().upstream.requests

    def _live(self) -> _Running:
        if self._running is None:
            raise RuntimeError("the gateway is not running")
        return self._running

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        async with (
            self.client,
            self.relay_client,
            actors.open_root("cortex") as root,
            trio.open_nursery() as nursery,
        ):
            await start_fleet(root, self.fleet)
            requests = await root.start_supervisor("requests")
            http = self.config.http
            upstream = Upstream(self.fleet, self.relay_client, requests, retries=http.retries,
                                keepalive=http.keepalive_interval)  # fmt: skip
            self._running = _Running(root, upstream)  # kept after: requests still draining
            await self._serve(nursery, task_status)

    async def _serve(self, nursery: trio.Nursery, task_status: trio.TaskStatus[str]) -> None:
        self.url = await self._bind(nursery, create_app(self), self.config.gateway.listen)
        self.metrics_url = await self._bind(nursery, self._metrics_app(),
                                            self.config.gateway.metrics_listen)  # fmt: skip
        log.info("cortex listening url=%s metrics=%s", self.url, self.metrics_url)
        if warning := open_warning(self.config, self.url):
            log.warning("%s", warning)
        sdnotify.ready(f"listening on {self.url}; metrics on {self.metrics_url}")
        task_status.started(self.url)
        await self._stop.wait()
        # hypercorn now lets in-flight requests finish (graceful_timeout), then
        # the servers return and the root stops the fleet.

    async def _bind(self, nursery: trio.Nursery, app: QuartTrio, listen: str) -> str:
        host, port = split_listen(listen)
        http = self.config.http
        config = make_config(host, port, graceful_timeout=http.drain_timeout,
                             keep_alive_timeout=http.idle_timeout,
                             max_header_bytes=http.max_header_bytes)  # fmt: skip
        urls = await nursery.start(functools.partial(serve, app, config,
                                                     shutdown_trigger=self._stop.wait))  # fmt: skip
        return urls[0]

    def _metrics_app(self) -> QuartTrio:
        app = prepare_app(QuartTrio("cortex-metrics"))

        @app.get("/metrics")
        async def metrics() -> Response:
            self._observe_fleet()
            body, content_type = await trio.to_thread.run_sync(
                self.metrics.render, request.headers.get("accept", "")
            )
            return Response(body, content_type=content_type)

        return app

    def stop(self) -> None:
        sdnotify.stopping("shutting down: draining")  # idempotent, like stop()
        self.draining = True
        self._stop.set()

    def check_admitting(self) -> None:
        if self.draining:
            raise ServiceUnavailable("the gateway is shutting down", code="shutting_down",
                                     retry_after=5)  # fmt: skip

    def _build_fleet(self) -> Fleet:
        config, f = self.config, self.config.fleet
        settings = PollSettings(
            interval=f.poll_interval, timeout=f.poll_timeout, failure_threshold=f.failure_threshold,
            backoff_max=f.backoff_max, load_timeout=config.http.load_timeout,
        )  # fmt: skip
        routing = config.routing  # `[routing]`: prefix-aware routing among replicas, counted
        affinity = {}
        if routing.prefix_affinity:
            affinity = dict(affinity=PrefixAffinity(routing.load_factor, routing.load_slack),
                            prefix_chars=routing.prefix_chars,
                            on_affinity=self.metrics.affinity_choice)  # fmt: skip
        return build_fleet(
            [(n.name, n.endpoint) for n in config.neurons], self.catalogue,
            config.eviction.policy(), settings, self.client,
            observer=_LifecycleMetrics(self.metrics), **affinity,
        )  # fmt: skip

    # -- metrics hooks ---------------------------------------------------------------------

    def _observe_fleet(self) -> None:
        """Copy each node's last poll into the metrics (on scrape: cheap, always fresh)."""
        for node in self.fleet.nodes.values():
            up = node.state is NodeState.UP
            self.metrics.node_up_changed(node.name, up)
            if up and node.health is not None:
                self.metrics.node_health(node.name, node.health)

    # -- views -----------------------------------------------------------------------------

    def build_info(self) -> Any:
        return build_info()

    def health(self) -> dict[str, Any]:
        up = self.fleet.healthy()
        unservable = [
            {
                "node": n.name,
                "model": m.id,
                "reason": m.servable.reason,
                "detail": m.servable.detail,
            }
            for n in up
            for m in n.models
            if m.servable is not None and not m.servable.ok
        ]
        status = "degraded" if not up else "impaired" if unservable else "ok"
        body: dict[str, Any] = {
            "status": status,
            "nodes": {"healthy": len(up), "total": len(self.fleet.nodes)},
        }
        if unservable:
            body["unservable"] = unservable
        return body

    def model_list(self) -> ModelList:
        snapshot = self.fleet.snapshot()
        cards: dict[str, dict[str, Any]] = {}
        for profile in self.catalogue.profiles.values():
            cards[profile.id] = _card_fields(profile.id, feasible_nodes(snapshot, profile.id))
            cards[profile.id].update(capabilities=profile.capabilities, cost=profile.cost)
        for node in self.fleet.nodes.values():
            for info in node.models:
                card = cards.setdefault(info.id, _card_fields(info.id, ()))
                _add_location(card, node, info)
        for alias, target in self.catalogue.aliases.items():
            if target in cards:
                cards[alias] = {**cards[target], "id": alias}
        now = int(time.time())
        return ModelList(data=tuple(_card(fields, now) for fields in cards.values()))

    def fleet_view(self) -> FleetView:
        now = trio.current_time()
        return FleetView(
            status=self.health()["status"],
            nodes=tuple(_node_view(n, now) for n in self.fleet.nodes.values()),
            pins=tuple(sorted(self.fleet.pins)),
        )

    # -- admin -----------------------------------------------------------------------------

    def _node(self, name: str | None) -> Node | None:
        if name is None:
            return None
        node = self.fleet.nodes.get(NodeName(name))
        if node is None:
            raise NotFound(f"no node named {name!r}", code="node_not_found")
        return node

    async def admin_load(self, model: str, node_name: str | None) -> str:
        concrete = self.fleet.resolve(model)
        node = self._node(node_name)
        if node is None:
            acquired = await self.fleet.acquire(concrete)
            return acquired.node.name
        await node.ensure_loaded(concrete, (), ())
        return node.name

    async def admin_unload(self, model: str, node_name: str | None) -> str:
        concrete = ModelId(self.fleet.resolve(model))
        node = self._node(node_name) or next(
            (n for n in self.fleet.nodes.values() if any(m.id == concrete for m in n.models)),
            None,
        )
        if node is None:
            raise NotFound(f"model {model!r} is not loaded on any node", code="model_not_found")
        await node.unload(concrete)
        return node.name

    def set_pinned(self, model: str, pinned: bool) -> dict[str, Any]:
        """Pin or unpin `model` (an alias means its target) fleet-wide; idempotent."""
        concrete = ModelId(self.fleet.resolve(model))
        if not self.fleet.knows(concrete):
            raise NotFound(f"model {model!r} is neither catalogued nor on any node",
                           code="model_not_found")  # fmt: skip
        changed = self.fleet.pin(concrete) if pinned else self.fleet.unpin(concrete)
        if changed:
            log.info("runtime pin model=%s pinned=%s", concrete, pinned)
        return {"status": "pinned" if pinned else "unpinned", "model": concrete,
                "changed": changed}  # fmt: skip

    def set_draining(self, name: str, draining: bool) -> dict[str, Any]:
        node = self._node(name)
        if node is None:
            raise InvalidRequest("a node name is required", param="node")
        node.draining = draining
        busy = sum(r.in_flight + r.queued for r in node.snapshot().residencies)
        state = "draining" if draining and busy else "drained" if draining else "active"
        return {"node": node.name, "state": state, "in_flight": busy}


def _client(config: CortexConfig) -> httpx.AsyncClient:
    """The one client to every node (closed when `run()` ends)."""
    http = config.http
    timeout = httpx.Timeout(connect=5.0, read=http.upstream_idle_timeout, write=60, pool=60)
    transport = Transport(httpx.Limits(max_connections=1024, max_keepalive_connections=256))
    tokens = NeuronTokens(config.neurons, config.fleet.neuron_token)
    return Client(timeout=timeout, transport=transport, auth=tokens or None)


def _relay_client(config: CortexConfig) -> upstream_http.Client:
    """The inference relay's client (`cortex.upstream_http`): the same timeouts, pool
    bound and node tokens as `_client`'s."""
    tokens = NeuronTokens(config.neurons, config.fleet.neuron_token)
    return upstream_http.Client(connect=5.0, read=config.http.upstream_idle_timeout, write=60,
                                pool=60, max_connections=1024, max_idle=256,
                                token=tokens.token_for if tokens else None)  # fmt: skip


class _LifecycleMetrics:
    """What a node's lifecycle operations report, as metrics."""

    def __init__(self, metrics: CortexMetrics) -> None:
        self.metrics = metrics

    def loaded(self, node: str, model: str, seconds: float) -> None:
        self.metrics.model_load(model, node, "loaded", seconds)

    def load_failed(self, node: str, model: str, seconds: float, outcome: str) -> None:
        """`outcome`: `failed`, `timeout` or `cancelled`."""
        self.metrics.model_load(model, node, outcome, seconds)

    def evicted(self, node: str, model: str, reason: str) -> None:
        self.metrics.evicted(model, node, reason)


def _card_fields(model_id: str, feasible: tuple[str, ...]) -> dict[str, Any]:
    return {"id": model_id, "feasible_on": feasible, "locations": [], "capabilities": (),
            "cost": None, "limit": None, "tool_call": False, "reasoning": False}  # fmt: skip


def _add_location(card: dict[str, Any], node: Node, info: Any) -> None:
    card["locations"].append(ModelLocation(node=node.name, status=info.status,
                                           vram_estimate_mb=info.vram_used_mb))  # fmt: skip
    card["capabilities"] = tuple(dict.fromkeys((*card["capabilities"], *(info.capabilities or ()))))
    card["tool_call"] = card["tool_call"] or info.tool_call
    card["reasoning"] = card["reasoning"] or info.reasoning
    if info.limit is not None and (card["limit"] is None or info.limit.context <
                                   card["limit"].context):  # fmt: skip
        from protocol.models import ModelLimit

        card["limit"] = ModelLimit(context=info.limit.context, input=info.limit.input,
                                   output=info.limit.output)  # fmt: skip


def _card(fields: dict[str, Any], created: int) -> ModelCard:
    loaded = any(loc.status == "loaded" for loc in fields["locations"])
    return ModelCard.with_limit(
        fields["limit"], id=fields["id"], created=created, loaded=loaded,
        feasible_on=tuple(fields["feasible_on"]), locations=tuple(fields["locations"]),
        capabilities=tuple(fields["capabilities"]), cost=fields["cost"],
        tool_call=fields["tool_call"], reasoning=fields["reasoning"],
    )  # fmt: skip


def _node_view(node: Node, now: float) -> NodeView:
    snapshot = node.snapshot()
    age = None if node.last_poll_at is None else round(now - node.last_poll_at, 3)
    ids = {d.index: d.id for d in (node.discovery.devices if node.discovery else ())}
    busy = {h.index: h.utilization_pct for h in (node.health.devices if node.health else ())}
    errors = {m.id: m.error for m in node.models}
    return NodeView(
        name=node.name, endpoint=node.endpoint, state=node.state.value,
        draining=node.draining, last_poll_age_s=age, error=node.last_error,
        devices=tuple(DeviceView(index=d.index, id=ids.get(d.index), total_mb=d.total_mb,
                                 free_mb=d.free_mb, utilization_pct=busy.get(d.index))
                      for d in snapshot.devices),
        models=tuple(ModelView(id=r.model, status=r.status.value, in_flight=r.in_flight,
                               queued=r.queued, memory_mb=r.memory_mb,
                               devices=tuple(snapshot.occupied_devices(r)), pinned=r.pinned,
                               error=errors.get(r.model))
                     for r in snapshot.residencies),
    )  # fmt: skip


__all__ = ["Gateway", "NodeState", "ResidencyStatus"]
