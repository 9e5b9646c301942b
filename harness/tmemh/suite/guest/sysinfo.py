"""Small readers of the guest kernel's counters, for the workloads' own reports."""

from __future__ import annotations

import os
import subprocess

VMSTAT_KEYS = ("pswpin", "pswpout", "pgmajfault", "pgpgin", "pgpgout")


def meminfo() -> dict[str, int]:
    """/proc/meminfo in KiB by field name."""
    found = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, _, rest = line.partition(":")
            found[name] = int(rest.split()[0])
    return found


def mem_total_bytes() -> int:
    return meminfo()["MemTotal"] * 1024


def mem_available_bytes() -> int:
    return meminfo()["MemAvailable"] * 1024


def vmstat() -> dict[str, int]:
    """The swap and paging counters of /proc/vmstat that the workloads report."""
    found = {}
    with open("/proc/vmstat") as f:
        for line in f:
            name, value = line.split()
            if name in VMSTAT_KEYS:
                found[name] = int(value)
    return found


def vmstat_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {key: after.get(key, 0) - before.get(key, 0) for key in VMSTAT_KEYS}


def sync_and_drop_caches() -> None:
    """Write dirty data out and drop the page cache, so a timed phase starts cold."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def run_checked(argv: list[str]) -> None:
    """Run a command; a non-zero exit raises RuntimeError with its error output."""
    result = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {result.returncode}: "
                           f"{result.stderr.decode(errors='replace').strip()[-400:]}")
