"""Reports, comparisons and the charts in them, from synthetic runs whose time series come
from the captured samples; Welch's t-test against known values."""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from tmemh.suite.compare import comparison, print_comparison, significance
from tmemh.suite.parsers import parse_guest, parse_host
from tmemh.suite.report import render_report, write_report
from tmemh.suite.results import CellResult, RunResult, load_results
from tmemh.suite.series import guest_series, host_series
from tmemh.suite.summary import group_cells, summary_rows
from tmemh.suite.svgchart import Bar, bar_chart, line_chart, nice_ticks, tick_label
from tmemh.suite.welch import welch_t_test

DATA = Path(__file__).parent / "data"


def series() -> dict[str, object]:
    guest = parse_guest((DATA / "suite-guest-samples.txt").read_text())
    host = parse_host((DATA / "suite-host-samples.jsonl").read_text())
    return {"guest": guest_series(guest, guest.get("vmstat")[0][0]),
            "host": host_series(host, host.get("blockstats")[0][0])}


def make_run(root: Path, run_id: str, times: dict[str, list[float]]) -> Path:
    """A run directory: for each configuration, one cell per time (PASS), plus a SKIP."""
    run = RunResult(id=run_id, suite="demo", started="2026-01-01T00:00:00+0000",
                    finished="2026-01-01T01:00:00+0000")
    for configuration, values in times.items():
        for repetition, time_s in enumerate(values, 1):
            cell_id = f"anon.{configuration}.hdd.256M.r{repetition}"
            run.cells.append(CellResult(
                id=cell_id, index=len(run.cells), workload="anon", configuration=configuration,
                throttle="hdd", shape="256M", repetition=repetition, collectors=True,
                status="PASS", metrics={"time_s": time_s, "disk_bytes": 300 << 20,
                                        "swap_out_pages": 50_000, "collector_share": 0.004,
                                        "phase_fill_s": time_s / 2}))
            (root / run_id / "cells" / cell_id).mkdir(parents=True)
            (root / run_id / "cells" / cell_id / "series.json").write_text(json.dumps(series()))
    run.cells.append(CellResult(id="anon.tmem.hdd.256M.r1", index=len(run.cells),
                                workload="anon", configuration="tmem", throttle="hdd",
                                shape="256M", repetition=1, collectors=True, status="SKIP",
                                reason="the page-cache path <does not exist> yet"))
    (root / run_id).mkdir(parents=True, exist_ok=True)
    run.save(root / run_id)
    (root / run_id / "resolved.json").write_text('{"suite": {"name": "demo"}}\n')
    return root / run_id


def test_the_report_has_the_summary_bars_and_each_cells_charts(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "demo-1", {"disk-swap": [80.0, 84.0], "zswap": [60.0, 61.0]})
    html = render_report(run_dir)
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html
    charts = html.count('<svg xmlns="http://www.w3.org/2000/svg" class="chart"')
    assert charts == 3 + 4 * 8  # three bar charts, eight panels per cell
    assert "82.0 ± 2.8" in html  # disk-swap's mean and spread
    assert "the page-cache path &lt;does not exist&gt; yet" in html  # escaped
    for svg in html.split('<svg xmlns')[1:]:
        ElementTree.fromstring('<svg xmlns' + svg.split("</svg>")[0] + "</svg>")
    rows = summary_rows(group_cells(load_results(run_dir)))
    assert [r["configuration"] for r in rows] == ["disk-swap", "zswap", "tmem"]
    assert rows[2]["status"] == "SKIP" and rows[2]["TIME s"] == "-"


def test_write_report_writes_the_page_and_prints_the_table(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = make_run(tmp_path, "demo-1", {"disk-swap": [80.0]})
    path = write_report(run_dir)
    assert path == run_dir / "report.html" and path.stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "disk-swap" in out and "80.0" in out and "SKIP" in out


def test_compare_marks_significant_changes_where_repetitions_allow(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = make_run(tmp_path, "a", {"disk-swap": [80.0, 81.0, 79.0], "zswap": [60.0]})
    other = make_run(tmp_path, "b", {"disk-swap": [40.0, 41.0, 39.5], "zswap": [55.0]})
    rows = dict(comparison([load_results(base), load_results(other)], "time_s"))
    swap = rows[("anon", "disk-swap", "hdd", "256M", True)]
    assert swap[0].mean == pytest.approx(80.0) and swap[1].percent == pytest.approx(-49.8, abs=0.05)
    assert swap[1].mark == "**"
    zswap = rows[("anon", "zswap", "hdd", "256M", True)]
    assert zswap[1].mark == "" and zswap[1].percent == pytest.approx(-8.33, 0.01)
    print_comparison([base, other])
    out = capsys.readouterr().out
    assert "== time_s (s)" in out and "== disk_bytes (MiB)" in out and "-49.8" in out


def test_significance_marks() -> None:
    assert significance([1.0, 1.1, 0.9], [1.0, 1.05, 0.95]) == "ns"
    assert significance([1.0, 1.1, 0.9], [5.0, 5.1, 4.9]) == "**"
    assert significance([1.0], [5.0, 5.1]) == ""


def test_welch_matches_a_worked_example() -> None:
    # Two samples of 15 with unequal variances (a common worked example of Welch's test)
    a = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7,
         21.4]
    b = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5,
         24.4]
    t, df, p = welch_t_test(a, b)
    assert t == pytest.approx(-2.46, abs=0.01) and df == pytest.approx(24.99, abs=0.01)
    assert p == pytest.approx(0.021, abs=0.001)
    with pytest.raises(ValueError):
        welch_t_test([1.0], [1.0, 2.0])


def test_welch_agrees_with_scipy_when_it_is_there() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(5)
    for _ in range(200):
        a = [rng.gauss(10, rng.uniform(0.1, 3)) for _ in range(rng.randrange(2, 7))]
        b = [rng.gauss(11, rng.uniform(0.1, 3)) for _ in range(rng.randrange(2, 7))]
        expected = stats.ttest_ind(a, b, equal_var=False)
        t, _, p = welch_t_test(a, b)
        assert t == pytest.approx(expected.statistic, rel=1e-9)
        assert p == pytest.approx(expected.pvalue, rel=1e-7, abs=1e-12)


def test_ticks_labels_and_charts_are_well_formed() -> None:
    assert nice_ticks(0, 97) == [0, 20, 40, 60, 80, 100]
    assert nice_ticks(-2.3, 9.7, 6) == [-4, -2, 0, 2, 4, 6, 8, 10]
    assert nice_ticks(5, 5)[0] <= 5 <= nice_ticks(5, 5)[-1]
    assert [tick_label(v) for v in (1500, 2e6, 0.25, 0)] == ["1.5k", "2M", "0.25", "0"]
    line = line_chart("swap <I/O>", list(range(1000)), {"in": [float(i) for i in range(1000)]},
                      "pages/s")
    root = ElementTree.fromstring(line)
    assert root.get("class") == "chart" and root.find("{*}title").text == "swap <I/O>"
    (polyline,) = root.iter("{http://www.w3.org/2000/svg}polyline")
    assert len(polyline.get("points").split()) <= 401
    bars = bar_chart("run time", [Bar("anon\nhdd", "disk-swap", 80.0, 2.0),
                                  Bar("anon\nhdd", "zswap", 60.0)], "s")
    assert len(list(ElementTree.fromstring(bars).iter("{http://www.w3.org/2000/svg}rect"))) >= 4
