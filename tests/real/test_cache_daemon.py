"""The disk cache against a real ``tmemd serve``: ``tmem-agent cache --attach none`` as a
process of its own over a file as the disk, reaching the daemon's unix socket, driven by the
test NBD client. Re-reads served from tmem, coherency under overwrites while a tiny memory
limit makes tmemd evict, tmemd killed and restarted mid-reads (reads stay correct, from the
disk), a graceful restart (the old pool destroyed, a fresh one made), status in
``tmem-agent status``."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from support.daemon import DaemonUnderTest, running_daemon
from support.hostagent import WINDOW, HostAgentProcess, pipelined, read_pipelined, serving
from unit.nbd_testclient import CMD_READ, CMD_WRITE, NbdClient

from tmem_agent.tools.pagecheck import guest_pages
from tmemd.service.controlclient import ControlClient

pytestmark = pytest.mark.real

PAGE = 4096
BLOCKS = 8192  # a 32 MiB disk
READY = "TMEM-CACHE-READY"
VM = "cache-test"


class CacheProcess(HostAgentProcess):
    """``tmem-agent cache`` in its own process (SIGKILL is a real crash) over ``disk``."""

    name = "cache"
    command = "cache"
    ready = READY

    def __init__(self, tmp: Path, tmem_socket: str, disk: Path, *extra: str) -> None:
        super().__init__(tmp, tmem_socket, "--disk", str(disk), "--vm", VM, *extra)
        self.disk = disk

    def client(self) -> NbdClient:
        nbd = NbdClient(str(self.run_dir / "cache-cache.nbd"))
        nbd.go("cache")
        return nbd

    def status(self) -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-m", "tmem_agent.cli", "status", "--socket",
                              str(self.run_dir / "status.sock")],
                             capture_output=True, text=True, timeout=30, check=True)
        found: dict[str, Any] = json.loads(out.stdout)["cache"]["cache"]
        return found

    def wait_pool(self, other_than: int | None = None, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status["tmem_connected"] and status["pool_id"] >= 0 and (
                    other_than is None or status["pool_incarnation"] != other_than):
                return status
            assert time.monotonic() < deadline, f"no pool: {status}"
            time.sleep(0.1)


def cache_for(daemon: DaemonUnderTest, tmp: Path, disk: Path,
              *extra: str) -> AbstractContextManager[CacheProcess]:
    return serving(CacheProcess(tmp, daemon.socket, disk, *extra), daemon)


def make_disk(tmp: Path, pages: list[bytes]) -> Path:
    """A disk file holding ``pages`` from block 0, the rest zeros."""
    disk = tmp / "disk.img"
    with open(disk, "wb") as f:
        f.write(b"".join(pages))
        f.truncate(BLOCKS * PAGE)
    return disk


def succeeded(nbd: NbdClient, requests: list[tuple[int, int, int, bytes]]) -> list[bytes]:
    """(cmd, offset, length, data) requests pipelined; each one's data, in order (every one
    must succeed)."""
    replies = pipelined(nbd, requests)
    failed = [(i, error) for i, (error, _) in enumerate(replies) if error]
    assert not failed, f"requests failed (index, error): {failed[:10]}"
    return [data for _, data in replies]


def test_a_reread_is_served_from_tmem(tmp_path: Path) -> None:
    pages = list(guest_pages(4000))
    disk = make_disk(tmp_path, pages)
    with running_daemon() as daemon, cache_for(daemon, tmp_path, disk) as cache:
        nbd = cache.client()
        started = time.monotonic()
        assert read_pipelined(nbd, 0, len(pages), 32) == pages
        cold = time.monotonic() - started
        first = cache.status()
        started = time.monotonic()
        assert read_pipelined(nbd, 0, len(pages), 32) == pages
        warm = time.monotonic() - started
        second = cache.status()
        nbd.close()
    c1, c2 = first["counters"], second["counters"]
    hits = c2["hits"] - c1["hits"]
    disk_reads = c2["disk_reads"] - c1["disk_reads"]
    print(f"\n4000 real pages: cold read {len(pages) / cold:.0f} pages/s "
          f"({c1['puts_stored']} of {c1['puts']} puts stored), re-read "
          f"{len(pages) / warm:.0f} pages/s, {hits} hits ({hits / len(pages):.0%}), "
          f"{disk_reads} disk reads, o_direct={second['o_direct']}")
    assert c1["misses"] == len(pages) and c1["disk_reads"] == len(pages)
    assert c1["get_batches"] == len(pages) // 32 + (len(pages) % 32 > 0)  # one per read
    assert hits >= 0.9 * c1["puts_stored"] and hits + disk_reads == len(pages)
    assert c2["disk_bytes_saved"] == hits * PAGE and c2["io_errors"] == 0
    # tmemd's pool keeps pages on get: no hit is sent back, only the misses are put (again)
    assert second["keeps_on_get"] and c2["hit_puts"] == 0
    assert c2["puts"] - c1["puts"] == disk_reads


def test_overwrites_stay_coherent_while_tmemd_evicts(tmp_path: Path) -> None:
    rng = random.Random(7)
    corpus = list(guest_pages(3000))
    blocks = 3000
    truth = [corpus[i] for i in range(blocks)]
    disk = make_disk(tmp_path, truth)
    with running_daemon("--memory-limit", "2M") as daemon, \
            cache_for(daemon, tmp_path, disk) as cache:
        nbd = cache.client()
        for _ in range(150):
            # a window of requests in flight together, on blocks no other of them touches
            # (where NBD leaves the outcome undefined)
            requests: list[tuple[int, int, int, bytes]] = []
            taken: set[int] = set()
            while len(requests) < WINDOW:
                count = rng.randint(1, 16)
                first = rng.randrange(blocks - count)
                if taken & set(range(first, first + count)):
                    continue
                taken |= set(range(first, first + count))
                if rng.random() < 0.35:
                    data = [corpus[rng.randrange(len(corpus))] for _ in range(count)]
                    requests.append((CMD_WRITE, first * PAGE, count * PAGE, b"".join(data)))
                else:
                    requests.append((CMD_READ, first * PAGE, count * PAGE, b""))
            for (cmd, offset, length, data), got in zip(requests, succeeded(nbd, requests),
                                                        strict=True):
                first, count = offset // PAGE, length // PAGE
                if cmd == CMD_WRITE:
                    truth[first : first + count] = [data[i : i + PAGE]
                                                    for i in range(0, length, PAGE)]
                else:
                    assert got == b"".join(truth[first : first + count]), f"blocks {first}+"
        assert read_pipelined(nbd, 0, blocks, 32) == truth
        status = cache.status()
        nbd.close()
        with ControlClient(daemon.control) as control:
            daemon_stats = control.call("stats")["global"]
    counters = status["counters"]
    evicted = {k: v for k, v in daemon_stats.items()
               if k.startswith("evicted") and isinstance(v, int)}
    print(f"\ntiny budget: hits {counters['hits']}, misses {counters['misses']}, "
          f"puts {counters['puts']} ({counters['puts_stored']} stored), stale-read guards "
          f"{counters['stale_read_guards']}, flushes {counters['flushes']}; tmemd {evicted}")
    assert counters["hits"] > 0 and counters["io_errors"] == 0 and counters["nbd_errors"] == 0
    assert sum(evicted.values()) > 0  # tmemd did evict the cache's pages


def test_tmemd_killed_and_restarted_mid_reads(tmp_path: Path) -> None:
    pages = list(guest_pages(2000))
    disk = make_disk(tmp_path, pages)
    with running_daemon() as daemon, cache_for(daemon, tmp_path, disk) as cache:
        nbd = cache.client()
        assert read_pipelined(nbd, 0, len(pages), 32) == pages
        before = cache.status()
        cookies = [nbd.send(CMD_READ, i * PAGE, 32 * PAGE) for i in range(0, 1024, 32)]
        daemon.crash()  # in the middle of those reads
        for _ in cookies:
            got, error, data = nbd.reply()
            assert error == 0
            assert data == b"".join(pages[(got - cookies[0]) * 32 : (got - cookies[0] + 1) * 32])
        assert read_pipelined(nbd, 0, len(pages), 32) == pages  # tmemd away: from the disk
        nbd.write(0, b"x" * PAGE)  # a write while tmemd is away
        pages[0] = b"x" * PAGE
        away = cache.status()
        assert not away["tmem_connected"] and away["counters"]["reads_without_tmem"] > 0
        daemon.start()
        back = cache.wait_pool(other_than=before["pool_incarnation"])
        assert read_pipelined(nbd, 0, len(pages), 32) == pages  # an empty pool: misses, then puts
        assert read_pipelined(nbd, 0, len(pages), 32) == pages
        after = cache.status()
        nbd.close()
    assert back["counters"]["tmem_reconnects"] >= 1
    assert after["counters"]["hits"] - back["counters"]["hits"] >= len(pages) // 2
    assert after["counters"]["io_errors"] == 0 and after["counters"]["nbd_errors"] == 0


def test_graceful_restart_gives_a_fresh_pool_and_drops_the_old(tmp_path: Path) -> None:
    pages = list(guest_pages(500))
    disk = make_disk(tmp_path, pages)
    state = tmp_path / "tmemd.state"
    with running_daemon("--state-file", str(state)) as daemon, \
            cache_for(daemon, tmp_path, disk) as cache:
        nbd = cache.client()
        assert read_pipelined(nbd, 0, len(pages), 32) == pages
        before = cache.status()
        daemon.restart("--state-file", str(state))
        after = cache.wait_pool(other_than=before["pool_incarnation"])
        assert after["hello"]["status"] == "resumed"
        with ControlClient(daemon.control) as control:
            pools = control.call("stats", client=VM)["clients"][0]["pools"]
        assert read_pipelined(nbd, 0, len(pages), 32) == pages
        nbd.close()
    assert [p["pool_id"] for p in pools] == [after["pool_id"]]  # the old one destroyed
