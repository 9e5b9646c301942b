"""userfaultfd regions against a real ``tmemd serve`` on this host, through the agent's
transport on the operator's socket: memhog's phases in a persistent and an ephemeral pool
(tmemd reclaiming ephemeral pages under a small memory limit: refilled, or lost loudly), a tiny
persistent cap (refused pages stay resident), the ``memhog`` command itself, and a daemon crash
(lost pages raise, no page is ever wrong)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from support.daemon import DaemonUnderTest, running_daemon

from tmem_agent.channel.transport import Transport
from tmem_agent.tools import memhog
from tmem_agent.uffd import kernel
from tmem_agent.uffd.region import PageLost, Region
from tmem_agent.uffd.store import TmemStore

UNAVAILABLE = kernel.probe()
pytestmark = [pytest.mark.real,
              pytest.mark.skipif(UNAVAILABLE is not None,
                                 reason=f"userfaultfd is not available: {UNAVAILABLE}"),
              pytest.mark.timeout(300)]

PAGE = 4096
VM = "uffd-host"  # not admitted: the operator's socket lets a trusted tool name it


@contextmanager
def tmem_link(daemon: DaemonUnderTest) -> Iterator[Transport]:
    with Transport.unix(daemon.socket).open() as transport:
        transport.hello(VM, os.urandom(16), os.urandom(16))
        yield transport


def client_view(transport: Transport) -> dict[str, Any]:
    client: dict[str, Any] = transport.stats()["client"]
    return client


def test_a_persistent_region_round_trips_through_tmemd() -> None:
    with running_daemon() as daemon, tmem_link(daemon) as transport:
        store = TmemStore(transport, persistent=True)
        result = memhog.hog(store, 32 << 20, 8 << 20, verify=True,
                            after=lambda: client_view(transport))
        assert memhog.passed(result), result["verify"]
        pages, budget = result["pages"], result["resident_budget_pages"]
        assert result["zero_fills"] == pages and result["lost_pages"] == 0
        assert result["resident_max"] <= budget + 16
        held = result["daemon"]
        assert held["puts"] == result["puts"] and held["gets"] == result["gets"]
        assert held["pages"] >= pages - budget  # the region's pool held the evicted pages
        assert 1.6 <= held["pages"] * PAGE / held["zbytes"] <= 2.6  # realistic contents
        assert client_view(transport)["pages"] == 0  # closing the store destroyed its pool
        print(f"\nhost, persistent: {result['faults_per_s']} faults/s, "
              f"{result['pages_per_s']} pages/s, phases "
              f"{ {k: v['faults_per_s'] for k, v in result['phases'].items()} }")


def test_an_ephemeral_region_refills_what_tmemd_reclaimed() -> None:
    with running_daemon("--memory-limit", "8M") as daemon, tmem_link(daemon) as transport:
        result = memhog.hog(TmemStore(transport, persistent=False), 32 << 20, 8 << 20,
                            verify=True, after=lambda: client_view(transport))
        assert memhog.passed(result), result["verify"]
        assert result["daemon"]["evicted_pages"] > 0  # tmemd dropped pages for room ...
        assert result["refills"] > 0 and result["get_misses"] >= result["refills"]  # ... made


def test_an_ephemeral_region_without_refill_fails_loudly_when_tmemd_reclaims() -> None:
    with running_daemon("--memory-limit", "8M") as daemon, tmem_link(daemon) as transport:
        result = memhog.hog(TmemStore(transport, persistent=False), 32 << 20, 8 << 20,
                            verify=True, refill=False)
        assert not memhog.passed(result)
        assert result["lost_pages"] > 0 and result["verify"]["lost"] > 0
        assert result["verify"]["mismatches"] == 0  # lost, never wrong


def test_pages_tmemd_refuses_stay_resident() -> None:
    with running_daemon("--persistent-cap", "2M") as daemon, tmem_link(daemon) as transport:
        result = memhog.hog(TmemStore(transport, persistent=True), 16 << 20, 4 << 20,
                            verify=True)
        assert memhog.passed(result), result["verify"]
        assert result["puts_refused"] > 0
        assert result["resident_max"] > result["resident_budget_pages"]  # over, as it says


def test_the_memhog_command_against_tmemd() -> None:
    with running_daemon() as daemon:
        done = subprocess.run(
            [sys.executable, "-m", "tmem_agent.cli", "memhog", "--size", "16M", "--resident",
             "4M", "--verify", "--tmem-socket", daemon.socket, "--vm", VM, "--pool",
             "ephemeral"], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["verify"]["passed"] and result["pages"] == 4096
    assert result["pool"] == "ephemeral" and result["refill"]
    assert result["daemon"]["pages"] > 0 and result["daemon"]["compression_ratio"] > 1.5


def page(n: int) -> bytes:
    return hashlib.sha256(b"%d" % n).digest() * (PAGE // 32)


def test_after_a_tmemd_crash_pages_are_lost_loudly_never_wrong() -> None:
    pages = 2048
    with running_daemon() as daemon, tmem_link(daemon) as transport:
        store = TmemStore(transport, persistent=True)
        with Region(pages * PAGE, pages // 4 * PAGE, store) as region:
            for n in range(pages):
                region.write(n * PAGE, page(n))
            daemon.crash()
            good = lost = 0
            for n in range(pages):
                try:
                    data = region.read(n * PAGE, PAGE)
                except PageLost:
                    lost += 1
                    continue
                assert data == page(n), n
                good += 1
            assert lost >= pages // 2 and good >= pages // 8  # the resident ones survive
            assert region.stats.counts["tmem_errors"] > 0
