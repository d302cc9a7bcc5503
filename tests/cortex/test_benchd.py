"""helexa-bench against real neurons: sweeps, builds, peers, failures, the HTML page.

Two `neuron serve` processes (one CPU device each, the tiny synthesized Qwen
loaded, unpinned) serve the module. The second runs with `GIT_DIR` pointing at a
throwaway repository, so its `/version` reports another git sha: it is "the
same target after an upgrade" and, through its `/v1`, an OpenAI-compatible peer.
The first sweep (module fixture, through the real `helexa-bench once`) covers
the neuron, the peer and a target that is down; scenario sizes are tiny.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from cortex.benchd import report
from cortex.benchd.config import BenchConfig, load_config
from cortex.benchd.store import Store
from cortex.benchd.sweep import BenchStamp, sweep
from tests.neuron.daemon_harness import (
    HTTPX_ASYNCGEN_WARNING,
    QWEN,
    RunningDaemon,
    start_daemon,
    synthesize_models,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.filterwarnings(HTTPX_ASYNCGEN_WARNING),
]

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {"cpu": {"devices": 1, "threads": 1, "memory_mb": 512}}
MEASURED = ("chat:8", "chat:24", "concurrency:2", "prefix:16", "capability:greet", "swap")
TOO_LONG = "chat:5000"  # over the tiny model's 4096-token context: every request is a 400


def _start(tmp: Path, models, git_dir: Path | None, out: dict[str, Any], key: str) -> None:
    env = {"GIT_DIR": str(git_dir)} if git_dir else {}
    try:
        out[key] = start_daemon(tmp, models, settings=SETTINGS, env=env)
    except BaseException as exc:
        log = tmp / "neuron.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        out[key] = AssertionError(f"neuron {key}: {exc}\n{tail}")


@pytest.fixture(scope="module")
def neurons(tmp_path_factory) -> Any:
    models = synthesize_models(tmp_path_factory.mktemp("bench-models"))
    fake = tmp_path_factory.mktemp("other-build")
    git = ["git", "-C", str(fake), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "another build"], check=True)
    started: dict[str, Any] = {}
    threads = [threading.Thread(target=_start, args=(tmp_path_factory.mktemp(f"neuron-{key}"),
                                                     models, git_dir, started, key))
               for key, git_dir in (("a", None), ("b", fake / ".git"))]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        for daemon in started.values():
            if isinstance(daemon, BaseException):
                raise daemon
        a, b = started["a"], started["b"]
        assert a.get("/version")["git_sha"] != b.get("/version")["git_sha"]
        yield a, b
    finally:
        for daemon in started.values():
            if isinstance(daemon, RunningDaemon):
                daemon.stop()


def bench_toml(db: Path, targets: list[dict[str, Any]], **scenarios: Any) -> str:
    values = {"prompt_sizes": [8, 24, 5000], "max_tokens": 6, "concurrency_levels": [2],
              "concurrency_prompt_tokens": 8, "prefix_sizes": [16], "image_sizes": [32],
              "swap": True, "swap_probe_tokens": 8, **scenarios}  # fmt: skip
    lines = [
        "[bench]",
        "samples_per_version = 1",
        "iteration_pause_secs = 0",
        "request_timeout_secs = 60",
        f"db_path = {json.dumps(str(db))}",
        "",
        "[scenarios]",
    ]
    lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    lines += ["", "[[scenarios.capability_probes]]", 'name = "greet"', 'prompt = "Say hello."',
              "max_tokens = 6"]  # fmt: skip
    for target in targets:
        lines += ["", "[[targets]]"] + [f"{k} = {json.dumps(v)}" for k, v in target.items()]
    return "\n".join(lines) + "\n"


def helexa_bench(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "cortex.benchd", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def ok_rows(db: Path) -> list[dict[str, Any]]:
    return [r for r in Store(db).runs() if r["ok"] == 1]


@pytest.fixture(scope="module")
def swept(neurons, tmp_path_factory) -> Path:
    """The database after one `helexa-bench once` over neuron a, b as a peer, and a dead port."""
    a, b = neurons
    tmp = tmp_path_factory.mktemp("bench")
    db = tmp / "bench.sqlite"
    config = tmp / "helexa-bench.toml"
    config.write_text(bench_toml(db, [
        {"name": "a", "endpoint": a.url},
        {"name": "peer", "kind": "openai", "endpoint": b.url + "/v1", "build": "peer-1",
         "label": "peer server"},
        {"name": "down", "endpoint": "http://127.0.0.1:9"},
    ]))  # fmt: skip
    done = helexa_bench("once", "-c", str(config))
    assert "unreachable=down" in done.stdout
    return db


def test_a_sweep_records_every_scenario_stamped_with_the_build(swept, neurons):
    a, _ = neurons
    version, discovery = a.get("/version"), a.get("/discovery")
    rows = [r for r in ok_rows(swept) if r["target_name"] == "a"]
    assert sorted(r["scenario_id"] for r in rows) == sorted(MEASURED)
    for row in rows:
        assert (row["git_sha"], row["git_sha_long"]) == (version["git_sha"],
                                                         version["git_sha_long"])  # fmt: skip
        assert row["package_version"] == version["package_version"]
        assert row["torch_version"] == version["torch_version"]
        assert row["hostname"] == discovery["hostname"]
        assert row["model_id"] == QWEN and row["harness"] == "transformers"
        assert row["bench_version"] and row["sample"] == 0
        assert row["ttft_s"] > 0 and row["total_s"] >= row["ttft_s"]
        assert row["completion_tokens"] >= 1 and row["prompt_tokens_actual"] > 0
        if row["scenario_id"] != "concurrency:2":  # a burst keeps medians, not one timing
            assert row["prefill_ms"] is not None and row["decode_ms"] is not None
    by = {r["scenario_id"]: r for r in rows}
    assert by["chat:24"]["prompt_tokens_actual"] > by["chat:8"]["prompt_tokens_actual"]
    burst = by["concurrency:2"]
    assert (burst["concurrency"], burst["rejected"]) == (2, 0)
    assert burst["ttft_p95_s"] >= burst["ttft_s"] and burst["queue_wait_ms"] is not None
    assert by["swap"]["swap_unload_ms"] > 0 and by["swap"]["swap_load_ms"] > 0
    assert by["prefix:16"]["ttft_cold_s"] > 0
    assert isinstance(by["capability:greet"]["artifact"], str)
    assert a.model_load(QWEN)  # the swap left the model loaded
    skips = {(s["target_name"], s["scenario_id"]): s["reason"] for s in Store(swept).skips()}
    assert "vision" in skips[("a", "image:32")]
    assert "neuron's load API" in skips[("peer", "swap")]


def test_a_target_that_is_down_is_recorded_and_an_erroring_cell_is_an_ok0_row(swept):
    store = Store(swept)
    probes = {p["target_name"]: p for p in store.probes()}
    assert probes["down"]["reachable"] == 0 and "ConnectError" in probes["down"]["error"]
    assert probes["a"]["reachable"] == 1 and probes["a"]["rows_added"] == len(MEASURED)
    failed = [r for r in store.runs({"ok": 0}) if r["target_name"] == "a"]
    assert [r["scenario_id"] for r in failed] == [TOO_LONG]
    assert "HTTP 400" in failed[0]["error"] and "context length" in failed[0]["error"]
    # the sweep went on: the scenarios after the failing one were measured
    assert {"concurrency:2", "swap"} <= {r["scenario_id"] for r in ok_rows(swept)}


async def test_the_same_build_adds_nothing_and_a_new_sha_starts_new_samples(swept, neurons,
                                                                             tmp_path):  # fmt: skip
    a, b = neurons
    db = tmp_path / "copy.sqlite"
    with sqlite3.connect(swept) as source, sqlite3.connect(db) as copy:
        source.backup(copy)
    before = len(ok_rows(db))
    same = write_config(tmp_path, bench_toml(db, [{"name": "a", "endpoint": a.url}]))
    result = await sweep(same, Store(db), BenchStamp("test", None))
    assert result.rows_added == 0 and len(ok_rows(db)) == before
    assert result.failed == 1  # only the cell that always fails is tried again

    upgraded = write_config(tmp_path, bench_toml(db, [{"name": "a", "endpoint": b.url}]))
    result = await sweep(upgraded, Store(db), BenchStamp("test", None))
    new_sha = b.get("/version")["git_sha"]
    fresh = [r for r in ok_rows(db) if r["target_name"] == "a" and r["git_sha"] == new_sha]
    assert result.rows_added == len(MEASURED) == len(fresh)
    trend = report.series(Store(db).runs(), "a", QWEN, "chat:8")[0]["points"]
    assert [p["build"] for p in trend] == [a.get("/version")["git_sha"], new_sha]


def write_config(tmp: Path, text: str) -> BenchConfig:
    path = tmp / "helexa-bench.toml"
    path.write_text(text)
    return load_config(path, {})


def test_a_peer_is_reported_side_by_side_with_ratios(swept):
    out = json.loads(helexa_bench("report", "--db", str(swept), "--format", "json").stdout)
    compared = {c["scenario"]: c for c in out["compare"]}
    assert set(compared) == set(MEASURED) - {"swap"}  # the peer cannot swap
    chat = compared["chat:8"]
    assert chat["baseline"] == "a" and chat["model"] == QWEN
    targets = {t["target"]: t for t in chat["targets"]}
    assert targets["peer"]["build"] == "peer-1" and targets["peer"]["kind"] == "openai"
    assert targets["a"]["ttft_ratio"] == 1.0
    peer, base = targets["peer"], targets["a"]
    assert peer["ttft_ratio"] == pytest.approx(peer["ttft_s"] / base["ttft_s"])
    md = helexa_bench("report", "--db", str(swept)).stdout
    assert "Side by side" in md and "| peer server |" in md and "vs a" in md
    assert "target down unreachable" in md


chromium = pytest.mark.skipif(shutil.which("/usr/bin/chromium") is None,
                              reason="no Chromium (apt-get install chromium)")  # fmt: skip


@chromium
def test_the_html_report_renders_its_series_in_chromium(swept, tmp_path):
    from tests.cortex.chromium_cdp import open_page

    page_path = tmp_path / "report.html"
    helexa_bench("report", "--db", str(swept), "--html", str(page_path))
    html = page_path.read_text()
    assert "cdn" not in html.lower() and "<script src" not in html  # self-contained
    expected = report.views(Store(swept).runs())
    with open_page(page_path.as_uri()) as page:
        charts = page.evaluate("Object.keys(window.benchCharts)")
        drawn = {name: page.evaluate(f"window.benchCharts['{name}'].data.datasets"
                                     ".map(d => [d.label, d.data])")
                 for name in charts}  # fmt: skip
        errors = page.errors()
    assert errors == []
    # decode tok/s needs a decode window over 0.2 s, which a 6-token answer may not have:
    # those charts exist exactly when some value does.
    tps = {
        "chart-scaling-tps": [p for s in expected["scaling"] for p in s["points"]],
        "chart-trend-tps": [p for s in expected["series"] for p in s["points"]],
        "chart-peers-tps": [t for c in expected["compare"] for t in c["targets"]],
    }
    with_tps = {name for name, values in tps.items() if any(v["decode_tps"] for v in values)}
    always = {"chart-scaling-ttft", "chart-concurrency", "chart-trend-ttft", "chart-peers-ttft"}
    assert set(charts) == always | with_tps
    want = {f"{s['label']} {s['model']}": [{"x": p["prompt_size"], "y": p["ttft_s"]}
                                           for p in s["points"]]
            for s in expected["scaling"]}  # fmt: skip
    assert dict(drawn["chart-scaling-ttft"]) == want  # the same floats: JSON keeps them exact
    assert set(want) == {f"a {QWEN}", f"peer server {QWEN}"}
    bars = dict(drawn["chart-peers-ttft"])
    assert set(bars) == {"a", "peer server"}
    for label, values in bars.items():
        assert values == [next(t["ttft_s"] for t in c["targets"] if t["label"] == label)
                          for c in expected["compare"]]  # fmt: skip
    knees = [d for label, d in drawn["chart-concurrency"] if label.endswith("knee")]
    assert len(knees) == sum(1 for c in expected["concurrency"] if c["knee"] is not None) >= 1
    trend = dict(drawn["chart-trend-ttft"])
    for s in expected["series"]:
        label = f"{s['target']} {s['model']} {s['scenario']}"
        assert trend[label] == [{"x": p["build"], "y": p["ttft_s"]} for p in s["points"]]
