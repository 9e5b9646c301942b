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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from support.daemon import DaemonUnderTest, running_daemon

from tmemd.service.controlclient import ControlClient
from tmemh.image.manifest import ImageManifest
from tmemh.ssh import CommandResult, SSHError
from tmemh.vm import ChannelSpec, VirtualMachine, VMSpec

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(os.geteuid() != 0, reason="guest image and VMs need root")]

VM_NAME = "swap-vm"
PORT = "org.tmem.0"  # the port the image's init starts the agent on
FILL_MIB = 512
READY_TIMEOUT = 120.0
WORKLOAD_TIMEOUT = 420.0

WORKLOAD = r'''
import array, json, mmap, struct, sys, time, zlib
sys.path.insert(0, "/opt/tmem-agent")
from tmem_agent.tools.pagecheck import guest_pages

PAGE = 4096
count = int(sys.argv[1]) * 256
sources = list(guest_pages(2048))  # 8 MiB of real pages, every tenth a zero page
stamp = struct.Struct("<QQ")

def vmstat():
    with open("/proc/vmstat") as f:
        pairs = dict(line.split() for line in f)
    return {k: int(pairs[k]) for k in ("pswpin", "pswpout")}

region = mmap.mmap(-1, count * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
crcs = array.array("I", bytes(4 * count))
page = bytearray(PAGE)
before = vmstat()
started = time.monotonic()
for i in range(count):
    page[:] = sources[i % len(sources)]
    stamp.pack_into(page, (i * 64) % (PAGE - 16), i, 0x7E57)
    crcs[i] = zlib.crc32(page)
    region[i * PAGE : (i + 1) * PAGE] = page
filled = time.monotonic()
middle = vmstat()
bad = []
for i in range(count):
    if zlib.crc32(region[i * PAGE : (i + 1) * PAGE]) != crcs[i]:
        bad.append(i)
verified = time.monotonic()
after = vmstat()
print(json.dumps({"pages": count, "fill_s": round(filled - started, 2),
                  "verify_s": round(verified - filled, 2), "bad": len(bad), "first_bad": bad[:10],
                  "fill_pswpout": middle["pswpout"] - before["pswpout"],
                  "verify_pswpin": after["pswpin"] - middle["pswpin"],
                  "total_pswpout": after["pswpout"] - before["pswpout"],
                  "total_pswpin": after["pswpin"] - before["pswpin"]}))
'''


@contextmanager
def diagnosed(vm: VirtualMachine, daemon: DaemonUnderTest) -> Iterator[None]:
    """On a failure: the guest's blocked tasks (SysRq over the QEMU monitor), the agent's log
    and the daemon's, so a hang fails with its cause."""
    try:
        yield
    except BaseException:
        try:
            dump = vm.diagnose("w")
        except Exception as exc:  # the VM may be gone
            dump = f"(no SysRq dump: {exc})"
        try:
            agent_log = vm.run("tail -n 60 /var/log/tmem-agent.log; dmesg | tail -n 40",
                               timeout=30).stdout
        except Exception as exc:
            agent_log = f"(no agent log: {exc})"
        print(f"blocked tasks:\n{dump[-8000:]}\nagent log and dmesg:\n{agent_log}\n"
              f"daemon log:\n{daemon.tail(40)}\nconsole:\n{vm.console_tail(40)}")
        raise


def channel_socket(daemon: DaemonUnderTest) -> Path:
    """The socket the VM's channel connects to: its own when the daemon admits VMs, else the
    daemon's one socket."""
    admit = getattr(daemon, "admit", None)
    return Path(admit(VM_NAME)) if admit is not None else Path(daemon.socket)


def wait_for_swap(vm: VirtualMachine) -> dict[str, Any]:
    """The agent's ready file, once swap is on (starting the agent if the init did not)."""
    check = ("test -f /run/tmem-agent/ready && grep -q '^/dev/nbd0 ' /proc/swaps "
             "&& cat /run/tmem-agent/ready")
    started = vm.run("test -S /run/tmem-agent/status.sock || pgrep -f '[t]mem_agent.cli run'",
                     timeout=60)
    if started.exit_code != 0:
        vm.run("start-stop-daemon -S -b -x /usr/local/bin/tmem-agent -- run --supervise "
               f"--port-name {PORT}", timeout=60, check=True)
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        result = vm.run(check, timeout=60)
        if result.exit_code == 0:
            ready: dict[str, Any] = json.loads(result.stdout)
            return ready
        log = vm.run("tail -n 20 /var/log/tmem-agent.log", timeout=60).stdout
        assert "TMEM-AGENT-FAILED" not in log, log
        assert time.monotonic() < deadline, f"swap not on after {READY_TIMEOUT} s:\n{log}"
        time.sleep(2)


def run_bounded(vm: VirtualMachine, command: str, timeout: float) -> CommandResult:
    """Run ``command`` in the guest, failing after ``timeout`` s even if SSH itself hangs (a
    hung guest cannot kill the command: a task waiting for swap-in cannot be killed). The
    thread is released when the VM is torn down."""
    outcome: list[CommandResult | BaseException] = []

    def target() -> None:
        try:
            outcome.append(vm.run(command, timeout=timeout))
        except BaseException as exc:  # handed to the test's thread
            outcome.append(exc)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout + 30)
    if not outcome:
        pytest.fail(f"{command!r} did not finish in {timeout:.0f} s (hung?)")
    if isinstance(outcome[0], SSHError):
        pytest.fail(f"{command!r} did not finish: {outcome[0]}")
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def daemon_stats(daemon: DaemonUnderTest) -> dict[str, Any]:
    with ControlClient(daemon.control) as control:
        found: dict[str, Any] = control.call("stats")
        return found


def test_guest_swaps_512_mib_through_tmem_and_verifies_every_page(
    guest_image: ImageManifest, vm_state: Path, tmp_path: Path
) -> None:
    with running_daemon("--memory-limit", "1G") as daemon:
        spec = VMSpec(name=VM_NAME, memory_mib=256, kernel_args=(f"tmem.vm={VM_NAME}",),
                      channels=(ChannelSpec(PORT, channel_socket(daemon), "connect"),))
        workload = tmp_path / "fill_verify.py"
        workload.write_text(WORKLOAD)
        with VirtualMachine(spec, guest_image, backend="qemu", state_dir=vm_state) as vm, \
                diagnosed(vm, daemon):
            booted = time.monotonic()
            ready = wait_for_swap(vm)
            print(f"swap on {ready} {time.monotonic() - booted:.1f} s after SSH")
            assert ready["tmem"] == "connected"
            vm.ssh().put(workload, "/tmp/fill_verify.py")
            before = daemon_stats(daemon)["global"]
            run = run_bounded(vm, f"python3 /tmp/fill_verify.py {FILL_MIB}",
                              WORKLOAD_TIMEOUT)
            assert run.exit_code == 0, f"workload failed: {run.stdout}\n{run.stderr}"
            result = json.loads(run.stdout.strip().splitlines()[-1])
            status = json.loads(vm.run("tmem-agent status", timeout=60, check=True).stdout)
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
                                                 "cpu_s")},
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


KILL_AFTER_S = 12  # into the fill: swap-out is in full flow
KILLED_FILL_MIB = 384
KILL_DRIVER = r"""#!/bin/sh
# The workload in the background, and SIGKILL for the serving agent (the supervisor's child,
# whose pid is in the lock file) while it swaps. Nothing here needs SSH meanwhile.
python3 /tmp/fill_verify.py {mib} >/tmp/result.tmp 2>/tmp/result.err &
sleep {kill_after}
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
        (tmp_path / "fill_verify.py").write_text(WORKLOAD)
        driver = tmp_path / "driver.sh"
        driver.write_text(KILL_DRIVER.format(mib=KILLED_FILL_MIB, kill_after=KILL_AFTER_S))
        driver.chmod(0o755)
        with VirtualMachine(spec, guest_image, backend="qemu", state_dir=vm_state) as vm, \
                diagnosed(vm, daemon):
            wait_for_swap(vm)
            first = int(vm.run("cat /var/lib/tmem-agent/swap-fallback.lock", timeout=60).stdout)
            vm.ssh().put(tmp_path / "fill_verify.py", "/tmp/fill_verify.py")
            vm.ssh().put(driver, "/tmp/driver.sh")
            vm.run("start-stop-daemon -S -b -x /tmp/driver.sh", timeout=60, check=True)
            deadline = time.monotonic() + WORKLOAD_TIMEOUT
            while True:  # short polls: SSH itself may wait while the agent is restarted
                done = run_bounded(vm, "cat /tmp/result.json 2>/dev/null", 120)
                if done.exit_code == 0 and done.stdout.strip():
                    break
                assert time.monotonic() < deadline, "the fill + verify did not finish"
                time.sleep(5)
            result = json.loads(done.stdout)
            status = json.loads(vm.run("tmem-agent status", timeout=60, check=True).stdout)
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
