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
class DiskThrottle:
    """Limits on the root disk; 0 means unlimited."""

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
class VMSpec:
    """One VM: its size, kernel words, disk limits, virtio-serial channels and SSH port.

    ``disk_size_mib`` None keeps the base image's size. ``ssh_port`` None picks a free
    loopback port at launch.
    """

    name: str
    memory_mib: int = 512
    vcpus: int = 1
    disk_size_mib: int | None = None
    kernel_args: tuple[str, ...] = ()
    throttle: DiskThrottle = field(default_factory=DiskThrottle)
    channels: tuple[ChannelSpec, ...] = ()
    ssh_port: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise InvalidVMSpec(
                f"invalid VM name {self.name!r}: use letters, digits, '.', '_', '-' (max 63)")
        _require_int("memory_mib", self.memory_mib, MIN_MEMORY_MIB, 1 << 22)
        _require_int("vcpus", self.vcpus, 1, MAX_VCPUS)
        if self.disk_size_mib is not None:
            _require_int("disk_size_mib", self.disk_size_mib, 1, 1 << 24)
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


def _require_int(label: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidVMSpec(f"{label} must be an integer in [{low}, {high}]: {value!r}")
