"""The host's half of `vm up --tmem` without a VM: the control socket argument, the one-line
refusal without a daemon, the guest's swap report, the status table, QEMU's uid per backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest

from tmemh.ssh import CommandResult, SSHError
from tmemh.vm import VirtualMachine, VMSpec
from tmemh.vm.errors import TmemUnavailable
from tmemh.vm.libvirt_backend import LibvirtBackend, _label_uid
from tmemh.vm.qemu_backend import QemuBackend
from tmemh.vm.render import LaunchConfig
from tmemh.vm.state import StateDir, VMRecord
from tmemh.vm_tmem import (
    _SECTION,
    control_socket,
    require_daemon,
    status_rows,
    swap_report,
)


def test_a_directory_means_the_control_socket_in_it(tmp_path: Path) -> None:
    assert control_socket(tmp_path) == tmp_path / "control.sock"
    assert control_socket(tmp_path / "ctl.sock") == tmp_path / "ctl.sock"


def test_no_daemon_is_one_line_saying_how_to_start_one(tmp_path: Path) -> None:
    with pytest.raises(TmemUnavailable) as caught:
        require_daemon(tmp_path / "control.sock")
    message = str(caught.value)
    assert "\n" not in message
    assert f"tmemd serve --control {tmp_path / 'control.sock'}" in message
    assert "No such file" in message


class FakeGuest:
    def __init__(self, output: str | Exception) -> None:
        self.output = output

    def run(self, command: str, timeout: float | None = None) -> CommandResult:
        if isinstance(self.output, Exception):
            raise self.output
        return CommandResult(command, 0, self.output, "")


def guest_says(status: dict[str, Any] | str, swaps: str = "", log: str = "",
               ports: str = "/dev/vport1p1\torg.tmem.0") -> FakeGuest:
    text = status if isinstance(status, str) else json.dumps(status)
    header = "Filename\tType\tSize\tUsed\tPriority"
    return FakeGuest(f"{_SECTION} status\n{text}\n{_SECTION} swaps\n{header}\n{swaps}\n"
                     f"{_SECTION} log\n{log}\n{_SECTION} ports\n{ports}\n")


def report(guest: FakeGuest) -> tuple[bool, str]:
    return swap_report(cast(VirtualMachine, guest), wait_s=1)


def test_the_report_says_active_with_the_device() -> None:
    active, line = report(guest_says({"device": "/dev/nbd0", "swap_active": True,
                                      "tmem_connected": True, "phase": "ready"},
                                     swaps="/dev/nbd0 partition 1048572 0 100"))
    assert active and line == "tmem swap: active on /dev/nbd0 (tmemd connected)"


def test_the_report_says_why_not_from_the_agent_or_its_log() -> None:
    failed = report(guest_says({"phase": "failed: mkswap failed (1): boom", "device": "/dev/nbd0"}))
    assert failed == (False, "tmem swap: not active (agent failed: mkswap failed (1): boom)")
    gone = report(guest_says("tmem-agent: error: no agent answers at /run/x.sock",
                             log="Traceback\nOSError: no virtio-serial port named 'org.tmem.0'"))
    assert not gone[0] and "OSError: no virtio-serial port" in gone[1]
    no_port = report(guest_says("", ports="tmem-agent: error: no virtio-serial ports"))
    assert no_port == (False, "tmem swap: not active (the guest has no virtio-serial port "
                              "org.tmem.0)")
    unreachable = report(FakeGuest(SSHError("connection reset")))
    assert not unreachable[0] and "connection reset" in unreachable[1]


def test_status_rows_put_both_views_side_by_side() -> None:
    agent = {"phase": "ready", "device": "/dev/nbd0", "swap_active": True,
             "tmem_connected": True, "counters": {"puts": 5, "gets": 3, "flushes": 1,
                                                  "fallback_writes": 2},
             "refusals": {"refused": 1, "disconnected": 0}, "map": {"tmem": 4}}
    daemon = {"admission": {"admitted": True, "socket": "/run/tmemd/vms/a.sock"},
              "session": {"connected": True}, "client": {"puts": 5, "gets": 3, "flushes": 1,
                                                         "pages": 4, "failed_puts": 1,
                                                         "zbytes": 900}}
    rows = {what: (guest, host) for what, guest, host in status_rows(agent, daemon)}
    assert rows["state"] == ("ready", "admitted")
    assert rows["puts (pages)"] == ("5", "5")
    assert rows["pages held"] == ("4", "4")
    assert rows["refused / failed puts"] == ("1", "1")
    assert "error" not in rows
    broken = {what: (g, h) for what, g, h in status_rows({"error": "no agent"},
                                                           {"error": "tmemd gone"})}
    assert broken["error"] == ("no agent", "tmemd gone")


def config(tmp_path: Path, accel: str = "tcg") -> LaunchConfig:
    return LaunchConfig(spec=VMSpec(name="u"), kernel=tmp_path / "k", initramfs=tmp_path / "i",
                        disk=tmp_path / "d", base_cmdline="", console_log=tmp_path / "c",
                        qmp_socket=tmp_path / "q", ssh_port=2222, accel=accel)


def test_qemu_runs_as_us_and_the_harness_domain_pins_root(tmp_path: Path) -> None:
    import os

    assert QemuBackend().qemu_uid(config(tmp_path)) == os.geteuid()
    # The domain template's static DAC label (+0:+0) decides; libvirt is not asked.
    assert LibvirtBackend("qemu:///nowhere").qemu_uid(config(tmp_path)) == 0
    assert _label_uid("+64055:+64055") == 64055
    assert _label_uid("root:root") == 0


def test_a_stale_record_with_tmem_is_dismissed_when_reaped(tmp_path: Path) -> None:
    """A VM whose QEMU is gone is dismissed on the way out (no daemon here: it says so)."""
    states = StateDir(tmp_path)
    record = VMRecord(name="gone", backend="qemu", handle={"pid": 1 << 30, "qmp_socket": "/x"},
                      run_dir=str(tmp_path / "gone"), console_log="", overlay=str(tmp_path / "o"),
                      ssh_port=1, ssh_user="root", ssh_key="", accel="tcg",
                      tmem={"control": str(tmp_path / "control.sock"), "socket": "/s",
                            "port": "org.tmem.0", "owner_uid": 0})
    states.save(record)
    assert states.load("gone") == record  # the wiring is kept in the record
    vm = VirtualMachine._from_record(record, states)
    vm._cleanup()
    assert vm.tmem is None and "tmemd unreachable" in vm.tmem_dismissal
    assert states.load("gone") is None
