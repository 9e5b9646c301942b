"""The cell's data disk: where the file workloads keep their data, in every configuration.

Every cell's VM gets a second disk (``/dev/vdb``, serial ``tmemh-data``) of the shape's
``data_disk`` size (default :func:`default_size_mib`), throttled with the run's profile like
the root disk, so configurations stay comparable. After the configuration is prepared, an
ext4 is made on the configuration's data device (:meth:`MemoryConfiguration.data_device`:
``/dev/vdb`` itself, or for ``tmem`` the agent's block cache ``/dev/nbd1`` over it) and
mounted at the workloads' work directory, so rsync, tar and pagecache read and write it.
Inode tables and the journal are written by mkfs (no lazy init in the background of a
measured run). Disk figures count both disks; ``data_disk_*`` the data disk alone.
"""

from __future__ import annotations

import logging
import shlex
from typing import Any, Protocol

from tmemh.vm import DATA_DISK, ROOT_DISK, BlockStats, DataDisk
from tmemh.vm.spec import DATA_DISK_SERIAL

from .guestcode import WORKDIR
from .guestshell import GuestShell

logger = logging.getLogger(__name__)

DATA_DEVICE = "/dev/vdb"
MOUNT_POINT = WORKDIR
MIN_SIZE_MIB = 1024
MKFS = ("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard")


class DiskCounters(Protocol):
    def block_stats(self, disk: str = ROOT_DISK) -> BlockStats: ...


def default_size_mib(memory_mib: int) -> int:
    """Room for any built-in workload at its largest default (pagecache: 1.5 x memory; rsync
    and tar: source and copy), in a sparse qcow2: 4 x memory, at least 1 GiB."""
    return max(MIN_SIZE_MIB, 4 * memory_mib)


def data_disk(size_mib: int) -> DataDisk:
    """The disk, unthrottled (the cell throttles it with the root disk after setup)."""
    return DataDisk(size_mib=size_mib)


def make_filesystem(guest: GuestShell, device: str) -> dict[str, Any]:
    """ext4 on ``device``, mounted at :data:`MOUNT_POINT`; what was made."""
    disk = DATA_DEVICE.removeprefix("/dev/")
    serial = guest.run(f"cat /sys/block/{disk}/serial", check=False).stdout.strip()
    if serial != DATA_DISK_SERIAL:
        raise RuntimeError(f"{DATA_DEVICE} is not the data disk (serial {serial!r}, "
                           f"expected {DATA_DISK_SERIAL!r})")
    quoted = shlex.quote(device)
    guest.run(f"{shlex.join(MKFS)} {quoted} && mkdir -p {MOUNT_POINT} "
              f"&& mount -t ext4 {quoted} {MOUNT_POINT}")
    size = int(guest.run(f"blockdev --getsize64 {quoted}").stdout.strip())
    logger.debug("data file system on %s (%d MiB) at %s", device, size >> 20, MOUNT_POINT)
    return {"device": device, "disk": DATA_DEVICE, "size": size, "mount": MOUNT_POINT,
            "fs": "ext4"}


def block_stats(vm: DiskCounters) -> dict[str, BlockStats]:
    """The counters of both disks."""
    return {ROOT_DISK: vm.block_stats(ROOT_DISK), DATA_DISK: vm.block_stats(DATA_DISK)}


def total(stats: dict[str, BlockStats]) -> BlockStats:
    """Both disks' counters added up."""
    return BlockStats(*(sum(getattr(s, f) for s in stats.values())
                        for f in ("read_bytes", "write_bytes", "read_ops", "write_ops")))


def disk_metrics(before: dict[str, BlockStats],
                 after: dict[str, BlockStats]) -> dict[str, int]:
    """The run's disk figures: both disks (``disk_*``), the data disk alone (``data_disk_*``),
    and ``swap_and_read_bytes``: what memory pressure costs on the disks, every byte read plus
    every byte written except the workload's own writes to its data disk (those happen in
    every configuration alike): swap-outs, a swap fallback, re-reads of evicted files."""
    whole_before, whole_after = total(before), total(after)
    data_before, data_after = before[DATA_DISK], after[DATA_DISK]
    read = whole_after.read_bytes - whole_before.read_bytes
    written = whole_after.write_bytes - whole_before.write_bytes
    data_written = data_after.write_bytes - data_before.write_bytes
    return {
        "disk_read_bytes": read, "disk_write_bytes": written, "disk_bytes": read + written,
        "disk_ops": whole_after.read_ops - whole_before.read_ops + whole_after.write_ops
        - whole_before.write_ops,
        "data_disk_read_bytes": data_after.read_bytes - data_before.read_bytes,
        "data_disk_write_bytes": data_written,
        "swap_and_read_bytes": read + written - data_written,
    }
