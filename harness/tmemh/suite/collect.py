"""Collectors: raw, timestamped samples taken while a workload runs, parsed afterwards.

In the guest, one long-running loop (:mod:`tmemh.suite.guest.monitor`) started in the
background over SSH writes its samples to a file on the guest's disk; the file is fetched when
the workload ends. No SSH round trip per sample: the loop's only cost is its own CPU time,
which it reports at the end.

On the host, a thread (:class:`HostSampler`) writes JSON lines: QEMU's ``/proc/PID/stat`` and
``/proc/PID/status`` as raw text (CPU time, RSS), the guest disk's block statistics over QMP,
and tmemd's statistics for the VM when the cell runs a daemon. Its own CPU time is recorded
too. :mod:`tmemh.suite.parsers` reads both formats.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from tmemd.service.controlclient import ControlClient, ControlError
from tmemh.vm import BlockStats, VMError

from .guestcode import python_command
from .guestshell import GuestShell

logger = logging.getLogger(__name__)

GUEST_SAMPLES = "/var/tmp/tmemh-samples.txt"
HOST_FORMAT = "tmemh-host-samples/1"
STOP_WAIT_S = 30.0


class GuestMonitor:
    """The guest's sampling loop: started in the background, stopped with SIGTERM, its file
    fetched to the host."""

    def __init__(self, guest: GuestShell, interval: float, remote: str = GUEST_SAMPLES) -> None:
        self.guest = guest
        self.interval = interval
        self.remote = remote
        self.pid: int | None = None

    def start(self) -> None:
        command = python_command("monitor", self.remote, "--interval", str(self.interval),
                                 lean=True)
        result = self.guest.run(f"nohup setsid {command} </dev/null >/dev/null 2>&1 & echo $!")
        self.pid = int(result.stdout.strip().splitlines()[-1])
        # Wait for the first sample: Python's start-up (about a second of CPU under TCG)
        # must not count against the workload.
        self.guest.run(f"for i in $(seq {int(STOP_WAIT_S * 10)}); do "
                       f"grep -q ' self$' {self.remote} 2>/dev/null && break; sleep 0.1; done")
        logger.debug("guest monitor pid %d", self.pid)

    def stop(self, local: Path) -> None:
        """End the loop (it writes its closing record) and copy its file to ``local``."""
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        deadline = int(max(STOP_WAIT_S, 3 * self.interval))
        self.guest.run(f"kill -TERM {pid} 2>/dev/null; for i in $(seq {deadline * 10}); do "
                       f"kill -0 {pid} 2>/dev/null || break; sleep 0.1; done", check=False)
        self.guest.fetch(self.remote, local)


class HostSampler(threading.Thread):
    """Samples QEMU's CPU and memory, the guest disk's counters and tmemd's statistics for
    the VM every ``interval`` seconds into ``path`` (JSON lines) until :meth:`stop`."""

    def __init__(self, path: Path, interval: float, qemu_pid: int | None,
                 block_stats: Callable[[], BlockStats] | None,
                 tmemd_control: str | None = None, vm_name: str | None = None) -> None:
        super().__init__(name="host-sampler", daemon=True)
        self.path = path
        self.interval = interval
        self.qemu_pid = qemu_pid
        self.block_stats = block_stats
        self.tmemd_control = tmemd_control
        self.vm_name = vm_name
        self._halt = threading.Event()
        self.samples = 0
        self.cpu_s = 0.0
        self.errors: list[str] = []

    def run(self) -> None:
        with open(self.path, "w") as out:
            self._write(out, {"format": HOST_FORMAT, "interval": self.interval,
                              "qemu_pid": self.qemu_pid, "clk_tck": os.sysconf("SC_CLK_TCK"),
                              "vm": self.vm_name})
            deadline = time.monotonic()
            while True:
                self._sample(out)
                self.samples += 1
                deadline += self.interval
                if self._halt.wait(max(0.0, deadline - time.monotonic())):
                    break
            self._sample(out)  # the state at the end of the run
            self.cpu_s = time.thread_time()
            self._write(out, {"t": time.time(), "source": "end", "cpu_s": round(self.cpu_s, 4),
                              "samples": self.samples + 1, "errors": self.errors[:20]})

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join()

    @staticmethod
    def _write(out: TextIO, record: dict[str, Any]) -> None:
        out.write(json.dumps(record, sort_keys=True) + "\n")

    def _sample(self, out: TextIO) -> None:
        now = time.time()
        if self.qemu_pid is not None:
            for source, name in (("qemu-stat", "stat"), ("qemu-status", "status")):
                try:
                    raw = Path(f"/proc/{self.qemu_pid}/{name}").read_text()
                except OSError as exc:
                    self._error(f"{source}: {exc}")
                    continue
                self._write(out, {"t": now, "source": source, "raw": raw})
        if self.block_stats is not None:
            try:
                self._write(out, {"t": now, "source": "blockstats",
                                  "raw": asdict(self.block_stats())})
            except VMError as exc:
                self._error(f"blockstats: {exc}")
        if self.tmemd_control is not None:
            try:
                with ControlClient(self.tmemd_control, timeout=5.0) as control:
                    stats = control.call("stats", client=self.vm_name)
                self._write(out, {"t": now, "source": "tmemd", "raw": stats})
            except (ControlError, OSError) as exc:  # before the VM's first hello: no client
                self._error(f"tmemd: {exc}")
        out.flush()

    def _error(self, message: str) -> None:
        if len(self.errors) < 100:
            self.errors.append(message)
        logger.debug("host sampler: %s", message)


def guest_file(guest: GuestShell, remote: str, local: Path) -> bool:
    """Copy one guest file to ``local``; False (and nothing written) if it is not there."""
    if not guest.run(f"test -f {shlex.quote(remote)}", check=False).ok:
        return False
    guest.fetch(remote, local)
    return True
