"""The swap shim against a real ``tmemd serve``: ``tmem-agent run --attach none`` as a process
of its own, reaching the daemon's unix socket, driven by the test NBD client. Real pages
(cut from this machine's files), incompressible pages, a tiny persistent cap, agent SIGKILLs,
graceful daemon restarts (state file) and daemon crashes."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from support.daemon import DaemonUnderTest, running_daemon
from support.hostagent import HostAgentProcess, pipelined, serving
from unit.nbd_testclient import CMD_READ, CMD_WRITE, EIO, NbdClient, NbdError

from tmem_agent.tools.pagecheck import guest_pages

pytestmark = pytest.mark.real

PAGE = 4096
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


def test_real_pages_round_trip_with_one_get_per_readahead(tmp_path: Path) -> None:
    pages = list(guest_pages(3000))
    with running_daemon() as daemon, agent_for(daemon, tmp_path) as agent:
        nbd = agent.client()
        started = time.monotonic()
        write_pipelined(nbd, 0, pages, 32)
        wrote = time.monotonic() - started
        before = agent.status()["counters"]
        started = time.monotonic()
        assert read_pipelined(nbd, 0, len(pages), 8) == pages  # swap readahead: 8 pages
        read = time.monotonic() - started
        after = agent.status()
        gets = after["counters"]["get_batches"] - before["get_batches"]
        in_tmem = after["map"]["tmem"]
        print(f"3000 real pages: write {len(pages) / wrote:.0f} pages/s, read "
              f"{len(pages) / read:.0f} pages/s, {in_tmem} in tmem, "
              f"{after['map']['fallback']} in the fallback")
        assert gets <= len(pages) // 8  # one GET_BATCH per read (reads of only-fallback
        assert in_tmem > len(pages) // 2  # pages need none)
        assert after["refusals"]["refused"] == after["counters"]["fallback_writes"]
        assert after["map"]["fallback"] == after["counters"]["fallback_writes"]
        nbd.trim(0, SIZE)
        status = agent.status()
        assert status["map"]["tmem"] == 0 and status["map"]["fallback"] == 0
        nbd.close()


def test_incompressible_pages_and_a_tiny_cap_go_to_the_fallback(tmp_path: Path) -> None:
    real = list(guest_pages(600))
    noise = [os.urandom(PAGE) for _ in range(200)]
    with running_daemon("--persistent-cap", "512K") as daemon, \
            agent_for(daemon, tmp_path) as agent:
        nbd = agent.client()
        write_pipelined(nbd, 0, noise, 16)
        write_pipelined(nbd, 1000, real, 16)
        assert read_pipelined(nbd, 0, 200, 8) == noise
        assert read_pipelined(nbd, 1000, 600, 8) == real
        status = agent.status()
        refused = status["refusals"]["refused"]
        print(f"refusals {status['refusals']}, map {status['map']}")
        assert refused >= 200 + 200  # the noise, and what the 512 KiB cap cannot hold
        assert refused == status["counters"]["fallback_writes"] == status["map"]["fallback"]
        assert status["map"]["tmem"] > 0
        nbd.close()


def test_agent_sigkill_and_restart_keep_every_page(tmp_path: Path) -> None:
    pages = list(guest_pages(800)) + [os.urandom(PAGE) for _ in range(100)]
    with running_daemon() as daemon, agent_for(daemon, tmp_path) as agent:
        nbd = agent.client()
        write_pipelined(nbd, 0, pages, 16)
        # in-flight writes at the moment of the kill are the kernel's to resend
        for i in range(50):
            nbd.send(CMD_WRITE, (2000 + i) * PAGE, PAGE, pages[i])
        agent.kill()
        nbd.close()
        agent.start()
        status = agent.wait_connected("resumed")
        assert status["map"]["tmem"] + status["map"]["fallback"] >= len(pages)
        nbd = agent.client()
        assert read_pipelined(nbd, 0, len(pages), 8) == pages
        nbd.close()


def test_graceful_daemon_restart_keeps_every_page(tmp_path: Path) -> None:
    pages = list(guest_pages(600))
    state = tmp_path / "tmemd.state"
    with running_daemon("--state-file", str(state)) as daemon, \
            agent_for(daemon, tmp_path) as agent:
        nbd = agent.client()
        write_pipelined(nbd, 0, pages, 16)
        daemon.restart("--state-file", str(state))
        agent.wait_connected("resumed")
        assert read_pipelined(nbd, 0, len(pages), 8) == pages
        assert agent.status()["counters"]["io_errors"] == 0
        nbd.close()


def test_daemon_crash_gives_io_errors_never_wrong_data(tmp_path: Path) -> None:
    real = list(guest_pages(400))
    noise = [os.urandom(PAGE) for _ in range(50)]
    with running_daemon() as daemon, agent_for(daemon, tmp_path) as agent:
        nbd = agent.client()
        write_pipelined(nbd, 0, noise, 10)  # refused: these live in the fallback
        write_pipelined(nbd, 0, real[:50], 10)  # now in tmem: the fallback copies are stale
        write_pipelined(nbd, 100, real[50:], 10)
        write_pipelined(nbd, 1000, noise, 10)  # only ever in the fallback
        daemon.crash()
        daemon.start()
        agent.wait_connected("fresh")
        for first in (0, 100, 200):
            with pytest.raises(NbdError) as caught:
                nbd.read(first * PAGE, 8 * PAGE)
            assert caught.value.error == EIO
        assert read_pipelined(nbd, 1000, 50, 8) == noise
        write_pipelined(nbd, 0, real[:8], 8)
        assert nbd.read(0, 8 * PAGE) == b"".join(real[:8])
        status = agent.status()
        assert status["counters"]["lost_pages"] >= 350 and status["counters"]["io_errors"] >= 3
        assert "lost" in agent.log.read_text()
        nbd.close()


def test_a_supervised_agent_is_restarted_and_keeps_every_page(tmp_path: Path) -> None:
    pages = list(guest_pages(500)) + [os.urandom(PAGE) for _ in range(50)]
    with running_daemon() as daemon, agent_for(daemon, tmp_path, "--supervise") as agent:
        lock = agent.tmp / "fallback.lock"
        first = int(lock.read_text())
        assert agent.proc is not None and first != agent.proc.pid  # a forked child serves
        nbd = agent.client()
        write_pipelined(nbd, 0, pages, 16)
        nbd.close()
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            try:
                second = int(lock.read_text())
                if second != first and agent.status()["tmem_connected"]:
                    break
            except (OSError, ValueError):
                pass
            assert time.monotonic() < deadline, agent.log.read_text()[-3000:]
            time.sleep(0.1)
        assert agent.status()["hello"]["status"] == "resumed"
        nbd = agent.client()
        assert read_pipelined(nbd, 0, len(pages), 8) == pages
        nbd.close()
        agent.proc.terminate()
        assert agent.proc.wait(20) == 0
        with pytest.raises(ProcessLookupError):
            os.kill(second, 0)
        log = agent.log.read_text()
        assert "died: signal SIGKILL" in log and "standby: taking over" in log
