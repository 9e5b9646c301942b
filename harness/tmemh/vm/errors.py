"""Exceptions raised while describing, launching, driving or tearing down VMs.

Modelled on QEMU's ``python/qemu/machine``: one base class, and a launch failure that carries
what a person needs to see why a guest did not come up (the command, the exit code and the
tail of the serial console).
"""

from __future__ import annotations

from tmemh.procs import command_line


class VMError(Exception):
    """Base class of every error the VM layer raises on purpose."""


class InvalidVMSpec(VMError, ValueError):
    """A VM description is invalid; raised before anything is created."""


class InvalidEnvironment(VMError, ValueError):
    """An environment variable the VM layer reads (``TMEMH_ACCEL``) has a bad value."""


class VMStateError(VMError):
    """An operation was called while the VM was in the wrong run state."""


class VMNotFound(VMError, LookupError):
    """No VM of that name is recorded in the state directory (or it is gone)."""


class VMExists(VMError):
    """A VM of that name is already running."""


class BackendUnavailable(VMError):
    """The requested backend cannot be used (libvirt not reachable, QEMU missing, ...)."""


class VMOperationError(VMError):
    """A command to a running VM (QMP or libvirt) failed."""


class TmemUnavailable(VMError):
    """No tmemd answers at the control socket given, or it refused to admit the VM."""


class VMLaunchFailure(VMError):
    """The VM did not come up. Carries the command line, exit code and console tail."""

    def __init__(self, reason: str, command: list[str] | None = None,
                 exit_code: int | None = None, console_tail: str = "") -> None:
        self.reason = reason
        self.command = command or []
        self.exit_code = exit_code
        self.console_tail = console_tail
        super().__init__(self._message())

    def _message(self) -> str:
        lines = [f"VM launch failed: {self.reason}"]
        if self.command:
            lines.append(f"command: {command_line(self.command)}")
        if self.exit_code is not None:
            lines.append(f"exit code: {self.exit_code}")
        if self.console_tail:
            lines.append("--- last lines of the serial console ---")
            lines.append(self.console_tail.rstrip("\n"))
        else:
            lines.append("(serial console is empty)")
        return "\n".join(lines)


# What QEMU prints when the SSH port forward cannot bind its host port (also in libvirt's error).
HOSTFWD_FAILURE_TEXT = "Could not set up host forwarding rule"


class HostPortInUse(VMLaunchFailure):
    """QEMU could not bind the host port of the SSH forward (another process took it)."""
