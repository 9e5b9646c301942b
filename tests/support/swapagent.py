"""The swap agent on the host against a real ``tmemd serve``: ``tmem-agent run --attach none``
as a process of its own."""

from __future__ import annotations

import json
import socket
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from unit.nbd_testclient import NbdClient

from support.daemon import DaemonUnderTest
from support.hostagent import HostAgentProcess, serving

SIZE = 64 << 20


class AgentProcess(HostAgentProcess):
    """``tmem-agent run`` in its own process (so that SIGKILL is a real crash)."""

    def __init__(self, tmp: Path, tmem_socket: str, *extra: str) -> None:
        super().__init__(tmp, tmem_socket, "--fallback", str(tmp / "fallback"), "--swap-size",
                         str(SIZE), "--slots", "512", "--vm", "swap-test", *extra)

    def client(self) -> NbdClient:
        nbd = NbdClient(str(self.run_dir / "nbd.sock"))
        nbd.go("swap")
        return nbd

    def status(self) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.run_dir / "status.sock"))
            found: dict[str, Any] = json.loads(sock.makefile().read())
            return found

    def wait_connected(self, hello: str | None = None, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status["tmem_connected"] and (hello is None or status["hello"]["status"] == hello):
                return status
            assert time.monotonic() < deadline, f"agent never reconnected: {status}"
            time.sleep(0.1)


def agent_for(daemon: DaemonUnderTest, tmp: Path,
              *extra: str) -> AbstractContextManager[AgentProcess]:
    return serving(AgentProcess(tmp, daemon.socket, *extra), daemon)
