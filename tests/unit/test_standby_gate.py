"""The supervisor's gate for the next standby: the serving agent ready since the gate opened
for it, and enough memory available."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tmem_agent import supervisor
from tmem_agent.supervisor import StandbyGate, mem_available_mib


def test_mem_available_is_read_from_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  262144 kB\nMemFree:  1024 kB\nMemAvailable:  51200 kB\n")
    assert mem_available_mib(str(meminfo)) == 50
    meminfo.write_text("MemTotal:  262144 kB\n")
    assert mem_available_mib(str(meminfo)) is None
    assert mem_available_mib(str(tmp_path / "missing")) is None


def test_the_gate_waits_for_a_ready_file_written_after_it_and_for_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    ready = tmp_path / "ready"
    ready.write_text("{}")  # the dead agent's
    os.utime(ready, (time.time() - 10, time.time() - 10))
    available = [20.0]
    monkeypatch.setattr(supervisor, "mem_available_mib", lambda: available[0])
    gate = StandbyGate(str(ready), time.time(), min_available_mib=48)
    caplog.set_level("INFO")
    assert not gate.open() and not gate.open()  # an old ready file does not count
    ready.write_text("{}")  # the agent that took over is ready
    assert not gate.open()  # but memory is short
    available[0] = 64.0
    assert gate.open()
    waits = [r.getMessage() for r in caplog.records if "next standby" in r.getMessage()]
    assert waits == ["next standby: waiting for the serving agent to be ready",
                     "next standby: waiting for 48 MiB available (now 20 MiB)"]  # each once
