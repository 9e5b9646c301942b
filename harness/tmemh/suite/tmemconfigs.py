"""The tmem configurations: guest memory backed by host tmem through the agent.

``tmem-swap``: the guest swaps to ``/dev/nbd0``, served by the agent's swap shim
(``tmem-agent run``), whose pages are puts to a tmemd on the host. The cell starts a daemon
for the VM (:attr:`Needs.daemon`), admits the VM, and the VM's virtio-serial port
``org.tmem.0`` connects to the VM's own socket; the image's init starts the agent when that
port exists, and :meth:`TmemSwap.prepare` waits until swap is on. The VM layer does the
admitting and the port once ``tmemh vm up --tmem`` has landed (:func:`vm_wiring`); until then
the configuration reports SKIP, unless a suite sets ``own_wiring = 1`` to let the cell wire the
VM itself with what exists (:mod:`tmemh.daemon`'s admission, a ``ChannelSpec``).

``tmem``: the swap shim plus the page-cache path (cleancache through the agent, issue 8).
That path does not exist yet, so the configuration reports SKIP with the reason.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import time
from pathlib import Path
from typing import Any

from tmemh.vm import ChannelSpec, VirtualMachine, VMSpec

from .configs import CellHost, MemoryConfiguration, Needs, register
from .errors import ConfigurationUnavailable
from .guestshell import GuestShell

AGENT_PORT = "org.tmem.0"  # the port the image's init starts the agent on
READY_FILE = "/run/tmem-agent/ready"
SWAP_DEVICE = "/dev/nbd0"
READY_TIMEOUT_S = 180.0  # the agent starts after sshd; under TCG that takes a while
READY_POLL_S = 2.0


def vm_wiring() -> bool:
    """Whether the VM layer wires a VM to tmemd itself (``tmemh vm up --tmem``:
    ``VirtualMachine(..., tmem_control=...)`` admits the VM for QEMU's user, connects its
    port and dismisses it at teardown)."""
    return "tmem_control" in inspect.signature(VirtualMachine.__init__).parameters


def vm_wiring_missing() -> str:
    return ("the VM wiring to tmemd (`tmemh vm up --tmem`) has not landed yet; set "
            "own_wiring = 1 in [configuration.tmem-swap] to use the suite's own")


def swap_shim_missing() -> str | None:
    """Why the installed agent cannot serve swap, or None."""
    if importlib.util.find_spec("tmem_agent") is None or \
            importlib.util.find_spec("tmem_agent.swap.shim") is None:
        return "the guest agent has no swap shim (tmem_agent.swap)"
    return None


class TmemSwap(MemoryConfiguration):
    """Swap through the agent's swap shim into a tmemd on the host. ``memory_limit_scale``:
    the daemon's memory limit as a multiple of guest memory (default 2; persistent pages may
    use 3/4 of it); ``own_wiring``: 1 to run before ``vm up --tmem`` lands
    (:func:`vm_wiring_missing`)."""

    kind = "tmem-swap"
    NEEDS = Needs(daemon=True, swap_shim=True)
    defaults = {"memory_limit_scale": 2.0, "own_wiring": 0}
    choices = {"own_wiring": (0, 1)}

    def unavailable(self) -> str | None:
        missing = swap_shim_missing()
        if missing is None and not vm_wiring() and not self.params["own_wiring"]:
            missing = vm_wiring_missing()
        return missing

    def daemon_args(self, memory_mib: int) -> list[str]:
        limit = max(64, int(self.params["memory_limit_scale"] * memory_mib))
        return ["--memory-limit", f"{limit}M"]

    def vm_options(self, host: CellHost) -> dict[str, Any]:
        if not vm_wiring():
            return {}
        if host.daemon is None:
            raise ConfigurationUnavailable("tmem-swap needs a tmemd, and the cell has none")
        return {"tmem_control": Path(host.daemon.control)}

    def vm_spec(self, spec: VMSpec, host: CellHost) -> VMSpec:
        """The suite's own wiring, while the VM layer has none: the VM admitted to the
        cell's daemon here, its port connected to the VM's own socket."""
        if vm_wiring():
            return spec
        if host.daemon is None:
            raise ConfigurationUnavailable("tmem-swap needs a tmemd, and the cell has none")
        socket = host.daemon.admit(host.vm_name)
        channels = (*spec.channels, ChannelSpec(AGENT_PORT, socket, "connect"))
        kernel_args = (*spec.kernel_args, f"tmem.vm={host.vm_name}")
        return VMSpec(name=spec.name, memory_mib=spec.memory_mib, vcpus=spec.vcpus,
                      disk_size_mib=spec.disk_size_mib, kernel_args=kernel_args,
                      throttle=spec.throttle, channels=channels, ssh_port=spec.ssh_port)

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
    """Swap shim plus the page-cache path; SKIP until the page-cache path exists."""

    kind = "tmem"
    NEEDS = Needs(daemon=True, swap_shim=True, page_cache_path=True)

    def unavailable(self) -> str | None:
        # When the agent has the page-cache path, this configuration turns it on in
        # prepare() (on top of TmemSwap's) and this SKIP goes.
        return ("the agent's page-cache path (cleancache through tmem, issue 8) does not "
                "exist yet")

register(TmemSwap)
register(Tmem)
