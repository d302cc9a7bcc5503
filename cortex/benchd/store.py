"""The results database: SQLite in WAL mode, one `runs` row per sample.

`runs` has upstream's columns plus ours (marked in `RUN_COLUMNS`). Opening a
database adds whatever columns and tables it lacks and never changes or drops
one, so an old file keeps working and a newer bench can read an older file.
A successful sample is unique on (target, build sha, model, scenario, sample
number): a sweep asks which numbers a cell has and runs only the rest, so an
interrupted sweep resumes where it stopped and a second sweep of the same build
adds nothing. Failed samples (`ok = 0`) are kept as rows too, each with its
error. `skips` records a cell that cannot run (and why); `probes` records each
sweep's visit to a target, reachable or not. Not for: medians and views
(`report`).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["RUN_COLUMNS", "Store", "now_iso"]

# (name, SQL type). Append only: a column's name and type never change.
RUN_COLUMNS: tuple[tuple[str, str], ...] = (
    ("ts", "TEXT"), ("target_name", "TEXT"), ("target_kind", "TEXT"), ("endpoint", "TEXT"),
    ("hostname", "TEXT"), ("driver_version", "TEXT"), ("cuda_version", "TEXT"),
    ("gpus_json", "TEXT"), ("git_sha", "TEXT"), ("git_sha_long", "TEXT"),
    ("package_version", "TEXT"), ("git_dirty", "INTEGER"), ("build_timestamp", "TEXT"),
    ("rustc_version", "TEXT"), ("profile", "TEXT"), ("features_json", "TEXT"),
    ("candle_version", "TEXT"), ("bench_version", "TEXT"), ("bench_sha", "TEXT"),
    ("model_id", "TEXT"), ("harness", "TEXT"), ("capabilities_json", "TEXT"),
    ("devices_json", "TEXT"), ("scenario_id", "TEXT"), ("prompt_size_approx", "INTEGER"),
    ("prompt_tokens_actual", "INTEGER"), ("max_tokens", "INTEGER"), ("ttft_s", "REAL"),
    ("decode_tps", "REAL"), ("total_s", "REAL"), ("completion_tokens", "INTEGER"),
    ("prefill_ms", "REAL"), ("decode_ms", "REAL"), ("prefill_tokens", "INTEGER"),
    ("image_units", "INTEGER"), ("vram_used_mb", "REAL"), ("gpu_util_pct", "REAL"),
    ("gpu_temp_c", "REAL"), ("concurrency", "INTEGER"), ("ttft_p95_s", "REAL"),
    ("queue_wait_ms", "REAL"), ("rejected", "INTEGER"), ("swap_unload_ms", "REAL"),
    ("swap_load_ms", "REAL"), ("artifact", "TEXT"), ("quality_score", "REAL"),
    ("scorer", "TEXT"), ("ok", "INTEGER"), ("error", "TEXT"),
    # ours
    ("sample", "INTEGER"), ("target_label", "TEXT"), ("served_model_id", "TEXT"),
    ("python_version", "TEXT"), ("torch_version", "TEXT"), ("transformers_version", "TEXT"),
    ("cached_tokens", "INTEGER"), ("ttft_cold_s", "REAL"),
)  # fmt: skip
COLUMN_NAMES = frozenset(name for name, _ in RUN_COLUMNS)

_TABLES = """
CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY AUTOINCREMENT);
CREATE TABLE IF NOT EXISTS skips (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT, target_name TEXT, git_sha TEXT,
    model_id TEXT, scenario_id TEXT, reason TEXT,
    UNIQUE (target_name, git_sha, model_id, scenario_id));
CREATE TABLE IF NOT EXISTS probes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT, target_name TEXT, target_kind TEXT,
    endpoint TEXT, reachable INTEGER, git_sha TEXT, error TEXT, rows_added INTEGER);
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS runs_cell ON runs (target_name, git_sha, model_id, scenario_id, ok);
CREATE UNIQUE INDEX IF NOT EXISTS runs_sample ON runs
    (target_name, git_sha, model_id, scenario_id, sample) WHERE ok = 1;
"""
FILTERS = {"host": "target_name", "target": "target_name", "model": "model_id",
           "scenario": "scenario_id", "sha": "git_sha", "ok": "ok"}  # fmt: skip


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Store:
    """One open database. Thread-safe: calls are serialised by a lock."""

    def __init__(self, path: str | Path) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_TABLES)
            self._migrate()
            self._db.executescript(_INDEXES)

    def _migrate(self) -> None:
        have = {row["name"] for row in self._db.execute("PRAGMA table_info(runs)")}
        for name, kind in RUN_COLUMNS:
            if name not in have:
                self._db.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(row) for row in self._db.execute(sql, tuple(args))]

    def _write(self, sql: str, args: Iterable[Any] = ()) -> int:
        with self._lock, self._db:
            return self._db.execute(sql, tuple(args)).rowcount

    # -- the sweep's questions ---------------------------------------------------------------

    def ok_samples(self, target: str, sha: str, model: str, scenario: str) -> set[int]:
        rows = self._query("SELECT sample FROM runs WHERE target_name=? AND git_sha=? AND "
                           "model_id=? AND scenario_id=? AND ok=1",
                           (target, sha, model, scenario))  # fmt: skip
        return {row["sample"] for row in rows}

    def skipped(self, target: str, sha: str, model: str, scenario: str) -> bool:
        rows = self._query("SELECT 1 FROM skips WHERE target_name=? AND git_sha=? AND "
                           "model_id=? AND scenario_id=?",
                           (target, sha, model, scenario))  # fmt: skip
        return bool(rows)

    # -- writing -------------------------------------------------------------------------------

    def add_run(self, row: Mapping[str, Any]) -> bool:
        """Insert one sample; False when that sample was already there."""
        unknown = set(row) - COLUMN_NAMES
        assert not unknown, f"not run columns: {unknown}"
        names = list(row)
        sql = (f"INSERT OR IGNORE INTO runs ({', '.join(names)}) "
               f"VALUES ({', '.join('?' * len(names))})")  # fmt: skip
        return self._write(sql, [row[n] for n in names]) == 1

    def add_skip(self, target: str, sha: str, model: str, scenario: str, reason: str) -> bool:
        return self._write("INSERT OR IGNORE INTO skips (ts, target_name, git_sha, model_id, "
                           "scenario_id, reason) VALUES (?, ?, ?, ?, ?, ?)",
                           (now_iso(), target, sha, model, scenario, reason)) == 1  # fmt: skip

    def add_probe(self, probe: Mapping[str, Any]) -> None:
        names = ["ts", *probe]
        sql = f"INSERT INTO probes ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        self._write(sql, [now_iso(), *probe.values()])

    def set_score(self, run_id: int, score: float, scorer: str) -> bool:
        return self._write("UPDATE runs SET quality_score=?, scorer=? WHERE id=?",
                           (score, scorer, run_id)) == 1  # fmt: skip

    # -- reading -------------------------------------------------------------------------------

    def count(self) -> int:
        return self._query("SELECT count(*) AS n FROM runs")[0]["n"]

    def runs(self, filters: Mapping[str, Any] | None = None, limit: int | None = None,
             newest_first: bool = False) -> list[dict[str, Any]]:  # fmt: skip
        """Rows matching `filters` (keys of `FILTERS`), oldest first unless asked."""
        where, args = [], []
        for key, value in (filters or {}).items():
            if value is not None:
                where.append(f"{FILTERS[key]} = ?")
                args.append(value)
        sql = "SELECT * FROM runs" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += f" ORDER BY id {'DESC' if newest_first else 'ASC'}"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return self._query(sql, args)

    def skips(self) -> list[dict[str, Any]]:
        return self._query("SELECT * FROM skips ORDER BY id")

    def probes(self, latest_only: bool = False) -> list[dict[str, Any]]:
        if latest_only:
            return self._query("SELECT * FROM probes WHERE id IN "
                               "(SELECT max(id) FROM probes GROUP BY target_name) "
                               "ORDER BY target_name")  # fmt: skip
        return self._query("SELECT * FROM probes ORDER BY id")
