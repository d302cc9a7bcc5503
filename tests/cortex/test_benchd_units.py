"""helexa-bench's parts without a target: config, store migrations, report maths, read API."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cortex.benchd import report
from cortex.benchd.api import create_app
from cortex.benchd.config import ConfigError, load_config
from cortex.benchd.measure import Measurement, p95
from cortex.benchd.scenarios import png
from cortex.benchd.store import RUN_COLUMNS, Store

ROOT = Path(__file__).resolve().parents[2]


def row(target: str = "a", sha: str = "s1", scenario: str = "chat:128", sample: int = 0,
        ok: int = 1, **fields: Any) -> dict[str, Any]:  # fmt: skip
    return {"target_name": target, "target_kind": "neuron", "git_sha": sha, "model_id": "m",
            "scenario_id": scenario, "sample": sample, "ok": ok, "ts": "2026-01-01T00:00:00Z",
            **fields}  # fmt: skip


# -- config ---------------------------------------------------------------------------------


def test_config_reads_upstream_keys_and_bench_environment(tmp_path):
    path = tmp_path / "helexa-bench.toml"
    path.write_text("""
[bench]
samples_per_version = 3
db_path = "/tmp/x.sqlite"
[scenarios]
prompt_sizes = [128, 1024]
[api]
listen = "127.0.0.1:13132"
[[targets]]
name = "n1"
endpoint = "http://n1:13131/"
[[targets]]
name = "vllm"
kind = "openai"
endpoint = "http://v:8000/v1"
build = "vllm-0.11"
sample_rate = 3
""")
    env = {"BENCH_BENCH__SWEEP_INTERVAL_SECS": "60", "BENCH_SCENARIOS__CONCURRENCY_LEVELS": "1,4",
           "BENCH_DB_PATH": "/var/tmp/b.sqlite", "BENCH_CONFIG": "ignored"}  # fmt: skip
    config = load_config(path, env)
    assert config.bench.samples_per_version == 3 and config.bench.sweep_interval_secs == 60
    assert config.bench.db_path == "/var/tmp/b.sqlite"
    assert config.scenarios.prompt_sizes == (128, 1024)
    assert config.scenarios.concurrency_levels == (1, 4)
    assert config.api.address == ("127.0.0.1", 13132)
    assert [(t.name, t.kind, t.endpoint) for t in config.targets] == [
        ("n1", "neuron", "http://n1:13131"), ("vllm", "openai", "http://v:8000/v1")]  # fmt: skip
    assert config.targets[1].build == "vllm-0.11"
    assert any("sample_rate" in note and "unknown key" in note for note in config.notes)


def test_config_problems_are_all_reported_with_where_they_came_from(tmp_path):
    path = tmp_path / "b.toml"
    path.write_text('[[targets]]\nname = "a"\nendpoint = "ftp://x"\n'
                    '[[targets]]\nname = "a"\nendpoint = "http://y"\nkind = "tgi"\n')  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        load_config(path, {"BENCH_SCENARIOS_PROMPT_SIZES": "1,x"})
    text = str(caught.value)
    assert "BENCH_SCENARIOS_PROMPT_SIZES: expected comma-separated integers" in text
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert (
        "b.toml: [[targets]] #2 kind: expected one of 'neuron', 'openai', 'cortex', got "
        "'tgi'" in str(caught.value)
    )
    path.write_text('[[targets]]\nname = "a"\nendpoint = "ftp://x"\n')
    with pytest.raises(ConfigError, match=r"\[\[targets\]\] #1 endpoint: must be an http"):
        load_config(path, {})
    path.write_text('[[targets]]\nname = "a"\nendpoint = "http://x"\n'
                    '[[targets]]\nname = "a"\nendpoint = "http://y"\n')  # fmt: skip
    with pytest.raises(ConfigError, match="'a' names two targets"):
        load_config(path, {})


def test_targets_from_the_environment_alone():
    config = load_config(None, {"BENCH_TARGETS": "n1=http://127.0.0.1:13131,n2=http://h:1"})
    assert [(t.name, t.endpoint, t.kind) for t in config.targets] == [
        ("n1", "http://127.0.0.1:13131", "neuron"), ("n2", "http://h:1", "neuron")]  # fmt: skip


def test_once_without_targets_is_a_configuration_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "cortex.benchd", "once"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 2 and "no [[targets]]" in done.stderr


# -- the store ------------------------------------------------------------------------------


def test_an_older_database_gains_the_new_columns_and_keeps_its_rows(tmp_path):
    db = tmp_path / "old.sqlite"
    with sqlite3.connect(db) as old:
        old.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT, "
                    "target_name TEXT, git_sha TEXT, model_id TEXT, scenario_id TEXT, "
                    "ttft_s REAL, ok INTEGER, error TEXT)")  # fmt: skip
        old.execute("INSERT INTO runs (ts, target_name, git_sha, model_id, scenario_id, ttft_s, "
                    "ok) VALUES ('t', 'a', 's1', 'm', 'chat:128', 0.5, 1)")  # fmt: skip
    store = Store(db)
    columns = {r[1] for r in sqlite3.connect(db).execute("PRAGMA table_info(runs)")}
    assert {name for name, _ in RUN_COLUMNS} <= columns
    (kept,) = store.runs()
    assert (kept["ttft_s"], kept["sample"], kept["decode_tps"]) == (0.5, None, None)
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_sample_is_stored_once_and_failures_are_each_kept(tmp_path):
    store = Store(tmp_path / "b.sqlite")
    assert store.add_run(row(ttft_s=0.1))
    assert not store.add_run(row(ttft_s=0.2))  # the same sample of the same cell and build
    assert store.add_run(row(sample=1)) and store.add_run(row(sha="s2"))
    assert store.add_run(row(ok=0, error="x")) and store.add_run(row(ok=0, error="y"))
    assert store.ok_samples("a", "s1", "m", "chat:128") == {0, 1}
    assert store.count() == 5
    assert store.add_skip("a", "s1", "m", "image:1024", "no vision")
    assert not store.add_skip("a", "s1", "m", "image:1024", "no vision")
    assert store.skipped("a", "s1", "m", "image:1024")


# -- report maths ---------------------------------------------------------------------------


def test_summary_uses_only_the_latest_build_and_successful_rows():
    rows = [
        row(sha="old", decode_tps=10.0),
        row(sha="new", decode_tps=20.0),
        row(sha="new", sample=1, decode_tps=30.0),
        row(sha="new", ok=0, decode_tps=99.0),
    ]
    for i, r in enumerate(rows):
        r["id"] = i
    (line,) = report.summary(rows)
    assert (line["build"], line["decode_tps"], line["n"]) == ("new", 25.0, 2)


def test_the_knee_is_the_highest_level_without_shedding_within_twice_the_lightest_p95():
    def level(n: int, p95_s: float, shed: int = 0) -> dict[str, Any]:
        return row(scenario=f"concurrency:{n}", concurrency=n, ttft_s=p95_s / 2,
                   ttft_p95_s=p95_s, rejected=shed)  # fmt: skip

    lines = report.summary([level(1, 1.0), level(2, 1.5), level(4, 1.9), level(8, 2.5),
                            level(16, 1.0, shed=3)])  # fmt: skip
    (view,) = report.concurrency(lines)
    assert view["knee"] == 4
    assert [v["concurrency"] for v in view["levels"]] == [1, 2, 4, 8, 16]


def test_compare_gives_ratios_to_the_neuron_baseline():
    rows = [
        row(target="n", decode_tps=50.0, ttft_s=0.2),
        {**row(target="peer", decode_tps=25.0, ttft_s=0.4), "target_kind": "openai"},
    ]
    (entry,) = report.compare(report.summary(rows))
    ratios = {t["target"]: (t["decode_ratio"], t["ttft_ratio"]) for t in entry["targets"]}
    assert entry["baseline"] == "n" and ratios == {"n": (1.0, 1.0), "peer": (0.5, 2.0)}


def test_decode_rate_prefers_the_server_window_then_the_client_one():
    server = Measurement(ttft_s=0.1, total_s=2, completion_tokens=100, decode_ms=500, chunks=3,
                         window_s=5)  # fmt: skip
    assert server.decode_tps == 200
    client = Measurement(ttft_s=0.1, total_s=2, completion_tokens=9, decode_ms=100, chunks=11,
                         window_s=0.5)  # fmt: skip
    assert client.decode_tps == 20
    assert Measurement(ttft_s=0.1, total_s=0.2, completion_tokens=2, chunks=2,
                       window_s=0.1).decode_tps is None  # fmt: skip
    assert p95([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]) == 19


def test_png_is_a_valid_image_of_the_asked_size():
    data = png(7)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(data[16:20], "big") == 7 == int.from_bytes(data[20:24], "big")


# -- the read API ---------------------------------------------------------------------------


@pytest.fixture
def api_store(tmp_path) -> Store:
    store = Store(tmp_path / "api.sqlite")
    store.add_run(row(target="a", sha="s1", decode_tps=10.0))
    store.add_run(row(target="a", sha="s2", decode_tps=12.0))
    store.add_run(row(target="b", sha="x1", decode_tps=8.0))
    store.add_run(row(target="a", sha="s2", sample=1, ok=0, error="boom"))
    return store


async def test_api_health_summary_series_and_runs(api_store):
    client = create_app(api_store).test_client()
    health = await (await client.get("/api/health")).get_json()
    assert health == {"status": "ok", "run_count": 4}
    summary = await (await client.get("/api/summary")).get_json()
    assert {(s["target"], s["build"], s["decode_tps"]) for s in summary} == {
        ("a", "s2", 12.0), ("b", "x1", 8.0)}  # fmt: skip
    (series,) = await (await client.get("/api/series?host=a&scenario=chat:128")).get_json()
    assert [(p["build"], p["decode_tps"]) for p in series["points"]] == [("s1", 10.0),
                                                                         ("s2", 12.0)]  # fmt: skip
    runs = await (await client.get("/api/runs?host=a&ok=0")).get_json()
    assert [(r["target_name"], r["error"]) for r in runs] == [("a", "boom")]
    runs = await (await client.get("/api/runs?limit=2")).get_json()
    assert [r["id"] for r in runs] == [4, 3]  # newest first
    dims = await (await client.get("/api/dimensions")).get_json()
    assert dims["builds"] == {"a": ["s1", "s2"], "b": ["x1"]}


async def test_api_refuses_a_bad_parameter_and_an_unknown_route_in_the_envelope(api_store):
    client = create_app(api_store).test_client()
    response = await client.get("/api/runs?ok=2")
    assert response.status_code == 400
    error = (await response.get_json())["error"]
    assert error["param"] == "ok" and "from 0 to 1" in error["message"]
    response = await client.get("/api/nothing")
    assert response.status_code == 404
    assert (await response.get_json())["error"]["code"] == "route_not_found"
    assert (await client.get("/api/health")).status_code == 200  # still serving
