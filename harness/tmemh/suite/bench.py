"""What the ``tmemh bench`` benchmarks share: targets judged on figures of one run, the
common options, and running a generated suite to its JSON document.

Each benchmark (:mod:`tmemh.suite.swapbench`, :mod:`tmemh.suite.cachebench`) generates a
suite file, runs it as an ordinary suite run (results directory, index, ``tmemh report``) and
derives its figures from the cells when it ends, as ratios of that one run.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from tmemd.units import parse_size

from .errors import SuiteError
from .results import PASS, RunResult
from .runner import RunOptions, run_suite
from .suitefile import Suite, parse_suite

AGENT_STATUS_FILE = "agent-status.json"
MIB = 1 << 20
MIN_GUEST_MEMORY = 64 * MIB

Summarise = Callable[[RunResult, Path], dict[str, Any]]
SuiteText = Callable[[int, int, int], str]  # (size bytes, memory bytes, repetitions) -> text


@dataclass(frozen=True)
class Benchmark:
    """One ``tmemh bench`` kind: the suite it runs and the document it makes of the run."""

    suite_text: SuiteText
    summarise: Summarise
    result_file: str  # saved in the run directory


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
                        help="runs of each cell (times are averaged; default %(default)s)")
    parser.add_argument("--results", type=Path, default=Path("results"), metavar="DIR",
                        help="results directory (run directories and runs.sqlite)")
    parser.add_argument("--backend", choices=("qemu", "libvirt", "auto"), default="qemu",
                        help="how VMs are run")
    parser.add_argument("--image", type=Path, default=None, metavar="DIR",
                        help="image directory (default: build or take the current image)")


def add_bench_parser(kinds: argparse._SubParsersAction, name: str, benchmark: Benchmark, *,
                     help: str, description: str, size: str, memory: str,
                     size_help: str) -> None:
    """``tmemh bench NAME``: the common options, run as ``benchmark``."""
    parser = kinds.add_parser(name, help=help, description=description)
    add_common_arguments(parser, size, memory, size_help)
    parser.set_defaults(func=lambda args: run_benchmark(args, benchmark))


def check_guest_shape(size_bytes: int, memory_bytes: int, beyond_memory: str) -> None:
    """SuiteError unless the guest has enough memory and ``size_bytes`` exceeds it
    (``beyond_memory`` says why it must)."""
    if memory_bytes < MIN_GUEST_MEMORY:
        raise SuiteError(f"the guest needs at least {MIN_GUEST_MEMORY // MIB} MiB")
    if size_bytes <= memory_bytes:
        raise SuiteError(beyond_memory)


def suite_text(*, title: str, name: str, description: str, workload: str,
               configurations: tuple[str, ...], throttle: tuple[str, ...], size_bytes: int,
               memory_bytes: int, repetitions: int, workload_lines: str = "",
               tables: str = "") -> str:
    """A benchmark's suite file (saved with the run, so ``tmemh run`` can repeat it): one
    ``workload`` scaled to ``size_bytes`` in a one-vCPU guest of ``memory_bytes``
    (``workload_lines``: more of its parameters; ``tables``: more tables, e.g. a
    configuration's)."""
    listed = ", ".join(f'"{c}"' for c in configurations)
    throttles = ", ".join(f'"{t}"' for t in throttle)
    return f"""# {title}
[suite]
name = "{name}"
description = "{description}"
workloads = ["{workload}"]
configurations = [{listed}]
throttle = [{throttles}]
repetitions = {repetitions}
seed = 1

[vm]
memory = "{memory_bytes // MIB}M"
cpus = 1

[workload.{workload}]
scale = {size_bytes / memory_bytes!r}
{workload_lines}{tables}"""


def bench_suite(text: str) -> Suite:
    return parse_suite(tomllib.loads(text))


def sizes(args: argparse.Namespace) -> tuple[int, int]:
    """``--size`` and ``--memory`` in bytes (``--repetitions`` checked too)."""
    try:
        size, memory = parse_size(args.size), parse_size(args.memory)
    except ValueError as exc:
        raise SuiteError(f"--size/--memory: {exc}") from None
    if not 1 <= args.repetitions <= 100:
        raise SuiteError("--repetitions must be 1 to 100")
    return size, memory


def run_benchmark(args: argparse.Namespace, benchmark: Benchmark) -> int:
    """``tmemh bench NAME``: its suite for the options, run; 0 when every cell passed."""
    size, memory = sizes(args)
    source = benchmark.suite_text(size, memory, args.repetitions)
    return run_bench(args, bench_suite(source), source, benchmark.summarise,
                     benchmark.result_file)


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
