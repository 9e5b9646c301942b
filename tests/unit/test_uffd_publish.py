"""userfaultfd counters published by the process that owns the regions, gathered by
``tmem-agent status``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tmem_agent import status
from tmem_agent.uffd.publish import StatsPublisher, published
from tmem_agent.uffd.stats import UffdStats


def test_counters_are_published_while_running_and_final_at_the_end(tmp_path: Path) -> None:
    stats = UffdStats()
    with StatsPublisher(stats, str(tmp_path), command="test", interval=0.01) as publisher:
        stats.add("faults", 5)
        publisher.publish(running=True)
        middle = published(str(tmp_path))
        stats.add("faults", 2)
    [process] = middle["processes"]
    assert process["running"] is True and process["counters"]["faults"] == 5
    final = published(str(tmp_path))
    assert final["processes"][0]["running"] is False
    assert final["totals"]["faults"] == 7
    assert not list((tmp_path / "uffd").glob("*.tmp"))


def test_a_killed_publisher_shows_as_not_running_and_junk_is_skipped(tmp_path: Path) -> None:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    gone = int(child.stdout)
    (tmp_path / "uffd").mkdir()
    (tmp_path / "uffd" / f"{gone}.json").write_text(json.dumps(
        {"pid": gone, "running": True, "counters": {"faults": 3}}))
    (tmp_path / "uffd" / "9.json").write_text("{half")
    [process] = published(str(tmp_path))["processes"]
    assert process["running"] is False and process["pid"] == gone


def test_an_unwritable_run_directory_only_disables_publishing(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with StatsPublisher(UffdStats(), str(blocker)) as publisher:
        assert publisher.enabled is False


def test_status_without_an_agent_shows_the_uffd_processes_or_fails(tmp_path: Path) -> None:
    socket_path = str(tmp_path / "status.sock")
    with pytest.raises(OSError):
        status.gather(socket_path)
    with StatsPublisher(UffdStats(), str(tmp_path)):
        found = status.gather(socket_path)
    assert "no agent answers" in found["agent"]
    assert found["uffd"]["processes"][0]["pid"] == os.getpid()
