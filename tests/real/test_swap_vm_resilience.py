"""A real guest swapping through tmem when tmemd is short of room, restarted, crashed, or
shared: what the guest's processes see must always be their own data, or a loud error.

- A persistent cap far below the working set: tmemd refuses what does not fit, the agent's
  fallback file takes it, and every page verifies.
- tmemd restarted gracefully (state file) in the middle of a fill: the agent reconnects, the
  VM's port reconnects to its restored socket, and every page verifies. Then tmemd killed hard
  between a fill and its verify and started fresh: the pages it held are gone, so the workload
  dies of SIGBUS (the kernel's answer to a failed swap-in), the agent counts I/O errors and
  lost pages, and no page ever comes back wrong.
- Two VMs on one tmemd at once, each verifying its own pages.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support.daemon import DaemonUnderTest, running_daemon
from support.swapguest import (
    PORT,
    agent_status,
    daemon_stats,
    diagnosed,
    put_workload,
    run_bounded,
    start_driver,
    swap_in_other_processes,
    wait_for_guest_file,
    wait_for_result,
    wait_for_swap,
)

from tmemh.image.manifest import ImageManifest
from tmemh.vm import ChannelSpec, VirtualMachine, VMSpec

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(os.geteuid() != 0, reason="guest image and VMs need root")]

MEMORY_MIB = 256
FILL_MIB = 384
WORKLOAD_TIMEOUT = 480.0
RESTART_AFTER_S = 10  # into the fill: swap-out is in full flow
DRIVER = """#!/bin/sh
python3 /tmp/fill_verify.py {mib} {pause} >/tmp/result.tmp 2>/tmp/result.err
echo "{{\\"exit\\": $?}}" >/tmp/exit.json
mv /tmp/result.tmp /tmp/result.json
"""


def swap_vm(name: str, daemon: DaemonUnderTest, guest_image: ImageManifest,
            vm_state: Path) -> VirtualMachine:
    spec = VMSpec(name=name, memory_mib=MEMORY_MIB, kernel_args=(f"tmem.vm={name}",),
                  channels=(ChannelSpec(PORT, Path(daemon.admit(name)), "connect"),))
    return VirtualMachine(spec, guest_image, backend="qemu", state_dir=vm_state)


def fill_and_verify(vm: VirtualMachine, tmp_path: Path, mib: int = FILL_MIB) -> dict[str, Any]:
    put_workload(vm, tmp_path)
    run = run_bounded(vm, f"python3 /tmp/fill_verify.py {mib}", WORKLOAD_TIMEOUT)
    assert run.exit_code == 0, f"workload failed: {run.stdout}\n{run.stderr}"
    result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


def test_a_persistent_cap_far_below_the_working_set_sends_the_rest_to_the_fallback(
    guest_image: ImageManifest, vm_state: Path, tmp_path: Path
) -> None:
    with running_daemon("--memory-limit", "1G", "--persistent-cap", "24M") as daemon:
        with swap_vm("cap-vm", daemon, guest_image, vm_state) as vm, diagnosed(vm, daemon):
            wait_for_swap(vm)
            result = fill_and_verify(vm, tmp_path)
            status = agent_status(vm)
            stats = daemon_stats(daemon)["global"]
    counters, refusals = status["counters"], status["refusals"]
    print(json.dumps({"workload": result, "counters": counters, "refusals": refusals,
                      "daemon_pers_zbytes": stats.get("pers_zbytes")}, indent=1))
    assert result["bad"] == 0, f"pages with a wrong CRC: {result['first_bad']}"
    assert result["total_pswpout"] > FILL_MIB * 256 // 3
    assert counters["puts_stored"] > 0 and refusals["refused"] > 0
    assert counters["fallback_writes"] > counters["puts_stored"]  # the cap took the least
    assert counters["fallback_reads"] > 0 and counters["get_hits"] > 0
    assert counters["io_errors"] == 0 and counters["lost_pages"] == 0


def test_tmemd_restarted_mid_fill_keeps_every_page_and_a_crash_is_loud_never_wrong(
    guest_image: ImageManifest, vm_state: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    args = ("--memory-limit", "1G", "--state-file", str(state / "tmemd.state"))
    with running_daemon(*args) as daemon:
        with swap_vm("restart-vm", daemon, guest_image, vm_state) as vm, \
                diagnosed(vm, daemon):
            wait_for_swap(vm)
            start_driver(vm, tmp_path, DRIVER.format(mib=FILL_MIB, pause=""))
            time.sleep(RESTART_AFTER_S)
            daemon.restart()  # SIGTERM saves the pages; the new daemon restores them
            restarted = wait_for_result(vm)
            after_restart = agent_status(vm)["counters"]

            # Second round: the workload fills and waits; tmemd is killed hard (the pages
            # are in it) and a fresh one started (its state file was retired at the restore:
            # nothing comes back); then the workload verifies.
            start_driver(vm, tmp_path, DRIVER.format(mib=FILL_MIB, pause="--pause"))
            wait_for_guest_file(vm, "/tmp/filled", WORKLOAD_TIMEOUT)
            swap_in_other_processes(vm)  # else init may lose pages too, and the guest panics
            daemon.crash()
            daemon.start()
            daemon.admit("restart-vm")
            run_bounded(vm, "touch /tmp/go", 120)
            exit_code = json.loads(wait_for_guest_file(vm, "/tmp/exit.json", WORKLOAD_TIMEOUT))
            crashed = run_bounded(vm, "cat /tmp/result.json; cat /tmp/result.err", 120).stdout
            after_crash = agent_status(vm)["counters"]
            kernel = run_bounded(vm, "dmesg | grep -ci 'error.*swap\\|swap.*error\\|I/O error'"
                                 " || true", 120).stdout
    print(json.dumps({"restarted": restarted, "after_restart": after_restart,
                      "crash_exit": exit_code, "crash_output": crashed[-600:],
                      "after_crash": after_crash, "kernel_error_lines": kernel.strip()},
                     indent=1))
    assert restarted["bad"] == 0, f"pages with a wrong CRC: {restarted['first_bad']}"
    assert restarted["fill_pswpout"] > 0 and restarted["verify_pswpin"] > 0
    assert after_restart["io_errors"] == 0 and after_restart["lost_pages"] == 0
    assert after_restart["tmem_reconnects"] >= 1
    # The crash came before the verify: the workload met a lost page and died of SIGBUS
    # (128 + 7) before it could report anything, right or wrong.
    assert exit_code["exit"] == 135, crashed
    assert '"bad"' not in crashed
    assert after_crash["io_errors"] > 0 and after_crash["lost_pages"] > 0


def test_two_vms_on_one_daemon_each_verify_their_own_pages(
    guest_image: ImageManifest, vm_state: Path, tmp_path: Path
) -> None:
    names = ("pair-a", "pair-b")
    results: dict[str, dict[str, Any] | BaseException] = {}
    with running_daemon("--memory-limit", "1G") as daemon:
        vms = [swap_vm(name, daemon, guest_image, vm_state) for name in names]
        with vms[0] as first, vms[1] as second, diagnosed(first, daemon), \
                diagnosed(second, daemon):

            def run(vm: VirtualMachine, name: str) -> None:
                try:
                    wait_for_swap(vm)
                    workdir = tmp_path / name
                    workdir.mkdir()
                    results[name] = fill_and_verify(vm, workdir, mib=320)
                except BaseException as exc:  # reported by the test's thread
                    results[name] = exc

            threads = [threading.Thread(target=run, args=(vm, name))
                       for vm, name in ((first, names[0]), (second, names[1]))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(WORKLOAD_TIMEOUT + 300)
            statuses = {name: agent_status(vm)["counters"]
                        for vm, name in ((first, names[0]), (second, names[1]))}
            clients = {c["name"]: c for c in daemon_stats(daemon)["clients"]}
    print(json.dumps({"results": {k: v if isinstance(v, dict) else repr(v)
                                  for k, v in results.items()}, "agents": statuses}, indent=1))
    for name in names:
        found = results.get(name)
        assert isinstance(found, dict), f"{name}: {found!r}"
        assert found["bad"] == 0, f"{name}: pages with a wrong CRC: {found['first_bad']}"
        assert found["total_pswpout"] > 0
        assert statuses[name]["io_errors"] == 0 and statuses[name]["puts_stored"] > 0
        assert clients[name]["puts"] > 0 and clients[name]["gets"] > 0
