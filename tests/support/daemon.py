"""A ``tmemd serve`` subprocess with the controls only tests need: crash, restart, raw sockets.

Built on the harness's own :class:`tmemh.daemon.DaemonProcess` (start, ready line, stop), so the
tests exercise the same start-up and teardown as the demo does.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from tmem_agent.channel.transport import Transport
from tmemh.daemon import DaemonProcess
from tmemh.daemon import running_daemon as harness_daemon


class DaemonUnderTest(DaemonProcess):
    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def crash(self) -> None:
        """SIGKILL: nothing is saved."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def restart(self, *args: str) -> None:
        """Stop gracefully and start again on the same sockets (extra args replace the old)."""
        self.stop()
        if args:
            self.args = list(args)
        self.start()

    def transport(self) -> Transport:
        return Transport.unix(self.socket).open()

    def raw_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.socket)
        return sock


@contextmanager
def running_daemon(*args: str, workdir: Path | None = None) -> Iterator[DaemonUnderTest]:
    """A started daemon for one test; stopped by its PID and cleaned up afterwards."""
    with harness_daemon(*args, workdir=workdir, kind=DaemonUnderTest) as daemon:
        yield cast(DaemonUnderTest, daemon)
