"""One ``tmem`` cell end to end on a real VM: the pagecache workload on ext4 over the swap
agent's block cache (``tmem-agent run --cache-disk``, /dev/nbd1 over the data disk /dev/vdb,
throttled like a hard disk), its re-reads served from the tmem ephemeral pool."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support.suiterun import only_cell, run_dirs, run_suite

from tmemh.image.manifest import ImageManifest

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(os.geteuid() != 0, reason="guest image and VMs need root")]

SUITE = """
[suite]
name = "tmem-cell"
workloads = ["pagecache"]
configurations = ["tmem"]
throttle = ["hdd"]

[vm]
memory = "192M"
data_disk = "512M"

[workload.pagecache]
scale = 0.5
passes = 1
"""


def test_a_tmem_cell_reads_its_files_back_from_tmem(guest_image: ImageManifest,
                                                    tmp_path: Path) -> None:
    (code,) = run_suite(SUITE, tmp_path, guest_image)
    (run_dir,) = run_dirs(tmp_path)
    cell = only_cell(run_dir)
    metrics = cell["metrics"]
    print(json.dumps({k: metrics.get(k) for k in (
        "time_s", "disk_read_bytes", "data_disk_read_bytes", "data_disk_write_bytes")}))
    assert code == 0 and cell["status"] == "PASS", cell.get("reason")
    assert cell["prepared"]["data_disk"]["device"] == "/dev/nbd1"
    assert cell["prepared"]["agent"]["cache"] == "ready"
    assert "data_disk_read_bytes" in metrics and "data_disk_write_bytes" in metrics
    assert metrics["disk_read_bytes"] >= metrics["data_disk_read_bytes"]
    status = json.loads((run_dir / "cells" / cell["id"] / "agent-status.json").read_text())
    counters = status["cache"]["cache"]["counters"]
    print(json.dumps({k: counters.get(k) for k in ("hits", "misses", "disk_read_bytes")}))
    read = cell["workload_report"]["bytes"]
    assert counters["hits"] * 4096 > read // 2  # most of the re-read came from tmem
    assert metrics["data_disk_read_bytes"] < read // 2
