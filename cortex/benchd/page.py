"""`report --html`: one self-contained page with charts.

The charts are drawn by Chart.js 4.5.1 (MIT), shipped with this package as
`static/chart-4.5.1.umd.min.js` (the npm release's `dist/chart.umd.min.js`,
source-map comment removed) and inlined into the page, so the page opens
offline, from a file, with nothing fetched. Chart.js rather than matplotlib
SVGs: the bench stays a light client (no numpy/matplotlib beside the gateway's
dependencies), and the page keeps its data as JSON (`#bench-data`, the same
`report.views` body as `--format json`) that the charts read, so the numbers
a chart shows are the numbers in the file. `window.benchCharts` holds each
chart by id for scripts and tests.

Charts: decode tok/s and TTFT against prompt size (chat:<n>), TTFT against
concurrency with each knee marked, decode tok/s per build (the trend), and
peers side by side as bars with the ratio table. Not for: computing any of the
numbers (`report`).
"""

from __future__ import annotations

import html
import json
from importlib.resources import files
from typing import Any

from cortex.benchd.report import SUMMARY_COLUMNS, _fmt

__all__ = ["CHART_JS", "render"]

CHART_JS = "chart-4.5.1.umd.min.js"


def _chart_js() -> str:
    return (files("cortex.benchd") / "static" / CHART_JS).read_text(encoding="utf-8")


def _data_json(report: dict[str, Any]) -> str:
    # `</` would end the script element early; JSON allows `<\/`.
    return json.dumps(report, default=str).replace("</", "<\\/")


def _summary_table(report: dict[str, Any]) -> str:
    head = "".join(f"<th>{html.escape(c[0])}</th>" for c in SUMMARY_COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(line[k], f))}</td>"
                         for _, k, f in SUMMARY_COLUMNS) + "</tr>"
        for line in report["summary"]
    )  # fmt: skip
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _compare_table(report: dict[str, Any]) -> str:
    if not report["compare"]:
        return "<p>No model and scenario was measured on more than one target.</p>"
    rows = []
    for c in report["compare"]:
        for t in c["targets"]:
            cells = [c["model"], c["scenario"], t["label"], t["build"],
                     _fmt(t["decode_tps"], "{:.1f}"), _fmt(t["decode_ratio"], "{:.2f}x"),
                     _fmt(t["ttft_s"], "{:.3f}"), _fmt(t["ttft_ratio"], "{:.2f}x")]  # fmt: skip
            rows.append("<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in cells) + "</tr>")
    base = html.escape(report["compare"][0]["baseline"])
    head = "".join(f"<th>{h}</th>" for h in ("model", "scenario", "target", "build",
                   "decode tok/s", f"vs {base}", "TTFT s", f"vs {base}"))  # fmt: skip
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _notes(report: dict[str, Any]) -> str:
    items = [f"target {t['target_name']} unreachable at {t['ts']}: {t['error']}"
             for t in report["targets"] if not t["reachable"]]  # fmt: skip
    items += [f"skipped {s['scenario_id']} on {s['target_name']} {s['model_id']}: {s['reason']}"
              for s in report["skips"]]  # fmt: skip
    items += [f"failed #{f['id']} {f['scenario_id']} on {f['target_name']} {f['model_id']}: "
              f"{f['error']}" for f in report["failures"]]  # fmt: skip
    if not items:
        return ""
    return "<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"


_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: 12px; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #f3f3f3; } td:nth-child(-n+3) { text-align: left; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 1.5em; }
.chart { position: relative; height: 320px; } .empty { color: #888; }
"""

# Builds every chart from #bench-data; a chart with no data says so instead.
_SCRIPT = r"""
(function () {
  const data = JSON.parse(document.getElementById('bench-data').textContent);
  const charts = window.benchCharts = {};
  const palette = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b',
                   '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];
  const colour = (i) => palette[i % palette.length];
  function chart(id, config, points) {
    const canvas = document.getElementById(id);
    if (!points) {
      canvas.parentElement.innerHTML = '<p class="empty">No data for this chart yet.</p>';
      return;
    }
    config.options = Object.assign({animation: false, responsive: true,
                                    maintainAspectRatio: false}, config.options || {});
    charts[id] = new Chart(canvas, config);
  }
  const axes = (x, y, type) => ({scales: {
    x: {type: type || 'linear', title: {display: true, text: x}, ticks: {precision: 0}},
    y: {beginAtZero: true, title: {display: true, text: y}}}});
  const count = (sets) => sets.reduce((n, s) => n + s.data.filter((p) => p.y !== null).length, 0);

  function scaling(key, id, label) {
    const sets = data.scaling.map((s, i) => ({
      label: s.label + ' ' + s.model, borderColor: colour(i), backgroundColor: colour(i),
      data: s.points.map((p) => ({x: p.prompt_size, y: p[key]})), spanGaps: true}));
    chart(id, {type: 'line', data: {datasets: sets},
               options: axes('prompt size (tokens, approx.)', label)}, count(sets));
  }
  scaling('decode_tps', 'chart-scaling-tps', 'decode tok/s');
  scaling('ttft_s', 'chart-scaling-ttft', 'TTFT (s)');

  const conc = [];
  data.concurrency.forEach((c, i) => {
    const name = c.label + ' ' + c.model;
    conc.push({label: name + ' median', borderColor: colour(i), backgroundColor: colour(i),
               data: c.levels.map((v) => ({x: v.concurrency, y: v.ttft_s}))});
    conc.push({label: name + ' p95', borderColor: colour(i), borderDash: [6, 4],
               backgroundColor: colour(i),
               data: c.levels.map((v) => ({x: v.concurrency, y: v.ttft_p95_s}))});
    const knee = c.levels.find((v) => v.concurrency === c.knee);
    if (knee) {
      conc.push({label: name + ' knee', type: 'scatter', pointStyle: 'triangle', pointRadius: 9,
                 borderColor: '#000', backgroundColor: colour(i),
                 data: [{x: knee.concurrency, y: knee.ttft_p95_s}]});
    }
  });
  chart('chart-concurrency', {type: 'line', data: {datasets: conc},
        options: axes('concurrent streams', 'TTFT (s)')}, count(conc));

  // Every build on one axis, in the order each was first measured; a line joins the
  // builds of its own target.
  const first = {};
  data.series.forEach((s) => s.points.forEach((p) => {
    if (!(p.build in first) || p.first_ts < first[p.build]) first[p.build] = p.first_ts;
  }));
  const builds = Object.keys(first).sort((a, b) => (first[a] < first[b] ? -1 : 1));
  const add = (list, item) => list.includes(item) || list.push(item);
  function trend(key, id, label) {
    const sets = data.series.map((s, i) => ({
      label: s.target + ' ' + s.model + ' ' + s.scenario, borderColor: colour(i),
      backgroundColor: colour(i), spanGaps: true,
      data: s.points.map((p) => ({x: p.build, y: p[key]}))}));
    chart(id, {type: 'line', data: {labels: builds, datasets: sets},
               options: axes('build (first measured → last)', label, 'category')}, count(sets));
  }
  trend('decode_tps', 'chart-trend-tps', 'decode tok/s');
  trend('ttft_s', 'chart-trend-ttft', 'TTFT (s)');

  const labels = data.compare.map((c) => c.model + ' ' + c.scenario);
  const names = [];
  data.compare.forEach((c) => c.targets.forEach((t) => add(names, t.label)));
  function bars(key, id, label) {
    const sets = names.map((name, i) => ({label: name, backgroundColor: colour(i),
      data: data.compare.map((c) => { const t = c.targets.find((t) => t.label === name);
                                      return t ? t[key] : null; })}));
    const n = sets.reduce((k, s) => k + s.data.filter((v) => v !== null).length, 0);
    chart(id, {type: 'bar', data: {labels: labels, datasets: sets},
               options: axes('model, scenario', label, 'category')}, n);
  }
  bars('decode_tps', 'chart-peers-tps', 'decode tok/s');
  bars('ttft_s', 'chart-peers-ttft', 'TTFT (s)');
})();
"""


def _figure(chart_id: str, title: str) -> str:
    return f'<figure><figcaption>{html.escape(title)}</figcaption><div class="chart"><canvas ' \
           f'id="{chart_id}"></canvas></div></figure>'  # fmt: skip


def render(report: dict[str, Any], title: str = "helexa-bench report") -> str:
    figures = "".join(_figure(i, t) for i, t in (
        ("chart-scaling-tps", "decode tok/s vs prompt size"),
        ("chart-scaling-ttft", "TTFT vs prompt size"),
        ("chart-concurrency", "TTFT vs concurrency (▲ = knee)"),
        ("chart-trend-tps", "decode tok/s per build"),
        ("chart-trend-ttft", "TTFT per build"),
        ("chart-peers-tps", "side by side: decode tok/s"),
        ("chart-peers-ttft", "side by side: TTFT"),
    ))  # fmt: skip
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head>
<body><h1>{html.escape(title)}</h1>
<h2>Summary (each target's latest build, medians)</h2>{_summary_table(report)}
<h2>Side by side</h2>{_compare_table(report)}
<h2>Charts</h2><div class="charts">{figures}</div>
{_notes(report)}
<script type="application/json" id="bench-data">{_data_json(report)}</script>
<script>{_chart_js()}</script>
<script>{_SCRIPT}</script>
</body></html>
"""
