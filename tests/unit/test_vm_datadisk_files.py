"""The data disk's files on the host (qemu-img, no VM): sizes, base images, the record, and
their removal with a VM that is gone; disk names a VM does not have are refused."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from test_vm_state import make_record

from tmemh.vm import DATA_DISK, DataDisk, VirtualMachine, VMError, VMOperationError, reap_stale
from tmemh.vm.disks import DataDiskPlan, MiB, describe_data_disk, disk_slot, probe_base
from tmemh.vm.state import StateDir

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="no qemu-img")


def qemu_img_info(path: Path) -> dict:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


@needs_qemu_img
def test_an_empty_data_disk_is_a_qcow2_of_the_size(tmp_path: Path) -> None:
    plan = DataDiskPlan.check(DataDisk(96))
    assert plan is not None and plan.size_bytes == 96 * MiB
    record = plan.create(tmp_path / "data.qcow2")
    info = qemu_img_info(tmp_path / "data.qcow2")
    assert (info["format"], info["virtual-size"]) == ("qcow2", 96 * MiB)
    assert "backing-filename" not in info
    assert record == {"path": str(tmp_path / "data.qcow2"), "device": "/dev/vdb",
                      "serial": "tmemh-data", "size_bytes": 96 * MiB, "base": None}
    assert describe_data_disk(record) == "/dev/vdb 96 MiB (serial tmemh-data)"
    assert describe_data_disk(record, brief=True) == "96 MiB"
    assert describe_data_disk(None) == "-"
    assert DataDiskPlan.check(None) is None


@needs_qemu_img
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_a_base_image_is_layered_over_and_never_written(tmp_path: Path, fmt: str) -> None:
    base = tmp_path / f"base.{fmt}"
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(base), str(8 * MiB)], check=True)
    before = base.read_bytes()
    assert probe_base(base).format == fmt and probe_base(base).size_bytes == 8 * MiB

    same = DataDiskPlan.check(DataDisk(base=base))
    assert same is not None and same.size_bytes == 8 * MiB
    record = same.create(tmp_path / "data.qcow2")
    info = qemu_img_info(tmp_path / "data.qcow2")
    assert info["backing-filename"] == str(base) and info["backing-filename-format"] == fmt
    assert record["base"] == str(base) and "over " in describe_data_disk(record)

    grown = DataDiskPlan.check(DataDisk(16, base))
    assert grown is not None
    grown.create(tmp_path / "grown.qcow2")
    assert qemu_img_info(tmp_path / "grown.qcow2")["virtual-size"] == 16 * MiB
    assert base.read_bytes() == before

    with pytest.raises(VMError, match="smaller than its base"):
        DataDiskPlan.check(DataDisk(4, base))


@needs_qemu_img
def test_bad_bases_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(VMError, match="is not a file"):
        probe_base(tmp_path / "missing.img")
    vmdk = tmp_path / "disk.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(vmdk), "1M"], check=True)
    with pytest.raises(VMError, match="use one of raw, qcow2"):
        probe_base(vmdk)


def test_unknown_disk_names_are_refused() -> None:
    with pytest.raises(VMOperationError, match="unknown disk 'vdc'; use one of root, data"):
        disk_slot("vdc")


def test_a_vm_without_a_data_disk_refuses_data_disk_calls(tmp_path: Path) -> None:
    states = StateDir(tmp_path)
    record = make_record(states, "plain", 1)
    vm = VirtualMachine._from_record(record, states)
    with pytest.raises(VMOperationError, match="VM plain has no data disk"):
        vm.block_stats(DATA_DISK)
    with pytest.raises(VMOperationError, match="unknown disk"):
        vm.disk_throttle("swap")


def test_the_data_disk_of_a_vm_that_is_gone_is_removed(tmp_path: Path) -> None:
    states = StateDir(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    record = make_record(states, "gone", dead.pid)
    data = Path(record.run_dir) / "data.qcow2"
    data.write_bytes(b"data")
    record.data_disk = {"path": str(data), "device": "/dev/vdb", "serial": "tmemh-data",
                        "size_bytes": MiB, "base": None}
    states.save(record)
    assert states.load("gone") == record
    assert reap_stale(states) == ["gone"]
    assert not data.exists() and not Path(record.overlay).exists()
