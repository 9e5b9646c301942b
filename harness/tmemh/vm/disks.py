"""A VM's disks: the slots they take (root ``vda``, data ``vdb``) and their files on the host.

Every disk a VM writes to is a qcow2 of its own in its run directory, made with ``qemu-img``
and removed at teardown: the root disk's overlay over the guest image, and the data disk
(empty, or a copy-on-write overlay over an existing raw or qcow2 image that is only read).

Backends and ``tmemh vm disk --device`` name disks by :data:`ROOT_DISK` / :data:`DATA_DISK`;
:func:`disk_slot` maps a name to the ids QEMU and libvirt use.
"""

from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import VMError, VMOperationError
from .spec import DATA_DISK_SERIAL, DataDisk

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
ROOT_DISK = "root"
DATA_DISK = "data"
DISK_NAMES: tuple[str, ...] = (ROOT_DISK, DATA_DISK)
ROOT_DISK_FILE = "disk.qcow2"
DATA_DISK_FILE = "data.qcow2"
BASE_FORMATS: tuple[str, ...] = ("raw", "qcow2")


@dataclass(frozen=True)
class DiskSlot:
    """Where one disk sits: ``target`` is QEMU's device id, libvirt's target dev and the guest's
    /dev name (the root disk's device comes first on the PCI bus, so it is always vda);
    ``drive_id`` is QEMU's block backend (QMP's ``device``); ``serial`` is what the guest reads
    in /sys/block/TARGET/serial (None: no serial, the root disk as it always was)."""

    name: str
    target: str
    drive_id: str
    serial: str | None = None


ROOT_SLOT = DiskSlot(ROOT_DISK, "vda", "drive-vda")
DATA_SLOT = DiskSlot(DATA_DISK, "vdb", "drive-vdb", DATA_DISK_SERIAL)
_SLOTS = {slot.name: slot for slot in (ROOT_SLOT, DATA_SLOT)}


def disk_slot(name: str) -> DiskSlot:
    try:
        return _SLOTS[name]
    except KeyError:
        raise VMOperationError(f"unknown disk {name!r}; use one of {', '.join(DISK_NAMES)}") \
            from None


@dataclass(frozen=True)
class BaseImage:
    """An existing image a data disk is layered over."""

    path: Path
    format: str
    size_bytes: int


def probe_base(path: Path) -> BaseImage:
    """The format and virtual size of an existing image (raw or qcow2), read by qemu-img."""
    path = path.resolve()
    if not path.is_file():
        raise VMError(f"data disk base {path} is not a file")
    # -U: the base may be open in a running VM (as a backing file, read-only) at the same time
    result = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise VMError(f"cannot read data disk base {path}: {result.stderr.strip()}")
    info = json.loads(result.stdout)
    image = BaseImage(path, str(info.get("format")), int(info.get("virtual-size", 0)))
    if image.format not in BASE_FORMATS:
        raise VMError(f"data disk base {path} is {image.format!r}; use one of "
                      f"{', '.join(BASE_FORMATS)}")
    return image


def create_qcow2(path: Path, size_bytes: int | None = None, base: Path | None = None,
                 base_format: str = "qcow2") -> None:
    """Create a qcow2 at ``path``: empty, or an overlay over ``base`` (None size: base's)."""
    command = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if base is not None:
        command += ["-F", base_format, "-b", str(base.resolve())]
    command.append(str(path))
    if size_bytes is not None:
        command.append(str(size_bytes))
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise VMError(f"cannot create {path}: {result.stderr.strip()}")
    logger.debug("created %s (%s bytes, base %s)", path, size_bytes, base)


@dataclass(frozen=True)
class DataDiskPlan:
    """A data disk checked against its base image (read, never written), not yet created."""

    disk: DataDisk
    base: BaseImage | None
    size_bytes: int

    @classmethod
    def check(cls, disk: DataDisk | None) -> DataDiskPlan | None:
        """Probe the base (if any) and settle the size; refuses a size below the base's."""
        if disk is None:
            return None
        base = probe_base(disk.base) if disk.base is not None else None
        if disk.size_mib is not None:
            size = disk.size_mib * MiB
            if base is not None and size < base.size_bytes:
                raise VMError(f"data disk of {disk.size_mib} MiB is smaller than its base "
                              f"{base.path} ({base.size_bytes} bytes)")
        else:
            assert base is not None  # DataDisk has a size or a base
            size = base.size_bytes
        return cls(disk, base, size)

    def create(self, path: Path) -> dict[str, Any]:
        """Create the qcow2 at ``path``; what the VM record keeps of it (teardown, vm list)."""
        base = self.base
        create_qcow2(path, self.size_bytes, base.path if base else None,
                     base.format if base else "qcow2")
        logger.info("data disk %s: %g MiB%s", path, self.size_bytes / MiB,
                    f" over {base.path} ({base.format})" if base else "")
        return {"path": str(path), "device": f"/dev/{DATA_SLOT.target}",
                "serial": DATA_SLOT.serial, "size_bytes": self.size_bytes,
                "base": str(base.path) if base else None}


def describe_data_disk(record: dict[str, Any] | None, brief: bool = False) -> str:
    """``/dev/vdb 1024 MiB (serial tmemh-data, over BASE)``, with ``brief`` ``1024 MiB``;
    ``-`` without a data disk."""
    if not record:
        return "-"
    size = f"{int(record.get('size_bytes', 0)) / MiB:g} MiB"
    if brief:
        return size
    base = record.get("base")
    return (f"{record.get('device')} {size} (serial {record.get('serial')}"
            + (f", over {base})" if base else ")"))
