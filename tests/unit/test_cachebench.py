"""``tmemh bench cache``: the generated suite and the targets derived from one run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tmemh.cli import main
from tmemh.suite.bench import bench_suite
from tmemh.suite.cachebench import bench_suite_text, summarise
from tmemh.suite.errors import SuiteError
from tmemh.suite.results import ERROR, PASS, CellResult, RunResult

MIB = 1 << 20


def cell(configuration: str, time_s: float, status: str = PASS, **metrics: float) -> CellResult:
    return CellResult(id=f"pagecache.{configuration}.hdd.256M.r1", index=0,
                      workload="pagecache", configuration=configuration, throttle="hdd",
                      shape="256M", repetition=1, collectors=True, status=status,
                      metrics={"time_s": time_s, **metrics})


def test_the_suite_is_two_cells_re_reading_more_than_ram() -> None:
    suite = bench_suite(bench_suite_text(384 * MIB, 256 * MIB))
    assert [c.id for c in suite.cells()] == ["pagecache.tmem-swap.hdd.256M.r1",
                                             "pagecache.tmem.hdd.256M.r1"]
    assert suite.workloads[0].params == {"scale": 1.5, "passes": 2}
    with pytest.raises(SuiteError, match="larger than the guest"):
        bench_suite_text(200 * MIB, 256 * MIB)
    with pytest.raises(SuiteError, match="plus the tmem pool"):
        bench_suite_text(1024 * MIB, 256 * MIB)


def test_targets_are_ratios_of_the_same_run(tmp_path: Path) -> None:
    cells = [cell("tmem-swap", 90.0, disk_read_bytes=800 * MIB, bytes=768 * MIB),
             cell("tmem", 20.0, disk_read_bytes=100 * MIB, bytes=768 * MIB)]
    status = tmp_path / "cells" / cells[1].id / "agent-status.json"
    status.parent.mkdir(parents=True)
    status.write_text(json.dumps({"cache": {"cache": {"counters": {"hits": 9, "misses": 1},
                                                      "hit_rate": 0.9}}}))
    run = RunResult(id="r", suite="cache-bench", started="", host={}, options={}, cells=cells)
    document = summarise(run, tmp_path)
    targets = document["targets"]
    assert targets["reread_speedup"]["value"] == 4.5 and targets["reread_speedup"]["met"]
    assert targets["disk_read_saving"]["value"] == 0.875
    assert targets["disk_read_saving"]["met"] is True
    assert document["cells"][1]["cache"] == {"hits": 9, "misses": 1, "hit_rate": 0.9}
    assert document["cells"][0]["reread_mib_s"] == pytest.approx(8.53, abs=0.01)
    assert json.loads(json.dumps(document)) == document


def test_a_cell_that_did_not_pass_leaves_the_targets_undecided(tmp_path: Path) -> None:
    cells = [cell("tmem-swap", 90.0, disk_read_bytes=800 * MIB),
             cell("tmem", 0.0, status=ERROR)]
    run = RunResult(id="r", suite="cache-bench", started="", host={}, options={}, cells=cells)
    targets = summarise(run, tmp_path)["targets"]
    assert targets["reread_speedup"]["met"] is None
    assert targets["disk_read_saving"]["met"] is None


def test_bad_sizes_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "cache", "--size", "100M", "--memory", "256M"]) == 2
    assert "larger than the guest" in capsys.readouterr().err
