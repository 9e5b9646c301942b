"""A real ``tmemd serve`` subprocess on private sockets, for the harness (the demo, suites).

Use :func:`running_daemon` as a context manager (or wrap it in a fixture). The daemon is
stopped by its PID on the way out, with SIGTERM and then SIGKILL, also when the test fails;
its sockets live in a private temporary directory that is removed afterwards. It is ready
when it has printed the ready line, which it does at any log level.

A VM gets a socket of its own by being admitted (:func:`admit_vm`, or
:meth:`DaemonProcess.admit`): its virtio-serial channel connects to the path that returns, and
everything on that socket is that VM (docs/trust-model.md). The daemon's ``socket`` is the
operator's, for trusted local tools such as tests and loadgen.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tmemd.service.controlclient import ControlClient
from tmemd.service.serve import READY_LINE  # printed on stdout at any log level
from tmemh.procs import terminate

START_TIMEOUT = 30.0


def admit_vm(control: str | Path, vm: str, owner: str | int | None = None) -> Path:
    """Admit ``vm`` to the daemon behind the control socket ``control``; return the path of
    the VM's own socket (for its channel, ``ChannelSpec(..., path, "connect")``).

    ``owner`` (a user name or uid) is given the socket file: QEMU's user when it is not root
    (``libvirt-qemu`` under libvirt). Admitting a VM again returns the same path. A refusal
    raises :class:`~tmemd.service.controlclient.ControlRequestError`."""
    args = {} if owner is None else {"owner": owner}
    with ControlClient(str(control)) as client:
        result = client.call("admit", vm=vm, **args)
    return Path(result["socket"])


def dismiss_vm(control: str | Path, vm: str) -> None:
    """Stop the daemon listening for ``vm`` (its pages stay until ``forget``)."""
    with ControlClient(str(control)) as client:
        client.call("dismiss", vm=vm)


class DaemonFailed(RuntimeError):
    """The daemon exited or never became ready; the message ends with its log."""


@dataclass
class DaemonProcess:
    workdir: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "tmemd.log"

    @property
    def socket(self) -> str:
        return str(self.workdir / "vm.sock")

    @property
    def control(self) -> str:
        return str(self.workdir / "control.sock")

    @property
    def vm_socket_dir(self) -> str:
        return str(self.workdir / "vms")

    def admit(self, vm: str, owner: str | int | None = None) -> Path:
        """Admit ``vm``; the path of its own socket (see :func:`admit_vm`)."""
        return admit_vm(self.control, vm, owner)

    def dismiss(self, vm: str) -> None:
        dismiss_vm(self.control, vm)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> None:
        command = [sys.executable, "-m", "tmemd.cli", "serve", "--socket", self.socket,
                   "--control", self.control, "--vm-socket-dir", self.vm_socket_dir, *self.args]
        seen = len(self.log_text())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while READY_LINE not in self.log_text()[seen:]:
            if self.proc.poll() is not None:
                raise DaemonFailed(f"tmemd exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise DaemonFailed(f"tmemd not ready in {START_TIMEOUT} s:\n{self.tail()}")
            time.sleep(0.05)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (graceful: the state file is written), then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return 0
        return terminate(self.proc, timeout)


@contextmanager
def running_daemon(
    *args: str, workdir: Path | None = None, kind: type[DaemonProcess] = DaemonProcess
) -> Iterator[DaemonProcess]:
    """A started daemon with ``args`` after its socket options; stopped and cleaned up after.

    Sockets go to a short private directory (unix socket paths are limited to 107 bytes).
    """
    own_dir = workdir is None
    path = Path(tempfile.mkdtemp(prefix="tmemd-")) if workdir is None else workdir
    daemon = kind(path, list(args))
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
        if own_dir:
            shutil.rmtree(path, ignore_errors=True)
