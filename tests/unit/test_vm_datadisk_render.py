"""A data disk renders the same way for both backends: a second virtio-blk disk (vdb) with
the serial the guest finds it by, its own throttle and discard; the root disk stays as it was."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from tmemh.vm import DataDisk, DiskThrottle, InvalidVMSpec, VMSpec
from tmemh.vm.disks import DATA_SLOT, ROOT_SLOT
from tmemh.vm.render import LaunchConfig, domain_xml, qemu_command_line

ROOT_DRIVE_BEFORE = "file={d}/disk.qcow2,format=qcow2,if=none,id=drive-vda,"\
                    "throttling.bps-total=20000000,throttling.iops-total=200"


def make_config(tmp_path: Path, data_disk: DataDisk | None) -> LaunchConfig:
    spec = VMSpec(name="data-me", throttle=DiskThrottle(20_000_000, 200), data_disk=data_disk)
    return LaunchConfig(spec=spec, kernel=tmp_path / "vmlinuz", initramfs=tmp_path / "initrd.gz",
                        disk=tmp_path / "disk.qcow2", base_cmdline="console=ttyS0 root=/dev/vda",
                        console_log=tmp_path / "console.log", qmp_socket=tmp_path / "qmp.sock",
                        ssh_port=2222, accel="tcg",
                        data_disk=None if data_disk is None else tmp_path / "data.qcow2")


def option_after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == flag]


def blk_devices(argv: list[str]) -> list[str]:
    return [d for d in option_after(argv, "-device") if d.startswith("virtio-blk-pci")]


def test_qemu_gets_a_second_virtio_blk_disk_with_serial_throttle_and_discard(
        tmp_path: Path) -> None:
    argv = qemu_command_line(make_config(tmp_path, DataDisk(2048, None, DiskThrottle(5 << 20))))
    root, data = option_after(argv, "-drive")
    assert root == ROOT_DRIVE_BEFORE.format(d=tmp_path)
    assert data == (f"file={tmp_path}/data.qcow2,format=qcow2,if=none,id=drive-vdb,"
                    f"discard=unmap,throttling.bps-total={5 << 20}")
    # in this order on the PCI bus (slots are given in command-line order): vda, then vdb
    assert blk_devices(argv) == ["virtio-blk-pci,drive=drive-vda,id=vda",
                                 "virtio-blk-pci,drive=drive-vdb,id=vdb,serial=tmemh-data"]


def test_without_a_data_disk_the_command_line_is_unchanged(tmp_path: Path) -> None:
    argv = qemu_command_line(make_config(tmp_path, None))
    assert option_after(argv, "-drive") == [ROOT_DRIVE_BEFORE.format(d=tmp_path)]
    assert blk_devices(argv) == ["virtio-blk-pci,drive=drive-vda,id=vda"]
    root = ET.fromstring(domain_xml(make_config(tmp_path, None)))
    [disk] = root.findall("devices/disk")
    assert disk.find("serial") is None and disk.find("driver").get("discard") is None


def test_libvirt_gets_the_same_second_disk(tmp_path: Path) -> None:
    config = make_config(tmp_path, DataDisk(1024, None, DiskThrottle(0, 50)))
    root_disk, data_disk = ET.fromstring(domain_xml(config)).findall("devices/disk")
    assert root_disk.find("target").get("dev") == "vda"
    assert root_disk.find("source").get("file") == str(tmp_path / "disk.qcow2")
    assert root_disk.findtext("iotune/total_bytes_sec") == "20000000"
    assert root_disk.find("serial") is None
    assert data_disk.get("type") == "file" and data_disk.get("device") == "disk"
    assert data_disk.find("source").get("file") == str(tmp_path / "data.qcow2")
    assert (data_disk.find("target").get("dev"), data_disk.find("target").get("bus")) == (
        "vdb", "virtio")
    assert data_disk.findtext("serial") == "tmemh-data"
    driver = data_disk.find("driver")
    assert (driver.get("type"), driver.get("discard")) == ("qcow2", "unmap")
    assert data_disk.find("iotune/total_bytes_sec") is None
    assert data_disk.findtext("iotune/total_iops_sec") == "50"


def test_an_unthrottled_data_disk_has_no_iotune(tmp_path: Path) -> None:
    config = make_config(tmp_path, DataDisk(64))
    assert "throttling" not in option_after(qemu_command_line(config), "-drive")[1]
    assert ET.fromstring(domain_xml(config)).findall("devices/disk")[1].find("iotune") is None


def test_slots_and_serial_fit_virtio_blk() -> None:
    assert (ROOT_SLOT.target, DATA_SLOT.target) == ("vda", "vdb")
    assert DATA_SLOT.serial is not None and len(DATA_SLOT.serial.encode()) <= 20


def test_a_launch_needs_the_data_disk_file_exactly_with_the_spec(tmp_path: Path) -> None:
    config = make_config(tmp_path, DataDisk(64))
    with pytest.raises(InvalidVMSpec, match="data disk"):
        replace(config, data_disk=None)
    with pytest.raises(InvalidVMSpec, match="data disk"):
        replace(make_config(tmp_path, None), data_disk=tmp_path / "data.qcow2")


@pytest.mark.parametrize("kwargs", [
    {}, {"size_mib": 0}, {"size_mib": 1 << 25}, {"size_mib": 1.5}, {"size_mib": True},
    {"size_mib": 8, "throttle": (1, 2)},
])
def test_invalid_data_disks_are_refused(kwargs: dict) -> None:
    with pytest.raises(InvalidVMSpec):
        DataDisk(**kwargs)


def test_a_spec_takes_only_a_data_disk() -> None:
    with pytest.raises(InvalidVMSpec, match="DataDisk"):
        VMSpec(name="x", data_disk=2048)  # type: ignore[arg-type]
    assert VMSpec(name="x").data_disk is None
    assert DataDisk(base="rel.img").base == Path("rel.img")  # type: ignore[arg-type]
