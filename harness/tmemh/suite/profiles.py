"""Disk throttle profiles: how fast the guest's disk is, applied through QEMU's I/O
throttling (``vm disk`` / ``block_set_io_throttle``) so disk costs are those of a real
device rather than of the host's page cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tmemd.units import parse_size
from tmemh.vm import DiskThrottle

from .errors import SuiteError


@dataclass(frozen=True)
class ThrottleProfile:
    name: str
    bytes_per_second: int = 0
    iops: int = 0

    @property
    def throttle(self) -> DiskThrottle:
        return DiskThrottle(self.bytes_per_second, self.iops)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "bps": self.bytes_per_second, "iops": self.iops}


BUILTIN_PROFILES: dict[str, ThrottleProfile] = {
    "none": ThrottleProfile("none"),
    "ssd": ThrottleProfile("ssd", 200_000_000, 5000),
    "hdd": ThrottleProfile("hdd", 20_000_000, 200),
}


def profile_from_table(name: str, table: dict[str, Any]) -> ThrottleProfile:
    """A profile from a suite file's ``[throttle_profile.NAME]`` table (``bps``, ``iops``)."""
    unknown = set(table) - {"bps", "iops"}
    if unknown:
        raise SuiteError(f"throttle profile {name}: unknown keys {sorted(unknown)} "
                         "(use bps, iops)")
    try:
        bps = parse_size(table.get("bps", 0))
    except ValueError as exc:
        raise SuiteError(f"throttle profile {name}: bps: {exc}") from None
    iops = table.get("iops", 0)
    if isinstance(iops, bool) or not isinstance(iops, int) or iops < 0:
        raise SuiteError(f"throttle profile {name}: iops must be an integer >= 0")
    return ThrottleProfile(name, bps, iops)
