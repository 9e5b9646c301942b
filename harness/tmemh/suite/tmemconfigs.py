"""The tmem configurations: guest memory backed by host tmem through the agent.

``tmem-swap``: the guest swaps to ``/dev/nbd0``, served by the agent's swap shim
(``tmem-agent run``), whose pages are puts to a tmemd on the host. The cell starts a daemon
for the VM (:attr:`Needs.daemon`); the VM layer admits the VM to it (``tmem_control``, as
``tmemh vm up --tmem`` does) and connects the VM's virtio-serial port ``org.tmem.0`` to the
VM's own socket; the image's init starts the agent when that port exists, and
:meth:`TmemSwap.prepare` waits until swap is on.

With ``uffd_port = true`` a ``tmem-swap`` (or ``tmem``) VM also gets the port
``org.tmem.uffd``, admitted with the VM (for the same QEMU uid) to the same daemon as the VM's
second client (``NAME-uffd``):
there an ``anon`` workload with ``uffd = MiB`` runs ``tmem-agent memhog`` through a
userfaultfd region after its verify, so that faults/s through a region stand beside the swap
shim's page-in rate in the same VM (``tmemh bench swap`` does this).

``tmem``: the swap shim plus the page-cache path: the agent also serves the cell's data disk
through a tmem ephemeral pool as ``/dev/nbd1`` (``tmem-agent run --cache-disk /dev/vdb``,
turned on by ``tmem.cache_disk=/dev/vdb`` on the kernel command line, since the image's init
starts the agent), and the workloads' file system is made on that device instead of the disk
(:mod:`tmemh.suite.datadisk`; docs/block-cache.md).
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tmemh.vm import TmemToolPort, VMSpec

from .configs import CellHost, MemoryConfiguration, Needs
from .datadisk import DATA_DEVICE
from .errors import ConfigurationUnavailable
from .guest import uffd_beside
from .guestshell import GuestShell

READY_FILE = "/run/tmem-agent/ready"
SWAP_DEVICE = "/dev/nbd0"
READY_TIMEOUT_S = 180.0  # the agent starts after sshd; under TCG that takes a while
READY_POLL_S = 2.0
CACHE_WORD = "tmem.cache_disk"  # tmem_agent.cache.embedded.CMDLINE_WORD


def swap_shim_missing() -> str | None:
    """Why the installed agent cannot serve swap, or None."""
    if importlib.util.find_spec("tmem_agent") is None or \
            importlib.util.find_spec("tmem_agent.swap.shim") is None:
        return "the guest agent has no swap shim (tmem_agent.swap)"
    return None


class TmemSwap(MemoryConfiguration):
    """Swap through the agent's swap shim into a tmemd on the host. ``memory_limit_scale``:
    the daemon's memory limit as a multiple of guest memory (default 2; persistent pages may
    use 3/4 of it)."""

    kind = "tmem-swap"
    NEEDS = Needs(daemon=True, swap_shim=True)
    defaults = {"memory_limit_scale": 2.0, "uffd_port": False}
    choices = {"uffd_port": (False, True)}

    def unavailable(self) -> str | None:
        return swap_shim_missing()

    def vm_spec(self, spec: VMSpec, host: CellHost) -> VMSpec:
        if not self.params["uffd_port"]:
            return spec
        # Admitted with the VM, for QEMU's uid. The guest side's names (memhog runs there):
        # one definition for both sides.
        tool = TmemToolPort(uffd_beside.PORT, uffd_beside.CLIENT_SUFFIX)
        return replace(spec, tmem_tool_ports=(*spec.tmem_tool_ports, tool))

    def daemon_args(self, memory_mib: int) -> list[str]:
        limit = max(64, int(self.params["memory_limit_scale"] * memory_mib))
        return ["--memory-limit", f"{limit}M"]

    def vm_options(self, host: CellHost) -> dict[str, Any]:
        if host.daemon is None:
            raise ConfigurationUnavailable("tmem-swap needs a tmemd, and the cell has none")
        return {"tmem_control": Path(host.daemon.control)}

    def prepare(self, guest: GuestShell) -> dict[str, Any]:
        check = (f"test -f {READY_FILE} && grep -q '^{SWAP_DEVICE} ' /proc/swaps "
                 f"&& cat {READY_FILE}")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            result = guest.run(check, check=False)
            if result.ok:
                try:
                    ready: dict[str, Any] = json.loads(result.stdout)
                except ValueError:
                    ready = {"ready": result.stdout.strip()}
                return {"agent": ready, "swap_device": SWAP_DEVICE}
            log = guest.run("tail -n 5 /var/log/tmem-agent.log", check=False).stdout
            if "TMEM-AGENT-FAILED" in log or time.monotonic() > deadline:
                raise RuntimeError(f"the agent did not turn swap on: {log.strip()[-300:]}")
            time.sleep(READY_POLL_S)


class Tmem(TmemSwap):
    """Swap shim plus the page-cache path: the data disk served through the agent's block
    cache (an ephemeral pool of the same tmem client, on the agent's one stream)."""

    kind = "tmem"
    NEEDS = Needs(daemon=True, swap_shim=True, page_cache_path=True)

    def unavailable(self) -> str | None:
        if importlib.util.find_spec("tmem_agent.cache.embedded") is None:
            return "the guest agent has no block cache (tmem_agent.cache)"
        return swap_shim_missing()

    def vm_spec(self, spec: VMSpec, host: CellHost) -> VMSpec:
        spec = super().vm_spec(spec, host)
        return replace(spec, kernel_args=(*spec.kernel_args, f"{CACHE_WORD}={DATA_DEVICE}"))

    def prepare(self, guest: GuestShell) -> dict[str, Any]:
        prepared = super().prepare(guest)
        ready = prepared["agent"]
        if ready.get("cache") != "ready" or not ready.get("cache_device"):
            log = guest.run("tail -n 5 /var/log/tmem-agent.log", check=False).stdout
            raise RuntimeError(f"the agent's block cache is not ready ({ready.get('cache')}): "
                               f"{log.strip()[-300:]}")
        return prepared | {"cache_device": ready["cache_device"]}

    def data_device(self, prepared: dict[str, Any]) -> str:
        device: str = prepared["cache_device"]
        return device
