"""An agent command on the host against a real ``tmemd serve``: ``tmem-agent run`` or
``tmem-agent cache`` with ``--attach none`` as a process of its own (so that SIGKILL is a real
crash), reaching the daemon's unix socket, served to the test NBD client; and NBD requests
pipelined to it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from unit.nbd_testclient import CMD_READ, CMD_WRITE, NbdClient

from support.daemon import DaemonUnderTest

READY_TIMEOUT = 60.0
LOG_TAIL = 6000  # characters of the agent's log printed when a test fails
PAGE = 4096
WINDOW = 16  # requests in flight (a client that stops reading replies would stall)


class HostAgentProcess:
    """``tmem-agent COMMAND --attach none --no-harden`` on ``tmem_socket``, its run directory
    and log in ``tmp``; started until its ``ready`` marker is in the log."""

    name = "agent"  # in messages and the log's file name
    command = "run"
    ready = "TMEM-AGENT-READY"

    def __init__(self, tmp: Path, tmem_socket: str, *args: str) -> None:
        self.tmp, self.tmem_socket, self.args = tmp, tmem_socket, list(args)
        self.run_dir = tmp / "run"
        self.log = tmp / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        seen = self.log.read_text() if self.log.exists() else ""
        argv = [sys.executable, "-m", "tmem_agent.cli", self.command, "--attach", "none",
                "--no-harden", "--tmem-socket", self.tmem_socket, "--run-dir",
                str(self.run_dir), *self.args]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT
        while self.ready not in self.log.read_text()[len(seen):]:
            assert self.proc.poll() is None, f"{self.name} exited:\n{self.log.read_text()}"
            assert time.monotonic() < deadline, \
                f"{self.name} not ready:\n{self.log.read_text()}"
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


Agent = TypeVar("Agent", bound=HostAgentProcess)


@contextmanager
def serving(agent: Agent, daemon: DaemonUnderTest) -> Iterator[Agent]:
    """``agent`` started, and stopped afterwards; on a failure its log and the daemon's are
    printed."""
    agent.start()
    try:
        yield agent
    except BaseException:
        print(f"{agent.name} log:\n{agent.log.read_text()[-LOG_TAIL:]}\n"
              f"daemon log:\n{daemon.tail(40)}")
        raise
    finally:
        agent.stop()


def pipelined(nbd: NbdClient, requests: list[tuple[int, int, int, bytes]]) -> list[
        tuple[int, bytes]]:
    """Send (cmd, offset, length, data) requests keeping WINDOW in flight; (error, data)
    of each, in request order (the replies themselves may come in any order)."""
    cookies: list[int] = []
    done: dict[int, tuple[int, bytes]] = {}
    for cmd, offset, length, data in requests:
        if len(cookies) - len(done) >= WINDOW:
            cookie, error, payload = nbd.reply()
            done[cookie] = (error, payload)
        cookies.append(nbd.send(cmd, offset, length, data))
    while len(done) < len(cookies):
        cookie, error, payload = nbd.reply()
        done[cookie] = (error, payload)
    return [done[c] for c in cookies]


def write_pipelined(nbd: NbdClient, first: int, pages: list[bytes], per_request: int) -> None:
    requests = [(CMD_WRITE, (first + i) * PAGE, len(chunk) * PAGE, b"".join(chunk))
                for i in range(0, len(pages), per_request)
                for chunk in [pages[i : i + per_request]]]
    assert all(error == 0 for error, _ in pipelined(nbd, requests))


def read_pipelined(nbd: NbdClient, first: int, count: int, per_request: int) -> list[bytes]:
    requests = [(CMD_READ, (first + i) * PAGE, min(per_request, count - i) * PAGE, b"")
                for i in range(0, count, per_request)]
    out: list[bytes] = []
    for error, data in pipelined(nbd, requests):
        assert error == 0, f"read failed with {error}"
        out += [data[i : i + PAGE] for i in range(0, len(data), PAGE)]
    return out
