"""A userfaultfd region beside the swap shim: ``tmem-agent memhog`` on its own port.

When the ``anon`` workload has ``uffd = MiB`` and the VM has the port ``org.tmem.uffd`` (a
``tmem-swap`` configuration with ``uffd_port = true``), the workload runs ``tmem-agent memhog
--size MiB --resident uffd_resident --verify`` there after its own verify: its faults per
second then stand beside the swap shim's page-in rate, in the same guest. Without the port
(disk swap, zswap) nothing runs and the report says why.
"""

from __future__ import annotations

import glob
import json
import socket
import subprocess
from typing import Any

from .common import Context

PORT = "org.tmem.uffd"
CLIENT_SUFFIX = "-uffd"  # the port is admitted as the VM's name with this (tmemconfigs)
TIMEOUT_S = 900.0
DEFAULT_RESIDENT_SHARE = 0.25  # of the region, when uffd_resident is not given


def port_present(name: str = PORT) -> bool:
    """Whether a virtio-serial port of that name exists (its name is only in sysfs)."""
    for path in glob.glob("/sys/class/virtio-ports/*/name"):
        try:
            with open(path) as f:
                if f.read().strip() == name:
                    return True
        except OSError:
            continue
    return False


def planned(ctx: Context) -> tuple[int, int]:
    """(region MiB, resident MiB) the parameters ask for; (0, 0) for none."""
    size = int(ctx.number("uffd", 0))
    resident = int(ctx.number("uffd_resident", max(1, size * DEFAULT_RESIDENT_SHARE)))
    if size and not 0 < resident < size:
        raise ValueError(f"uffd_resident must be above 0 and below uffd ({size}), "
                         f"not {resident}")
    return size, resident


def vm_name(cmdline: str = "/proc/cmdline") -> str:
    """The VM's name as the host gave it (``tmem.vm=`` on the kernel command line), else the
    host name. tmemd takes a hello only in the name the port's socket was admitted under."""
    try:
        with open(cmdline) as f:
            for word in f.read().split():
                if word.startswith("tmem.vm="):
                    return word.split("=", 1)[1]
    except OSError:
        pass
    return socket.gethostname()


def run_memhog(size_mib: int, resident_mib: int) -> dict[str, Any]:
    """memhog's figures, or why there are none; ``passed`` says whether every page held."""
    if not port_present():
        return {"skipped": f"no port {PORT} (not a tmem configuration with uffd_port)"}
    argv = ["tmem-agent", "memhog", "--size", f"{size_mib}M", "--resident",
            f"{resident_mib}M", "--verify", "--port", PORT, "--vm", vm_name() + CLIENT_SUFFIX]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"passed": False, "error": f"{type(exc).__name__}: {exc}"}
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"passed": False, "error": f"memhog exited {done.returncode}: "
                                          f"{done.stderr.strip()[-500:]}"}
    verify = result.get("verify") or {}
    return {
        "passed": done.returncode == 0 and bool(verify.get("passed")),
        "size_mib": size_mib, "resident_mib": resident_mib,
        "faults": result.get("faults"), "faults_per_s": result.get("faults_per_s"),
        "puts": result.get("puts"), "gets": result.get("gets"),
        "pages_per_s": result.get("pages_per_s"), "lost_pages": result.get("lost_pages"),
        "mismatches": verify.get("mismatches"), "first_bad": verify.get("first"),
        "phases": {name: {k: phase.get(k) for k in ("seconds", "faults_per_s", "pages_per_s")}
                   for name, phase in (result.get("phases") or {}).items()},
    }
