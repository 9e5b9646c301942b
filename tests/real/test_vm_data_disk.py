"""A VM with a data disk, booted with each backend: the guest sees a plain block device
/dev/vdb of the given size, found by its serial; data written to it reads back; the disk is
throttled and counted apart from the root disk; teardown removes its qcow2.

The qemu VM gets an empty data disk; the libvirt VM's starts as a copy of a raw base image,
which the guest reads and overwrites while the base itself is never written.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from tmemh.image.manifest import ImageManifest
from tmemh.vm import DATA_DISK, DataDisk, DiskThrottle, VirtualMachine, VMSpec
from tmemh.vm.spec import DATA_DISK_SERIAL
from tmemh.vm.state import StateDir

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(os.geteuid() != 0, reason="guest image and libvirt need root")]

MiB = 1024 * 1024
DATA_MIB = 192
BASE_MIB = 64
PAYLOAD_MIB = 4
BASE_HEAD = b"tmemh data disk base\n" * 195  # 4095 bytes, then a newline: one 4 KiB block


def make_base(path: Path) -> str:
    """A raw image of BASE_MIB whose first 4 KiB are BASE_HEAD; its SHA-256."""
    with open(path, "wb") as image:
        image.write(BASE_HEAD + b"\n")
        image.truncate(BASE_MIB * MiB)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("backend", ["qemu", "libvirt"])
def test_data_disk(backend: str, request: pytest.FixtureRequest, guest_image: ImageManifest,
                   vm_state: Path, tmp_path: Path) -> None:
    uri = request.getfixturevalue("libvirt_uri") if backend == "libvirt" else None
    base = tmp_path / "base.raw" if backend == "libvirt" else None
    base_digest = make_base(base) if base is not None else ""
    spec = VMSpec(name=f"data-{backend}", memory_mib=384,
                  data_disk=DataDisk(DATA_MIB, base, DiskThrottle(50 * MiB, 0)))
    vm = VirtualMachine(spec, guest_image, backend=backend, uri=uri, state_dir=vm_state)
    started = time.monotonic()
    with vm:
        print(f"{backend}/{vm.record.accel if vm.record else '?'}: up in "
              f"{time.monotonic() - started:.1f} s")
        assert vm.data_disk is not None and vm.record is not None
        data_file = Path(vm.data_disk["path"])
        assert data_file.is_file() and data_file.parent == Path(vm.record.run_dir)
        assert StateDir(vm_state).load(spec.name) == vm.record

        # the guest: vdb is the data disk (by serial), vda still the root
        serial = vm.run("cat /sys/block/vdb/serial", check=True).stdout.strip()
        assert serial == DATA_DISK_SERIAL
        assert vm.run("cat /sys/block/vda/serial", check=True).stdout.strip() == ""
        assert vm.run("awk '$2 == \"/\" {print $1}' /proc/mounts", check=True).stdout.split()[
            -1] == "/dev/vda"
        sectors = int(vm.run("cat /sys/block/vdb/size", check=True).stdout)
        assert sectors * 512 == DATA_MIB * MiB
        if base is not None:
            head = vm.run("head -c 4096 /dev/vdb | sha256sum", check=True).stdout.split()[0]
            assert head == hashlib.sha256(BASE_HEAD + b"\n").hexdigest()

        # written data reads back (direct I/O: from the disk, not the guest's page cache)
        payload = os.urandom(PAYLOAD_MIB * MiB)
        (tmp_path / "payload.bin").write_bytes(payload)
        vm.upload([tmp_path / "payload.bin"], "/tmp/payload.bin")
        vm.run("dd if=/tmp/payload.bin of=/dev/vdb bs=1M oflag=direct conv=fsync status=none",
               check=True)
        vm.run("echo 3 > /proc/sys/vm/drop_caches", check=True)
        read = vm.run(f"dd if=/dev/vdb bs=1M count={PAYLOAD_MIB} iflag=direct status=none "
                      "| sha256sum", check=True).stdout.split()[0]
        assert read == hashlib.sha256(payload).hexdigest()

        # throttled and counted apart from the root disk
        assert vm.disk_throttle(DATA_DISK) == DiskThrottle(50 * MiB, 0)
        assert vm.disk_throttle() == DiskThrottle(0, 0)
        vm.set_disk_throttle(DiskThrottle(2 * MiB, 0), disk=DATA_DISK)
        assert vm.disk_throttle(DATA_DISK) == DiskThrottle(2 * MiB, 0)
        assert vm.disk_throttle() == DiskThrottle(0, 0)
        before, root_before = vm.block_stats(DATA_DISK), vm.block_stats()
        read_started = time.monotonic()
        vm.run("dd if=/dev/vdb of=/dev/null bs=1M count=6 skip=100 iflag=direct", check=True)
        read_seconds = time.monotonic() - read_started
        after, root_after = vm.block_stats(DATA_DISK), vm.block_stats()
        print(f"{backend}: 6 MiB at 2 MiB/s took {read_seconds:.1f} s; data {before} -> {after}; "
              f"root {root_before} -> {root_after}")
        assert after.read_bytes - before.read_bytes >= 6 * MiB
        assert after.read_ops > before.read_ops
        assert after.write_bytes >= PAYLOAD_MIB * MiB  # the payload, counted since boot
        assert root_after.read_bytes - root_before.read_bytes < 6 * MiB
        assert read_seconds >= 2.0  # ~3 s for 6 MiB at 2 MiB/s
        vm.set_disk_throttle(DiskThrottle(0, 0), disk=DATA_DISK)
        assert vm.disk_throttle(DATA_DISK) == DiskThrottle(0, 0)

    assert not data_file.exists()
    assert not Path(vm.console_log.parent / "disk.qcow2").exists()
    assert StateDir(vm_state).load(spec.name) is None
    if base is not None:  # the guest overwrote the head of its copy, never the base
        assert hashlib.sha256(base.read_bytes()).hexdigest() == base_digest
