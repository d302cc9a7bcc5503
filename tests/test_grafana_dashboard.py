"""docs/grafana/helexa.json: an importable dashboard over metrics that really exist.

The structural tests check what Grafana 10 needs to import the file: a uid
and title, the datasource as the `${DS_PROMETHEUS}` input (so the import
dialog asks for it), panel ids that are unique, grid positions that fit
the 24-column grid without overlapping, and a PromQL target on every panel.

The metric tests build the registries the way the daemons do —
`CortexMetrics()` and `NeuronMetrics()` with the build info set — and
derive every series name a scrape can contain (a counter `x` is scraped as
`x_total`, a histogram as `x_bucket` / `x_sum` / `x_count`, an info as
`x_info`) with its labels. Every metric an expression or a variable query
names must be one of them; every label in a selector's matchers must be
one of that metric's labels; every label in `by (...)` must be a label of
each metric the aggregation covers. `instance` and `job` are allowed
everywhere: Prometheus attaches them to every scraped series. So renaming a
metric or a label in `cortex/metrics.py` or `neuron/metrics.py` fails here
until the dashboard follows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from cortex.metrics import CortexMetrics
from neuron.metrics import NeuronMetrics
from protocol.buildinfo import build_info

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana" / "helexa.json"
DATASOURCE = "${DS_PROMETHEUS}"
TARGET_LABELS = frozenset({"instance", "job"})  # added by Prometheus to every scraped series
GRAFANA_RANGES = ("$__rate_interval", "$__interval", "$__range")

# PromQL words that are not metric names (only those a dashboard is likely to use:
# anything else is taken for a metric name and must exist).
PROMQL_WORDS = frozenset({
    "sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk",
    "quantile", "count_values",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "changes", "resets",
    "histogram_quantile", "vector", "scalar", "abs", "ceil", "floor", "round", "clamp",
    "clamp_min", "clamp_max", "time", "timestamp", "absent", "label_replace",
    "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "last_over_time",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan",
})  # fmt: skip
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^{}]*)\}")
MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
RANGE = re.compile(r"\[[^\[\]]*\]")
LABEL_VALUES = re.compile(
    r"^label_values\(\s*([A-Za-z_:][\w:]*)\s*(?:\{([^{}]*)\})?\s*,\s*(\w+)\s*\)$"
)


# ------------------------------------------------------------------ the real series


def _family_labels(metrics: Any) -> dict[str, set[str]]:
    """Label names per family, from the metric objects the class holds as attributes
    (the classes document that their attributes are the metrics)."""
    labels: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        for item in value.values() if isinstance(value, dict) else (value,):
            name, names = getattr(item, "_name", None), getattr(item, "_labelnames", None)
            if isinstance(name, str) and isinstance(names, tuple):
                labels.setdefault(name, set()).update(names)
    return labels


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def _series(metrics: Any) -> dict[str, frozenset[str]]:
    """Every series name a scrape of `metrics.registry` can hold → its label names."""
    declared = _family_labels(metrics)
    series: dict[str, frozenset[str]] = {}
    for family in metrics.registry.collect():
        labels = declared.get(family.name, set()) | {k for s in family.samples for k in s.labels}
        for suffix in _SUFFIXES.get(family.type, ("",)):
            extra = {"le"} if suffix == "_bucket" else set()
            if family.type == "summary" and suffix == "":
                extra = {"quantile"}
            series[family.name + suffix] = frozenset(labels | extra)
    return series


@pytest.fixture(scope="module")
def series() -> dict[str, frozenset[str]]:
    cortex = CortexMetrics()
    neuron = NeuronMetrics()
    neuron.set_build_info(build_info())  # as the daemon does at start
    ours = _series(cortex)
    theirs = _series(neuron)
    shared = ours.keys() & theirs.keys()
    assert all(name.startswith("process_") for name in shared), shared
    return {**theirs, **ours}


def test_the_series_catalogue_sees_labels(series: dict[str, frozenset[str]]) -> None:
    """A guard for the introspection itself: if it found no labels, every label check
    below would fail for the wrong reason (or, worse, a loosened one pass)."""
    assert series["cortex_requests_total"] == {"route", "model", "node", "outcome"}
    assert series["cortex_model_rejections_total"] == {"node", "model", "reason"}
    assert series["cortex_request_duration_seconds_bucket"] == {"model", "node", "le"}
    assert series["neuron_worker_restarts_total"] == {"device"}
    assert {"version", "git_sha"} <= series["neuron_build_info"]
    assert "process_resident_memory_bytes" in series
    assert "cortex_requests" not in series  # a counter is only ever scraped as _total


# ------------------------------------------------------------------ PromQL, as far as we need


@attrs.frozen
class Use:
    """What one expression references: metrics, matcher labels, grouping labels."""

    metrics: frozenset[str]
    matchers: tuple[tuple[str, str], ...]  # (metric, label)
    groupings: tuple[tuple[str, frozenset[str]], ...]  # (label, metrics it must be on)


def _balanced(text: str, start: int) -> str:
    """The parenthesised group opening at `text[start]`."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[start : i + 1]
    raise AssertionError(f"unbalanced parentheses in {text!r}")


def _balanced_before(text: str, end: int) -> str:
    """The parenthesised group closing just before `end` (ignoring spaces)."""
    i = len(text[:end].rstrip()) - 1
    assert text[i] == ")", f"expected ')' before position {end} in {text!r}"
    depth = 0
    for j in range(i, -1, -1):
        depth += {")": 1, "(": -1}.get(text[j], 0)
        if depth == 0:
            return text[j : i + 1]
    raise AssertionError(f"unbalanced parentheses in {text!r}")


def _names(text: str) -> set[str]:
    """Metric names in `text` (strings, ranges, matchers and label lists removed)."""
    text = GROUPING.sub(" ", SELECTOR.sub(lambda m: f" {m[1] or ''} ", text))
    return {word for word in IDENTIFIER.findall(text) if word.lower() not in PROMQL_WORDS}


def parse(expr: str) -> Use:
    text = expr
    for variable in GRAFANA_RANGES:
        text = text.replace(variable, "5m")
    text = RANGE.sub(" ", STRING.sub('""', text))
    assert "$" not in text, f"a Grafana variable outside a string or range: {expr!r}"
    matchers = []
    for selector in SELECTOR.finditer(text):
        assert selector[1], f"a selector without a metric name: {selector[0]!r}"
        matchers += [(selector[1], label) for label in MATCHER.findall(selector[2])]
    groupings = []
    for group in GROUPING.finditer(text):
        keyword, labels = group[1], [s.strip() for s in group[2].split(",") if s.strip()]
        if keyword in ("by", "without"):
            after = text[group.end() :].lstrip()
            if after.startswith("("):
                scope = _balanced(text, len(text) - len(after))
            else:  # `sum (...) by (...)`
                scope = _balanced_before(text, group.start())
        else:  # vector matching: both sides
            scope = text
        groupings += [(label, frozenset(_names(scope))) for label in labels]
    return Use(frozenset(_names(text)), tuple(matchers), tuple(groupings))


def problems(expr: str, series: dict[str, frozenset[str]]) -> list[str]:
    use = parse(expr)
    found = [f"no metric {name!r}" for name in sorted(use.metrics) if name not in series]
    if not use.metrics:
        found.append("no metric at all")
    for metric, label in use.matchers:
        if metric in series and label not in series[metric] | TARGET_LABELS:
            found.append(f"{metric} has no label {label!r}")
    for label, metrics in use.groupings:
        for metric in sorted(metrics & series.keys()):
            if label not in series[metric] | TARGET_LABELS:
                found.append(f"grouping by {label!r}, which {metric} does not have")
    return found


def test_the_checker_catches_what_it_should(series: dict[str, frozenset[str]]) -> None:
    ok = 'histogram_quantile(0.95, sum by (le, model) (rate(cortex_load_wait_seconds_bucket{model=~"$model"}[$__rate_interval])))'  # noqa: E501
    assert problems(ok, series) == []
    assert problems("sum(rate(cortex_requests_total[5m])) by (route)", series) == []
    assert problems("sum by (instance) (neuron_models_loaded)", series) == []
    assert problems("rate(neuron_worker_restarts[5m])", series) == [
        "no metric 'neuron_worker_restarts'"
    ]
    assert problems('cortex_node_up{nodes="a"}', series) == ["cortex_node_up has no label 'nodes'"]
    assert problems("sum by (model) (cortex_node_up)", series) == [
        "grouping by 'model', which cortex_node_up does not have"
    ]
    assert problems("sum by (le) (rate(cortex_requests_total[5m]))", series) == [
        "grouping by 'le', which cortex_requests_total does not have"
    ]
    assert problems("sum(rate(cortex_requests_total[5m])) by (le)", series) == [
        "grouping by 'le', which cortex_requests_total does not have"
    ]
    assert problems('vector(0) or sum(cortex_node_up{node=~"$node"})', series) == []


# ------------------------------------------------------------------ the dashboard


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", ())  # a collapsed row holds its panels


def _targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in _panels(dashboard):
        for target in panel.get("targets", ()):
            yield panel["title"], target


def test_it_is_an_importable_dashboard(dashboard: dict[str, Any]) -> None:
    assert isinstance(dashboard["uid"], str) and 0 < len(dashboard["uid"]) <= 40
    assert dashboard["title"]
    assert dashboard["id"] is None  # Grafana assigns it on import
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    [source] = dashboard["__inputs"]
    assert source["name"] == "DS_PROMETHEUS"
    assert (source["type"], source["pluginId"]) == ("datasource", "prometheus")
    required = {r["id"] for r in dashboard["__requires"]}
    assert {"grafana", "prometheus"} <= required
    panel_types = {p["type"] for p in _panels(dashboard)} - {"row"}
    assert panel_types <= required, panel_types - required


def test_every_panel_queries_the_input_datasource(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    graphs = [p for p in _panels(dashboard) if p["type"] != "row"]
    assert len(graphs) >= 30
    for panel in graphs:
        assert panel["title"], panel
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no targets"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_the_panels_tile_the_grid(dashboard: dict[str, Any]) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[x, y]}"
                taken[x, y] = panel["title"]


def test_the_variables(dashboard: dict[str, Any], series: dict[str, frozenset[str]]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"node", "model", "instance"} <= variables.keys()
    for name, variable in variables.items():
        assert variable["datasource"]["uid"] == DATASOURCE, name
        query = (
            variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        )
        assert query == variable["definition"], name
        match = LABEL_VALUES.match(query)
        assert match, f"{name}: expected label_values(metric, label), got {query!r}"
        metric, matchers, label = match[1], match[2] or "", match[3]
        assert metric in series, f"{name}: no metric {metric!r}"
        for used in (label, *MATCHER.findall(matchers)):
            assert used in series[metric] | TARGET_LABELS, f"{name}: {metric} has no {used!r}"
    used = set()
    for _, target in _targets(dashboard):
        used |= set(re.findall(r"\$\{?(\w+)", target["expr"]))
    assert used - {"__rate_interval", "__interval", "__range"} <= variables.keys()


def test_every_expression_names_real_metrics_and_labels(
    dashboard: dict[str, Any], series: dict[str, frozenset[str]]
) -> None:
    found = [
        f"{title}: {problem}  in  {target['expr']}"
        for title, target in _targets(dashboard)
        for problem in problems(target["expr"], series)
    ]
    assert not found, "\n".join(found)


def test_the_dashboard_covers_both_daemons(
    dashboard: dict[str, Any], series: dict[str, frozenset[str]]
) -> None:
    """The headline metrics of the gateway and the neuron each have a panel."""
    used = set().union(*(parse(t["expr"]).metrics for _, t in _targets(dashboard)))
    for metric in (
        "cortex_requests_total", "cortex_request_errors_total", "cortex_node_up",
        "cortex_time_to_first_token_seconds_bucket", "cortex_queue_wait_seconds_bucket",
        "cortex_load_wait_seconds_bucket", "cortex_gateway_overhead_seconds_bucket",
        "cortex_evictions_total", "cortex_model_load_duration_seconds_bucket",
        "cortex_model_in_flight", "cortex_model_queue_depth", "cortex_device_vram_used_mb",
        "neuron_worker_restarts_total", "neuron_worker_ready",
        "neuron_device_memory_used_bytes", "neuron_time_to_first_token_seconds_bucket",
    ):  # fmt: skip
        assert metric in used, f"no panel shows {metric}"
