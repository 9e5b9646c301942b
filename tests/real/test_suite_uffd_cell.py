"""A ``tmem-swap`` cell with ``uffd_port`` on a real VM: the anon workload swaps through the
shim, then ``tmem-agent memhog`` fills and verifies a userfaultfd region through tmem on the
VM's second port (admitted to the same daemon as the VM's second client), and the cell's
metrics carry its faults per second beside the swap-in figures (what ``tmemh bench swap``
reports)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from support.suiterun import only_cell, run_dirs, run_suite

from tmemh.image.manifest import ImageManifest

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(os.geteuid() != 0, reason="guest image and VMs need root")]

REGION_MIB = 32
SUITE = f"""
[suite]
name = "uffd-cell"
workloads = ["anon"]
configurations = ["tmem-swap"]

[vm]
memory = "192M"

[workload.anon]
scale = 1.3
uffd = {REGION_MIB}
uffd_resident = {REGION_MIB // 4}

[configuration.tmem-swap]
uffd_port = true
"""


def test_a_userfaultfd_region_runs_beside_the_swap_shim_in_one_cell(
        guest_image: ImageManifest, tmp_path: Path) -> None:
    (code,) = run_suite(SUITE, tmp_path, guest_image)
    (run_dir,) = run_dirs(tmp_path)
    cell = only_cell(run_dir)
    metrics, report = cell["metrics"], cell["workload_report"]
    print(json.dumps({k: metrics.get(k) for k in (
        "time_s", "phase_verify_s", "swap_in_pages", "uffd_faults", "uffd_faults_per_s")}))
    assert code == 0 and cell["status"] == "PASS", cell.get("reason")
    uffd = report["uffd"]
    assert uffd["passed"] and uffd["lost_pages"] == 0, uffd
    beyond_budget = (REGION_MIB - REGION_MIB // 4) * 256  # pages that cannot stay resident
    assert uffd["puts"] >= beyond_budget and uffd["gets"] >= beyond_budget  # through tmem
    assert metrics["uffd_faults_per_s"] == uffd["faults_per_s"] > 0
    assert metrics["swap_in_pages"] > 0  # and the shim swapped in the same VM
    daemon_log = (run_dir / "cells" / cell["id"] / "tmemd.log").read_text()
    # memhog came in as the VM's second client, admitted with the VM for QEMU's uid
    listening = re.search(r"listening for vm (\S+)-uffd on \S+ \(owner uid (\d+)\)",
                          daemon_log)
    assert listening and int(listening[2]) == os.geteuid(), daemon_log
    assert f"hello from vm {listening[1]}-uffd" in daemon_log
