"""``tmemh bench cache``: the block cache against a plain data disk, in one run, with the
targets as ratios.

One guest shape (256 MiB, one vCPU by default) re-reads a file set larger than its memory
but smaller than its memory plus the tmem ephemeral pool (the ``pagecache`` workload: 384 MiB
of realistic contents written at setup, then read ``passes`` times, checked), on a data disk
throttled like a hard disk, under two configurations of one suite run: ``tmem-swap`` (its
files on ext4 on the plain data disk) and ``tmem`` (the same, through the agent's block
cache). Both have the same tmemd and swap path, so the cache is the only difference. Figures:

- ``reread_speedup``: the plain disk's re-read time over the cache's (target at least 3.0);
- ``disk_read_saving``: 1 - the guest disks' bytes read with the cache over those read on the
  plain disk during the re-reads (target at least 0.8).

The JSON (schema ``tmemh-bench-cache/1``) goes to stdout and to ``bench-cache.json`` in the
run directory. A cell that does not PASS leaves its figures out and its target ``met: null``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import bench
from .bench import MIB, Target, agent_status, mean, ratio
from .errors import SuiteError
from .results import PASS, CellResult, RunResult

SCHEMA = "tmemh-bench-cache/1"
RESULT_FILE = "bench-cache.json"
DEFAULT_SIZE = "384M"
DEFAULT_MEMORY = "256M"
PLAIN, CACHE = "tmem-swap", "tmem"
THROTTLE = "hdd"
WORKLOAD = "pagecache"
PASSES = 2
POOL_SCALE = 2.0  # tmemd's memory limit over guest memory (tmem-swap's memory_limit_scale)

TARGETS = (
    Target("reread_speedup", "plain data disk re-read time / block cache re-read time, "
           "HDD-like disk", 3.0, False),
    Target("disk_read_saving", "1 - disk bytes read with the block cache / with the plain "
           "data disk, during the re-reads", 0.8, False),
)


def bench_suite_text(size_bytes: int, memory_bytes: int, repetitions: int = 1) -> str:
    """The suite file the benchmark runs: ``size_bytes`` of files re-read ``PASSES`` times
    by a guest of ``memory_bytes``, on a plain data disk and through the block cache."""
    bench.check_guest_shape(size_bytes, memory_bytes, "the file set must be larger than the "
                            "guest's memory, or the page cache holds it")
    if size_bytes > memory_bytes * (1 + POOL_SCALE):
        raise SuiteError(f"the file set must fit in the guest's memory plus the tmem pool "
                         f"(at most {1 + POOL_SCALE:g} x memory)")
    return bench.suite_text(
        title=f"tmemh bench cache: {size_bytes // MIB} MiB re-read, {memory_bytes // MIB} MiB "
              "guest",
        name="cache-bench",
        description="pagecache re-reads beyond RAM: plain data disk vs the tmem block cache",
        workload=WORKLOAD, configurations=(PLAIN, CACHE), throttle=(THROTTLE,),
        size_bytes=size_bytes, memory_bytes=memory_bytes, repetitions=repetitions,
        workload_lines=f"passes = {PASSES}\n")


def summarise(result: RunResult, run_dir: Path) -> dict[str, Any]:
    """The benchmark's JSON document from a finished run."""
    cells = [_cell_figures(cell, run_dir) for cell in result.cells]

    def average(configuration: str, figure: str) -> float | None:
        return mean([c[figure] for c in cells if c["configuration"] == configuration
                     and c["passed"] and figure in c])

    read = ratio(average(CACHE, "disk_read_bytes"), average(PLAIN, "disk_read_bytes"))
    values = {
        "reread_speedup": ratio(average(PLAIN, "time_s"), average(CACHE, "time_s")),
        "disk_read_saving": None if read is None else 1 - read,
    }
    return {"schema": SCHEMA, "run": result.id, "run_dir": str(run_dir),
            "status": result.status, "cells": cells,
            "targets": {t.name: t.judge(values[t.name]) for t in TARGETS}}


def _cell_figures(cell: CellResult, run_dir: Path) -> dict[str, Any]:
    figures: dict[str, Any] = {"id": cell.id, "configuration": cell.configuration,
                               "throttle": cell.throttle, "status": cell.status,
                               "passed": cell.status == PASS}
    if cell.status != PASS:
        figures["reason"] = cell.reason
        return figures
    metrics = cell.metrics
    for name in ("time_s", "bytes", "disk_read_bytes", "disk_write_bytes",
                 "data_disk_read_bytes", "data_disk_write_bytes", "swap_out_pages",
                 "major_faults", *(f"phase_pass{n}_s" for n in range(1, PASSES + 1))):
        if name in metrics:
            figures[name] = metrics[name]
    if metrics.get("bytes") and metrics.get("time_s"):
        figures["reread_mib_s"] = round(metrics["bytes"] / MIB / metrics["time_s"], 2)
    if cell.configuration == CACHE:
        cache = agent_status(run_dir, cell.id).get("cache", {}).get("cache", {})
        counters = cache.get("counters", {})
        figures["cache"] = {k: counters[k] for k in (
            "hits", "misses", "puts", "puts_stored", "puts_refused", "disk_read_bytes",
            "disk_bytes_saved", "pool_resets", "stale_read_guards") if k in counters}
        figures["cache"]["hit_rate"] = cache.get("hit_rate")
    return figures


BENCHMARK = bench.Benchmark(bench_suite_text, summarise, RESULT_FILE)


def add_kind(kinds: argparse._SubParsersAction) -> None:
    """``tmemh bench cache`` (beside ``swap``)."""
    bench.add_bench_parser(
        kinds, "cache", BENCHMARK,
        help="plain data disk vs the tmem block cache: re-reads beyond the guest's RAM",
        description="Two cells in one run (tmem-swap on a plain data disk and tmem, whose "
                    "data disk goes through the agent's block cache), both on an HDD-like "
                    "disk; prints the JSON and saves it as bench-cache.json in the run "
                    "directory.",
        size=DEFAULT_SIZE, memory=DEFAULT_MEMORY,
        size_help=f"files written, then re-read {PASSES} times")
