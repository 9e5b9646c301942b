"""A guest that stops answering during the measured run: the watchdog gives up on it, the cell
is an ERROR saying so (with the blocked tasks dumped), and the VM is torn down."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from tmemh.image.manifest import ImageManifest
from tmemh.suite.cell import CellOptions, run_cell
from tmemh.suite.suitefile import parse_suite
from tmemh.vm import VirtualMachine

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(os.geteuid() != 0, reason="guest image and VMs need root")]

# A real-time busy loop with RT throttling off starves everything else on the one vCPU:
# the guest hangs while QEMU (and its monitor) keeps running.
HOG = ("echo -1 > /proc/sys/kernel/sched_rt_runtime_us; "
       "nohup setsid chrt -f 99 sh -c 'while :; do :; done' </dev/null >/dev/null 2>&1 &")


def test_a_guest_hung_during_the_run_is_an_error_and_torn_down(
        guest_image: ImageManifest, vm_state: Path, tmp_path: Path) -> None:
    suite = parse_suite({"suite": {"workloads": ["anon"], "configurations": ["disk-swap"]},
                         "vm": {"memory": "192M"},
                         "workload": {"anon": {"scale": 3.0, "timeout": 900}}})
    (cell,) = suite.cells()
    options = CellOptions(image=guest_image, state_dir=vm_state, vm_prefix="hang",
                          watchdog_interval=5.0)
    log = tmp_path / "run" / "cells" / cell.id / "guest.log"
    hung: list[float] = []

    def hang_the_guest_once_the_run_starts() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if log.exists() and "tmemh_guest.monitor" in log.read_text():
                time.sleep(3)  # the workload is running now
                VirtualMachine.attach("hang-000", vm_state).run(HOG, timeout=60)
                hung.append(time.monotonic())
                return
            time.sleep(0.2)

    saboteur = threading.Thread(target=hang_the_guest_once_the_run_starts, daemon=True)
    saboteur.start()
    started = time.monotonic()
    result = run_cell(cell, tmp_path / "run", options)
    saboteur.join(timeout=60)
    assert hung, "the guest was never hung"
    print(result.reason, f"{time.monotonic() - hung[0]:.0f} s after the hang")
    assert result.status == "ERROR" and "stopped answering" in result.reason
    assert time.monotonic() - started < 600
    cell_dir = tmp_path / "run" / "cells" / cell.id
    assert "hang.txt" in result.files and (cell_dir / "console.log").exists()
    assert "cell.json" in os.listdir(cell_dir)
    assert list(vm_state.glob("*/vm.json")) == []  # torn down: no VM record left
