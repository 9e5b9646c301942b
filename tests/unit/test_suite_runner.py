"""``tmemh run`` without VMs (cells replaced by fakes): every cell is recorded, a cell that
errors does not stop the others, Ctrl-C keeps what finished; the CLI's exit codes and one-line
errors for ``run``, ``runs``, ``report`` and ``compare``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tmemh.cli import main
from tmemh.suite import index, runner
from tmemh.suite.cell import CellOptions, new_result
from tmemh.suite.results import load_results
from tmemh.suite.suitefile import Cell
from tmemh.suite.tmemconfigs import Tmem

SUITE = """
[suite]
name = "fake"
workloads = ["anon", "tar"]
configurations = ["disk-swap", "zswap", "tmem"]
throttle = ["ssd"]
"""


@pytest.fixture
def suite_file(tmp_path: Path) -> Path:
    path = tmp_path / "fake.toml"
    path.write_text(SUITE)
    return path


@pytest.fixture(autouse=True)
def tmem_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite's tmem cells SKIP here, as on a host whose agent lacks the block cache."""
    monkeypatch.setattr(Tmem, "unavailable", lambda self: "no block cache in this test")


@pytest.fixture
def fake_cells(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Cells that finish at once: tar under zswap errors, tmem skips (its real reason)."""
    ran: list[str] = []

    def run_cell(cell: Cell, run_dir: Path, options: CellOptions) -> Any:
        ran.append(cell.id)
        result = new_result(cell)
        reason = cell.configuration.unavailable()
        if reason:
            result.status, result.reason = "SKIP", reason
        elif cell.id.startswith("tar.zswap"):
            result.status, result.reason = "ERROR", "run: the guest went away"
        else:
            result.status = "PASS"
            result.metrics = {"time_s": 10.0 + len(ran), "disk_bytes": 1 << 20}
        result.duration_s = 1.0
        return result

    monkeypatch.setattr(runner, "run_cell", run_cell)
    monkeypatch.setattr(runner, "_image", lambda options, console: _FakeImage())
    return ran


class _FakeImage:
    directory = Path("/nonexistent/image")
    key = "0123"
    kernel_version = "6.1.0-0-amd64"


def test_every_cell_runs_and_is_recorded_even_after_an_error(
        tmp_path: Path, suite_file: Path, fake_cells: list[str],
        capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    code = main(["run", str(suite_file), "--results", str(results)])
    assert code == 1  # a cell errored
    assert len(fake_cells) == 6
    (run_dir,) = [p for p in results.iterdir() if p.is_dir()]
    run = load_results(run_dir)
    assert [c.status for c in run.cells] == ["PASS", "PASS", "SKIP", "PASS", "ERROR", "SKIP"]
    assert run.status == "ERROR" and not run.interrupted and run.finished
    assert (run_dir / "suite.toml").read_text() == SUITE
    resolved = json.loads((run_dir / "resolved.json").read_text())
    assert resolved["suite"]["name"] == "fake" and len(resolved["cells"]) == 6
    assert resolved["image"]["key"] == "0123"
    (indexed,) = index.runs(results)
    assert (indexed.id, indexed.errors, indexed.skipped) == (run_dir.name, 1, 2)
    err = capsys.readouterr().err
    assert "[5/6] tar.zswap.ssd.256M.r1: ERROR (run: the guest went away)" in err
    assert "no block cache in this test" in err


def test_only_runs_the_matching_cells(tmp_path: Path, suite_file: Path,
                                      fake_cells: list[str]) -> None:
    code = main(["run", str(suite_file), "--results", str(tmp_path), "--only", "anon.*"])
    assert code == 0 and fake_cells == ["anon.disk-swap.ssd.256M.r1", "anon.zswap.ssd.256M.r1",
                                        "anon.tmem.ssd.256M.r1"]
    assert main(["run", str(suite_file), "--results", str(tmp_path), "--only", "x*"]) == 2


def test_ctrl_c_keeps_what_finished_and_lists_what_did_not_run(
        tmp_path: Path, suite_file: Path, fake_cells: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake = runner.run_cell

    def interrupted(cell: Cell, run_dir: Path, options: CellOptions) -> Any:
        if cell.index == 2:
            raise KeyboardInterrupt
        return fake(cell, run_dir, options)

    monkeypatch.setattr(runner, "run_cell", interrupted)
    results = tmp_path / "results"
    assert main(["run", str(suite_file), "--results", str(results)]) == 130
    (run_dir,) = [p for p in results.iterdir() if p.is_dir()]
    run = load_results(run_dir)
    assert [c.id for c in run.cells] == ["anon.disk-swap.ssd.256M.r1", "anon.zswap.ssd.256M.r1"]
    assert run.interrupted and len(run.not_run) == 4
    assert run.not_run[0] == "anon.tmem.ssd.256M.r1"
    assert index.runs(results)[0].interrupted


def test_estimate_uses_cells_like_the_remaining_ones(suite_file: Path, tmp_path: Path) -> None:
    from tmemh.suite.suitefile import load_suite

    cells = load_suite(suite_file).cells()
    estimate = runner.Estimate(tmp_path, cells)
    assert estimate.expected(cells[0]) == runner.FIRST_GUESS_S
    assert estimate.expected(cells[2]) == 0.0  # tmem skips
    estimate.finished(cells[0], 100.0, skipped=False)
    assert estimate.expected(cells[1]) == 100.0  # the average cell so far
    estimate.finished(cells[1], 50.0, skipped=False)
    assert estimate.expected(cells[4]) == 75.0  # no tar cell yet: the mean of all
    assert estimate.seconds_left() == pytest.approx(75.0 * 2)  # two tar cells, two SKIPs
    estimate.done[estimate.key(cells[4])] = [30.0]  # a cell like it finished
    assert estimate.expected(cells[4]) == 30.0


def test_cli_usage_errors_are_one_line(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "missing.toml")]) == 2
    assert main(["report", "nope", "--results", str(tmp_path)]) == 2
    assert main(["compare", "a", "b", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("tmemh: error:") for line in err)
    assert "no run 'nope'" in err[1]
    assert main(["runs", "--results", str(tmp_path)]) == 0


def test_time_left_column_counts_down_the_current_cell(suite_file: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from tmemh.suite.suitefile import load_suite

    cells = load_suite(suite_file).cells()
    estimate = runner.Estimate(tmp_path, cells)
    column = runner.TimeLeftColumn(estimate)
    assert column.render(None).plain == "~0:16:00 left"  # type: ignore[arg-type]
    estimate.current_started = 1000.0
    monkeypatch.setattr(runner.time, "monotonic", lambda: 1100.0)
    assert column.render(None).plain == "~0:14:20 left"  # type: ignore[arg-type]
