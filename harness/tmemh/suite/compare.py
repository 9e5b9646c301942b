"""``tmemh compare RUN_A RUN_B ...``: the same cells across runs, against the first.

For each figure (default: run time, guest disk bytes, pages swapped out) a table: the
baseline run's mean (± standard deviation over its repetitions), then for every other run its
mean, the change in per cent and a significance mark from Welch's t-test (unequal variances,
:mod:`tmemh.suite.welch`): ``**`` p < 0.01, ``*`` p < 0.05, ``ns`` not significant; blank
when either side has fewer than two repetitions. Cells are matched by workload,
configuration, throttle profile, VM shape and collectors, so runs of different suites can be
compared where they overlap.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from tmemd.clikit import new_table, print_table

from .results import RunResult, load_results
from .summary import Group, group_cells
from .welch import welch_t_test

DEFAULT_METRICS = ("time_s", "disk_bytes", "swap_and_read_bytes", "swap_out_pages")
MIB = 1 << 20
SCALES = {"disk_bytes": (MIB, "MiB"), "disk_read_bytes": (MIB, "MiB"),
          "disk_write_bytes": (MIB, "MiB"), "swap_and_read_bytes": (MIB, "MiB"),
          "swap_out_pages": (256, "MiB"),
          "swap_in_pages": (256, "MiB"), "qemu_rss_peak_bytes": (MIB, "MiB")}


@dataclass(frozen=True)
class Change:
    mean: float | None
    sd: float | None
    n: int
    percent: float | None
    mark: str


def significance(baseline: list[float], other: list[float]) -> str:
    """Welch's t-test mark: "**", "*", "ns", or "" when a side has fewer than two values."""
    if len(baseline) < 2 or len(other) < 2:
        return ""
    _, _, p = welch_t_test(baseline, other)
    if math.isnan(p):
        return ""
    return "**" if p < 0.01 else "*" if p < 0.05 else "ns"


def _change(base: Group | None, group: Group | None, metric: str) -> Change:
    values = group.values(metric) if group else []
    mean = statistics.fmean(values) if values else None
    sd = statistics.stdev(values) if len(values) > 1 else None
    base_values = base.values(metric) if base else []
    base_mean = statistics.fmean(base_values) if base_values else None
    percent = None
    if mean is not None and base_mean:
        percent = (mean - base_mean) / base_mean * 100
    return Change(mean, sd, len(values), percent,
                  significance(base_values, values) if base is not group else "")


def comparison(runs: list[RunResult], metric: str
               ) -> list[tuple[tuple[str, str, str, str, bool], list[Change]]]:
    """Rows of (cell key, [the baseline's figure, then each other run's change])."""
    by_run = [{g.key: g for g in group_cells(run)} for run in runs]
    keys = list(dict.fromkeys(k for groups in by_run for k in groups))
    rows = []
    for key in keys:
        base = by_run[0].get(key)
        rows.append((key, [_change(base, groups.get(key), metric) for groups in by_run]))
    return rows


def _number(value: float | None, sd: float | None, scale: float) -> str:
    if value is None:
        return "-"
    return f"{value / scale:.1f}" + (f" ± {sd / scale:.1f}" if sd is not None else "")


def comparison_table(runs: list[RunResult], metric: str) -> Table:
    scale, unit = SCALES.get(metric, (1, "s" if metric.endswith("_s") else ""))
    headers = [f"{runs[0].id} (baseline)"]
    for run in runs[1:]:
        headers += [run.id, "CHANGE %", "SIG"]
    table = new_table("WORKLOAD", "THROTTLE", "SHAPE", "CONFIGURATION", *headers,
                      right=tuple(headers), title=f"{metric}" + (f" ({unit})" if unit else ""))
    for key, changes in comparison(runs, metric):
        workload, configuration, throttle, shape, collectors = key
        cells = [_number(changes[0].mean, changes[0].sd, scale)]
        for change in changes[1:]:
            cells += [_number(change.mean, change.sd, scale),
                      "-" if change.percent is None else f"{change.percent:+.1f}", change.mark]
        table.add_row(workload, throttle, shape,
                      configuration + ("" if collectors else " (no collectors)"), *cells)
    return table


def print_comparison(run_dirs: list[Path], metrics: tuple[str, ...] | None = None) -> None:
    runs = [load_results(path) for path in run_dirs]
    for number, metric in enumerate(metrics or DEFAULT_METRICS):
        _, unit = SCALES.get(metric, (1, "s" if metric.endswith("_s") else ""))
        print(("\n" if number else "") + f"== {metric}" + (f" ({unit})" if unit else ""))
        print_table(comparison_table(runs, metric))
