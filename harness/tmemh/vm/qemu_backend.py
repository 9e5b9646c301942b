"""Backend that runs ``qemu-system-x86_64`` directly and drives it over QMP.

QEMU runs in its own session, so it outlives the command that started it (``tmemh vm up``).
A later process reattaches by PID and QMP socket; before signalling a PID it checks that the
process is still the QEMU holding that socket.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from tmemh.procs import command_line, pid_alive, stop_pid, terminate

from .backend import Backend, BlockStats, check_sysrq_letter
from .disks import ROOT_DISK, disk_slot
from .errors import (
    HOSTFWD_FAILURE_TEXT,
    BackendUnavailable,
    HostPortInUse,
    VMOperationError,
    VMStateError,
)
from .render import LaunchConfig, qemu_command_line
from .spec import DiskThrottle

logger = logging.getLogger(__name__)

QMP_TIMEOUT_S = 10.0
STOP_GRACE_S = 10.0
# QEMU sets up devices and the port forward before its monitor greets; that takes well under
# a second, so after this long the boot wait (which also notices an exit) takes over.
MONITOR_WAIT_S = 30.0
QMP_GREETING = b'{"QMP"'


class QemuBackend(Backend):
    name = "qemu"

    def __init__(self, pid: int | None = None, qmp_socket: Path | None = None,
                 command: list[str] | None = None) -> None:
        self._pid = pid
        self._qmp_socket = qmp_socket
        self._command = list(command or [])
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def from_handle(cls, handle: dict[str, Any], command: list[str]) -> QemuBackend:
        return cls(int(handle["pid"]), Path(handle["qmp_socket"]), command)

    @property
    def command(self) -> list[str]:
        return self._command

    @property
    def pid(self) -> int | None:
        return self._pid

    def handle(self) -> dict[str, Any]:
        return {"pid": self._pid, "qmp_socket": str(self._qmp_socket)}

    def start(self, config: LaunchConfig) -> None:
        if self._pid is not None:
            raise VMStateError("this QEMU backend already started a VM")
        self._command = qemu_command_line(config)
        self._qmp_socket = config.qmp_socket
        output = config.console_log.with_name("qemu.log")
        logger.debug("starting %s", command_line(self._command))
        with open(output, "wb") as log:
            try:
                self._process = subprocess.Popen(
                    self._command, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                raise BackendUnavailable(f"cannot run {self._command[0]}: {exc}") from exc
        self._pid = self._process.pid
        logger.info("QEMU for %s started, pid %d", config.spec.name, self._pid)
        self._wait_for_monitor(self._process, output, config.ssh_port)

    def _wait_for_monitor(self, process: subprocess.Popen[bytes], output: Path,
                          ssh_port: int) -> None:
        """Wait until QMP greets (devices and the SSH forward are set up) or QEMU exits.

        If QEMU exited because the SSH port was taken, raise HostPortInUse and forget this
        start, so the caller can start again with another port. Any other exit is left to
        the boot wait, which reports it with the console tail.
        """
        assert self._qmp_socket is not None
        deadline = time.monotonic() + MONITOR_WAIT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                said = output.read_text(errors="replace").strip()
                if HOSTFWD_FAILURE_TEXT in said:
                    self._process = self._pid = None
                    raise HostPortInUse(f"host port 127.0.0.1:{ssh_port} for SSH is in use: "
                                        f"{said[-300:]}", self._command, process.returncode)
                return
            if _monitor_greets(self._qmp_socket):
                return
            time.sleep(0.05)
        logger.warning("QEMU pid %d: no QMP greeting after %.0f s", process.pid, MONITOR_WAIT_S)

    def is_running(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        return self._pid is not None and self._is_our_qemu(self._pid)

    def exit_code(self) -> int | None:
        return self._process.poll() if self._process is not None else None

    def _is_our_qemu(self, pid: int) -> bool:
        """True if ``pid`` is alive (not a zombie) and is the QEMU with our QMP socket."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return str(self._qmp_socket).encode() in cmdline and pid_alive(pid)

    def stop(self) -> None:
        if self._process is not None:
            self._stop_child(self._process)
        elif self._pid is not None and self._is_our_qemu(self._pid):
            self._stop_foreign(self._pid)

    def _stop_child(self, process: subprocess.Popen[bytes]) -> None:
        code = terminate(process, STOP_GRACE_S)
        logger.info("QEMU pid %d stopped (exit code %s)", process.pid, code)

    def _stop_foreign(self, pid: int) -> None:
        """Stop a QEMU started by another process: signal it by PID, poll until gone."""
        if not stop_pid(pid, self._is_our_qemu, STOP_GRACE_S, poll=0.05):
            raise VMOperationError(f"QEMU pid {pid} did not stop")
        logger.info("QEMU pid %d stopped", pid)

    def _qmp(self, command: str, **arguments: Any) -> Any:
        if self._qmp_socket is None or not self.is_running():
            raise VMStateError("QEMU is not running")
        monitor = QEMUMonitorProtocol(str(self._qmp_socket))
        try:
            monitor.connect()
            monitor.settimeout(QMP_TIMEOUT_S)
            return monitor.cmd(command, **arguments)
        except (QMPError, OSError) as exc:
            raise VMOperationError(f"QMP {command} failed: {exc}") from exc
        finally:
            monitor.close()

    def send_sysrq(self, letter: str) -> None:
        check_sysrq_letter(letter)
        self._qmp("human-monitor-command", **{"command-line": f"sendkey alt-sysrq-{letter}"})

    def set_throttle(self, throttle: DiskThrottle, disk: str = ROOT_DISK) -> None:
        self._qmp("block_set_io_throttle", device=disk_slot(disk).drive_id,
                  bps=throttle.bytes_per_second, bps_rd=0, bps_wr=0,
                  iops=throttle.iops, iops_rd=0, iops_wr=0)

    def throttle(self, disk: str = ROOT_DISK) -> DiskThrottle:
        drive = disk_slot(disk).drive_id
        for block in self._qmp("query-block"):
            if block.get("device") == drive and "inserted" in block:
                inserted = block["inserted"]
                return DiskThrottle(int(inserted.get("bps", 0)), int(inserted.get("iops", 0)))
        raise VMOperationError(f"no disk {drive} in query-block")

    def block_stats(self, disk: str = ROOT_DISK) -> BlockStats:
        drive = disk_slot(disk).drive_id
        for entry in self._qmp("query-blockstats"):
            if entry.get("device") == drive:
                stats = entry["stats"]
                return BlockStats(int(stats["rd_bytes"]), int(stats["wr_bytes"]),
                                  int(stats["rd_operations"]), int(stats["wr_operations"]))
        raise VMOperationError(f"no disk {drive} in query-blockstats")


def _monitor_greets(path: Path) -> bool:
    """True if a QMP monitor listens at ``path`` and sends its greeting."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
            return sock.recv(len(QMP_GREETING)) == QMP_GREETING
        except OSError:
            return False
