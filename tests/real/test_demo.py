"""The main job end to end, small: bench, image, daemon, the VM admitted to a socket of its
own, pagecheck over virtio-serial."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tmemh.cli import main

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(os.geteuid() != 0, reason="guest image and VMs need root")]


def test_demo_round_trips_guest_pages_and_records_the_run(tmp_path: Path, vm_state: Path) -> None:
    results = tmp_path / "results"
    code = main(["demo", "--results", str(results), "--bench-pages", "2000", "--bench-repeat",
                 "1", "--pages", "1024", "--vm-name", "demo-test", "--state-dir", str(vm_state)])
    (run_dir,) = results.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert code == 0 and summary["passed"], summary
    for name in ("config.json", "bench.json", "pagecheck.json", "daemon-stats.json",
                 "tmemd.log", "console.log"):
        assert (run_dir / name).stat().st_size > 0, name
    check = json.loads((run_dir / "pagecheck.json").read_text())
    assert check["pages"] == 1024 and check["stored"] > 500
    assert check["lost"] == check["wrong"] == check["left_after_flush"] == 0
    stats = json.loads((run_dir / "daemon-stats.json").read_text())
    assert stats["global"]["put_total"] >= 1024
    assert [c["name"] for c in stats["clients"]] == ["demo-test"]
    log = (run_dir / "tmemd.log").read_text()
    assert "listening for vm demo-test on" in log and "@demo-test" in log  # its own socket
