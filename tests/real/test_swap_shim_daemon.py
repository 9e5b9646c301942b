"""The swap shim against a real ``tmemd serve``: ``tmem-agent run --attach none`` as a process
of its own, reaching the daemon's unix socket, driven by the test NBD client. Real pages
(cut from this machine's files), incompressible pages, a tiny persistent cap, agent SIGKILLs,
graceful daemon restarts (state file) and daemon crashes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from support.daemon import running_daemon
from support.hostagent import read_pipelined, write_pipelined
from support.swapagent import SIZE, agent_for
from unit.nbd_testclient import CMD_WRITE, EIO, NbdError

from tmem_agent.tools.pagecheck import guest_pages

pytestmark = pytest.mark.real

PAGE = 4096
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
