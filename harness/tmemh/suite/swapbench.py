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

Beside them, ``uffd_beside_shim``: in each tmem swap cell's VM, after the fill + verify, a
userfaultfd region of ``UFFD_MIB`` with a quarter of it resident is filled and verified
through tmem (``tmem-agent memhog`` on a port of its own): its faults and pages per second
next to the swap shim's page-in rate (pages swapped in per second of the verify), and the
ratio of the two page rates, from the unthrottled cell.

The JSON (schema ``tmemh-bench-swap/1``) goes to stdout and to ``bench-swap.json`` in the run
directory. A cell that does not PASS leaves its figures out and its target ``met: null``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from . import bench, cachebench
from .bench import MIB, Target, agent_status, mean, ratio
from .results import PASS, CellResult, RunResult

logger = logging.getLogger(__name__)

SCHEMA = "tmemh-bench-swap/1"
RESULT_FILE = "bench-swap.json"
PAGE = 4096
DEFAULT_SIZE = "400M"
DEFAULT_MEMORY = "256M"
DISK, TMEM = "disk-swap", "tmem-swap"
UNTHROTTLED, HDD = "none", "hdd"
WORKLOAD = "anon"
UFFD_MIB = 64  # the userfaultfd region beside the shim, a quarter of it resident


TARGETS = (
    Target("tmem_vs_disk", "tmem swap time / disk swap time, unthrottled disk", 1.0, True),
    Target("hdd_speedup", "disk swap time / tmem swap time, HDD-like disk", 3.0, False),
    Target("stray_disk_write_share", "guest disk writes beyond the fallback file / bytes "
           "swapped out, tmem swap (worst of its cells)", 0.02, True),
)


def bench_suite_text(size_bytes: int, memory_bytes: int, repetitions: int = 1) -> str:
    """The suite file the benchmark runs: one anon fill + verify of ``size_bytes`` on a guest
    of ``memory_bytes``, under disk swap and tmem swap, on an unthrottled and an HDD-like
    disk."""
    bench.check_guest_shape(size_bytes, memory_bytes,
                            "the fill must be larger than the guest's memory, or nothing swaps")
    return bench.suite_text(
        title=f"tmemh bench swap: {size_bytes // MIB} MiB through a {memory_bytes // MIB} MiB "
              "guest",
        name="swap-bench", description="anon fill + verify beyond RAM: disk swap vs tmem swap",
        workload=WORKLOAD, configurations=(DISK, TMEM), throttle=(UNTHROTTLED, HDD),
        size_bytes=size_bytes, memory_bytes=memory_bytes, repetitions=repetitions,
        workload_lines=f"uffd = {UFFD_MIB}\nuffd_resident = {UFFD_MIB // 4}\n",
        tables=f"\n[configuration.{TMEM}]\nuffd_port = true\n")


def summarise(result: RunResult, run_dir: Path) -> dict[str, Any]:
    """The benchmark's JSON document from a finished run."""
    cells = [_cell_figures(cell, run_dir) for cell in result.cells]
    times = {key: mean([c["time_s"] for c in cells if c["key"] == key and c["passed"]])
             for key in {c["key"] for c in cells}}
    tmem_cells = [c for c in cells if c["configuration"] == TMEM and c["passed"]]
    shares = [c["stray_disk_write_share"] for c in tmem_cells
              if c.get("stray_disk_write_share") is not None]
    values = {
        "tmem_vs_disk": ratio(times.get(f"{TMEM}/{UNTHROTTLED}"),
                               times.get(f"{DISK}/{UNTHROTTLED}")),
        "hdd_speedup": ratio(times.get(f"{DISK}/{HDD}"), times.get(f"{TMEM}/{HDD}")),
        "stray_disk_write_share": max(shares) if shares else None,
    }
    return {"schema": SCHEMA, "run": result.id, "run_dir": str(run_dir),
            "status": result.status, "cells": cells,
            "targets": {t.name: t.judge(values[t.name]) for t in TARGETS},
            "uffd_beside_shim": _uffd_beside_shim(cells)}


def _uffd_beside_shim(cells: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Faults/s through the userfaultfd region next to the shim's page-in rate, both in the
    unthrottled tmem swap cell (the first that has both)."""
    for found in cells:
        if found["key"] == f"{TMEM}/{UNTHROTTLED}" and found.get("uffd_faults_per_s") \
                and found.get("swap_in_pages_per_s"):
            # pages against pages: a fault fills the faulting page and its readahead
            share = ratio(found.get("uffd_pages_per_s"), found["swap_in_pages_per_s"])
            return {"region_mib": UFFD_MIB, "resident_mib": UFFD_MIB // 4,
                    "uffd_faults_per_s": found["uffd_faults_per_s"],
                    "uffd_pages_per_s": found.get("uffd_pages_per_s"),
                    "shim_swap_in_pages_per_s": found["swap_in_pages_per_s"],
                    "uffd_pages_per_shim_page": None if share is None else round(share, 3)}
    return None


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
                 "tmem_gets", "tmem_stored_pages_peak", "qemu_cpu_s", "uffd_faults",
                 "uffd_faults_per_s", "uffd_pages_per_s"):
        if name in metrics:
            figures[name] = metrics[name]
    swapped_out = metrics.get("swap_out_pages", 0) * PAGE
    if swapped_out:
        figures["swap_out_mib_s"] = round(swapped_out / MIB / metrics["phase_fill_s"], 2) \
            if metrics.get("phase_fill_s") else None
    swapped_in = metrics.get("swap_in_pages", 0) * PAGE
    if swapped_in and metrics.get("phase_verify_s"):
        figures["swap_in_mib_s"] = round(swapped_in / MIB / metrics["phase_verify_s"], 2)
        figures["swap_in_pages_per_s"] = round(metrics["swap_in_pages"]
                                               / metrics["phase_verify_s"], 1)
    if cell.configuration == TMEM:
        agent = _agent_counters(agent_status(run_dir, cell.id))
        figures["agent"] = agent
        fallback = agent.get("fallback_write_bytes")
        if swapped_out and fallback is not None and "disk_write_bytes" in metrics:
            stray = max(0, metrics["disk_write_bytes"] - fallback)
            figures["stray_disk_write_share"] = round(stray / swapped_out, 4)
    return figures


def _agent_counters(status: dict[str, Any]) -> dict[str, Any]:
    """The swap counters of the agent's status at the cell's end."""
    counters = status.get("counters", {})
    keep = ("puts", "puts_stored", "gets", "get_hits", "fallback_writes", "fallback_reads",
            "fallback_write_bytes", "io_errors", "lost_pages")
    found = {k: counters[k] for k in keep if k in counters}
    found["refusals"] = status.get("refusals", {})
    found["cpu_s"] = status.get("cpu_s")
    return found


BENCHMARK = bench.Benchmark(bench_suite_text, summarise, RESULT_FILE)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="benchmarks that print JSON",
        description="Benchmarks of the whole chain on real VMs; each prints one JSON "
                    "document with its figures and targets.")
    kinds = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    bench.add_bench_parser(
        kinds, "swap", BENCHMARK,
        help="disk swap vs tmem swap: an anon fill + verify beyond the guest's RAM",
        description="Four cells in one run (disk swap and tmem swap, unthrottled and on an "
                    "HDD-like disk); prints the JSON and saves it as bench-swap.json in the "
                    "run directory, with a userfaultfd region's faults/s beside the tmem swap "
                    "cells' page-in rate. About 11 minutes under TCG.",
        size=DEFAULT_SIZE, memory=DEFAULT_MEMORY, size_help="anonymous memory filled and verified")
    cachebench.add_kind(kinds)
