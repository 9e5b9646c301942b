"""Admitting a VM and its tool ports to tmemd, all or nothing, for QEMU's uid; dismissing
them all (a daemon scripted in place of the control socket; the real one:
tests/real/test_suite_uffd_cell.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tmemd.service.controlclient import ControlConnectionError, ControlRequestError
from tmemh.vm import InvalidVMSpec, TmemToolPort, VirtualMachine, VMSpec, tmemadmission
from tmemh.vm.errors import TmemUnavailable

CONTROL = Path("/run/tmemd/control.sock")
UFFD = TmemToolPort("org.tmem.uffd", "-uffd")


class ScriptedDaemon:
    """Admits every name but those in ``refuse``; remembers who is admitted, for whom."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, refuse: tuple[str, ...] = (),
                 gone: bool = False) -> None:
        self.admitted: dict[str, int | str | None] = {}
        self.refuse, self.gone = refuse, gone
        monkeypatch.setattr(tmemadmission, "admit_vm", self.admit)
        monkeypatch.setattr(tmemadmission, "dismiss_vm", self.dismiss)

    def admit(self, control: str | Path, vm: str, owner: int | str | None = None) -> Path:
        if vm in self.refuse:
            raise ControlRequestError("InvalidArgument", f"bad name {vm}")
        self.admitted[vm] = owner
        return Path(f"/run/tmemd/vms/{vm}.sock")

    def dismiss(self, control: str | Path, vm: str) -> None:
        if self.gone:
            raise ControlConnectionError("no such file")
        del self.admitted[vm]


def test_the_vm_and_its_tool_ports_are_admitted_for_qemus_uid(
        monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = ScriptedDaemon(monkeypatch)
    spec = VMSpec(name="vm1", kernel_args=("quiet",), tmem_tool_ports=(UFFD,))
    wired, admission = tmemadmission.admit(CONTROL, spec, 107)
    assert daemon.admitted == {"vm1": 107, "vm1-uffd": 107}
    assert [(c.name, str(c.socket_path), c.mode) for c in wired.channels] == [
        ("org.tmem.0", "/run/tmemd/vms/vm1.sock", "connect"),
        ("org.tmem.uffd", "/run/tmemd/vms/vm1-uffd.sock", "connect")]
    assert wired.kernel_args == ("quiet", "tmem.vm=vm1") and wired.tmem_tool_ports == ()
    assert admission == {"control": str(CONTROL), "socket": "/run/tmemd/vms/vm1.sock",
                         "port": "org.tmem.0", "owner_uid": 107,
                         "clients": {"org.tmem.0": "vm1", "org.tmem.uffd": "vm1-uffd"}}
    assert tmemadmission.dismiss(admission, "vm1") == f"dismissed from tmemd at {CONTROL}"
    assert daemon.admitted == {}


def test_a_refused_tool_port_leaves_nothing_admitted(monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = ScriptedDaemon(monkeypatch, refuse=("vm1-uffd",))
    with pytest.raises(TmemUnavailable, match="did not admit vm1 fully: InvalidArgument"):
        tmemadmission.admit(CONTROL, VMSpec(name="vm1", tmem_tool_ports=(UFFD,)), 0)
    assert daemon.admitted == {}


def test_dismissing_says_when_the_daemon_is_gone_and_reads_old_records(
        monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = ScriptedDaemon(monkeypatch)
    daemon.admitted["old"] = 0
    old_record = {"control": str(CONTROL), "socket": "/s", "port": "org.tmem.0",
                  "owner_uid": 0}  # written before tool ports existed: no "clients"
    assert tmemadmission.dismiss(old_record, "old").startswith("dismissed")
    assert daemon.admitted == {}
    daemon.gone = True
    assert "tmemd unreachable" in tmemadmission.dismiss(old_record, "old")


def test_tool_ports_must_be_distinct_and_need_a_tmemd(tmp_path: Path) -> None:
    with pytest.raises(InvalidVMSpec, match="of their own"):
        VMSpec(name="a", tmem_tool_ports=(UFFD, TmemToolPort("org.tmem.x", "-uffd")))
    with pytest.raises(InvalidVMSpec, match="client suffix"):
        TmemToolPort("org.tmem.x", "a b")
    with pytest.raises(InvalidVMSpec, match="need a tmemd"):
        VirtualMachine(VMSpec(name="a", tmem_tool_ports=(UFFD,)), None, state_dir=tmp_path)
