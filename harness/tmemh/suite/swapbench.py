"""``tmemh bench swap``: disk swap against tmem swap, in one run, with the targets as ratios.

One guest shape (256 MiB, one vCPU by default) fills and verifies more anonymous memory than it
has (400 MiB of realistic page contents, about 2:1 with lzo) under four cells of one suite run:
disk swap and tmem swap, each on an unthrottled disk and on a disk throttled like a hard disk.
The cells are an ordinary suite run (results directory, index, ``tmemh report``); this module
only defines the suite and, when it ends, derives the figures the swap path is judged by:

- ``tmem_vs_disk``: tmem swap's time over disk swap's, both on the unthrottled disk (target at
  most 1.0);
- ``hdd_speedup``: disk swap's time over tmem swap's, both on the HDD-like disk (target at
  least 3.0);
- ``stray_disk_write_share``: the guest disk's bytes written during a tmem swap cell, less the
  pages the agent wrote to its fallback file (tmemd refused them), over the bytes swapped out
  (target at most 0.02: while tmemd accepts pages, swap does not touch the disk).

The JSON (schema ``tmemh-bench-swap/1``) goes to stdout and to ``bench-swap.json`` in the run
directory. A cell that does not PASS leaves its figures out and its target ``met: null``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from tmemd.units import parse_size

from .errors import SuiteError
from .results import PASS, CellResult, RunResult
from .runner import RunOptions, run_suite
from .suitefile import Suite, parse_suite

logger = logging.getLogger(__name__)

SCHEMA = "tmemh-bench-swap/1"
RESULT_FILE = "bench-swap.json"
AGENT_STATUS_FILE = "agent-status.json"
PAGE = 4096
MIB = 1 << 20
DEFAULT_SIZE = "400M"
DEFAULT_MEMORY = "256M"
DISK, TMEM = "disk-swap", "tmem-swap"
UNTHROTTLED, HDD = "none", "hdd"
WORKLOAD = "anon"


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


TARGETS = (
    Target("tmem_vs_disk", "tmem swap time / disk swap time, unthrottled disk", 1.0, True),
    Target("hdd_speedup", "disk swap time / tmem swap time, HDD-like disk", 3.0, False),
    Target("stray_disk_write_share", "guest disk writes beyond the fallback file / bytes "
           "swapped out, tmem swap (worst of its cells)", 0.02, True),
)


def bench_suite_text(size_bytes: int, memory_bytes: int, repetitions: int = 1) -> str:
    """The suite file the benchmark runs (saved with the run, so ``tmemh run`` can repeat it):
    one anon fill + verify of ``size_bytes`` on a guest of ``memory_bytes``, under disk swap
    and tmem swap, on an unthrottled and an HDD-like disk."""
    if memory_bytes < 64 * MIB:
        raise SuiteError("the guest needs at least 64 MiB")
    if size_bytes <= memory_bytes:
        raise SuiteError("the fill must be larger than the guest's memory, or nothing swaps")
    return f"""# tmemh bench swap: {size_bytes // MIB} MiB through a {memory_bytes // MIB} MiB guest
[suite]
name = "swap-bench"
description = "anon fill + verify beyond RAM: disk swap vs tmem swap"
workloads = ["{WORKLOAD}"]
configurations = ["{DISK}", "{TMEM}"]
throttle = ["{UNTHROTTLED}", "{HDD}"]
repetitions = {repetitions}
seed = 1

[vm]
memory = "{memory_bytes // MIB}M"
cpus = 1

[workload.{WORKLOAD}]
scale = {size_bytes / memory_bytes!r}
"""


def bench_suite(text: str) -> Suite:
    return parse_suite(tomllib.loads(text))


def summarise(result: RunResult, run_dir: Path) -> dict[str, Any]:
    """The benchmark's JSON document from a finished run."""
    cells = [_cell_figures(cell, run_dir) for cell in result.cells]
    times = {key: _mean([c["time_s"] for c in cells if c["key"] == key and c["passed"]])
             for key in {c["key"] for c in cells}}
    tmem_cells = [c for c in cells if c["configuration"] == TMEM and c["passed"]]
    shares = [c["stray_disk_write_share"] for c in tmem_cells
              if c.get("stray_disk_write_share") is not None]
    values = {
        "tmem_vs_disk": _ratio(times.get(f"{TMEM}/{UNTHROTTLED}"),
                               times.get(f"{DISK}/{UNTHROTTLED}")),
        "hdd_speedup": _ratio(times.get(f"{DISK}/{HDD}"), times.get(f"{TMEM}/{HDD}")),
        "stray_disk_write_share": max(shares) if shares else None,
    }
    return {"schema": SCHEMA, "run": result.id, "run_dir": str(run_dir),
            "status": result.status, "cells": cells,
            "targets": {t.name: t.judge(values[t.name]) for t in TARGETS}}


def _cell_figures(cell: CellResult, run_dir: Path) -> dict[str, Any]:
    metrics = cell.metrics
    figures: dict[str, Any] = {
        "id": cell.id, "key": f"{cell.configuration}/{cell.throttle}",
        "configuration": cell.configuration, "throttle": cell.throttle,
        "status": cell.status, "passed": cell.status == PASS,
    }
    if cell.status != PASS:
        figures["reason"] = cell.reason
        return figures
    for name in ("time_s", "phase_fill_s", "phase_verify_s", "disk_read_bytes",
                 "disk_write_bytes", "swap_out_pages", "swap_in_pages", "tmem_puts",
                 "tmem_gets", "tmem_stored_pages_peak", "qemu_cpu_s"):
        if name in metrics:
            figures[name] = metrics[name]
    swapped_out = metrics.get("swap_out_pages", 0) * PAGE
    if swapped_out:
        figures["swap_out_mib_s"] = round(swapped_out / MIB / metrics["phase_fill_s"], 2) \
            if metrics.get("phase_fill_s") else None
    swapped_in = metrics.get("swap_in_pages", 0) * PAGE
    if swapped_in and metrics.get("phase_verify_s"):
        figures["swap_in_mib_s"] = round(swapped_in / MIB / metrics["phase_verify_s"], 2)
    if cell.configuration == TMEM:
        agent = _agent_counters(run_dir / "cells" / cell.id / AGENT_STATUS_FILE)
        figures["agent"] = agent
        fallback = agent.get("fallback_write_bytes")
        if swapped_out and fallback is not None and "disk_write_bytes" in metrics:
            stray = max(0, metrics["disk_write_bytes"] - fallback)
            figures["stray_disk_write_share"] = round(stray / swapped_out, 4)
    return figures


def _agent_counters(path: Path) -> dict[str, Any]:
    """The swap counters of the agent's status at the cell's end ({} if there is none)."""
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    counters = status.get("counters", {})
    keep = ("puts", "puts_stored", "gets", "get_hits", "fallback_writes", "fallback_reads",
            "fallback_write_bytes", "io_errors", "lost_pages")
    found = {k: counters[k] for k in keep if k in counters}
    found["refusals"] = status.get("refusals", {})
    found["cpu_s"] = status.get("cpu_s")
    return found


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser(
        "bench", help="benchmarks that print JSON",
        description="Benchmarks of the whole chain on real VMs; each prints one JSON "
                    "document with its figures and targets.")
    kinds = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    swap = kinds.add_parser(
        "swap", help="disk swap vs tmem swap: an anon fill + verify beyond the guest's RAM",
        description="Four cells in one run (disk swap and tmem swap, unthrottled and on an "
                    "HDD-like disk); prints the JSON and saves it as bench-swap.json in the "
                    "run directory. About 10 minutes under TCG.")
    swap.add_argument("--size", default=DEFAULT_SIZE, metavar="SIZE",
                      help="anonymous memory filled and verified (default %(default)s)")
    swap.add_argument("--memory", default=DEFAULT_MEMORY, metavar="SIZE",
                      help="guest memory (default %(default)s)")
    swap.add_argument("--repetitions", type=int, default=1, metavar="N",
                      help="runs of each cell (times are averaged; default 1)")
    swap.add_argument("--results", type=Path, default=Path("results"), metavar="DIR",
                      help="results directory (run directories and runs.sqlite)")
    swap.add_argument("--backend", choices=("qemu", "libvirt", "auto"), default="qemu",
                      help="how VMs are run")
    swap.add_argument("--image", type=Path, default=None, metavar="DIR",
                      help="image directory (default: build or take the current image)")
    swap.set_defaults(func=_bench_swap)


def _bench_swap(args: argparse.Namespace) -> int:
    try:
        size, memory = parse_size(args.size), parse_size(args.memory)
    except ValueError as exc:
        raise SuiteError(f"--size/--memory: {exc}") from None
    if not 1 <= args.repetitions <= 100:
        raise SuiteError("--repetitions must be 1 to 100")
    source = bench_suite_text(size, memory, args.repetitions)
    options = RunOptions(results_dir=args.results, backend=args.backend, image_dir=args.image)
    console = Console(stderr=True, highlight=False)
    result, run_dir = run_suite(bench_suite(source), source, options, console)
    document = summarise(result, run_dir)
    text = json.dumps(document, indent=1)
    (run_dir / RESULT_FILE).write_text(text + "\n")
    print(text)
    return 0 if result.status == PASS else 1
