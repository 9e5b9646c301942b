"""Commands in a cell's guest, each one written with its output to the cell's log.

A thin layer over the VM's connection (:meth:`tmemh.vm.VirtualMachine.run`): the memory
configurations and the cell run their guest commands through it, so the log shows exactly
what was done to the guest, in order, with exit codes and times.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from tmemh.ssh import CommandResult, SSHCommandFailed

logger = logging.getLogger(__name__)


class GuestLink(Protocol):
    """What a cell needs of its VM (:class:`tmemh.vm.VirtualMachine` has it)."""

    def run(self, command: str, timeout: float | None = None,
            check: bool = False) -> CommandResult: ...

    def upload(self, sources: Sequence[Path], dest: str) -> list[str]: ...

    def download(self, sources: Sequence[str], dest: Path) -> list[Path]: ...


class GuestShell:
    """Runs commands in one guest and appends each, with its output, to ``log_path``."""

    def __init__(self, vm: GuestLink, log_path: Path, memory_mib: int) -> None:
        self.vm = vm
        self.log_path = log_path
        self.memory_mib = memory_mib

    def run(self, command: str, timeout: float | None = 600.0,
            check: bool = True) -> CommandResult:
        started = time.monotonic()
        result = self.vm.run(command, timeout=timeout, check=False)
        elapsed = time.monotonic() - started
        with open(self.log_path, "a") as log:
            log.write(f"$ {command}\n# exit {result.exit_code} after {elapsed:.2f} s\n")
            if result.stdout:
                log.write(result.stdout if result.stdout.endswith("\n")
                          else result.stdout + "\n")
            if result.stderr:
                log.write("# stderr:\n" + result.stderr
                          + ("" if result.stderr.endswith("\n") else "\n"))
        logger.debug("guest: %s -> %d (%.2f s)", command, result.exit_code, elapsed)
        if check and not result.ok:
            raise SSHCommandFailed(result)
        return result

    def fetch(self, remote: str, local: Path) -> None:
        """Copy the guest file ``remote`` to the host path ``local``."""
        self.vm.download([remote], local)

    def upload(self, sources: Sequence[Path], dest: str) -> list[str]:
        return self.vm.upload(sources, dest)

    def read(self, path: str) -> str:
        """A guest file's contents (an error if it cannot be read)."""
        return self.run(f"cat {path}").stdout
