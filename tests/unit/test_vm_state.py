"""State records: round trip, bad records, and clean-up of VMs whose process is gone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tmemh.image.manifest import ImageManifest
from tmemh.vm import VirtualMachine, VMExists, VMNotFound, VMSpec, reap_stale
from tmemh.vm.state import StateDir, StateError, VMRecord


def make_record(states: StateDir, name: str, pid: int) -> VMRecord:
    run_dir = states.run_dir(name)
    run_dir.mkdir(parents=True)
    overlay, qmp = run_dir / "disk.qcow2", run_dir / "qmp.sock"
    overlay.write_bytes(b"overlay")
    qmp.write_bytes(b"")
    record = VMRecord(name=name, backend="qemu", handle={"pid": pid, "qmp_socket": str(qmp)},
                      run_dir=str(run_dir), console_log=str(run_dir / "console.log"),
                      overlay=str(overlay), ssh_port=2222, ssh_user="root",
                      ssh_key="/nonexistent", accel="tcg", sockets=[str(qmp)],
                      command=["qemu-system-x86_64"])
    states.save(record)
    return record


@pytest.fixture
def fake_qemu(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process whose command line names the VM's QMP socket, like the real QEMU's."""
    qmp = tmp_path / "state" / "alive" / "qmp.sock"
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", str(qmp)])
    try:
        deadline = time.monotonic() + 10  # until exec, /proc shows the parent's command line
        while str(qmp).encode() not in Path(f"/proc/{process.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline, "the fake QEMU did not start"
            time.sleep(0.01)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_record_round_trip(tmp_path: Path) -> None:
    states = StateDir(tmp_path)
    record = make_record(states, "one", 1234)
    assert states.load("one") == record
    assert states.names() == ["one"]
    states.remove("one")
    states.remove("one")
    assert states.load("one") is None and states.names() == []


@pytest.mark.parametrize("text", ["not json", '{"format": 99}', '{"format": 1, "name": "x"}'])
def test_bad_records_are_reported(tmp_path: Path, text: str) -> None:
    states = StateDir(tmp_path)
    states.run_dir("bad").mkdir()
    states.record_path("bad").write_text(text)
    with pytest.raises(StateError, match="bad"):
        states.load("bad")


def test_dead_vm_state_is_removed(tmp_path: Path) -> None:
    states = StateDir(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    record = make_record(states, "gone", dead.pid)
    assert reap_stale(states) == ["gone"]
    assert states.load("gone") is None
    assert not Path(record.overlay).exists() and not Path(record.sockets[0]).exists()
    with pytest.raises(VMNotFound):
        VirtualMachine.attach("gone", tmp_path)


def test_a_reused_pid_is_not_mistaken_for_the_vm(tmp_path: Path) -> None:
    """Our own PID is alive but is not the QEMU of that record: reaped, and not signalled."""
    states = StateDir(tmp_path)
    make_record(states, "reused", os.getpid())
    assert reap_stale(states) == ["reused"]


def test_live_vm_is_kept_and_stopped_by_pid(tmp_path: Path,
                                            fake_qemu: subprocess.Popen[bytes]) -> None:
    states = StateDir(tmp_path / "state")
    record = make_record(states, "alive", fake_qemu.pid)
    assert reap_stale(states) == []
    vm = VirtualMachine.attach("alive", states.path)
    assert vm.is_running()
    vm.shutdown()
    vm.shutdown()
    assert fake_qemu.wait(5) is not None
    assert states.load("alive") is None and not Path(record.overlay).exists()


def test_a_second_launch_of_a_running_name_changes_nothing(
        tmp_path: Path, fake_qemu: subprocess.Popen[bytes]) -> None:
    states = StateDir(tmp_path / "state")
    record = make_record(states, "alive", fake_qemu.pid)
    files = {name: tmp_path / name for name in ("vmlinuz", "initrd", "root.qcow2", "id", "id.pub")}
    for path in files.values():
        path.write_bytes(b"x")
    image = ImageManifest(tmp_path, "k", files["vmlinuz"], files["initrd"], files["root.qcow2"],
                          "6.1", "console=ttyS0", "root", files["id"], files["id.pub"])
    with pytest.raises(VMExists, match="already running"):
        VirtualMachine(VMSpec(name="alive"), image, backend="qemu", state_dir=states.path).launch()
    assert states.load("alive") == record and Path(record.overlay).exists()
    assert fake_qemu.poll() is None
