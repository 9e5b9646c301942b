"""The run index: every run under a results directory, and its cells, in SQLite.

``<results>/runs.sqlite`` has a ``runs`` table (one row per run: where it is, its suite,
times, status and counts) and a ``cells`` table (one row per cell with its main figures), so
history can be queried with ``tmemh runs`` or any SQLite client::

    SELECT configuration, avg(time_s) FROM cells WHERE workload = 'tar' GROUP BY 1;

A run is (re)indexed from its ``results.json`` whenever it is written, so the index can also
be rebuilt from the run directories (:func:`reindex`).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .results import RESULTS_FILE, ResultsError, RunResult, load_results

logger = logging.getLogger(__name__)

INDEX_FILE = "runs.sqlite"
SCHEMA_VERSION = 1
_TABLES = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, path TEXT NOT NULL, suite TEXT NOT NULL, started TEXT NOT NULL,
    finished TEXT, status TEXT NOT NULL, interrupted INTEGER NOT NULL, cells INTEGER NOT NULL,
    pass INTEGER NOT NULL, fail INTEGER NOT NULL, error INTEGER NOT NULL, skip INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cells (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, cell_id TEXT NOT NULL,
    workload TEXT NOT NULL, configuration TEXT NOT NULL, throttle TEXT NOT NULL,
    shape TEXT NOT NULL, repetition INTEGER NOT NULL, collectors INTEGER NOT NULL,
    status TEXT NOT NULL, reason TEXT, time_s REAL, disk_bytes INTEGER, swap_in_pages INTEGER,
    swap_out_pages INTEGER, duration_s REAL,
    PRIMARY KEY (run_id, cell_id)
);
"""


@dataclass(frozen=True)
class IndexedRun:
    id: str
    path: str
    suite: str
    started: str
    finished: str | None
    status: str
    interrupted: bool
    cells: int
    passed: int
    failed: int
    errors: int
    skipped: int


@contextmanager
def connect(results_dir: Path) -> Iterator[sqlite3.Connection]:
    """The index of ``results_dir`` (created on first use), committed on success."""
    Path(results_dir).mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(Path(results_dir) / INDEX_FILE, timeout=30.0)) as db:
        db.execute("PRAGMA foreign_keys = ON")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise sqlite3.DatabaseError(f"run index schema {version} is not {SCHEMA_VERSION}")
        db.executescript(_TABLES)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        with db:
            yield db


def record(results_dir: Path, run_dir: Path, run: RunResult) -> None:
    """Write (or replace) the run's rows."""
    counts = run.counts
    with connect(results_dir) as db:
        db.execute("DELETE FROM cells WHERE run_id = ?", (run.id,))
        db.execute("INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                   (run.id, str(Path(run_dir).resolve()), run.suite, run.started,
                    run.finished or None, run.status, int(run.interrupted), len(run.cells),
                    counts["PASS"], counts["FAIL"], counts["ERROR"], counts["SKIP"]))
        db.executemany(
            "INSERT INTO cells VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [(run.id, c.id, c.workload, c.configuration, c.throttle, c.shape, c.repetition,
              int(c.collectors), c.status, c.reason, c.metrics.get("time_s"),
              c.metrics.get("disk_bytes"), c.metrics.get("swap_in_pages"),
              c.metrics.get("swap_out_pages"), c.duration_s) for c in run.cells])


def runs(results_dir: Path, suite: str | None = None, limit: int | None = None,
         ) -> list[IndexedRun]:
    """Indexed runs, newest first."""
    query = "SELECT * FROM runs" + (" WHERE suite = ?" if suite else "") + \
        " ORDER BY started DESC, id DESC" + (" LIMIT ?" if limit else "")
    params: list[Any] = [p for p in (suite, limit) if p]
    with connect(results_dir) as db:
        return [IndexedRun(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), *r[7:12])
                for r in db.execute(query, params)]


def find_run(results_dir: Path, run_id: str) -> Path | None:
    """The directory of the indexed run ``run_id`` (None if the index has no such run)."""
    if not (Path(results_dir) / INDEX_FILE).exists():
        return None
    with connect(results_dir) as db:
        row = db.execute("SELECT path FROM runs WHERE id = ?", (run_id,)).fetchone()
    return Path(row[0]) if row else None


def cell_history(results_dir: Path, workload: str, configuration: str, throttle: str,
                 shape: str) -> list[float]:
    """Host durations of earlier cells like this one (for the estimate of time left)."""
    if not (Path(results_dir) / INDEX_FILE).exists():
        return []
    with connect(results_dir) as db:
        rows = db.execute(
            "SELECT duration_s FROM cells WHERE workload = ? AND configuration = ? AND "
            "throttle = ? AND shape = ? AND status IN ('PASS', 'FAIL') AND duration_s > 0 "
            "ORDER BY rowid DESC LIMIT 10", (workload, configuration, throttle, shape))
        return [float(r[0]) for r in rows]


def reindex(results_dir: Path) -> int:
    """Index every run directory under ``results_dir``; the number indexed."""
    count = 0
    for path in sorted(Path(results_dir).glob(f"*/{RESULTS_FILE}")):
        try:
            record(results_dir, path.parent, load_results(path.parent))
        except ResultsError as exc:
            logger.warning("not indexed: %s", exc)
            continue
        count += 1
    return count
