"""Eviction rules, the memory accounting they rely on, and the defrag plan."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cortex.eviction import (
    EvictionPolicy,
    EvictionStrategy,
    defrag_plan,
    displaceable,
    evictable,
    eviction_key,
    make_room,
    may_displace,
)
from cortex.fleet_snapshot import (
    Catalogue,
    Demand,
    Device,
    FleetSnapshot,
    ModelProfile,
    NodeSnapshot,
    NodeState,
    Residency,
    ResidencyStatus,
    freed_by,
    memory_needed,
    priority_of,
    profile_for,
)
from protocol.ids import ModelId, NodeName

NOW = 10_000.0
OLD = NOW - 3600
LRU = EvictionPolicy()
BY_PRIORITY = EvictionPolicy(strategy=EvictionStrategy.PRIORITY)


def res(model: str, status: ResidencyStatus = ResidencyStatus.LOADED, **kw) -> Residency:
    kw.setdefault("loaded_at", OLD)
    kw.setdefault("devices", (0,))
    return Residency(model=ModelId(model), status=status, **kw)


def node(name: str, *residencies: Residency, devices=((24_000, 24_000),), **kw) -> NodeSnapshot:
    devs = tuple(Device(i, total, free) for i, (total, free) in enumerate(devices))
    return NodeSnapshot(name=NodeName(name), devices=devs, residencies=residencies, **kw)


def fleet(*nodes: NodeSnapshot, models=(), measured=None) -> FleetSnapshot:
    return FleetSnapshot(nodes=nodes, catalogue=Catalogue.of(models), measured_mb=measured or {})


def profile(model: str, **kw) -> ModelProfile:
    return ModelProfile(id=ModelId(model), **kw)


def models_of(residencies) -> list[str]:
    return [r.model for r in residencies]


# ------------------------------------------------------------ priorities


def test_priority_defaults_follow_upstream():
    assert profile("m").priority == 100
    assert profile("m", pinned_on=(NodeName("a"),)).priority == 1000
    assert profile("m", pinned_on=(NodeName("a"),), residency_priority=7).priority == 7
    snapshot = fleet(models=[profile("m", residency_priority=300)])
    assert priority_of(snapshot, ModelId("m")) == 300
    assert priority_of(snapshot, ModelId("not-catalogued")) == 100


def test_equal_ranks_displace_each_other_and_higher_ranks_are_safe():
    assert may_displace(100, 100)
    assert may_displace(200, 100)
    assert not may_displace(100, 200)


def test_displaceable_needs_loaded_status_and_no_higher_rank():
    n = node(
        "a",
        res("low"),
        res("equal"),
        res("high"),
        res("loading", ResidencyStatus.LOADING),
        res("recovering", ResidencyStatus.RECOVERING),
        res("gone", ResidencyStatus.UNLOADED),
        res("broken", ResidencyStatus.FAILED),
        res("incoming"),
    )
    snapshot = fleet(
        n,
        models=[
            profile("incoming", residency_priority=100),
            profile("low", residency_priority=10),
            profile("high", residency_priority=101),
        ],
    )
    assert models_of(displaceable(snapshot, n, ModelId("incoming"))) == ["low", "equal"]


def test_evictable_excludes_busy_and_young_unless_forced_young():
    n = node(
        "a",
        res("idle"),
        res("in-flight", in_flight=1),
        res("queued", queued=1),
        res("young", loaded_at=NOW - 29),
        res("just-settled", loaded_at=NOW - 30),
        res("unknown-age", loaded_at=None),
    )
    snapshot = fleet(n)
    incoming = ModelId("new")
    assert models_of(evictable(snapshot, n, incoming, NOW, LRU)) == [
        "idle",
        "just-settled",
        "unknown-age",
    ]
    forced = evictable(snapshot, n, incoming, NOW, LRU, force=True)
    assert models_of(forced) == ["idle", "young", "just-settled", "unknown-age"]


def test_a_resident_its_node_pins_is_never_displaced():
    n = node("a", res("pinned", pinned=True), res("free"))
    snapshot = fleet(n, models=[profile("new", residency_priority=5000)])
    assert models_of(displaceable(snapshot, n, ModelId("new"))) == ["free"]
    assert models_of(evictable(snapshot, n, ModelId("new"), NOW, LRU, force=True)) == ["free"]


def test_eviction_keys_order_lru_and_priority():
    snapshot = fleet(models=[profile("cheap", residency_priority=10)])
    never = res("never", last_used_at=None)
    old = res("old", last_used_at=5.0)
    cheap_recent = res("cheap", last_used_at=9.0)

    def order(strategy):
        residents = [cheap_recent, old, never]
        return models_of(sorted(residents, key=lambda r: eviction_key(snapshot, r, strategy)))

    assert order(EvictionStrategy.LRU) == ["never", "old", "cheap"]
    assert order(EvictionStrategy.PRIORITY) == ["cheap", "never", "old"]


def test_model_id_breaks_eviction_ties():
    a, b = res("a", last_used_at=1.0), res("b", last_used_at=1.0)
    snapshot = fleet()
    keys = [eviction_key(snapshot, r, EvictionStrategy.LRU) for r in (b, a)]
    assert sorted(keys) == [keys[1], keys[0]]


# ----------------------------------------------------- memory accounting


def test_memory_needed_prefers_the_largest_measured_figure():
    m = profile("m", vram_mb=8_000)
    assert memory_needed(fleet(models=[m]), m) == 8_000
    assert memory_needed(fleet(models=[m], measured={ModelId("m"): 5_000}), m) == 5_000
    on_nodes = fleet(
        node("a", res("m", memory_mb=6_000)),
        node("b", res("m", ResidencyStatus.UNLOADED, memory_mb=7_000)),
        models=[m],
        measured={ModelId("m"): 5_000},
    )
    assert memory_needed(on_nodes, m) == 7_000
    assert memory_needed(fleet(), profile("unsized")) == 0


def test_memory_is_split_evenly_over_occupied_devices_rounding_down():
    n = node("a", res("tp", memory_mb=10_001, devices=(0, 1)), devices=[(24_000, 0)] * 3)
    assert freed_by(fleet(n), n, n.residencies) == {0: 5_000, 1: 5_000}


def test_unknown_devices_count_on_the_only_device_and_nowhere_else():
    one = node("a", res("m", memory_mb=4_000, devices=()))
    assert freed_by(fleet(one), one, one.residencies) == {0: 4_000}
    two = node("b", res("m", memory_mb=4_000, devices=()), devices=[(24_000, 0)] * 2)
    assert freed_by(fleet(two), two, two.residencies) == {}
    stray = node("c", res("m", memory_mb=4_000, devices=(5,)))
    assert freed_by(fleet(stray), stray, stray.residencies) == {}


def test_resident_size_falls_back_to_the_catalogue_then_zero():
    n = node("a", res("sized"), res("unsized"))
    snapshot = fleet(n, models=[profile("sized", vram_mb=3_000)])
    assert freed_by(snapshot, n, n.residencies) == {0: 3_000}


def test_demand_splits_need_over_min_devices_rounding_up_and_applies_the_floor():
    m = profile("m", vram_mb=10_001, min_devices=2, min_device_vram_mb=16_000)
    demand = Demand.of(fleet(models=[m]), m)
    assert demand == Demand(per_device_mb=5_001, min_devices=2, floor_mb=16_000)
    assert not demand.qualifies(Device(0, 15_999, 15_999))
    assert demand.qualifies(Device(0, 16_000, 0))


def test_devices_on_picks_the_freest_qualifying_devices():
    n = node("a", devices=[(24_000, 9_000), (8_000, 8_000), (24_000, 20_000), (24_000, 12_000)])
    demand = Demand(per_device_mb=9_000, min_devices=2, floor_mb=16_000)
    assert demand.devices_on(n) == (2, 3)
    assert demand.devices_on(n, {0: 10_000}) == (0, 2)
    assert Demand(per_device_mb=9_000, min_devices=4).devices_on(n) is None


# ------------------------------------------------------------ make_room


def test_make_room_without_victims_when_it_fits():
    n = node("a", res("x", memory_mb=4_000), devices=[(24_000, 20_000)])
    room = make_room(fleet(n), n, Demand(16_000, 1), n.residencies, EvictionStrategy.LRU)
    assert room is not None
    assert (room.victims, room.devices, room.spare_mb) == ((), (0,), 4_000)


def test_make_room_gives_up_when_even_every_candidate_is_not_enough():
    n = node("a", res("x", memory_mb=4_000), devices=[(24_000, 4_000)])
    assert make_room(fleet(n), n, Demand(16_000, 1), n.residencies, EvictionStrategy.LRU) is None


def test_make_room_ignores_victims_on_devices_it_cannot_use():
    n = node(
        "a",
        res("useless", memory_mb=8_000, devices=(1,), last_used_at=0.0),
        res("useful", memory_mb=16_000, devices=(0,), last_used_at=5.0),
        devices=[(24_000, 8_000), (8_000, 0)],
    )
    room = make_room(fleet(n), n, Demand(20_000, 1), n.residencies, EvictionStrategy.LRU)
    assert room is not None
    assert models_of(room.victims) == ["useful"]


# --------------------------------------------------------------- defrag

DEFRAG = EvictionPolicy(defrag_after_cycles=10)


def test_defrag_unloads_unpinned_settled_models_of_an_idle_node_in_eviction_order():
    n = node(
        "a",
        res("recent", last_used_at=50.0),
        res("stale", last_used_at=10.0),
        res("node-pinned", pinned=True),
        res("catalogue-pinned"),
        res("young", loaded_at=NOW - 1),
        res("gone", ResidencyStatus.UNLOADED),
        lifecycle_cycles=10,
    )
    snapshot = fleet(n, models=[profile("catalogue-pinned", pinned_on=(NodeName("a"),))])
    assert defrag_plan(snapshot, NodeName("a"), DEFRAG, NOW) == ("stale", "recent")


def test_defrag_follows_the_priority_strategy():
    n = node("a", res("hi", last_used_at=1.0), res("lo", last_used_at=2.0), lifecycle_cycles=3)
    snapshot = fleet(n, models=[profile("hi", residency_priority=500)])
    policy = EvictionPolicy(strategy=EvictionStrategy.PRIORITY, defrag_after_cycles=3)
    assert defrag_plan(snapshot, NodeName("a"), policy, NOW) == ("lo", "hi")


@pytest.mark.parametrize(
    ("policy", "n"),
    [
        (EvictionPolicy(defrag_after_cycles=0), node("a", res("m"), lifecycle_cycles=99)),
        (DEFRAG, node("a", res("m"), lifecycle_cycles=9)),
        (DEFRAG, node("a", res("m"), res("busy", in_flight=1), lifecycle_cycles=10)),
        (DEFRAG, node("a", res("m"), res("waiting", queued=1, pinned=True), lifecycle_cycles=10)),
        (DEFRAG, node("a", res("m"), res("l", ResidencyStatus.LOADING), lifecycle_cycles=10)),
        (DEFRAG, node("a", res("m"), res("r", ResidencyStatus.RECOVERING), lifecycle_cycles=10)),
        (DEFRAG, node("a", res("m"), state=NodeState.SUSPECT, lifecycle_cycles=10)),
        (DEFRAG, node("a", res("m"), state=NodeState.DOWN, lifecycle_cycles=10)),
    ],
    ids=["off", "too-few-cycles", "busy", "queued", "loading", "recovering", "suspect", "down"],
)
def test_defrag_plans_nothing_unless_due_idle_and_up(policy, n):
    assert defrag_plan(fleet(n), NodeName("a"), policy, NOW) == ()


def test_defrag_of_an_unknown_node_is_a_caller_bug():
    with pytest.raises(KeyError):
        defrag_plan(fleet(), NodeName("nope"), DEFRAG, NOW)


residency_strategy = st.builds(
    res,
    st.sampled_from(["m0", "m1", "m2", "m3", "m4"]),
    st.sampled_from(ResidencyStatus),
    in_flight=st.sampled_from([0, 0, 1]),
    queued=st.sampled_from([0, 0, 2]),
    loaded_at=st.one_of(st.none(), st.floats(NOW - 100, NOW)),
    last_used_at=st.one_of(st.none(), st.floats(0, NOW)),
    pinned=st.booleans(),
)


@settings(deadline=None)
@given(
    residencies=st.lists(residency_strategy, unique_by=lambda r: r.model, max_size=5),
    cycles=st.integers(0, 6),
    threshold=st.integers(0, 6),
    state=st.sampled_from(NodeState),
    strategy=st.sampled_from(EvictionStrategy),
    pinned_on_a=st.sets(st.sampled_from(["m0", "m1", "m2", "m3", "m4"])),
)
def test_defrag_plan_only_ever_names_idle_unpinned_settled_models(
    residencies, cycles, threshold, state, strategy, pinned_on_a
):
    n = node("a", *residencies, state=state, lifecycle_cycles=cycles)
    snapshot = fleet(n, models=[profile(m, pinned_on=(NodeName("a"),)) for m in pinned_on_a])
    policy = EvictionPolicy(strategy=strategy, defrag_after_cycles=threshold)
    plan = defrag_plan(snapshot, NodeName("a"), policy, NOW)
    active = {ResidencyStatus.LOADING, ResidencyStatus.RECOVERING}
    idle = all(r.load == 0 and r.status not in active for r in residencies)
    due = 0 < threshold <= cycles and state is NodeState.UP and idle
    expected = {
        r.model
        for r in residencies
        if r.status is ResidencyStatus.LOADED
        and not r.pinned
        and r.model not in pinned_on_a
        and (r.loaded_at is None or NOW - r.loaded_at >= LRU.min_residency_seconds)
    }
    assert set(plan) == (expected if due else set())
    assert len(plan) == len(set(plan))


# ------------------------------------------------------------ validation


def test_values_refuse_nonsense():
    with pytest.raises(ValueError):
        EvictionPolicy(min_residency_seconds=-1)
    with pytest.raises(ValueError):
        EvictionPolicy(defrag_after_cycles=-1)
    with pytest.raises(ValueError):
        profile("m", min_devices=0)
    with pytest.raises(ValueError):
        fleet(node("a"), node("a"))
    with pytest.raises(ValueError):
        node("a", res("m"), res("m"))
    with pytest.raises(ValueError):
        NodeSnapshot(name=NodeName("a"), devices=(Device(0, 1, 1), Device(0, 1, 1)))


def test_catalogue_is_read_only_and_profiles_for_node_only_models_stay_there():
    snapshot = fleet(node("a", res("local", ResidencyStatus.UNLOADED)), node("b"))
    with pytest.raises(TypeError):
        snapshot.catalogue.profiles[ModelId("x")] = profile("x")  # type: ignore[index]
    local = profile_for(snapshot, ModelId("local"))
    assert local is not None
    assert (local.pinned_on, local.priority) == (("a",), 100)
    assert profile_for(snapshot, ModelId("nowhere")) is None
