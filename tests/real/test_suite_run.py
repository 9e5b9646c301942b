"""A tiny suite end to end on real VMs (anon under disk-swap and zswap, one repetition, twice):
results.json, the SQLite index, the HTML report (also opened in a real headless browser) and
``tmemh compare`` on the two runs."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest
from support.suiterun import run_dirs, run_suite

from tmemh.cli import main
from tmemh.image.manifest import ImageManifest

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(os.geteuid() != 0, reason="guest image and VMs need root")]

SUITE = """
[suite]
name = "tiny"
workloads = ["anon"]
configurations = ["disk-swap", "zswap"]
throttle = ["ssd"]

[vm]
memory = "192M"

[workload.anon]
scale = 1.2
"""
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run")


@dataclass
class Runs:
    results: Path
    dirs: list[Path]
    codes: list[int]


@pytest.fixture(scope="module")
def runs(guest_image: ImageManifest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    root = tmp_path_factory.mktemp("suite")
    codes = run_suite(SUITE, root, guest_image, times=2)
    yield Runs(root / "results", run_dirs(root), codes)


def test_results_hold_verified_cells_with_swap_traffic_and_samples(runs: Runs) -> None:
    assert runs.codes == [0, 0] and len(runs.dirs) == 2
    for run_dir in runs.dirs:
        data = json.loads((run_dir / "results.json").read_text())
        assert data["schema"] == "tmemh.results/1" and data["run"]["status"] == "PASS"
        cells = {c["configuration"]: c for c in data["cells"]}
        assert set(cells) == {"disk-swap", "zswap"}
        for name, cell in cells.items():
            metrics = cell["metrics"]
            print(name, json.dumps({k: metrics.get(k) for k in (
                "time_s", "disk_bytes", "swap_out_pages", "swap_in_pages", "collector_cpu_s",
                "collector_share", "zswap_stored_pages_peak")}))
            assert cell["status"] == "PASS" and cell["workload_report"]["verified"] is True
            assert metrics["time_s"] > 0 and metrics["swap_out_pages"] > 10_000
            assert metrics["disk_write_bytes"] > 0 and metrics["qemu_cpu_s"] > 0
            # The target (<= 5 %) is measured as a benchmark; on a shared 2-core host a short
            # cell's share has come out at 0.16: this only catches a runaway collector.
            assert 0 < metrics["collector_share"] < 0.3
            for name_ in ("guest-samples.txt", "host-samples.jsonl", "series.json",
                          "console.log", "guest.log", "dmesg.txt", "run.out"):
                assert (run_dir / cell["files"][name_]).stat().st_size > 0, name_
        assert cells["zswap"]["metrics"]["zswap_stored_pages_peak"] > 1000
        assert cells["zswap"]["prepared"]["zswap"]["zpool"] == "zbud"
        for name in ("suite.toml", "resolved.json", "run.log"):
            assert (run_dir / name).stat().st_size > 0, name


def test_runs_are_indexed_in_sqlite(runs: Runs, capsys: pytest.CaptureFixture[str]) -> None:
    with sqlite3.connect(runs.results / "runs.sqlite") as db:
        rows = list(db.execute("SELECT id, status, cells, pass FROM runs ORDER BY id"))
        assert rows == [(d.name, "PASS", 2, 2) for d in runs.dirs]
        cells = list(db.execute("SELECT configuration, status, time_s FROM cells"))
        assert len(cells) == 4 and all(s == "PASS" and t > 0 for _, s, t in cells)
    assert main(["runs", "--results", str(runs.results)]) == 0
    out = capsys.readouterr().out
    assert all(d.name in out for d in runs.dirs)


def test_report_and_compare(runs: Runs, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = (d.name for d in runs.dirs)
    assert main(["report", first, "--results", str(runs.results)]) == 0
    html = (runs.dirs[0] / "report.html").read_text()
    assert html.count('class="chart"') >= 3 + 2 * 5 and "<script" not in html
    out = capsys.readouterr().out
    assert "disk-swap" in out and "zswap" in out
    assert main(["compare", first, second, "--results", str(runs.results)]) == 0
    out = capsys.readouterr().out
    assert f"{first} (baseline)" in out and second in out and "CHANGE %" in out
    assert "== time_s (s)" in out and "== disk_bytes (MiB)" in out


class _Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[str, int] = {}
        self.charts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "svg" and ("class", "chart") in attrs:
            self.charts += 1


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_the_report_renders_in_a_headless_browser(runs: Runs, tmp_path: Path) -> None:
    page = runs.dirs[1] / "report.html"
    if not page.exists():
        assert main(["report", str(runs.dirs[1])]) == 0
    base = ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120, check=False)
    assert dom.returncode == 0, dom.stderr[-2000:]
    parsed = _Dom()
    parsed.feed(dom.stdout)
    assert parsed.charts >= 3 + 2 * 5  # bars, and each cell's panels, as the browser built them
    assert parsed.tags.get("polyline", 0) >= 2 * 5 and parsed.tags.get("table", 0) >= 1
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
    shot = tmp_path / "report.png"
    done = subprocess.run([*base, "--window-size=1200,2400", f"--screenshot={shot}",
                           page.as_uri()], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1200, 2400) and len(png) > 50_000
