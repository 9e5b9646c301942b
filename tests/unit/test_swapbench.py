"""``tmemh bench swap``: the suite it runs and the targets it derives from a finished run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tmemh.suite.bench import bench_suite
from tmemh.suite.errors import SuiteError
from tmemh.suite.results import ERROR, PASS, CellResult, RunResult
from tmemh.suite.swapbench import bench_suite_text, summarise

MIB = 1 << 20


def cell(configuration: str, throttle: str, time_s: float, status: str = PASS,
         **metrics: float) -> CellResult:
    cell_id = f"anon.{configuration}.{throttle}.256M.r1"
    return CellResult(id=cell_id, index=0, workload="anon", configuration=configuration,
                      throttle=throttle, shape="256M", repetition=1, collectors=True,
                      status=status, metrics={"time_s": time_s, **metrics})


def test_the_suite_is_four_cells_of_one_fill_beyond_ram() -> None:
    text = bench_suite_text(400 * MIB, 256 * MIB)
    suite = bench_suite(text)
    assert [c.id for c in suite.cells()] == [
        "anon.disk-swap.none.256M.r1", "anon.tmem-swap.none.256M.r1",
        "anon.disk-swap.hdd.256M.r1", "anon.tmem-swap.hdd.256M.r1"]
    assert suite.workloads[0].params["scale"] == pytest.approx(400 / 256)
    assert suite.workloads[0].params["uffd"] == 64  # memhog beside the shim ...
    tmem = [c for c in suite.configurations if c.name == "tmem-swap"][0]
    assert tmem.params["uffd_port"] is True  # ... on a port only the tmem cells have
    with pytest.raises(SuiteError, match="larger than the guest"):
        bench_suite_text(200 * MIB, 256 * MIB)


def test_targets_are_ratios_of_the_same_run(tmp_path: Path) -> None:
    swapped = 100 * MIB // 4096
    cells = [cell("disk-swap", "none", 20.0), cell("tmem-swap", "none", 30.0,
                                                   swap_out_pages=swapped,
                                                   disk_write_bytes=12 * MIB,
                                                   phase_fill_s=10.0, swap_in_pages=6000,
                                                   phase_verify_s=20.0,
                                                   uffd_faults_per_s=60.0,
                                                   uffd_pages_per_s=600.0),
             cell("disk-swap", "hdd", 200.0), cell("tmem-swap", "hdd", 40.0,
                                                   swap_out_pages=swapped,
                                                   disk_write_bytes=10 * MIB)]
    for found in cells[1::2]:
        status_file = tmp_path / "cells" / found.id / "agent-status.json"
        status_file.parent.mkdir(parents=True)
        status_file.write_text(json.dumps({"counters": {"fallback_write_bytes": 10 * MIB,
                                                        "puts": 9}, "refusals": {}}))
    run = RunResult(id="r", suite="swap-bench", started="", host={}, options={}, cells=cells)
    document = summarise(run, tmp_path)
    targets = document["targets"]
    assert targets["tmem_vs_disk"]["value"] == 1.5 and targets["tmem_vs_disk"]["met"] is False
    assert targets["hdd_speedup"]["value"] == 5.0 and targets["hdd_speedup"]["met"] is True
    assert targets["stray_disk_write_share"]["value"] == 0.02  # the worse of the two cells
    assert targets["stray_disk_write_share"]["met"] is True
    assert document["cells"][1]["swap_out_mib_s"] == 10.0
    assert document["cells"][1]["agent"]["puts"] == 9
    beside = document["uffd_beside_shim"]
    assert beside["shim_swap_in_pages_per_s"] == 300.0 and beside["uffd_faults_per_s"] == 60
    assert beside["uffd_pages_per_shim_page"] == 2.0
    assert json.loads(json.dumps(document)) == document


def test_a_cell_that_did_not_pass_leaves_its_target_undecided(tmp_path: Path) -> None:
    cells = [cell("disk-swap", "none", 20.0), cell("tmem-swap", "none", 0.0, status=ERROR),
             cell("disk-swap", "hdd", 200.0), cell("tmem-swap", "hdd", 40.0)]
    run = RunResult(id="r", suite="swap-bench", started="", host={}, options={}, cells=cells)
    targets = summarise(run, tmp_path)["targets"]
    assert targets["tmem_vs_disk"] == {**targets["tmem_vs_disk"], "value": None, "met": None}
    assert targets["hdd_speedup"]["met"] is True
    assert targets["stray_disk_write_share"]["met"] is None
