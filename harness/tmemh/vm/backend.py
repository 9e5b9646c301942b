"""The interface every VM backend (QEMU directly, libvirt) implements."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from .disks import ROOT_DISK
from .errors import VMOperationError
from .render import LaunchConfig
from .spec import DiskThrottle

# Linux input key codes for the magic SysRq combination (libvirt sendKey, keycode set "linux").
KEY_LEFTALT = 56
KEY_SYSRQ = 99
# "9" raises the console log level so the dumps that follow reach the serial console.
SYSRQ_LETTER_KEYCODES: dict[str, int] = {"t": 20, "w": 17, "m": 50, "l": 38, "d": 32, "9": 10}


@dataclass(frozen=True)
class BlockStats:
    """I/O counters of one disk since the VM started."""

    read_bytes: int
    write_bytes: int
    read_ops: int
    write_ops: int


def check_sysrq_letter(letter: str) -> str:
    if letter not in SYSRQ_LETTER_KEYCODES:
        raise VMOperationError(f"unsupported SysRq key {letter!r}; "
                               f"use one of {''.join(sorted(SYSRQ_LETTER_KEYCODES))}")
    return letter


class Backend(ABC):
    """Starts, drives and stops one VM. ``stop`` is idempotent."""

    name: ClassVar[str]

    @abstractmethod
    def start(self, config: LaunchConfig) -> None:
        """Start the VM; returns once the hypervisor accepted it (not when it booted)."""

    @property
    @abstractmethod
    def command(self) -> list[str]:
        """What was run to start the VM, for error messages."""

    @abstractmethod
    def handle(self) -> dict[str, Any]:
        """What a later process needs to reattach (stored in the VM record)."""

    @abstractmethod
    def is_running(self) -> bool: ...

    def qemu_uid(self, config: LaunchConfig) -> int:
        """The uid QEMU will run as for ``config`` (who must be able to open the VM's tmemd
        socket). QEMU started directly runs as we do."""
        return os.geteuid()

    def exit_code(self) -> int | None:
        """The hypervisor process's exit code, when it is known."""
        return None

    @abstractmethod
    def send_sysrq(self, letter: str) -> None:
        """Press alt-sysrq-LETTER on the guest's keyboard (output goes to the console)."""

    # ``disk`` names a disk of the VM: ROOT_DISK ("root", vda) or DATA_DISK ("data", vdb);
    # tmemh.vm.disks.disk_slot maps it to the backend's ids (an unknown name raises).

    @abstractmethod
    def set_throttle(self, throttle: DiskThrottle, disk: str = ROOT_DISK) -> None: ...

    @abstractmethod
    def throttle(self, disk: str = ROOT_DISK) -> DiskThrottle: ...

    @abstractmethod
    def block_stats(self, disk: str = ROOT_DISK) -> BlockStats: ...

    @abstractmethod
    def stop(self) -> None:
        """Stop the VM and release hypervisor-side objects; safe to call repeatedly."""
