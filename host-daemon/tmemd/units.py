"""Sizes with units, as every command line and config file of the project takes them.

``4096``, ``"64K"``, ``"256M"``, ``"1G"``, ``"1GiB"``: binary suffixes, as QEMU and virt-install
read them. Standard library only, so the harness and the daemon share one parser.
"""

from __future__ import annotations

import re

_SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_PATTERN = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(raw: object) -> int:
    """Bytes from an int or a string such as ``"256M"``, ``"1G"``, ``"4096"``."""
    if isinstance(raw, bool):
        raise ValueError(f"expected a size, got {raw!r}")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str):
        match = _SIZE_PATTERN.match(raw)
        if match is None:
            raise ValueError(f"bad size {raw!r} (use bytes or a number with K, M, G or T)")
        value = int(match.group(1)) * _SIZE_SUFFIXES[match.group(2).upper()]
    else:
        raise ValueError(f"expected a size, got {type(raw).__name__} {raw!r}")
    if value < 0:
        raise ValueError(f"size must not be negative, got {raw!r}")
    return value


def format_size(nbytes: int) -> str:
    """The shortest exact suffixed form of a size: 268435456 -> "256M"."""
    for suffix in ("T", "G", "M", "K"):
        unit = _SIZE_SUFFIXES[suffix]
        if nbytes and nbytes % unit == 0:
            return f"{nbytes // unit}{suffix}"
    return str(nbytes)
