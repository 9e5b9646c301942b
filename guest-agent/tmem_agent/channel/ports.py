"""virtio-serial ports as the guest sees them (no udev: names come from sysfs)."""

from __future__ import annotations

import glob
import os

SYSFS_PORTS = "/sys/class/virtio-ports/*"


def virtio_ports() -> list[tuple[str, str]]:
    """(device path, port name) of every virtio-serial port; "" for an unreadable name."""
    ports = []
    for entry in sorted(glob.glob(SYSFS_PORTS)):
        try:
            with open(os.path.join(entry, "name")) as f:
                name = f.read().strip()
        except OSError:
            name = ""
        ports.append(("/dev/" + os.path.basename(entry), name))
    return ports


def find_port(name: str) -> str | None:
    """The /dev node of the port called ``name``, or None."""
    return next((device for device, port in virtio_ports() if port == name), None)
