"""The neuron's prefix cache metrics, copied from the workers' heartbeat statistics (#13)."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families as parse_text

from neuron.metrics import NeuronMetrics
from protocol.worker import EngineStatistics

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
NAMES = (
    "neuron_prefix_cache_lookups_total",
    "neuron_prefix_cache_hit_lookups_total",
    "neuron_prefix_cache_hit_tokens_total",
    "neuron_prefix_cache_bytes",
    "neuron_prefix_cache_budget_bytes",
    "neuron_prefix_cache_entries",
)


def stats(lookups: int, hits: int, tokens: int, held: int = 4096) -> EngineStatistics:
    return EngineStatistics(
        "org/a", 0, 0, 0, 0, 0, prefix_cache_bytes=held, prefix_cache_entries=2,
        prefix_cache_lookups=lookups, prefix_cache_hit_lookups=hits,
        prefix_cache_hit_tokens=tokens,
    )  # fmt: skip


def values(m: NeuronMetrics) -> dict[str, float]:
    body, _ = m.render(None)
    return {
        s.name: s.value
        for family in parse_text(body.decode())
        for s in family.samples
        if s.name.startswith("neuron_prefix_cache") and not s.name.endswith("_created")
    }


def test_counters_grow_by_what_is_new_and_survive_a_replaced_worker():
    m = NeuronMetrics()
    first, second = object(), object()
    m.prefix_cache_sampled("org/a", 1 << 30, stats(3, 2, 900), first)
    m.prefix_cache_sampled("org/a", 1 << 30, stats(5, 3, 1200), first)
    got = values(m)
    assert set(got) == set(NAMES)
    assert got["neuron_prefix_cache_lookups_total"] == 5
    assert got["neuron_prefix_cache_hit_lookups_total"] == 3
    assert got["neuron_prefix_cache_hit_tokens_total"] == 1200
    assert got["neuron_prefix_cache_budget_bytes"] == 1 << 30
    assert got["neuron_prefix_cache_bytes"] == 4096
    # a replaced worker counts from 0 again: its counts add, nothing is lost or undone
    m.prefix_cache_sampled("org/a", 1 << 30, stats(1, 1, 100, held=0), second)
    got = values(m)
    assert got["neuron_prefix_cache_lookups_total"] == 6
    assert got["neuron_prefix_cache_hit_tokens_total"] == 1300
    assert got["neuron_prefix_cache_bytes"] == 0


def test_no_heartbeat_yet_shows_the_budget_only_and_unload_drops_the_gauges():
    m = NeuronMetrics()
    m.prefix_cache_sampled("org/a", 0, None, None)
    assert values(m) == {"neuron_prefix_cache_budget_bytes": 0}
    m.prefix_cache_sampled("org/a", 1 << 20, stats(1, 0, 0), object())
    m.model_unloaded("org/a", ["cpu:0"])
    assert "neuron_prefix_cache_bytes" not in values(m)
    assert values(m)["neuron_prefix_cache_lookups_total"] == 1  # history stays


def test_the_operations_guide_lists_them():
    text = DOCS.read_text()
    for name in NAMES:
        assert re.sub(r"_total$", "", name) in text, f"{name} missing from docs/operations.md"
