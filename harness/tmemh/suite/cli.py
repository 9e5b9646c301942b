"""``tmemh run SUITE``, ``tmemh runs``, ``tmemh report RUN``, ``tmemh compare RUN...``.

Only argument parsing and output here; the work is in :mod:`tmemh.suite.runner`,
:mod:`~tmemh.suite.index`, :mod:`~tmemh.suite.report` and :mod:`~tmemh.suite.compare`. A RUN is
a run directory or the id of an indexed run (its directory's name) under ``--results``. A bad
suite file or an unknown run exits 2; a run with a FAIL or ERROR cell exits 1; Ctrl-C stops a
run cleanly (results kept) and exits 130.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from rich.console import Console

from tmemd.clikit import EXIT_FAILURE, new_table, print_table

from . import index
from .errors import RunNotFound
from .results import ERROR, FAIL
from .suitefile import load_suite

DEFAULT_RESULTS = Path("results")
logger = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser(
        "run", help="run a suite: workloads x memory configurations on fresh VMs",
        description="Run every cell of a suite file (TOML) on a fresh VM each, into a new "
                    "run directory under --results; Ctrl-C stops cleanly and keeps what "
                    "finished.")
    run.add_argument("suite", type=Path, help="the suite file (see suites/)")
    _results_option(run)
    run.add_argument("--backend", choices=("qemu", "libvirt", "auto"), default="qemu",
                     help="how VMs are run")
    run.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                     help="VM state directory (default: the harness default)")
    run.add_argument("--image", type=Path, default=None, metavar="DIR",
                     help="image directory (default: build or take the current image)")
    run.add_argument("--only", action="append", default=[], metavar="GLOB",
                     help="run only cells whose id matches (workload.configuration.throttle."
                          "shape.rN); repeatable")
    run.add_argument("--report", action="store_true",
                     help="write the HTML report when the run ends")
    run.set_defaults(func=_run)

    runs = subparsers.add_parser("runs", help="list indexed runs (newest first)",
                                 description="Runs recorded in <results>/runs.sqlite.")
    _results_option(runs)
    runs.add_argument("--suite", default=None, metavar="NAME", help="only this suite's runs")
    runs.add_argument("--limit", type=int, default=20, metavar="N", help="at most N runs")
    runs.add_argument("--reindex", action="store_true",
                      help="index every run directory under --results first")
    runs.set_defaults(func=_runs)

    report = subparsers.add_parser(
        "report", help="write a run's HTML report and print its summary",
        description="A self-contained HTML page (time series per cell, bars per "
                    "configuration) and the same summary table on the terminal.")
    report.add_argument("run", help="run directory or indexed run id")
    _results_option(report)
    report.add_argument("--output", type=Path, default=None, metavar="FILE",
                        help="where the page goes (default: RUN/report.html)")
    report.set_defaults(func=_report)

    compare = subparsers.add_parser(
        "compare", help="compare runs: baseline, change in per cent, significance",
        description="Each figure of the first run (the baseline) against the same cells of "
                    "the others; * marks p < 0.05 and ** p < 0.01 in Welch's t-test where "
                    "both sides have two or more repetitions.")
    compare.add_argument("runs", nargs="+", help="run directories or indexed run ids")
    _results_option(compare)
    compare.add_argument("--metric", action="append", default=[], metavar="NAME",
                         help="figures to compare (default: time_s, disk_bytes, "
                              "swap_out_pages); repeatable")
    compare.set_defaults(func=_compare)


def _results_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, metavar="DIR",
                        help="results directory (run directories and runs.sqlite)")


def resolve_run(reference: str, results_dir: Path) -> Path:
    """A run directory from a path or an indexed run id."""
    path = Path(reference)
    if (path / "results.json").is_file():
        return path
    found = index.find_run(results_dir, reference)
    if found is not None and (found / "results.json").is_file():
        return found
    if (results_dir / reference / "results.json").is_file():
        return results_dir / reference
    raise RunNotFound(f"no run {reference!r}: not a run directory, nor a run indexed in "
                      f"{results_dir / index.INDEX_FILE}")


def _run(args: argparse.Namespace) -> int:
    from .runner import RunOptions, run_suite

    suite = load_suite(args.suite)
    options = RunOptions(results_dir=args.results, backend=args.backend,
                         state_dir=args.state_dir, image_dir=args.image, only=tuple(args.only))
    console = Console(stderr=True, highlight=False)
    result, run_dir = run_suite(suite, args.suite.read_text(), options, console)
    if args.report:
        from .report import write_report

        write_report(run_dir, None)
    counts = result.counts
    print(f"{result.id}: {result.status} ({', '.join(f'{n} {s}' for s, n in counts.items())}); "
          f"results in {run_dir}")
    return EXIT_FAILURE if counts[FAIL] or counts[ERROR] else 0


def _runs(args: argparse.Namespace) -> int:
    if args.reindex:
        print(f"indexed {index.reindex(args.results)} runs")
    table = new_table("RUN", "SUITE", "STARTED", "STATUS", "CELLS", "PASS", "FAIL", "ERROR",
                      "SKIP", right=("CELLS", "PASS", "FAIL", "ERROR", "SKIP"))
    for run in index.runs(args.results, args.suite, args.limit):
        table.add_row(run.id, run.suite, run.started,
                      run.status + (" (interrupted)" if run.interrupted else ""),
                      str(run.cells), str(run.passed), str(run.failed), str(run.errors),
                      str(run.skipped))
    print_table(table)
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report import write_report

    run_dir = resolve_run(args.run, args.results)
    path = write_report(run_dir, args.output)
    print(f"report: {path}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .compare import print_comparison

    run_dirs = [resolve_run(r, args.results) for r in args.runs]
    print_comparison(run_dirs, tuple(args.metric) or None)
    return 0
