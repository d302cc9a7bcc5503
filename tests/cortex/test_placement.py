"""Placement decisions (cortex.placement): examples for every rule, then
properties over random fleets checked against a brute-force oracle.

Over 500 lines because the oracle and its fleet strategies live here with
the examples; they move to a shared helper module once another test needs them.
"""

from __future__ import annotations

import itertools
import math

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cortex.eviction import EvictionPolicy, EvictionStrategy
from cortex.fleet_snapshot import (
    Catalogue,
    Device,
    FleetSnapshot,
    ModelProfile,
    NodeSnapshot,
    NodeState,
    Residency,
    ResidencyStatus,
    Servability,
)
from cortex.placement import (
    RETRY_AFTER,
    Impossible,
    ImpossibleReason,
    Load,
    Route,
    Wait,
    WaitReason,
    decision_error,
    feasible_nodes,
    place,
    resolve_alias,
)
from protocol.errors import NotFound, ServiceUnavailable
from protocol.ids import ModelId, NodeName

NOW = 10_000.0
OLD = NOW - 3600
LRU = EvictionPolicy()
BY_PRIORITY = EvictionPolicy(strategy=EvictionStrategy.PRIORITY)
LOADED = ResidencyStatus.LOADED


def res(model: str, status: ResidencyStatus = LOADED, **kw) -> Residency:
    kw.setdefault("loaded_at", OLD)
    kw.setdefault("devices", (0,))
    return Residency(model=ModelId(model), status=status, **kw)


def node(name: str, *residencies: Residency, devices=((24_000, 24_000),), **kw) -> NodeSnapshot:
    devs = tuple(Device(i, total, free) for i, (total, free) in enumerate(devices))
    return NodeSnapshot(name=NodeName(name), devices=devs, residencies=residencies, **kw)


def profile(model: str, **kw) -> ModelProfile:
    if "pinned_on" in kw:
        kw["pinned_on"] = tuple(NodeName(n) for n in kw["pinned_on"])
    return ModelProfile(id=ModelId(model), **kw)


def fleet(*nodes: NodeSnapshot, models=(), aliases=None, measured=None) -> FleetSnapshot:
    catalogue = Catalogue.of(models, aliases)
    return FleetSnapshot(nodes=nodes, catalogue=catalogue, measured_mb=measured or {})


def decide(snapshot: FleetSnapshot, model: str = "m", policy=LRU, *, force=False):
    return place(snapshot, ModelId(model), NOW, policy, force=force)


M = profile("m", vram_mb=16_000)  # the usual incoming model


# -------------------------------------------------------------- routing


def test_routes_to_the_least_busy_replica():
    snapshot = fleet(
        node("a", res("m", in_flight=2)),
        node("b", res("m", in_flight=1, queued=2)),
        node("c", res("m", queued=1)),
    )
    assert decide(snapshot) == Route(NodeName("c"))


def test_ties_between_replicas_go_to_the_first_node_name():
    snapshot = fleet(node("c", res("m")), node("a", res("m")), node("b", res("m")))
    assert decide(snapshot) == Route(NodeName("a"))


def test_unservable_replicas_are_skipped_and_unknown_servability_is_routable():
    snapshot = fleet(
        node("a", res("m", servable=Servability.NO)),
        node("b", res("m", servable=Servability.UNKNOWN, in_flight=3)),
        node("c", res("m", servable=Servability.OK, in_flight=4)),
    )
    assert decide(snapshot) == Route(NodeName("b"))


def test_suspect_replicas_serve_only_when_no_up_replica_can():
    busy_up = fleet(node("a", res("m", in_flight=9)), node("b", res("m"), state=NodeState.SUSPECT))
    assert decide(busy_up) == Route(NodeName("a"))
    unservable_up = fleet(
        node("a", res("m", servable=Servability.NO)),
        node("b", res("m"), state=NodeState.SUSPECT),
    )
    assert decide(unservable_up) == Route(NodeName("b"))


def test_a_suspect_replica_beats_a_cold_load():
    snapshot = fleet(node("a"), node("b", res("m"), state=NodeState.SUSPECT), models=[M])
    assert decide(snapshot) == Route(NodeName("b"))


def test_down_and_draining_replicas_get_no_requests():
    snapshot = fleet(
        node("a", res("m"), state=NodeState.DOWN),
        node("b", res("m"), draining=True),
        node("c", res("m"), state=NodeState.SUSPECT, draining=True),
        node("d"),
        models=[M],
    )
    assert decide(snapshot) == Load(NodeName("d"), (0,))


def test_aliases_resolve_once_without_chaining():
    catalogue = Catalogue.of(aliases={"fast": ModelId("m1"), "m1": ModelId("m2")})
    assert resolve_alias(catalogue, "fast") == "m1"
    assert resolve_alias(catalogue, "m1") == "m2"
    assert resolve_alias(catalogue, "plain") == "plain"


# --------------------------------------------------- loading / recovering


def test_recovering_holds_the_route_with_a_short_retry():
    snapshot = fleet(node("a", res("m", ResidencyStatus.RECOVERING)), node("b"), models=[M])
    decision = decide(snapshot)
    assert decision == Wait(WaitReason.RECOVERING, decision.message, 2.0, NodeName("a"))
    error = decision_error(decision)
    assert isinstance(error, ServiceUnavailable)
    assert (error.status, error.headers()) == (503, {"Retry-After": "2"})
    assert "recovering" in error.message
    assert "retry" in error.message


def test_a_loaded_replica_wins_over_a_recovering_one():
    snapshot = fleet(node("a", res("m", ResidencyStatus.RECOVERING)), node("b", res("m")))
    assert decide(snapshot) == Route(NodeName("b"))


def test_a_load_in_progress_is_waited_for_not_duplicated():
    snapshot = fleet(node("a"), node("b", res("m", ResidencyStatus.LOADING)), models=[M])
    decision = decide(snapshot)
    assert isinstance(decision, Wait)
    assert (decision.reason, decision.node) == (WaitReason.LOADING, "b")


def test_loading_or_recovering_on_a_down_node_does_not_hold_the_model():
    snapshot = fleet(
        node("a", res("m", ResidencyStatus.RECOVERING), state=NodeState.DOWN),
        node("b", res("m", ResidencyStatus.LOADING), state=NodeState.DOWN),
        node("c"),
        models=[M],
    )
    assert decide(snapshot) == Load(NodeName("c"), (0,))


def test_only_copy_unservable_waits():
    snapshot = fleet(node("a", res("m", servable=Servability.NO)), models=[M])
    decision = decide(snapshot)
    assert isinstance(decision, Wait)
    assert (decision.reason, decision.node) == (WaitReason.NOT_SERVABLE, "a")


def test_only_copy_unservable_loads_another_elsewhere():
    snapshot = fleet(node("a", res("m", servable=Servability.NO)), node("b"), models=[M])
    assert decide(snapshot) == Load(NodeName("b"), (0,))


# ----------------------------------------------------- unknown, infeasible


def test_unknown_model_is_404_model_not_found():
    decision = decide(fleet(node("a")), "nope")
    assert decision == Impossible(ImpossibleReason.MODEL_NOT_FOUND, decision.message)
    error = decision_error(decision)
    assert isinstance(error, NotFound)
    assert (error.status, error.code, error.headers()) == (404, "model_not_found", {})
    assert "'nope' not found on any node and not in catalogue" in error.message


@pytest.mark.parametrize("nodes", [(), (node("a", state=NodeState.DOWN),)], ids=["none", "down"])
def test_unknown_model_without_healthy_nodes_is_503(nodes):
    decision = decide(fleet(*nodes), "nope")
    assert isinstance(decision, Wait)
    assert decision.reason is WaitReason.NODES_UNAVAILABLE
    assert decision_error(decision).message == "no healthy nodes available"


def test_a_model_only_a_node_knows_loads_there_and_nowhere_else():
    snapshot = fleet(
        node("a", res("local", ResidencyStatus.UNLOADED), devices=[(8_000, 8_000)]),
        node("b", devices=[(80_000, 80_000)]),
    )
    assert decide(snapshot, "local") == Load(NodeName("a"), (0,))


@pytest.mark.parametrize(
    "model",
    [
        profile("m", min_devices=3),
        profile("m", min_device_vram_mb=32_000),
        profile("m", vram_mb=30_000),
        profile("m", vram_mb=60_000, min_devices=2),
        profile("m", pinned_on=["elsewhere"]),
    ],
    ids=["min-devices", "device-floor", "too-big", "too-big-split", "pinned-to-unknown-node"],
)
def test_no_node_topology_can_ever_host_it_is_404(model):
    snapshot = fleet(node("a", devices=[(24_000, 24_000), (16_000, 16_000)]), models=[model])
    decision = decide(snapshot)
    assert isinstance(decision, Impossible)
    assert decision.reason is ImpossibleReason.NO_FEASIBLE_NODE
    error = decision_error(decision)
    assert (error.status, error.code) == (404, "no_feasible_node")


def test_infeasibility_ignores_node_state_and_occupancy():
    full = node("a", res("x", memory_mb=24_000), devices=[(24_000, 0)], state=NodeState.DOWN)
    decision = decide(fleet(full, models=[M]))
    assert isinstance(decision, Wait)
    assert feasible_nodes(fleet(full, models=[M]), ModelId("m")) == ("a",)


def test_feasible_nodes_lists_topologies_by_name():
    snapshot = fleet(
        node("c", devices=[(24_000, 0)] * 2),
        node("b", devices=[(24_000, 0)]),
        node("a", devices=[(16_000, 0)] * 2, state=NodeState.DOWN),
        models=[profile("tp", vram_mb=30_000, min_devices=2)],
    )
    assert feasible_nodes(snapshot, ModelId("tp")) == ("a", "c")
    assert feasible_nodes(snapshot, ModelId("nope")) == ()


def test_device_floor_selects_the_node_and_devices():
    model = profile("m", min_devices=2, min_device_vram_mb=24_000)
    snapshot = fleet(
        node("a", devices=[(16_000, 16_000)] * 4),
        node("b", devices=[(24_000, 24_000), (16_000, 16_000), (24_000, 20_000)]),
        models=[model],
    )
    assert decide(snapshot) == Load(NodeName("b"), (0, 2))


# --------------------------------------------- node states and affinity


@pytest.mark.parametrize(
    ("unavailable", "label"),
    [
        ({"state": NodeState.DOWN}, "a (down)"),
        ({"state": NodeState.SUSPECT}, "a (suspect)"),
        ({"draining": True}, "a (draining)"),
    ],
)
def test_feasible_but_unavailable_is_503_with_retry_after(unavailable, label):
    snapshot = fleet(
        node("a", devices=[(80_000, 80_000)], **unavailable),
        node("b", devices=[(8_000, 8_000)]),
        models=[profile("m", vram_mb=40_000)],
    )
    decision = decide(snapshot)
    assert isinstance(decision, Wait)
    assert decision.reason is WaitReason.NODES_UNAVAILABLE
    assert decision.retry_after == 3.0
    error = decision_error(decision)
    assert (error.status, error.headers()) == (503, {"Retry-After": "3"})
    assert error.message.endswith(label)


def test_pinned_on_is_a_hard_affinity():
    snapshot = fleet(
        node("a", devices=[(80_000, 80_000)]),
        node("b", devices=[(24_000, 20_000)]),
        models=[profile("m", vram_mb=16_000, pinned_on=["b"])],
    )
    assert decide(snapshot) == Load(NodeName("b"), (0,))


def test_pinned_node_down_is_503_even_when_others_are_free():
    snapshot = fleet(
        node("a", devices=[(80_000, 80_000)]),
        node("b", state=NodeState.DOWN),
        models=[profile("m", vram_mb=16_000, pinned_on=["b"])],
    )
    decision = decide(snapshot)
    assert isinstance(decision, Wait)
    assert decision.reason is WaitReason.NODES_UNAVAILABLE


def test_draining_and_suspect_nodes_take_no_loads():
    snapshot = fleet(
        node("a", devices=[(80_000, 80_000)], draining=True),
        node("b", devices=[(80_000, 80_000)], state=NodeState.SUSPECT),
        node("c", devices=[(24_000, 16_000)]),
        models=[M],
    )
    assert decide(snapshot) == Load(NodeName("c"), (0,))


# ------------------------------------------------------ choosing a node


def test_fitting_free_beats_evicting():
    snapshot = fleet(
        node("a", res("x", memory_mb=20_000), devices=[(48_000, 28_000)]),
        node("b", devices=[(24_000, 16_000)]),
        node("c", res("y", memory_mb=20_000), devices=[(24_000, 4_000)]),
        models=[M],
    )
    assert decide(snapshot) == Load(NodeName("a"), (0,))


def test_most_spare_memory_then_node_name():
    snapshot = fleet(
        node("a", devices=[(24_000, 18_000)]),
        node("c", devices=[(24_000, 20_000)]),
        node("b", devices=[(24_000, 20_000)]),
        models=[M],
    )
    assert decide(snapshot) == Load(NodeName("b"), (0,))


def test_a_node_that_already_has_the_files_is_preferred():
    snapshot = fleet(
        node("a", devices=[(24_000, 24_000)]),
        node("b", res("m", ResidencyStatus.UNLOADED), devices=[(24_000, 20_000)]),
        models=[M],
    )
    assert decide(snapshot) == Load(NodeName("b"), (0,))


def test_having_the_files_does_not_justify_an_eviction():
    snapshot = fleet(
        node("a", devices=[(24_000, 16_000)]),
        node(
            "b",
            res("m", ResidencyStatus.UNLOADED),
            res("x", memory_mb=20_000),
            devices=[(24_000, 4_000)],
        ),
        models=[M],
    )
    assert decide(snapshot) == Load(NodeName("a"), (0,))


def test_a_node_where_the_last_load_failed_is_the_last_resort():
    snapshot = fleet(
        node("a", res("m", ResidencyStatus.FAILED), devices=[(80_000, 80_000)]),
        node("b", res("x", memory_mb=20_000), devices=[(24_000, 4_000)]),
        models=[M],
    )
    assert decide(snapshot) == Load(NodeName("b"), (0,), evict=(ModelId("x"),))
    alone = fleet(snapshot.nodes[0], models=[M])
    assert decide(alone) == Load(NodeName("a"), (0,))


# -------------------------------------------------------- memory needed


def test_measured_memory_beats_the_catalogue_figure():
    n = node("a", res("x", memory_mb=14_000), devices=[(24_000, 10_000)])
    small = profile("m", vram_mb=8_000)
    assert decide(fleet(n, models=[small])) == Load(NodeName("a"), (0,))
    measured = fleet(n, models=[small], measured={ModelId("m"): 12_000})
    assert decide(measured) == Load(NodeName("a"), (0,), evict=(ModelId("x"),))


def test_a_measured_figure_can_also_make_a_model_fit():
    huge = profile("m", vram_mb=30_000)
    snapshot = fleet(node("a"), models=[huge], measured={ModelId("m"): 20_000})
    assert decide(snapshot) == Load(NodeName("a"), (0,))


def test_a_copy_measured_on_another_node_sizes_the_new_load():
    snapshot = fleet(
        node("a", res("x", memory_mb=14_000), devices=[(24_000, 10_000)]),
        node("b", res("m", memory_mb=12_000), state=NodeState.DOWN),
        models=[profile("m", vram_mb=8_000)],
    )
    assert decide(snapshot) == Load(NodeName("a"), (0,), evict=(ModelId("x"),))


def test_a_model_of_unknown_size_needs_no_free_memory():
    snapshot = fleet(node("a", devices=[(24_000, 0)]), models=[profile("m")])
    assert decide(snapshot) == Load(NodeName("a"), (0,))


# ------------------------------------------------------------- eviction


def test_fits_after_evicting_the_least_recently_used():
    snapshot = fleet(
        node(
            "a",
            res("recent", memory_mb=10_000, last_used_at=NOW - 100),
            res("stale", memory_mb=10_000, last_used_at=NOW - 500),
            devices=[(24_000, 4_000)],
        ),
        models=[profile("m", vram_mb=12_000)],
    )
    assert decide(snapshot) == Load(NodeName("a"), (0,), evict=(ModelId("stale"),))


def test_never_used_goes_first_under_lru():
    snapshot = fleet(
        node(
            "a",
            res("used", memory_mb=10_000, last_used_at=1.0),
            res("unused", memory_mb=10_000, last_used_at=None),
            devices=[(24_000, 4_000)],
        ),
        models=[profile("m", vram_mb=12_000)],
    )
    assert decide(snapshot) == Load(NodeName("a"), (0,), evict=(ModelId("unused"),))


def test_priority_strategy_evicts_the_lowest_rank_first_lru_ignores_rank():
    snapshot = fleet(
        node(
            "a",
            res("cheap", memory_mb=10_000, last_used_at=NOW - 100),
            res("stale", memory_mb=10_000, last_used_at=NOW - 500),
            devices=[(24_000, 4_000)],
        ),
        models=[profile("m", vram_mb=12_000), profile("cheap", residency_priority=50)],
    )
    assert decide(snapshot, policy=LRU).evict == ("stale",)
    assert decide(snapshot, policy=BY_PRIORITY).evict == ("cheap",)


def test_fewest_victims_win_over_staler_ones():
    snapshot = fleet(
        node(
            "a",
            res("big", memory_mb=16_000, last_used_at=NOW - 10),
            res("small1", memory_mb=8_000, last_used_at=1.0),
            res("small2", memory_mb=8_000, last_used_at=2.0),
            devices=[(40_000, 8_000)],
        ),
        models=[profile("m", vram_mb=20_000)],
    )
    assert decide(snapshot).evict == ("big",)


def test_among_equally_many_victims_the_most_recently_used_is_spared():
    # {v1, v4} and {v2, v3} both free 16 GB; v4 is the most recently used,
    # so the second set disturbs less even though v1 is the stalest.
    snapshot = fleet(
        node(
            "a",
            res("v1", memory_mb=4_000, last_used_at=1.0),
            res("v2", memory_mb=8_000, last_used_at=2.0),
            res("v3", memory_mb=8_000, last_used_at=3.0),
            res("v4", memory_mb=12_000, last_used_at=4.0),
            devices=[(32_000, 0)],
        ),
        models=[M],
    )
    assert decide(snapshot).evict == ("v2", "v3")


def test_the_least_disruptive_node_is_chosen_for_eviction():
    snapshot = fleet(
        node("a", res("hot", memory_mb=20_000, last_used_at=NOW - 1), devices=[(24_000, 4_000)]),
        node("b", res("cold", memory_mb=20_000, last_used_at=5.0), devices=[(24_000, 4_000)]),
        models=[M],
    )
    assert decide(snapshot) == Load(NodeName("b"), (0,), evict=(ModelId("cold"),))


def test_per_device_accounting_for_a_tensor_parallel_load():
    # Needs 16 GB on each of two devices. Device 1 has room, device 0 needs
    # `y` gone; `z` is the stalest but sits on a device too small to use.
    snapshot = fleet(
        node(
            "a",
            res("y", memory_mb=20_000, devices=(0,), last_used_at=5.0),
            res("z", memory_mb=4_000, devices=(2,), last_used_at=1.0),
            res("w", memory_mb=4_000, devices=(1,), last_used_at=2.0),
            devices=[(24_000, 4_000), (24_000, 20_000), (8_000, 4_000)],
        ),
        models=[profile("m", vram_mb=32_000, min_devices=2)],
    )
    assert decide(snapshot) == Load(NodeName("a"), (0, 1), evict=(ModelId("y"),))


def test_a_tensor_parallel_victim_frees_its_share_on_each_device():
    snapshot = fleet(
        node(
            "a",
            res("tp", memory_mb=20_000, devices=(0, 1)),
            devices=[(24_000, 4_000), (24_000, 4_000)],
        ),
        models=[profile("m", vram_mb=28_000, min_devices=2)],
    )
    assert decide(snapshot) == Load(NodeName("a"), (0, 1), evict=(ModelId("tp"),))
    too_big = fleet(*snapshot.nodes, models=[profile("m", vram_mb=30_000, min_devices=2)])
    assert isinstance(decide(too_big), Wait)


def test_never_evicts_a_busy_model():
    for busy in ({"in_flight": 1}, {"queued": 1}):
        snapshot = fleet(
            node("a", res("x", memory_mb=20_000, **busy), devices=[(24_000, 4_000)]), models=[M]
        )
        decision = decide(snapshot, force=True)
        assert isinstance(decision, Wait)
        assert (decision.reason, decision.retry_after) == (WaitReason.BUSY, 5.0)
        assert decision.node == "a"


def test_busy_residents_send_the_load_to_another_node():
    snapshot = fleet(
        node("a", res("x", memory_mb=20_000, in_flight=1), devices=[(24_000, 4_000)]),
        node("b", res("y", memory_mb=20_000, last_used_at=NOW - 1), devices=[(24_000, 4_000)]),
        models=[M],
    )
    assert decide(snapshot) == Load(NodeName("b"), (0,), evict=(ModelId("y"),))


def test_minimum_residency_prevents_thrash_and_says_when_to_retry():
    snapshot = fleet(
        node("a", res("x", memory_mb=20_000, loaded_at=NOW - 10), devices=[(24_000, 4_000)]),
        models=[M],
    )
    decision = decide(snapshot)
    assert isinstance(decision, Wait)
    assert (decision.reason, decision.retry_after) == (WaitReason.BUSY, 20.0)
    assert decide(snapshot, policy=EvictionPolicy(min_residency_seconds=10)).evict == ("x",)
    assert decide(snapshot, force=True) == Load(NodeName("a"), (0,), evict=(ModelId("x"),))


def test_a_model_loaded_before_we_watched_counts_as_settled():
    snapshot = fleet(
        node("a", res("x", memory_mb=20_000, loaded_at=None), devices=[(24_000, 4_000)]),
        models=[M],
    )
    assert decide(snapshot).evict == ("x",)


def test_never_evicts_a_higher_priority_model():
    snapshot = fleet(
        node("a", res("x", memory_mb=20_000), devices=[(24_000, 4_000)]),
        models=[M, profile("x", residency_priority=101)],
    )
    decision = decide(snapshot, force=True)
    assert isinstance(decision, Wait)
    assert (decision.reason, decision.retry_after) == (WaitReason.NO_ROOM, 10.0)
    assert "outrank" in decision.message


def test_equal_priority_models_displace_each_other():
    snapshot = fleet(
        node("a", res("x", memory_mb=20_000), devices=[(24_000, 4_000)]),
        models=[
            profile("m", vram_mb=16_000, residency_priority=200),
            profile("x", residency_priority=200),
        ],
    )
    assert decide(snapshot).evict == ("x",)


def test_catalogue_pins_protect_by_priority_node_pins_absolutely():
    def with_resident(x: ModelProfile, *, pinned: bool = False) -> FleetSnapshot:
        resident = res("x", memory_mb=20_000, pinned=pinned)
        return fleet(node("a", resident, devices=[(24_000, 4_000)]), models=[M, x])

    default_pinned = with_resident(profile("x", pinned_on=["a"]))
    assert isinstance(decide(default_pinned), Wait)
    demoted = with_resident(profile("x", pinned_on=["a"], residency_priority=100))
    assert decide(demoted).evict == ("x",)
    node_pinned = with_resident(profile("x", residency_priority=1), pinned=True)
    assert isinstance(decide(node_pinned), Wait)


def test_a_pinned_incoming_model_outranks_unpinned_residents():
    snapshot = fleet(
        node("a", res("x", memory_mb=20_000, last_used_at=NOW), devices=[(24_000, 4_000)]),
        models=[profile("m", vram_mb=16_000, pinned_on=["a"]), profile("x")],
    )
    assert decide(snapshot).evict == ("x",)


def test_loading_and_recovering_residents_are_not_evicted():
    snapshot = fleet(
        node(
            "a",
            res("l", ResidencyStatus.LOADING, memory_mb=10_000),
            res("r", ResidencyStatus.RECOVERING, memory_mb=10_000),
            devices=[(24_000, 4_000)],
        ),
        models=[M],
    )
    decision = decide(snapshot)
    assert isinstance(decision, Wait)
    assert decision.reason is WaitReason.NO_ROOM


def test_decision_error_for_every_wait_reason_is_a_retriable_503():
    for reason, seconds in RETRY_AFTER.items():
        error = decision_error(Wait(reason, "why", seconds))
        assert isinstance(error, ServiceUnavailable)
        assert error.retriable
        assert error.to_openai()["error"]["message"] == "why"
        assert error.headers() == {"Retry-After": str(math.ceil(seconds))}


# ============================================================ properties
#
# An oracle written from the rules, brute force, sharing no code with the
# module: for small random fleets it says which decision kinds are possible
# and checks every Route and Load against the rules.

MODELS = [ModelId(f"m{i}") for i in range(5)]
NAMES = [NodeName(n) for n in ("a", "b", "c")]
SIZES = [None, 4_000, 8_000, 12_000, 20_000]
OCCUPYING = (LOADED, ResidencyStatus.LOADING, ResidencyStatus.RECOVERING)
NEW = ModelId("new")  # catalogued, resident nowhere: the cold-load case


def often(common, *rare, weight: int = 3):
    """Mostly `common`, sometimes one of `rare`: fleets that load and evict."""
    return st.sampled_from([common] * weight + list(rare))


@st.composite
def residency_on(draw, model: ModelId, n_devices: int) -> Residency:
    indices = st.integers(0, n_devices - 1)
    devices = draw(st.lists(indices, unique=True, min_size=draw(often(1, 0)), max_size=n_devices))
    return Residency(
        model=model,
        status=draw(often(LOADED, *ResidencyStatus)),
        servable=draw(st.sampled_from(Servability)),
        memory_mb=draw(often(12_000, *SIZES)),
        devices=tuple(sorted(devices)),
        in_flight=draw(often(0, 1)),
        queued=draw(often(0, 2)),
        last_used_at=draw(st.one_of(st.none(), st.integers(0, int(NOW)).map(float))),
        loaded_at=draw(st.one_of(st.none(), st.integers(int(NOW) - 120, int(NOW)).map(float))),
        pinned=draw(st.booleans()),
    )


def _used(residencies, index: int) -> int:
    return sum(
        (r.memory_mb or 0) // len(r.devices)
        for r in residencies
        if r.status in OCCUPYING and index in r.devices
    )


@st.composite
def node_named(draw, name: NodeName, crowded: bool) -> NodeSnapshot:
    sizes = [24_000] if crowded else [8_000, 16_000, 24_000]
    totals = draw(st.lists(st.sampled_from(sizes), min_size=1, max_size=2 if crowded else 3))
    models = st.sampled_from(MODELS)
    models = draw(st.lists(models, unique=True, min_size=3 * crowded, max_size=4 + crowded))
    residencies = tuple(draw(residency_on(m, len(totals))) for m in models)
    slack = 0 if crowded else draw(often(0, 2_000, 8_000))
    devices = tuple(
        Device(i, total, max(0, total - _used(residencies, i) - slack))
        for i, total in enumerate(totals)
    )
    return NodeSnapshot(
        name=name,
        state=draw(often(NodeState.UP, NodeState.SUSPECT, NodeState.DOWN, weight=8)),
        draining=draw(often(False, True, weight=8)),
        devices=devices,
        residencies=residencies,
        lifecycle_cycles=draw(st.integers(0, 5)),
    )


@st.composite
def profile_of(draw, model: ModelId) -> ModelProfile:
    return ModelProfile(
        id=model,
        vram_mb=draw(often(12_000, None, 4_000, 20_000, 40_000, weight=4)),
        min_devices=draw(often(1, 2, 3, weight=6)),
        min_device_vram_mb=draw(often(None, 16_000)),
        pinned_on=draw(often((), (NAMES[0],), (NAMES[1], NAMES[2]), weight=6)),
        residency_priority=draw(st.sampled_from([None, 50, 100, 200])),
    )


@st.composite
def fleets(draw, crowded: bool = False) -> FleetSnapshot:
    """Small random fleets; `crowded` ones have full devices, so loads must evict."""
    names = draw(st.lists(st.sampled_from(NAMES), unique=True, min_size=1, max_size=3))
    nodes = tuple(draw(node_named(n, crowded)) for n in names)
    catalogued = draw(st.lists(st.sampled_from(MODELS), unique=True, min_size=2))
    profiles = [draw(profile_of(m)) for m in [NEW, *catalogued]]
    measured = draw(st.dictionaries(st.sampled_from(MODELS), st.sampled_from(SIZES[1:])))
    return FleetSnapshot(nodes=nodes, catalogue=Catalogue.of(profiles), measured_mb=measured)


policies = st.builds(
    EvictionPolicy,
    strategy=st.sampled_from(EvictionStrategy),
    min_residency_seconds=st.sampled_from([0.0, 30.0]),
)
wanted = often(NEW, *MODELS, ModelId("unknown"))


class Oracle:
    """The rules, restated plainly."""

    def __init__(self, snapshot: FleetSnapshot, model: ModelId, policy: EvictionPolicy, force):
        self.s, self.model, self.policy, self.force = snapshot, model, policy, force

    def priority(self, model: ModelId) -> int:
        p = self.s.catalogue.profiles.get(model)
        if p is None:
            return 100
        if p.residency_priority is not None:
            return p.residency_priority
        return 1000 if p.pinned_on else 100

    def profile(self) -> ModelProfile | None:
        p = self.s.catalogue.profiles.get(self.model)
        if p is not None:
            return p
        known = tuple(n.name for n in self.s.nodes if n.residency(self.model) is not None)
        return ModelProfile(id=self.model, pinned_on=known) if known else None

    def per_device(self) -> int:
        p = self.profile()
        sizes = [
            r.memory_mb
            for n in self.s.nodes
            for r in n.residencies
            if r.model == self.model and r.memory_mb is not None
        ]
        if self.model in self.s.measured_mb:
            sizes.append(self.s.measured_mb[self.model])
        need = max(sizes) if sizes else (p.vram_mb or 0)
        return -(-need // p.min_devices)

    def qualifies(self, device: Device) -> bool:
        floor = self.profile().min_device_vram_mb or 0
        return device.total_mb >= floor and device.total_mb >= self.per_device()

    def feasible(self, n: NodeSnapshot) -> bool:
        p = self.profile()
        count = sum(self.qualifies(d) for d in n.devices)
        return (not p.pinned_on or n.name in p.pinned_on) and count >= p.min_devices

    def free_after(self, n: NodeSnapshot, victims) -> dict[int, int]:
        free = {d.index: d.free_mb for d in n.devices}
        for v in victims:
            devices = [i for i in v.devices if i in free]
            if not v.devices and len(n.devices) == 1:
                devices = [n.devices[0].index]
            p = self.s.catalogue.profiles.get(v.model)
            size = v.memory_mb if v.memory_mb is not None else ((p and p.vram_mb) or 0)
            for i in devices:
                free[i] += size // len(devices)
        return free

    def fits_on(self, n: NodeSnapshot, devices, victims) -> bool:
        free = self.free_after(n, victims)
        by_index = {d.index: d for d in n.devices}
        return len(devices) == self.profile().min_devices and all(
            self.qualifies(by_index[i]) and free[i] >= self.per_device() for i in devices
        )

    def fits(self, n: NodeSnapshot, victims) -> bool:
        free = self.free_after(n, victims)
        good = [d for d in n.devices if self.qualifies(d) and free[d.index] >= self.per_device()]
        return len(good) >= self.profile().min_devices

    def eviction_key(self, r: Residency) -> tuple:
        used = -math.inf if r.last_used_at is None else r.last_used_at
        if self.policy.strategy is EvictionStrategy.PRIORITY:
            return (self.priority(r.model), used, r.model)
        return (used, r.model)

    def may_go(self, n: NodeSnapshot, r: Residency) -> bool:
        young = r.loaded_at is not None and NOW - r.loaded_at < self.policy.min_residency_seconds
        return (
            r.status is LOADED
            and not r.pinned  # the node refuses to unload it
            and r.model != self.model
            and r.in_flight == 0
            and r.queued == 0
            and self.priority(r.model) <= self.priority(self.model)
            and (self.force or not young)
        )

    def fewest_victims(self, n: NodeSnapshot) -> int | None:
        pool = [r for r in n.residencies if self.may_go(n, r)]
        for size in range(len(pool) + 1):
            if any(self.fits(n, c) for c in itertools.combinations(pool, size)):
                return size
        return None

    def routable(self, states) -> list[tuple[int, NodeName]]:
        return sorted(
            (r.in_flight + r.queued, n.name)
            for n in self.s.nodes
            if n.state in states and not n.draining
            for r in n.residencies
            if r.model == self.model and r.status is LOADED and r.servable is not Servability.NO
        )

    def held(self) -> bool:
        return any(
            r.model == self.model
            and r.status in (ResidencyStatus.LOADING, ResidencyStatus.RECOVERING)
            for n in self.s.nodes
            if n.state is not NodeState.DOWN and not n.draining
            for r in n.residencies
        )

    def candidates(self) -> list[NodeSnapshot]:
        hosting = (LOADED, ResidencyStatus.LOADING, ResidencyStatus.RECOVERING)
        return [
            n
            for n in self.s.nodes
            if n.state is NodeState.UP
            and not n.draining
            and self.feasible(n)
            and not any(r.model == self.model and r.status in hosting for r in n.residencies)
        ]


def _shuffled(snapshot: FleetSnapshot, order: list[int]) -> FleetSnapshot:
    """The same fleet listed in another order (nodes permuted, residents reversed)."""
    nodes = [snapshot.nodes[i] for i in order if i < len(snapshot.nodes)]
    nodes = [attrs.evolve(n, residencies=n.residencies[::-1]) for n in nodes]
    return attrs.evolve(snapshot, nodes=tuple(nodes))


@st.composite
def replicas_everywhere(draw) -> FleetSnapshot:
    """Every node holds some copy of `m`: the routing cases."""
    names = draw(st.lists(st.sampled_from(NAMES), unique=True, min_size=1, max_size=3))
    nodes = tuple(
        node(
            name,
            res(
                "m",
                draw(often(LOADED, ResidencyStatus.LOADING, ResidencyStatus.RECOVERING)),
                servable=draw(st.sampled_from(Servability)),
                in_flight=draw(st.integers(0, 2)),
                queued=draw(st.integers(0, 1)),
            ),
            state=draw(st.sampled_from(NodeState)),
            draining=draw(often(False, True)),
        )
        for name in names
    )
    return fleet(*nodes, models=[M])


@settings(max_examples=150, deadline=None)
@given(replicas_everywhere())
def test_routing_on_random_replica_sets(snapshot):
    o = Oracle(snapshot, ModelId("m"), LRU, False)
    replicas = o.routable({NodeState.UP}) or o.routable({NodeState.SUSPECT})
    decision = decide(snapshot)
    if replicas:
        assert decision == Route(replicas[0][1])
        _check_route(o, decision)
    else:
        assert not isinstance(decision, Route)


@st.composite
def one_crowded_node(draw) -> FleetSnapshot:
    """One up node, full, whose residents vary in age, use, load and rank."""
    n_devices = draw(st.integers(1, 2))
    residents = [
        res(
            model,
            draw(often(LOADED, ResidencyStatus.LOADING)),
            memory_mb=draw(st.sampled_from([4_000, 8_000, 12_000])),
            devices=tuple(sorted(draw(st.sets(st.integers(0, n_devices - 1), min_size=1)))),
            in_flight=draw(often(0, 1)),
            last_used_at=draw(st.one_of(st.none(), st.integers(0, 100).map(float))),
            loaded_at=draw(st.sampled_from([None, OLD, NOW - 10])),
        )
        for model in draw(st.lists(st.sampled_from(MODELS), unique=True, min_size=1))
    ]
    totals = [max(_used(residents, i), 1_000) for i in range(n_devices)]
    ranks = st.sampled_from([None, 50, 100, 200])
    models = [profile(m, residency_priority=draw(ranks)) for m in MODELS]
    need = draw(st.sampled_from([4_000, 8_000, 12_000, 16_000]))
    incoming = profile("new", vram_mb=need, residency_priority=draw(ranks))
    return fleet(
        node("a", *residents, devices=[(t, 0) for t in totals]), models=[incoming, *models]
    )


@settings(max_examples=200, deadline=None)
@given(one_crowded_node(), policies, st.booleans())
def test_victims_are_the_fewest_then_least_disruptive(snapshot, policy, force):
    o = Oracle(snapshot, NEW, policy, force)
    target = snapshot.nodes[0]
    pool = [r for r in target.residencies if o.may_go(target, r)]
    fitting = [
        sorted(chosen, key=o.eviction_key)
        for size in range(len(pool) + 1)
        for chosen in itertools.combinations(pool, size)
        if o.fits(target, chosen)
    ]
    decision = place(snapshot, NEW, NOW, policy, force=force)
    if not fitting:
        assert isinstance(decision, Impossible | Wait)
        return
    fewest = min(len(chosen) for chosen in fitting)
    best = min(
        (chosen for chosen in fitting if len(chosen) == fewest),
        key=lambda chosen: [o.eviction_key(r) for r in reversed(chosen)],
    )
    assert isinstance(decision, Load)
    assert decision.evict == tuple(r.model for r in best)


@settings(max_examples=100, deadline=None)
@given(fleets(), wanted, policies, st.booleans(), st.permutations(range(3)))
def test_place_is_deterministic_and_ignores_listing_order(snapshot, model, policy, force, order):
    decision = place(snapshot, model, NOW, policy, force=force)
    assert place(snapshot, model, NOW, policy, force=force) == decision
    assert place(_shuffled(snapshot, order), model, NOW, policy, force=force) == decision


@settings(max_examples=150, deadline=None)
@given(st.one_of(fleets(), fleets(crowded=True)), wanted, policies, st.booleans())
def test_place_agrees_with_the_oracle_on_random_fleets(snapshot, model, policy, force):
    decision = place(snapshot, model, NOW, policy, force=force)
    o = Oracle(snapshot, model, policy, force)
    _check_kind(o, decision)
    if isinstance(decision, Route):
        _check_route(o, decision)
    elif isinstance(decision, Load):
        _check_load(o, decision)
    else:
        _check_refusal(decision)


def _check_kind(o: Oracle, decision) -> None:
    """Route iff a replica serves; Impossible iff unknown or no topology; Load iff room."""
    replicas = o.routable({NodeState.UP}) or o.routable({NodeState.SUSPECT})
    if replicas:
        assert decision == Route(replicas[0][1])
    elif o.held():
        assert isinstance(decision, Wait)
        assert decision.reason in (WaitReason.LOADING, WaitReason.RECOVERING)
    elif o.profile() is None:
        if all(n.state is NodeState.DOWN for n in o.s.nodes):
            assert isinstance(decision, Wait)
        else:
            assert decision == Impossible(ImpossibleReason.MODEL_NOT_FOUND, decision.message)
    elif not any(o.feasible(n) for n in o.s.nodes):
        assert decision == Impossible(ImpossibleReason.NO_FEASIBLE_NODE, decision.message)
    else:
        loadable = [n for n in o.candidates() if o.fewest_victims(n) is not None]
        assert isinstance(decision, Load if loadable else Wait)


def _check_route(o: Oracle, decision: Route) -> None:
    """An up (else suspect), non-draining, servable replica with the least load."""
    target = o.s.node(decision.node)
    replica = target.residency(o.model)
    assert replica.status is LOADED
    assert replica.servable is not Servability.NO
    assert not target.draining
    assert target.state is not NodeState.DOWN
    if target.state is NodeState.SUSPECT:
        assert not o.routable({NodeState.UP})
    assert replica.load == o.routable({target.state})[0][0]


def _check_load(o: Oracle, decision: Load) -> None:
    """Victims idle, not outranking, settled (unless forced); then it fits; fewest victims."""
    target = o.s.node(decision.node)
    assert target in o.candidates()
    victims = [target.residency(m) for m in decision.evict]
    assert len(set(decision.evict)) == len(victims)
    for victim in victims:
        assert victim is not None
        assert victim.in_flight == victim.queued == 0
        assert o.priority(victim.model) <= o.priority(o.model)
        assert (
            o.force
            or victim.loaded_at is None
            or (NOW - victim.loaded_at >= o.policy.min_residency_seconds)
        )
        assert o.may_go(target, victim)
    assert o.fits_on(target, decision.devices, victims)
    assert o.fewest_victims(target) == len(victims)
    for other in o.candidates():
        fewest = o.fewest_victims(other)
        if fewest is not None and _failed_here(other, o.model) <= _failed_here(target, o.model):
            assert fewest >= len(victims)


def _failed_here(n: NodeSnapshot, model: ModelId) -> bool:
    r = n.residency(model)
    return r is not None and r.status is ResidencyStatus.FAILED


def _check_refusal(decision: Wait | Impossible) -> None:
    error = decision_error(decision)
    if isinstance(decision, Impossible):
        assert (error.status, error.code, error.retry_after) == (404, decision.reason.value, None)
    else:
        assert error.status == 503
        assert error.retry_after == decision.retry_after >= 1
    assert error.message
