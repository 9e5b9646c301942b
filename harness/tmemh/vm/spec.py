"""The description of one VM (``VMSpec``), shared by every backend and renderer.

A spec is checked when it is built: a bad value raises :class:`InvalidVMSpec` before anything
is created on the host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import InvalidVMSpec

ChannelMode = Literal["server", "connect"]
CHANNEL_MODES: tuple[str, ...] = ("server", "connect")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_PORT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_UNIX_PATH_MAX = 107  # sun_path holds 108 bytes including the terminating NUL
MIN_MEMORY_MIB = 64
MAX_VCPUS = 64
MAX_DISK_MIB = 1 << 24
DATA_DISK_SERIAL = "tmemh-data"  # /sys/block/vdX/serial in the guest (virtio-blk: <= 20 bytes)


@dataclass(frozen=True)
class ChannelSpec:
    """A virtio-serial port, seen in the guest as /sys/class/virtio-ports/*/name == ``name``.

    ``mode`` "server": QEMU listens on ``socket_path`` (wait=off), a host process connects.
    ``mode`` "connect": QEMU connects to a daemon already listening there (and reconnects).
    """

    name: str
    socket_path: Path
    mode: ChannelMode = "server"

    def __post_init__(self) -> None:
        if not _PORT_NAME_RE.match(self.name):
            raise InvalidVMSpec(f"invalid virtio-serial port name {self.name!r}")
        path = Path(self.socket_path)
        object.__setattr__(self, "socket_path", path)
        if not path.is_absolute():
            raise InvalidVMSpec(f"channel {self.name}: socket path {path} is not absolute")
        if len(str(path).encode()) > _UNIX_PATH_MAX:
            raise InvalidVMSpec(f"channel {self.name}: socket path {path} is too long")
        if self.mode not in CHANNEL_MODES:
            raise InvalidVMSpec(f"channel {self.name}: mode must be one of {CHANNEL_MODES}")


@dataclass(frozen=True)
class TmemToolPort:
    """One more virtio-serial port to the VM's tmemd, for a tool in the guest (memhog): the
    VM is admitted there as a second client, its name plus ``client_suffix``, for the same
    QEMU uid as its own port (``tmemh vm up --tmem``; only with a tmemd)."""

    port: str
    client_suffix: str

    def __post_init__(self) -> None:
        if not _PORT_NAME_RE.match(self.port):
            raise InvalidVMSpec(f"invalid virtio-serial port name {self.port!r}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,16}", self.client_suffix):
            raise InvalidVMSpec(f"tmem tool port {self.port}: client suffix "
                                f"{self.client_suffix!r} must be 1-16 letters, digits, '.', "
                                f"'_' or '-'")


@dataclass(frozen=True)
class DiskThrottle:
    """Limits on one disk (the root disk or the data disk); 0 means unlimited."""

    bytes_per_second: int = 0
    iops: int = 0

    def __post_init__(self) -> None:
        for label, value in (("bytes_per_second", self.bytes_per_second), ("iops", self.iops)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidVMSpec(f"disk throttle {label} must be an integer >= 0: {value!r}")

    @property
    def unlimited(self) -> bool:
        return self.bytes_per_second == 0 and self.iops == 0


@dataclass(frozen=True)
class DataDisk:
    """A second virtio-blk disk, /dev/vdb in the guest, whose serial is ``DATA_DISK_SERIAL``.

    The VM always writes to a qcow2 of its own in its run directory (``data.qcow2``), removed
    at teardown like the root overlay. With ``base`` (an existing raw or qcow2 image, its
    format probed) that qcow2 is a copy-on-write overlay over it: the base is only read, so
    one prepared image (say, a file tree) serves any number of VMs, each starting from the
    same bytes. ``size_mib`` is the virtual size; None keeps the base's, and a size below the
    base's is refused. ``throttle`` is applied from the start (``VMSpec.throttle`` is the
    root disk's); both can be changed on the running VM.
    """

    size_mib: int | None = None
    base: Path | None = None
    throttle: DiskThrottle = field(default_factory=DiskThrottle)

    def __post_init__(self) -> None:
        if self.size_mib is None and self.base is None:
            raise InvalidVMSpec("a data disk needs a size or a base image (or both)")
        if self.size_mib is not None:
            _require_int("data disk size_mib", self.size_mib, 1, MAX_DISK_MIB)
        if self.base is not None:
            object.__setattr__(self, "base", Path(self.base))
        if not isinstance(self.throttle, DiskThrottle):
            raise InvalidVMSpec(f"data disk throttle must be a DiskThrottle: {self.throttle!r}")


@dataclass(frozen=True)
class VMSpec:
    """One VM: its size, kernel words, disk limits, virtio-serial channels and SSH port.

    ``disk_size_mib`` None keeps the base image's size. ``throttle`` limits the root disk.
    ``data_disk`` None means none (see :class:`DataDisk`). ``ssh_port`` None picks a free
    loopback port at launch. ``tmem_tool_ports``: more ports to the VM's tmemd, made when
    it is admitted to one (see :class:`TmemToolPort`).
    """

    name: str
    memory_mib: int = 512
    vcpus: int = 1
    disk_size_mib: int | None = None
    kernel_args: tuple[str, ...] = ()
    throttle: DiskThrottle = field(default_factory=DiskThrottle)
    channels: tuple[ChannelSpec, ...] = ()
    ssh_port: int | None = None
    data_disk: DataDisk | None = None
    tmem_tool_ports: tuple[TmemToolPort, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise InvalidVMSpec(
                f"invalid VM name {self.name!r}: use letters, digits, '.', '_', '-' (max 63)")
        _require_int("memory_mib", self.memory_mib, MIN_MEMORY_MIB, 1 << 22)
        _require_int("vcpus", self.vcpus, 1, MAX_VCPUS)
        if self.disk_size_mib is not None:
            _require_int("disk_size_mib", self.disk_size_mib, 1, MAX_DISK_MIB)
        if self.data_disk is not None and not isinstance(self.data_disk, DataDisk):
            raise InvalidVMSpec(f"data_disk must be a DataDisk: {self.data_disk!r}")
        if self.ssh_port is not None:
            _require_int("ssh_port", self.ssh_port, 1, 65535)
        object.__setattr__(self, "kernel_args", tuple(self.kernel_args))
        for word in self.kernel_args:
            if not word or any(c.isspace() for c in word) or "'" in word or '"' in word:
                raise InvalidVMSpec(f"kernel argument {word!r} must be one word without quotes")
        object.__setattr__(self, "channels", tuple(self.channels))
        names = [c.name for c in self.channels]
        if len(set(names)) != len(names):
            raise InvalidVMSpec(f"virtio-serial port names must be unique: {names}")
        paths = [c.socket_path for c in self.channels]
        if len(set(paths)) != len(paths):
            raise InvalidVMSpec("virtio-serial channels must use distinct socket paths")
        object.__setattr__(self, "tmem_tool_ports", tuple(self.tmem_tool_ports))
        tools = [t.port for t in self.tmem_tool_ports]
        suffixes = [t.client_suffix for t in self.tmem_tool_ports]
        if len(set(tools)) != len(tools) or set(tools) & set(names) \
                or len(set(suffixes)) != len(suffixes):
            raise InvalidVMSpec(f"tmem tool ports need port names and client suffixes of "
                                f"their own: {list(self.tmem_tool_ports)}")


def _require_int(label: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidVMSpec(f"{label} must be an integer in [{low}, {high}]: {value!r}")
