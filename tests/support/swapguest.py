"""Helpers of the tests that swap a real guest through tmem: the fill + verify program the guest
runs, waiting for the agent's swap, bounded guest commands, diagnosis of a hang.

The program fills N MiB of anonymous memory with real page contents (pages cut from the
guest's own files, each stamped with its number, ~2:1 with lzo), recording a CRC-32 per page,
writes ``/tmp/filled`` when the fill is done (with ``--pause`` it then waits for ``/tmp/go``),
reads every page back checking its CRC and prints one JSON line. A page whose swap-in fails
kills it with SIGBUS: it never reports a wrong page as right.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from support.daemon import DaemonUnderTest
from tmemd.service.controlclient import ControlClient
from tmemh.ssh import CommandResult, SSHError
from tmemh.vm import VirtualMachine

PORT = "org.tmem.0"  # the port the image's init starts the agent on
READY_TIMEOUT = 120.0
WORKLOAD_TIMEOUT = 420.0
AGENT_LOG = "/var/log/tmem-agent.log"
STANDBY_WAITING = "standby: waiting to take over"  # what a ready standby logs

WORKLOAD = r'''
import array, json, mmap, os, struct, sys, time, zlib
sys.path.insert(0, "/opt/tmem-agent")
from tmem_agent.tools.pagecheck import guest_pages

PAGE = 4096
count = int(sys.argv[1]) * 256
sources = list(guest_pages(2048))  # 8 MiB of real pages, every tenth a zero page
stamp = struct.Struct("<QQ")

def vmstat():
    with open("/proc/vmstat") as f:
        pairs = dict(line.split() for line in f)
    found = {k: int(pairs[k]) for k in ("pswpin", "pswpout")}
    with open("/proc/stat") as f:  # user nice system idle iowait irq softirq (ticks)
        found["cpu"] = [int(v) for v in f.readline().split()[1:8]]
    return found

def cpu_share(a, b):
    ticks = [y - x for x, y in zip(a["cpu"], b["cpu"])]
    total = sum(ticks) or 1
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq")
    return {n: round(t / total, 2) for n, t in zip(names, ticks) if t}

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
with open("/tmp/filled", "w") as marker:
    marker.write("filled\n")
if len(sys.argv) > 2 and sys.argv[2] == "--pause":  # until the host says go on
    while not os.path.exists("/tmp/go"):
        time.sleep(0.2)
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
                  "total_pswpin": after["pswpin"] - before["pswpin"],
                  "cpu_fill": cpu_share(before, middle), "cpu_verify": cpu_share(middle, after)}))
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
            agent_log = vm.run("tail -n 60 /var/log/tmem-agent.log; dmesg | grep -i nbd | "
                               "tail -n 30; dmesg | tail -n 40", timeout=30).stdout
        except Exception as exc:
            agent_log = f"(no agent log: {exc})"
        print(f"blocked tasks:\n{dump[-30000:]}\nagent log and dmesg:\n{agent_log}\n"
              f"daemon log:\n{daemon.tail(40)}\nconsole:\n{vm.console_tail(40)}")
        raise


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


def wait_for_standby(vm: VirtualMachine) -> None:
    """Until the supervisor's standby agent has allocated, locked and hardened all it needs and
    waits for the serving agent's lock: only then is a takeover free of new allocations (a kill
    before that leaves a half-started standby to start under memory pressure)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while vm.run(f"grep -q '{STANDBY_WAITING}' {AGENT_LOG}", timeout=60).exit_code != 0:
        assert time.monotonic() < deadline, f"no standby waiting after {READY_TIMEOUT} s"
        time.sleep(1)


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


def put_workload(vm: VirtualMachine, tmp_path: Path) -> None:
    """Copy the fill + verify program to the guest's /tmp/fill_verify.py."""
    workload = tmp_path / "fill_verify.py"
    workload.write_text(WORKLOAD)
    vm.ssh().put(workload, "/tmp/fill_verify.py")


def agent_status(vm: VirtualMachine) -> dict[str, Any]:
    status: dict[str, Any] = json.loads(vm.run("tmem-agent status", timeout=60,
                                               check=True).stdout)
    return status


RESULT_FILE = "/tmp/result.json"


def start_driver(vm: VirtualMachine, tmp_path: Path, script: str) -> None:
    """Copy the workload and the shell ``script`` to the guest and start the script detached
    (nothing in it needs SSH while it runs); it must end with the workload's JSON line in
    RESULT_FILE (written whole: ``mv`` of a finished file)."""
    put_workload(vm, tmp_path)
    driver = tmp_path / "driver.sh"
    driver.write_text(script)
    driver.chmod(0o755)
    vm.ssh().put(driver, "/tmp/driver.sh")
    vm.run("rm -f /tmp/filled /tmp/go /tmp/result.json /tmp/exit.json; "
           "start-stop-daemon -S -b -x /tmp/driver.sh", timeout=60, check=True)


def wait_for_guest_file(vm: VirtualMachine, path: str, timeout: float) -> str:
    """The contents of ``path`` in the guest once it exists and is not empty. Short polls:
    SSH itself may wait while swap is stalled (an agent or daemon restarting)."""
    deadline = time.monotonic() + timeout
    while True:
        done = run_bounded(vm, f"cat {path} 2>/dev/null", 120)
        if done.exit_code == 0 and done.stdout.strip():
            return done.stdout
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout:.0f} s"
        time.sleep(3)


def wait_for_result(vm: VirtualMachine) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(wait_for_guest_file(vm, RESULT_FILE, WORKLOAD_TIMEOUT))
    return found


# Reads every mapping of every process but the fill + verify program through /proc/PID/mem:
# their swapped-out pages come back into memory (the workload's pages go out instead).
SWAP_IN_OTHERS = r"""
import os, re
spared = {os.getpid()}
for pid in os.listdir("/proc"):
    if not pid.isdigit() or int(pid) in spared:
        continue
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"fill_verify" in f.read():
                continue
        with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
            for line in maps:
                start, end, perms = re.match(r"([0-9a-f]+)-([0-9a-f]+) (\S+)", line).groups()
                if "r" not in perms or "[vsyscall]" in line:
                    continue
                for at in range(int(start, 16), int(end, 16), 1 << 16):
                    try:
                        mem.seek(at)
                        mem.read(1 << 16)
                    except OSError:
                        break
    except OSError:
        continue
"""


def swap_in_other_processes(vm: VirtualMachine) -> None:
    """Bring every process's swapped-out pages but the workload's back into memory, so that
    losing swap (a tmemd crash) kills only the workload, not init or sshd."""
    run_bounded(vm, f"python3 -c '{SWAP_IN_OTHERS}'", 300)
