"""What the ``tmemh bench`` benchmarks share: targets judged on figures of one run, the
common options, and running a generated suite to its JSON document.

Each benchmark (:mod:`tmemh.suite.swapbench`, :mod:`tmemh.suite.cachebench`) generates a
suite file, runs it as an ordinary suite run (results directory, index, ``tmemh report``) and
derives its figures from the cells when it ends, as ratios of that one run.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from tmemd.units import parse_size

from .errors import SuiteError
from .results import PASS, RunResult
from .runner import RunOptions, run_suite
from .suitefile import Suite

AGENT_STATUS_FILE = "agent-status.json"

Summarise = Callable[[RunResult, Path], dict[str, Any]]


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    bound: float
    at_most: bool  # True: the figure must not exceed the bound; False: not fall below it

    def judge(self, value: float | None) -> dict[str, Any]:
        met = None if value is None else (value <= self.bound if self.at_most
                                          else value >= self.bound)
        return {"value": None if value is None else round(value, 3),
                "target": f"{'<=' if self.at_most else '>='} {self.bound}", "met": met,
                "description": self.description}


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def agent_status(run_dir: Path, cell_id: str) -> dict[str, Any]:
    """The agent's status a cell saved at its end ({} if there is none)."""
    try:
        status: dict[str, Any] = json.loads(
            (run_dir / "cells" / cell_id / AGENT_STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return status


def add_common_arguments(parser: argparse.ArgumentParser, size: str, memory: str,
                         size_help: str) -> None:
    """--size, --memory, --repetitions and where and how the run goes."""
    parser.add_argument("--size", default=size, metavar="SIZE",
                        help=f"{size_help} (default %(default)s)")
    parser.add_argument("--memory", default=memory, metavar="SIZE",
                        help="guest memory (default %(default)s)")
    parser.add_argument("--repetitions", type=int, default=1, metavar="N",
                        help="runs of each cell (times are averaged; default 1)")
    parser.add_argument("--results", type=Path, default=Path("results"), metavar="DIR",
                        help="results directory (run directories and runs.sqlite)")
    parser.add_argument("--backend", choices=("qemu", "libvirt", "auto"), default="qemu",
                        help="how VMs are run")
    parser.add_argument("--image", type=Path, default=None, metavar="DIR",
                        help="image directory (default: build or take the current image)")


def sizes(args: argparse.Namespace) -> tuple[int, int]:
    """``--size`` and ``--memory`` in bytes (``--repetitions`` checked too)."""
    try:
        size, memory = parse_size(args.size), parse_size(args.memory)
    except ValueError as exc:
        raise SuiteError(f"--size/--memory: {exc}") from None
    if not 1 <= args.repetitions <= 100:
        raise SuiteError("--repetitions must be 1 to 100")
    return size, memory


def run_bench(args: argparse.Namespace, suite: Suite, source: str, summarise: Summarise,
              result_file: str) -> int:
    """Run ``suite``, print its document and save it as ``result_file`` in the run
    directory; 0 when every cell passed."""
    options = RunOptions(results_dir=args.results, backend=args.backend, image_dir=args.image)
    console = Console(stderr=True, highlight=False)
    result, run_dir = run_suite(suite, source, options, console)
    text = json.dumps(summarise(result, run_dir), indent=1)
    (run_dir / result_file).write_text(text + "\n")
    print(text)
    return 0 if result.status == PASS else 1
