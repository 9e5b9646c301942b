"""results.json (versioned schema, statuses) and the SQLite run index."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tmemh.suite import index
from tmemh.suite.results import (
    SCHEMA,
    CellResult,
    ResultsError,
    RunResult,
    load_results,
)


def cell(number: int, status: str, time_s: float | None = 10.0, **fields: object) -> CellResult:
    found = CellResult(id=f"anon.disk-swap.hdd.256M.r{number}", index=number - 1,
                       workload="anon", configuration="disk-swap", throttle="hdd",
                       shape="256M", repetition=number, collectors=True, status=status,
                       metrics={} if time_s is None else {"time_s": time_s,
                                                          "disk_bytes": 1 << 20})
    for key, value in fields.items():
        setattr(found, key, value)
    return found


def run_with(*cells: CellResult, run_id: str = "demo-1") -> RunResult:
    return RunResult(id=run_id, suite="demo", started="2026-01-01T00:00:00+0000",
                     cells=list(cells))


def test_results_round_trip_with_schema_and_worst_status(tmp_path: Path) -> None:
    run = run_with(cell(1, "PASS"), cell(2, "ERROR", None, reason="VM did not boot"),
                   cell(3, "SKIP", None))
    run.save(tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["schema"] == SCHEMA == "tmemh.results/1"
    assert data["run"]["status"] == "ERROR"
    assert data["run"]["counts"] == {"PASS": 1, "FAIL": 0, "ERROR": 1, "SKIP": 1}
    loaded = load_results(tmp_path)
    assert loaded.cells == run.cells and loaded.status == "ERROR"
    assert run_with(cell(1, "PASS"), cell(2, "FAIL")).status == "FAIL"
    assert run_with(cell(1, "SKIP"), cell(2, "PASS")).status == "PASS"


def test_unknown_schema_or_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="cannot read"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"schema": "other/9"}))
    with pytest.raises(ResultsError, match="unknown schema"):
        load_results(tmp_path)


def test_index_records_runs_and_cells_and_finds_them(tmp_path: Path) -> None:
    results = tmp_path / "results"
    first = run_with(cell(1, "PASS", 12.0), run_id="demo-20260101-000000")
    second = run_with(cell(1, "PASS", 8.0), cell(2, "FAIL", 9.0),
                      run_id="demo-20260102-000000")
    second.started = "2026-01-02T00:00:00+0000"
    for run in (first, second):
        (results / run.id).mkdir(parents=True)
        run.save(results / run.id)
        index.record(results, results / run.id, run)
    index.record(results, results / second.id, second)  # again: replaced, not doubled
    listed = index.runs(results)
    assert [r.id for r in listed] == ["demo-20260102-000000", "demo-20260101-000000"]
    assert (listed[0].status, listed[0].cells, listed[0].passed, listed[0].failed) == (
        "FAIL", 2, 1, 1)
    assert index.find_run(results, first.id) == (results / first.id).resolve()
    assert index.find_run(results, "nope") is None
    assert sorted(index.cell_history(results, "anon", "disk-swap", "hdd", "256M")) == []
    with sqlite3.connect(results / index.INDEX_FILE) as db:
        rows = db.execute("SELECT run_id, status, time_s FROM cells ORDER BY run_id, cell_id")
        assert list(rows) == [("demo-20260101-000000", "PASS", 12.0),
                              ("demo-20260102-000000", "PASS", 8.0),
                              ("demo-20260102-000000", "FAIL", 9.0)]
    (results / index.INDEX_FILE).unlink()
    assert index.reindex(results) == 2 and len(index.runs(results, suite="demo")) == 2


def test_cell_history_uses_host_durations_of_finished_cells(tmp_path: Path) -> None:
    run = run_with(cell(1, "PASS", duration_s=100.0), cell(2, "ERROR", duration_s=5.0))
    index.record(tmp_path, tmp_path, run)
    assert index.cell_history(tmp_path, "anon", "disk-swap", "hdd", "256M") == [100.0]
