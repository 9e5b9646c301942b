"""A run's summary: its cells grouped over repetitions, with means and spreads, as rows for
the terminal (rich) and the HTML report alike.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from tmemd.clikit import new_table

from .results import FAIL, PASS, STATUSES, CellResult, RunResult

MIB = 1 << 20
PAGE = 4096


@dataclass
class Group:
    """The repetitions of one cell (same workload, configuration, throttle, shape)."""

    workload: str
    configuration: str
    throttle: str
    shape: str
    collectors: bool
    cells: list[CellResult] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str, str, bool]:
        return (self.workload, self.configuration, self.throttle, self.shape, self.collectors)

    @property
    def statuses(self) -> Counter[str]:
        return Counter(c.status for c in self.cells)

    def status_text(self) -> str:
        counts = self.statuses
        if len(counts) == 1:
            return next(iter(counts))
        return " ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s])

    def values(self, metric: str) -> list[float]:
        """The metric over the repetitions that ran to the end (PASS or FAIL)."""
        return [float(c.metrics[metric]) for c in self.cells
                if c.status in (PASS, FAIL) and isinstance(c.metrics.get(metric), (int, float))]

    def mean(self, metric: str) -> float | None:
        found = self.values(metric)
        return statistics.fmean(found) if found else None

    def sd(self, metric: str) -> float | None:
        found = self.values(metric)
        return statistics.stdev(found) if len(found) > 1 else None

    @property
    def label(self) -> str:
        return self.configuration + ("" if self.collectors else " (no collectors)")


def group_cells(run: RunResult) -> list[Group]:
    """The run's cells grouped over repetitions, in the order they first ran."""
    groups: dict[tuple[str, str, str, str, bool], Group] = {}
    for cell in run.cells:
        group = groups.get(cell.group)
        if group is None:
            group = groups[cell.group] = Group(*cell.group)
        group.cells.append(cell)
    return list(groups.values())


def _fmt(value: float | None, sd: float | None = None, scale: float = 1.0,
         digits: int = 1) -> str:
    if value is None:
        return "-"
    text = f"{value / scale:.{digits}f}"
    return text + (f" ± {sd / scale:.{digits}f}" if sd is not None else "")


# (header, metric, divisor, digits): the summary's figures
COLUMNS: tuple[tuple[str, str, float, int], ...] = (
    ("TIME s", "time_s", 1.0, 1),
    ("DISK MiB", "disk_bytes", MIB, 0),
    ("SWAP+READ MiB", "swap_and_read_bytes", MIB, 0),
    ("SWAP OUT MiB", "swap_out_pages", MIB / PAGE, 0),
    ("SWAP IN MiB", "swap_in_pages", MIB / PAGE, 0),
    ("MEM STALL s", "psi_memory_some_s", 1.0, 1),
    ("COLLECTORS %", "collector_share", 0.01, 2),
)


def summary_rows(groups: list[Group]) -> list[dict[str, Any]]:
    """One row per group: labels, status, repetitions and each column's text."""
    rows = []
    for group in groups:
        row: dict[str, Any] = {"workload": group.workload, "configuration": group.label,
                               "throttle": group.throttle, "shape": group.shape,
                               "status": group.status_text(), "n": len(group.cells),
                               "reasons": sorted({c.reason for c in group.cells if c.reason})}
        for header, metric, scale, digits in COLUMNS:
            row[header] = _fmt(group.mean(metric), group.sd(metric), scale, digits)
        rows.append(row)
    return rows


def summary_table(groups: list[Group], title: str | None = None) -> Table:
    headers = [h for h, *_ in COLUMNS]
    table = new_table("WORKLOAD", "THROTTLE", "SHAPE", "CONFIGURATION", "STATUS", "N",
                      *headers, right=("N", *headers), title=title)
    for row in summary_rows(groups):
        table.add_row(row["workload"], row["throttle"], row["shape"], row["configuration"],
                      row["status"], str(row["n"]), *(row[h] for h in headers))
    return table
