"""The guest kernel swaps through host tmem: a real TCG guest, a real tmemd, the real agent.

A 256 MiB guest whose port ``org.tmem.0`` is wired to a live ``tmemd serve``; the image's init
starts ``tmem-agent run`` on it (the test starts it over SSH if the init did not), which
attaches /dev/nbd0 with nbd-client and turns swap on. Then a program in the guest fills
512 MiB of anonymous memory with real page contents (pages cut from the guest's own files,
each stamped with its number, ~2:1 with lzo), recording a CRC-32 per page, and reads every
page back checking its CRC. Every CRC must hold; tmemd must show persistent puts and gets; the
fallback file must have taken exactly the pages tmemd refused. On a hang the guest's blocked
tasks are dumped through the QEMU monitor and the test fails with them.

A second guest has its serving agent SIGKILLed in the middle of a fill: the supervisor's
standby takes over (netlink reconnect of /dev/nbd0, tmemd resumes the client) and every page
still verifies.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from support.daemon import DaemonUnderTest, running_daemon
from support.swapguest import (
    PORT,
    WORKLOAD_TIMEOUT,
    agent_status,
    daemon_stats,
    diagnosed,
    put_workload,
    run_bounded,
    start_driver,
    wait_for_result,
    wait_for_standby,
    wait_for_swap,
)

from tmemh.image.manifest import ImageManifest
from tmemh.vm import ChannelSpec, VirtualMachine, VMSpec

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(os.geteuid() != 0, reason="guest image and VMs need root")]

VM_NAME = "swap-vm"
FILL_MIB = 512

def channel_socket(daemon: DaemonUnderTest) -> Path:
    return Path(daemon.admit(VM_NAME))


def test_guest_swaps_512_mib_through_tmem_and_verifies_every_page(
    guest_image: ImageManifest, vm_state: Path, tmp_path: Path
) -> None:
    with running_daemon("--memory-limit", "1G") as daemon:
        spec = VMSpec(name=VM_NAME, memory_mib=256, kernel_args=(f"tmem.vm={VM_NAME}",),
                      channels=(ChannelSpec(PORT, channel_socket(daemon), "connect"),))
        with VirtualMachine(spec, guest_image, backend="qemu", state_dir=vm_state) as vm, \
                diagnosed(vm, daemon):
            booted = time.monotonic()
            ready = wait_for_swap(vm)
            print(f"swap on {ready} {time.monotonic() - booted:.1f} s after SSH")
            assert ready["tmem"] == "connected"
            put_workload(vm, tmp_path)
            before = daemon_stats(daemon)["global"]
            run = run_bounded(vm, f"python3 /tmp/fill_verify.py {FILL_MIB}",
                              WORKLOAD_TIMEOUT)
            assert run.exit_code == 0, f"workload failed: {run.stdout}\n{run.stderr}"
            result = json.loads(run.stdout.strip().splitlines()[-1])
            status = agent_status(vm)
            after = daemon_stats(daemon)["global"]
            swapped_out = result["fill_pswpout"] * 4096 / (1 << 20)
            swapped_in = result["verify_pswpin"] * 4096 / (1 << 20)
            print(json.dumps({
                "workload": result,
                "swap_out_mib_s": round(swapped_out / result["fill_s"], 1),
                "swap_in_mib_s": round(swapped_in / result["verify_s"], 1),
                "total_s": round(result["fill_s"] + result["verify_s"], 1),
                "agent": {k: status[k] for k in ("counters", "refusals", "map",
                                                 "fallback_allocated_bytes", "hardening",
                                                 "fallback_thread_hardening", "locked_kib",
                                                 "cpu_s", "cpu_user_s", "cpu_system_s")},
                "agent_latency_us": {k: v["mean"] for k, v in status["latency_us"].items()},
                "daemon": {k: after[k] - before.get(k, 0) for k in
                           ("put_total", "get_total", "get_hits", "failed_pers_puts")
                           if k in after}}, indent=1))
            assert result["bad"] == 0, f"pages with a wrong CRC: {result['first_bad']}"
            assert result["total_pswpout"] > FILL_MIB * 256 // 3  # it really swapped
            counters, refusals = status["counters"], status["refusals"]
            assert counters["io_errors"] == 0 and counters["lost_pages"] == 0
            assert counters["puts_stored"] > 0 and counters["get_hits"] > 0
            assert after["put_total"] > before.get("put_total", 0)
            assert after["get_total"] > before.get("get_total", 0)
            assert refusals["disconnected"] == 0 and refusals["error"] == 0
            assert counters["fallback_writes"] == refusals["refused"]  # only what tmemd refused
            assert status["hardening"].get("mlockall") == "ok"
            assert status["fallback_thread_hardening"].get("io_flusher") == "ok"


KILL_AT_SWAPPED_MIB = 96  # into the fill (~300 MiB of it swaps out): swap-out in full flow
KILLED_FILL_MIB = 384
KILL_DRIVER = r"""#!/bin/sh
# The workload in the background, and SIGKILL for the serving agent (the supervisor's child,
# whose pid is in the lock file) once the workload has swapped out {kill_pages} pages (or has
# ended): a condition, not a time, so a slow host cannot move the kill before swap-out starts.
# Nothing here needs SSH meanwhile.
swapped() {{ awk '$1 == "pswpout" {{ print $2 }}' /proc/vmstat; }}
base=$(swapped)
python3 /tmp/fill_verify.py {mib} >/tmp/result.tmp 2>/tmp/result.err &
workload=$!
while [ $(( $(swapped) - base )) -lt {kill_pages} ] && kill -0 "$workload" 2>/dev/null; do
    sleep 0.5
done
kill -9 "$(cat /var/lib/tmem-agent/swap-fallback.lock)" && echo killed >/tmp/killed
wait
mv /tmp/result.tmp /tmp/result.json
"""


def test_agent_killed_mid_swap_is_restarted_and_every_page_verifies(
    guest_image: ImageManifest, vm_state: Path, tmp_path: Path
) -> None:
    with running_daemon("--memory-limit", "1G") as daemon:
        spec = VMSpec(name=VM_NAME, memory_mib=256, kernel_args=(f"tmem.vm={VM_NAME}",),
                      channels=(ChannelSpec(PORT, channel_socket(daemon), "connect"),))
        with VirtualMachine(spec, guest_image, backend="qemu", state_dir=vm_state) as vm, \
                diagnosed(vm, daemon):
            wait_for_swap(vm)
            wait_for_standby(vm)
            first = int(vm.run("cat /var/lib/tmem-agent/swap-fallback.lock", timeout=60).stdout)
            start_driver(vm, tmp_path, KILL_DRIVER.format(
                mib=KILLED_FILL_MIB, kill_pages=KILL_AT_SWAPPED_MIB * 256))
            result = wait_for_result(vm)
            status = agent_status(vm)
            second = int(vm.run("cat /var/lib/tmem-agent/swap-fallback.lock", timeout=60).stdout)
            log = vm.run("cat /tmp/killed; grep -c 'standby: taking over' /var/log/tmem-agent.log",
                         timeout=60).stdout
            print(json.dumps({"workload": result, "agent_pids": [first, second],
                              "agent": {k: status[k] for k in ("counters", "refusals", "map",
                                                               "uptime_s")}}, indent=1))
            assert "killed" in log and second != first
            assert result["bad"] == 0, f"pages with a wrong CRC: {result['first_bad']}"
            assert result["fill_pswpout"] > 0 and result["verify_pswpin"] > 0
            assert status["counters"]["io_errors"] == 0
