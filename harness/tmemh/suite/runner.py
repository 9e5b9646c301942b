"""``tmemh run SUITE``: the matrix, cell after cell, into a fresh run directory.

The run directory (``<results>/<suite>-<time>/``) gets the suite file as given
(``suite.toml``), the suite as resolved with the options, host and image (``resolved.json``),
the harness's log (``run.log``), one directory per cell, and ``results.json``, rewritten and
indexed (:mod:`tmemh.suite.index`) after every cell. A cell that errors does not stop the
others; Ctrl-C (or SIGTERM) ends the run after tearing the current cell down, keeps what
finished and lists what did not run.

Progress: a rich progress bar with the current cell and an estimate of the time left (cells
like the remaining ones that finished in this run, else in earlier runs of the index, else
the average cell so far); one line per finished cell.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import platform
import shutil
import signal
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, Task, TextColumn
from rich.text import Text

from tmemh.image.build import build_image
from tmemh.image.manifest import ImageManifest

from . import index
from .cell import CellOptions, run_cell
from .errors import SuiteError
from .results import RunResult
from .suitefile import Cell, Suite

logger = logging.getLogger(__name__)

FIRST_GUESS_S = 240.0  # a cell's duration before anything is known (TCG, small guest)
STATUS_STYLE = {"PASS": "green", "FAIL": "bold red", "ERROR": "red", "SKIP": "yellow"}


@dataclass
class RunOptions:
    results_dir: Path
    backend: str = "qemu"
    state_dir: Path | None = None
    image_dir: Path | None = None
    only: tuple[str, ...] = ()  # glob patterns over cell ids


class Estimate:
    """Expected cell durations, refined as cells finish."""

    def __init__(self, results_dir: Path, cells: list[Cell]) -> None:
        self.done: dict[tuple[str, ...], list[float]] = {}
        self.all_done: list[float] = []
        self.history = {self.key(c): index.cell_history(results_dir, *self.key(c))
                        for c in cells}
        self.current_started: float | None = None
        self.remaining: list[Cell] = list(cells)

    @staticmethod
    def key(cell: Cell) -> tuple[str, str, str, str]:
        return (cell.workload.name, cell.configuration.name, cell.throttle.name,
                cell.shape.name)

    def expected(self, cell: Cell) -> float:
        if cell.configuration.unavailable():
            return 0.0
        for found in (self.done.get(self.key(cell)), self.history.get(self.key(cell)),
                      self.all_done):
            if found:
                return statistics.fmean(found)
        return FIRST_GUESS_S

    def finished(self, cell: Cell, seconds: float, skipped: bool) -> None:
        self.remaining.remove(cell)
        if not skipped:
            self.done.setdefault(self.key(cell), []).append(seconds)
            self.all_done.append(seconds)

    def seconds_left(self) -> float:
        left = sum(self.expected(c) for c in self.remaining)
        if self.remaining and self.current_started is not None:
            running = time.monotonic() - self.current_started
            left -= min(running, self.expected(self.remaining[0]))
        return max(0.0, left)


class TimeLeftColumn(ProgressColumn):
    """The estimate of time left, recomputed at every refresh."""

    def __init__(self, estimate: Estimate) -> None:
        super().__init__()
        self.estimate = estimate

    def render(self, task: Task) -> Text:
        seconds = int(self.estimate.seconds_left())
        return Text(f"~{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d} left",
                    style="cyan")


def run_suite(suite: Suite, source_text: str, options: RunOptions,
              console: Console | None = None) -> tuple[RunResult, Path]:
    """Run the suite's matrix; the results and the run directory."""
    console = console or Console(stderr=True)
    cells = [c for c in suite.cells()
             if not options.only or any(fnmatch.fnmatch(c.id, p) for p in options.only)]
    if not cells:
        raise SuiteError(f"no cell of suite {suite.name} matches {list(options.only)}")
    run_dir = _new_run_dir(options.results_dir, suite.name)
    (run_dir / "suite.toml").write_text(source_text)
    with _run_log(run_dir / "run.log"):
        image = _image(options, console)
        result = RunResult(id=run_dir.name, suite=suite.name,
                           started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), host=_host(),
                           options=_options(options))
        resolved = {"suite": suite.describe(), "options": result.options, "host": result.host,
                    "image": {"directory": str(image.directory), "key": image.key,
                              "kernel_version": image.kernel_version},
                    "cells": [c.id for c in cells]}
        (run_dir / "resolved.json").write_text(json.dumps(resolved, indent=1) + "\n")
        cell_options = CellOptions(image=image, backend=options.backend,
                                   state_dir=options.state_dir,
                                   sample_interval=suite.sample_interval,
                                   vm_prefix=f"s{os.getpid() % 100000}")
        try:
            with _sigterm_as_interrupt():
                _run_cells(cells, run_dir, options, cell_options, result, console)
        finally:
            result.finished = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            result.save(run_dir)
            index.record(options.results_dir, run_dir, result)
    return result, run_dir


def _run_cells(cells: list[Cell], run_dir: Path, options: RunOptions,
               cell_options: CellOptions, result: RunResult, console: Console) -> None:
    estimate = Estimate(options.results_dir, cells)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total} cells"), TimeLeftColumn(estimate))
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("starting", total=len(cells))
        for number, cell in enumerate(cells, 1):
            progress.update(task, description=f"[bold]{cell.id}")
            estimate.current_started = time.monotonic()
            try:
                found = run_cell(cell, run_dir, cell_options)
            except KeyboardInterrupt:
                result.interrupted = True
                result.not_run = [c.id for c in cells[number - 1:]]
                console.print(f"[yellow]interrupted: {len(result.not_run)} cells not run; "
                              "results so far kept")
                raise
            estimate.finished(cell, found.duration_s, found.status == "SKIP")
            result.cells.append(found)
            result.save(run_dir)
            index.record(options.results_dir, run_dir, result)
            time_s = found.metrics.get("time_s")
            style = STATUS_STYLE.get(found.status, "")
            console.print(f"[{number}/{len(cells)}] {cell.id}: [{style}]{found.status}[/]"
                          + (f" {time_s:.1f} s" if isinstance(time_s, (int, float)) else "")
                          + (f" ({found.reason})" if found.reason else ""), highlight=False)
            progress.advance(task)


def _new_run_dir(results_dir: Path, suite: str) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(100):
        path = results_dir / (f"{suite}-{stamp}" + (f"-{attempt}" if attempt else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise SuiteError(f"cannot make a fresh run directory in {results_dir}")


def _image(options: RunOptions, console: Console) -> ImageManifest:
    if options.image_dir is not None:
        return ImageManifest.load(options.image_dir)
    return build_image(progress=lambda line: console.print(f"image: {line}", highlight=False))


def _host() -> dict[str, Any]:
    return {"hostname": socket.gethostname(), "cpus": os.cpu_count(),
            "kernel": platform.release(), "python": platform.python_version(),
            "accel_env": os.environ.get("TMEMH_ACCEL"),
            "qemu": shutil.which("qemu-system-x86_64")}


def _options(options: RunOptions) -> dict[str, Any]:
    return {"results_dir": str(options.results_dir), "backend": options.backend,
            "state_dir": str(options.state_dir) if options.state_dir else None,
            "image_dir": str(options.image_dir) if options.image_dir else None,
            "only": list(options.only)}


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops a run as Ctrl-C does: the cell torn down, results kept."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _run_log(path: Path) -> Iterator[None]:
    """Log everything to the run's log; on the terminal only warnings, so the progress bar
    stays readable (``-v`` keeps the terminal as it was)."""
    root = logging.getLogger()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    handler.setLevel(logging.DEBUG if root.level <= logging.DEBUG else logging.INFO)
    quiet = root.level > logging.DEBUG
    saved = [(h, h.level) for h in root.handlers]
    if quiet:
        for h, _ in saved:
            h.setLevel(max(h.level, logging.WARNING))
    saved_root = root.level
    root.setLevel(min(root.level, logging.INFO))
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(saved_root)
        for h, level in saved:
            h.setLevel(level)
