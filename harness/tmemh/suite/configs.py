"""Memory configurations: what backs the guest's memory when it runs short.

A configuration is a small object that says what it needs (:class:`Needs`: a tmemd on the
host, kernel modules or agent parts in the guest), whether it can run here at all
(:meth:`MemoryConfiguration.unavailable`, a SKIP reason), how it changes the VM's description
(:meth:`~MemoryConfiguration.vm_spec`: channels, kernel words;
:meth:`~MemoryConfiguration.vm_options`: how the VM is made) and how it prepares the booted
guest (:meth:`~MemoryConfiguration.prepare`: swap files, zswap and zram settings). The cell
runner knows nothing else about them, so the tmem configurations plug in the same way
(:mod:`tmemh.suite.tmemconfigs`); :mod:`tmemh.suite.configkinds` names them all.

Kernel configurations here: ``none`` (no swap), ``disk-swap`` (a swap file on the guest's
disk), ``zswap`` (the kernel's compressed swap cache in front of that file; lzo with zbud,
or zsmalloc as ``zswap-zsmalloc``) and ``zram`` (a compressed RAM disk as the only swap).
"""

from __future__ import annotations

import shlex
from abc import ABC
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from tmemh.vm import VMSpec

from .datadisk import DATA_DEVICE
from .errors import ConfigurationUnavailable, SuiteError
from .guestshell import GuestShell

if TYPE_CHECKING:
    from tmemh.daemon import DaemonProcess

PAGE = 4096
SWAP_FILE = "/swapfile"
DEBUGFS = "/sys/kernel/debug"
ZSWAP_PARAMS = "/sys/module/zswap/parameters"
ZRAM = "/sys/block/zram0"


@dataclass(frozen=True)
class Needs:
    """What a configuration needs besides a booted guest."""

    daemon: bool = False  # a tmemd on the host, the VM admitted to it
    guest_modules: tuple[str, ...] = ()  # kernel modules loaded in the guest
    swap_shim: bool = False  # the agent's swap shim (tmem-agent run)
    page_cache_path: bool = False  # the agent's page-cache path (issue 8)

    def describe(self) -> dict[str, Any]:
        return {"daemon": self.daemon, "guest_modules": list(self.guest_modules),
                "swap_shim": self.swap_shim, "page_cache_path": self.page_cache_path}


@dataclass
class CellHost:
    """The host side of one cell, as a configuration sees it."""

    vm_name: str
    daemon: DaemonProcess | None = None


class MemoryConfiguration(ABC):
    """One way of backing guest memory; ``params`` come from the suite file."""

    kind: ClassVar[str]
    NEEDS: ClassVar[Needs] = Needs()
    defaults: ClassVar[dict[str, Any]] = {}
    choices: ClassVar[dict[str, tuple[Any, ...]]] = {}

    def __init__(self, name: str, params: dict[str, Any] | None = None) -> None:
        self.name = name
        given = dict(params or {})
        unknown = set(given) - set(self.defaults)
        if unknown:
            raise SuiteError(f"configuration {name}: unknown parameters {sorted(unknown)} "
                             f"for kind {self.kind} (use {sorted(self.defaults) or 'none'})")
        self.params = {**self.defaults, **given}
        for key, value in self.params.items():
            allowed = self.choices.get(key)
            if allowed is not None and value not in allowed:
                raise SuiteError(f"configuration {name}: {key} must be one of "
                                 f"{list(allowed)}, not {value!r}")
            if allowed is None and (isinstance(value, bool)
                                    or not isinstance(value, (int, float)) or value < 0):
                raise SuiteError(f"configuration {name}: {key} must be a number >= 0")

    @property
    def needs(self) -> Needs:
        """What this configuration needs besides a booted guest."""
        return self.NEEDS

    def unavailable(self) -> str | None:
        """Why this configuration cannot run on this host (a SKIP), or None."""
        return None

    def daemon_args(self, memory_mib: int) -> list[str]:
        """``tmemd serve`` options for a guest of ``memory_mib``, when :attr:`needs` asks for
        a daemon."""
        return []

    def vm_spec(self, spec: VMSpec, host: CellHost) -> VMSpec:
        """The VM description for this configuration (unchanged by default)."""
        return spec

    def vm_options(self, host: CellHost) -> dict[str, Any]:
        """Extra keyword arguments for :class:`tmemh.vm.VirtualMachine` (none by default)."""
        return {}

    def prepare(self, guest: GuestShell) -> dict[str, Any]:
        """Set the booted guest up; return what was set (kept in the cell's results).
        Raises :class:`ConfigurationUnavailable` when the guest cannot do it (a SKIP)."""
        return {}

    def data_device(self, prepared: dict[str, Any]) -> str:
        """The block device the workloads' file system is made on, given what
        :meth:`prepare` returned (:mod:`tmemh.suite.datadisk`): the data disk itself."""
        return DATA_DEVICE

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "params": dict(self.params),
                "needs": self.needs.describe()}


def swap_file(guest: GuestShell, size_bytes: int, priority: int = -2) -> dict[str, Any]:
    """A swap file of ``size_bytes`` on the guest's root disk, switched on."""
    size_mib = max(16, size_bytes >> 20)
    guest.run(f"fallocate -l {size_mib}M {SWAP_FILE} && chmod 600 {SWAP_FILE} "
              f"&& mkswap {SWAP_FILE} >/dev/null && swapon -p {priority} {SWAP_FILE}")
    return {"swap_file": SWAP_FILE, "swap_mib": size_mib}


def _scaled(guest: GuestShell, scale: float) -> int:
    return int(scale * guest.memory_mib) << 20


class NoSwap(MemoryConfiguration):
    """No swap at all: anonymous memory stays in RAM, only the page cache gives way."""

    kind = "none"

    def prepare(self, guest: GuestShell) -> dict[str, Any]:
        guest.run("swapoff -a")
        return {"swap": "none"}


class DiskSwap(MemoryConfiguration):
    """A swap file on the guest's disk, ``swap_scale`` x guest memory (default 2)."""

    kind = "disk-swap"
    defaults = {"swap_scale": 2.0}

    def prepare(self, guest: GuestShell) -> dict[str, Any]:
        return swap_file(guest, _scaled(guest, self.params["swap_scale"]))


class Zswap(MemoryConfiguration):
    """The guest kernel's zswap (built in) in front of a disk swap file: ``compressor``
    (lzo), ``zpool`` (zbud, built in; or zsmalloc, a module, or z3fold) and
    ``max_pool_percent`` (20, the kernel's default)."""

    kind = "zswap"
    defaults = {"zpool": "zbud", "compressor": "lzo", "max_pool_percent": 20,
                "swap_scale": 2.0}
    choices = {"zpool": ("zbud", "zsmalloc", "z3fold"),
               "compressor": ("lzo", "lzo-rle", "lz4", "zstd")}

    @property
    def needs(self) -> Needs:
        module = () if self.params["zpool"] == "zbud" else (self.params["zpool"],)
        extra = () if self.params["compressor"] in ("lzo", "lzo-rle") else (
            self.params["compressor"],)
        return Needs(guest_modules=module + extra)

    def prepare(self, guest: GuestShell) -> dict[str, Any]:
        if not guest.run(f"test -d {ZSWAP_PARAMS}", check=False).ok:
            raise ConfigurationUnavailable("the guest kernel has no zswap")
        for module in self.needs.guest_modules:
            if not guest.run(f"modprobe {module}", check=False).ok:
                raise ConfigurationUnavailable(
                    f"zswap needs the kernel module {module}, which the guest cannot load")
        guest.run(f"mountpoint -q {DEBUGFS} || mount -t debugfs none {DEBUGFS}", check=False)
        for key in ("zpool", "compressor", "max_pool_percent"):
            guest.run(f"echo {shlex.quote(str(self.params[key]))} > {ZSWAP_PARAMS}/{key}")
        guest.run(f"echo Y > {ZSWAP_PARAMS}/enabled")
        found = {key: guest.read(f"{ZSWAP_PARAMS}/{key}").strip()
                 for key in ("enabled", "zpool", "compressor", "max_pool_percent")}
        if found["enabled"] != "Y" or found["zpool"] != self.params["zpool"] \
                or found["compressor"] != self.params["compressor"]:
            raise ConfigurationUnavailable(f"the guest kernel did not take the zswap "
                                           f"settings: {found}")
        return {"zswap": found, **swap_file(guest, _scaled(guest, self.params["swap_scale"]))}


class Zram(MemoryConfiguration):
    """A zram device (module ``zram``) as the guest's only swap: ``algorithm`` (lzo, as the
    other configurations use), ``disk_scale`` x guest memory of uncompressed capacity."""

    kind = "zram"
    NEEDS = Needs(guest_modules=("zram",))
    defaults = {"algorithm": "lzo", "disk_scale": 1.5}
    choices = {"algorithm": ("lzo", "lzo-rle", "lz4", "zstd")}

    def prepare(self, guest: GuestShell) -> dict[str, Any]:
        if not guest.run(f"modprobe zram && test -e {ZRAM}/disksize", check=False).ok:
            raise ConfigurationUnavailable("the guest cannot load the zram module")
        algorithm = self.params["algorithm"]
        offered = guest.read(f"{ZRAM}/comp_algorithm").replace("[", "").replace("]", "")
        if algorithm not in offered.split():
            raise ConfigurationUnavailable(f"zram in the guest offers {offered.strip()}, "
                                           f"not {algorithm}")
        size = _scaled(guest, self.params["disk_scale"])
        guest.run(f"echo {algorithm} > {ZRAM}/comp_algorithm && echo {size} > {ZRAM}/disksize "
                  f"&& mkswap /dev/zram0 >/dev/null && swapon -p 100 /dev/zram0")
        return {"zram_algorithm": algorithm, "zram_disksize": size}
