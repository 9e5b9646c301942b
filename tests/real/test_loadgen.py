"""``tmemd loadgen`` against a live daemon: real processes, real sockets, every page verified."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.daemon import DaemonUnderTest, running_daemon

from tmemd.tools.loadgen import LoadgenError, LoadSpec

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonUnderTest]:
    with running_daemon("--memory-limit", "256M") as proc:
        yield proc


def tmemd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tmemd.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_loadgen_cli_reports_rates_latency_and_targets(daemon: DaemonUnderTest,
                                                       tmp_path: Path) -> None:
    bench = tmp_path / "bench.json"
    done = tmemd("bench", "--pages", "2000", "--repeat", "1", "--json", str(bench))
    assert done.returncode == 0, done.stderr
    report_path = tmp_path / "load.json"
    done = tmemd("loadgen", "--socket", daemon.socket, "--clients", "1", "3", "--pages", "2000",
                 "--pipeline", "1", "--batch", "16", "--baseline", str(bench),
                 "--json", str(report_path))
    assert done.returncode == 0, done.stderr
    report = json.loads(report_path.read_text())
    assert report["schema"] == "tmemd-loadgen/1"
    assert [run["clients"] for run in report["runs"]] == [1, 3]
    single, triple = report["runs"]
    for run in (single, triple):
        assert len(run["per_client"]) == run["clients"]
        for client in run["per_client"]:
            assert client["put"]["pages"] == 2000 and client["flush"]["pages"] == 2000
            # the corpus has random pages, which a persistent pool refuses
            assert 1500 < client["accepted_pages"] < 2000 == client["put"]["pages"]
            assert client["get"]["pages"] == client["accepted_pages"]
            latency = client["latency"]["get"]  # pipeline 1: every round trip timed
            assert latency["samples"] == -(-client["accepted_pages"] // 16)
            assert 0 < latency["p50_ns"] <= latency["p99_ns"]
        for phase in ("put", "get", "flush"):
            assert run["aggregate"][phase]["pps"] > 0
    assert triple["aggregate"]["put"]["pages"] == 6000
    assert {"1_client.put_vs_inprocess", "3_clients.get_vs_1_client",
            "3_clients.put_fairness"} <= set(report["targets"])
    assert daemon.alive()


def test_pipelined_clients_verify_every_page(daemon: DaemonUnderTest, tmp_path: Path) -> None:
    report_path = tmp_path / "load.json"
    done = tmemd("loadgen", "--socket", daemon.socket, "--clients", "2", "--pages", "3000",
                 "--seed", "4", "--batch", "64", "--pipeline", "8", "--json", str(report_path))
    assert done.returncode == 0, done.stderr
    [run] = json.loads(report_path.read_text())["runs"]
    assert [c["get"]["pages"] for c in run["per_client"]] == [
        c["accepted_pages"] for c in run["per_client"]]
    assert all("latency" not in c for c in run["per_client"])


def test_a_daemon_that_is_not_there_is_a_clear_failure(tmp_path: Path) -> None:
    missing = str(tmp_path / "nothing.sock")
    done = tmemd("loadgen", "--socket", missing, "--pages", "10")
    assert done.returncode == 1 and "client 0: FileNotFoundError" in done.stderr
    done = tmemd("loadgen", "--socket", missing, "--batch", "999")
    assert done.returncode == 2 and "--batch must be 1..256" in done.stderr


def test_verification_catches_a_page_that_comes_back_different(daemon: DaemonUnderTest) -> None:
    from tmemd.tools.loadgen import _Client

    pages = [bytes([i]) * 4096 for i in range(1, 40)]
    client = _Client(0, LoadSpec(daemon.socket, batch=8, pipeline=2), pages)
    try:
        client.connect()
        client.run_phase("put")
        assert len(client.accepted) == len(pages)
        client.pages = pages[:5] + [b"x" * 4096] + pages[6:]  # what the guest expects changed
        with pytest.raises(LoadgenError, match="page 5 came back different"):
            client.run_phase("get")
    finally:
        client.transport.close()


def _exit_at_once(self: object) -> None:
    os._exit(3)  # a client process dying without reporting (as if killed)


def test_a_client_that_dies_without_reporting_is_a_clear_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tmemd.tools import loadgen

    monkeypatch.setattr(loadgen, "BARRIER_TIMEOUT", 5.0)  # a hang fails the test quickly
    monkeypatch.setattr(loadgen._Client, "connect", _exit_at_once)  # children are forked
    pages = [bytes([i]) * 4096 for i in range(4)]
    started = time.monotonic()
    with pytest.raises(LoadgenError, match=r"client \d exited without reporting \(exit code 3\)"):
        loadgen.run_load(LoadSpec("/nonexistent.sock", batch=2, pipeline=1), 2, pages)
    assert time.monotonic() - started < 5


def test_a_client_that_fails_to_start_reports_why(monkeypatch: pytest.MonkeyPatch) -> None:
    from tmemd.tools import loadgen

    def broken(self: object, *args: object) -> None:
        raise RuntimeError("no client here")

    monkeypatch.setattr(loadgen, "BARRIER_TIMEOUT", 5.0)
    monkeypatch.setattr(loadgen._Client, "__init__", broken)
    with pytest.raises(LoadgenError, match="client 0: RuntimeError: no client here"):
        loadgen.run_load(LoadSpec("/nonexistent.sock", batch=2, pipeline=1), 1, [bytes(4096)])
