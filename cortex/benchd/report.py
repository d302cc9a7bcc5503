"""Reports over the stored rows: the summary, its views, peers side by side, trends.

Every view reads only successful rows. The summary and the views use each
target's latest build (the sha of its newest successful row), medians with a
p95 where upstream has one. `compare` puts every target of one (model,
scenario) side by side with ratios to a baseline target (decode tok/s: higher
is better; TTFT: lower is better). `series` is one cell's medians per build in
the order the builds were first measured: the per-build trend. `views` is
everything at once, the body of `report --format json`, of the HTML page's
data and of the read API; `markdown` renders it for a terminal.

Not for: charts (`page`) or HTTP (`api`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from cortex.benchd.measure import median, p95

__all__ = ["compare", "concurrency", "latest_rows", "markdown", "series", "summary", "views"]

Row = dict[str, Any]


def _ok(rows: Iterable[Row]) -> list[Row]:
    return [r for r in rows if r["ok"] == 1]


def latest_rows(rows: Iterable[Row]) -> list[Row]:
    """The successful rows of each target's newest build."""
    ok = _ok(rows)
    newest: dict[str, str] = {}
    for row in ok:  # ascending id: the last one seen is the newest
        newest[row["target_name"]] = row["git_sha"]
    return [r for r in ok if newest[r["target_name"]] == r["git_sha"]]


def _values(rows: Sequence[Row], key: str) -> list[float]:
    return [r[key] for r in rows if r.get(key) is not None]


def _prefill_tps(rows: Sequence[Row]) -> float | None:
    rates = [r["prefill_tokens"] / (r["prefill_ms"] / 1000) for r in rows
             if r.get("prefill_tokens") and r.get("prefill_ms")]  # fmt: skip
    return median(rates)


def _cell(rows: Sequence[Row]) -> Row:
    first = rows[0]
    ttfts = _values(rows, "ttft_s")
    p95s = _values(rows, "ttft_p95_s")  # a burst measures its own p95
    return {
        "target": first["target_name"], "label": first.get("target_label") or first["target_name"],
        "kind": first["target_kind"], "model": first["model_id"], "scenario": first["scenario_id"],
        "prompt_tokens": median(_values(rows, "prompt_tokens_actual")),
        "prefill_tps": _prefill_tps(rows), "ttft_s": median(ttfts),
        "ttft_p95_s": median(p95s) if p95s else p95(ttfts),
        "decode_tps": median(_values(rows, "decode_tps")),
        "total_s": median(_values(rows, "total_s")),
        "total_p95_s": p95(_values(rows, "total_s")),
        "vram_used_mb": median(_values(rows, "vram_used_mb")),
        "concurrency": first.get("concurrency"),
        "queue_wait_ms": median(_values(rows, "queue_wait_ms")),
        "rejected": sum(_values(rows, "rejected")) if _values(rows, "rejected") else None,
        "cached_tokens": median(_values(rows, "cached_tokens")),
        "ttft_cold_s": median(_values(rows, "ttft_cold_s")),
        "swap_unload_ms": median(_values(rows, "swap_unload_ms")),
        "swap_load_ms": median(_values(rows, "swap_load_ms")),
        "build": first["git_sha"], "hostname": first.get("hostname"), "n": len(rows),
    }  # fmt: skip


def _scenario_order(scenario: str) -> tuple[str, int, str]:
    kind, _, arg = scenario.partition(":")
    return (kind, int(arg) if arg.isdigit() else 0, arg)


def summary(rows: Iterable[Row]) -> list[Row]:
    """One line per (target, model, scenario) of each target's latest build."""
    cells: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for row in latest_rows(rows):
        cells[(row["target_name"], row["model_id"], row["scenario_id"])].append(row)
    ordered = sorted(cells, key=lambda k: (k[1], _scenario_order(k[2]), k[0]))
    return [_cell(cells[key]) for key in ordered]


def _ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def compare(lines: Sequence[Row], baseline: str | None = None) -> list[Row]:
    """Each (model, scenario) measured on two or more targets, with ratios to the
    baseline (default: the first neuron target by name, else the first target)."""
    groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for line in lines:
        groups[(line["model"], line["scenario"])].append(line)
    base_name = baseline or _default_baseline(lines)
    out = []
    for (model, scenario), group in groups.items():
        base = next((g for g in group if g["target"] == base_name), None)
        if len(group) < 2 or base is None:
            continue
        group.sort(key=lambda g: (g is not base, g["target"]))  # the baseline first
        out.append({"model": model, "scenario": scenario, "baseline": base_name, "targets": [
            {"target": g["target"], "label": g["label"], "kind": g["kind"], "build": g["build"],
             "decode_tps": g["decode_tps"], "ttft_s": g["ttft_s"],
             "decode_ratio": _ratio(g["decode_tps"], base["decode_tps"]),
             "ttft_ratio": _ratio(g["ttft_s"], base["ttft_s"])} for g in group]})  # fmt: skip
    return out


def _default_baseline(lines: Sequence[Row]) -> str | None:
    neurons = sorted({line["target"] for line in lines if line["kind"] == "neuron"})
    anyone = sorted({line["target"] for line in lines})
    return (neurons or anyone or [None])[0]


def scaling(lines: Sequence[Row]) -> list[Row]:
    """Per (target, model): decode tok/s and TTFT against prompt size (chat:<n>)."""
    groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for line in lines:
        if line["scenario"].startswith("chat:"):
            groups[(line["target"], line["model"])].append(line)
    out = []
    for (target, model), group in sorted(groups.items()):
        points = sorted(({"prompt_size": int(g["scenario"][5:]),
                          "prompt_tokens": g["prompt_tokens"], "decode_tps": g["decode_tps"],
                          "ttft_s": g["ttft_s"]} for g in group),
                        key=lambda p: p["prompt_size"])  # fmt: skip
        rates = [p["decode_tps"] for p in points if p["decode_tps"]]
        flat = min(rates) / max(rates) if len(rates) > 1 else None
        out.append({"target": target, "label": group[0]["label"], "model": model,
                    "points": points, "decode_flatness": flat})  # fmt: skip
    return out


def concurrency(lines: Sequence[Row]) -> list[Row]:
    """Per (target, model): each level, and the knee — the highest level with no
    shedding and a p95 TTFT at most twice the lightest level's."""
    groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for line in lines:
        if line["scenario"].startswith("concurrency:"):
            groups[(line["target"], line["model"])].append(line)
    out = []
    for (target, model), group in sorted(groups.items()):
        levels = sorted(group, key=lambda g: g["concurrency"] or 0)
        lightest = levels[0]["ttft_p95_s"]
        knee = None
        for g in levels:
            within = lightest is not None and (g["ttft_p95_s"] or 0) <= 2 * lightest
            if not g["rejected"] and within:
                knee = g["concurrency"]
        out.append({"target": target, "label": group[0]["label"], "model": model, "knee": knee,
                    "levels": [{k: g[k] for k in _LEVEL_KEYS} for g in levels]})  # fmt: skip
    return out


_LEVEL_KEYS = ("concurrency", "ttft_s", "ttft_p95_s", "decode_tps", "queue_wait_ms",
               "rejected", "n")  # fmt: skip


def swap(lines: Sequence[Row]) -> list[Row]:
    keys = ("target", "label", "model", "swap_unload_ms", "swap_load_ms", "ttft_s", "build", "n")
    return [{k: g[k] for k in keys} for g in lines if g["scenario"] == "swap"]


def capability(rows: Iterable[Row]) -> list[Row]:
    """The newest artifact of each (target, model, probe) on its latest build."""
    newest: dict[tuple[str, str, str], Row] = {}
    for row in latest_rows(rows):
        if row["scenario_id"].startswith("capability:"):
            newest[(row["target_name"], row["model_id"], row["scenario_id"])] = row
    return [{"id": r["id"], "target": r["target_name"], "model": r["model_id"],
             "scenario": r["scenario_id"], "build": r["git_sha"], "artifact": r["artifact"],
             "quality_score": r["quality_score"], "scorer": r["scorer"]}
            for r in newest.values()]  # fmt: skip


def series(rows: Iterable[Row], target: str | None = None, model: str | None = None,
           scenario: str | None = None) -> list[Row]:  # fmt: skip
    """Per (target, model, scenario) matching the filters: medians per build, builds
    in the order they were first measured."""
    cells: dict[tuple[str, str, str], dict[str, list[Row]]] = defaultdict(dict)
    for row in _ok(rows):
        if (target or row["target_name"]) != row["target_name"] or (
                model or row["model_id"]) != row["model_id"] or (
                scenario or row["scenario_id"]) != row["scenario_id"]:  # fmt: skip
            continue
        key = (row["target_name"], row["model_id"], row["scenario_id"])
        cells[key].setdefault(row["git_sha"], []).append(row)
    out = []
    for (t, m, s), builds in sorted(cells.items()):
        points = [{"build": sha, "first_ts": group[0]["ts"], "n": len(group),
                   "decode_tps": median(_values(group, "decode_tps")),
                   "ttft_s": median(_values(group, "ttft_s"))}
                  for sha, group in builds.items()]  # fmt: skip
        out.append({"target": t, "model": m, "scenario": s, "points": points})
    return out


def views(rows: list[Row], *, skips: Sequence[Row] = (), probes: Sequence[Row] = (),
          baseline: str | None = None) -> dict[str, Any]:  # fmt: skip
    lines = summary(rows)
    return {
        "summary": lines, "compare": compare(lines, baseline), "scaling": scaling(lines),
        "concurrency": concurrency(lines), "swap": swap(lines), "capability": capability(rows),
        "series": series(rows), "failures": [_failure(r) for r in rows if r["ok"] != 1][-50:],
        "skips": [{k: s[k] for k in ("target_name", "git_sha", "model_id", "scenario_id",
                                     "reason")} for s in skips],
        "targets": [{k: p[k] for k in ("target_name", "target_kind", "endpoint", "reachable",
                                       "git_sha", "error", "ts")} for p in probes],
    }  # fmt: skip


def _failure(row: Row) -> Row:
    return {k: row[k] for k in ("id", "ts", "target_name", "git_sha", "model_id", "scenario_id",
                                "error")}  # fmt: skip


# -- markdown -----------------------------------------------------------------------------

SUMMARY_COLUMNS = (
    ("target", "label", "{}"), ("model", "model", "{}"), ("scenario", "scenario", "{}"),
    ("prompt tok", "prompt_tokens", "{:.0f}"), ("prefill tok/s", "prefill_tps", "{:.0f}"),
    ("TTFT s", "ttft_s", "{:.3f}"), ("TTFT p95 s", "ttft_p95_s", "{:.3f}"),
    ("decode tok/s", "decode_tps", "{:.1f}"), ("total s", "total_s", "{:.2f}"),
    ("total p95 s", "total_p95_s", "{:.2f}"), ("VRAM MB", "vram_used_mb", "{:.0f}"),
    ("conc", "concurrency", "{}"), ("queue ms", "queue_wait_ms", "{:.0f}"),
    ("shed", "rejected", "{:.0f}"), ("build", "build", "{}"), ("n", "n", "{}"),
)  # fmt: skip


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(report: dict[str, Any], view: str = "summary") -> str:
    """A view of `views()` as Markdown tables."""
    out: list[str] = []
    if view == "summary":
        out += _table([c[0] for c in SUMMARY_COLUMNS],
                      ([_fmt(line[k], f) for _, k, f in SUMMARY_COLUMNS]
                       for line in report["summary"]))  # fmt: skip
        out += _compare_md(report["compare"])
        out += _notes_md(report)
    elif view == "scaling":
        for s in report["scaling"]:
            out += ["", f"**{s['label']}** {s['model']} (decode flatness "
                    f"{_fmt(s['decode_flatness'], '{:.2f}')})", ""]  # fmt: skip
            out += _table(["prompt", "prompt tok", "decode tok/s", "TTFT s"],
                          ([str(p["prompt_size"]), _fmt(p["prompt_tokens"], "{:.0f}"),
                            _fmt(p["decode_tps"], "{:.1f}"), _fmt(p["ttft_s"], "{:.3f}")]
                           for p in s["points"]))  # fmt: skip
    elif view == "concurrency":
        for c in report["concurrency"]:
            out += ["", f"**{c['label']}** {c['model']} (knee: {_fmt(c['knee'], '{}')})", ""]
            out += _table(["level", "TTFT s", "TTFT p95 s", "tok/s", "queue ms", "shed"],
                          ([str(v["concurrency"]), _fmt(v["ttft_s"], "{:.3f}"),
                            _fmt(v["ttft_p95_s"], "{:.3f}"), _fmt(v["decode_tps"], "{:.1f}"),
                            _fmt(v["queue_wait_ms"], "{:.0f}"), _fmt(v["rejected"], "{:.0f}")]
                           for v in c["levels"]))  # fmt: skip
    elif view == "swap":
        out += _table(["target", "model", "unload ms", "load ms", "cold TTFT s", "build", "n"],
                      ([s["label"], s["model"], _fmt(s["swap_unload_ms"], "{:.0f}"),
                        _fmt(s["swap_load_ms"], "{:.0f}"), _fmt(s["ttft_s"], "{:.3f}"),
                        s["build"], str(s["n"])] for s in report["swap"]))  # fmt: skip
    elif view == "capability":
        for c in report["capability"]:
            score = _fmt(c["quality_score"], "{:g}")
            out += ["", f"**#{c['id']}** {c['target']} {c['model']} {c['scenario']} "
                    f"(build {c['build']}, score {score})", "",
                    "```", c["artifact"] or "", "```"]  # fmt: skip
    return "\n".join(out).strip() + "\n"


def _compare_md(compared: Sequence[Row]) -> list[str]:
    if not compared:
        return []
    rows = []
    for c in compared:
        for t in c["targets"]:
            rows.append([c["model"], c["scenario"], t["label"], t["build"],
                         _fmt(t["decode_tps"], "{:.1f}"), _fmt(t["decode_ratio"], "{:.2f}x"),
                         _fmt(t["ttft_s"], "{:.3f}"),
                         _fmt(t["ttft_ratio"], "{:.2f}x")])  # fmt: skip
    base = compared[0]["baseline"]
    headers = ["model", "scenario", "target", "build", "decode tok/s", f"vs {base}", "TTFT s",
               f"vs {base}"]  # fmt: skip
    return ["", "Side by side (ratios to the baseline):", "", *_table(headers, rows)]


def _notes_md(report: dict[str, Any]) -> list[str]:
    out = []
    for t in report["targets"]:
        if not t["reachable"]:
            out.append(f"- target {t['target_name']} unreachable at {t['ts']}: {t['error']}")
    for s in report["skips"]:
        out.append(f"- skipped {s['scenario_id']} on {s['target_name']} {s['model_id']}: "
                   f"{s['reason']}")  # fmt: skip
    for f in report["failures"][-10:]:
        out.append(f"- failed #{f['id']} {f['scenario_id']} on {f['target_name']} "
                   f"{f['model_id']}: {f['error']}")  # fmt: skip
    return ["", *out] if out else []


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, default=str) + "\n"
