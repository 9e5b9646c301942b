"""The report's charts: a cell's time series as small multiples, and bars per configuration
(drawn by :mod:`tmemh.suite.svgchart`, inline SVG)."""

from __future__ import annotations

from typing import Any

from .summary import Group
from .svgchart import Bar, bar_chart, line_chart

# Which series groups a cell's panel shows, in order: (side, group, title). "stored" is
# tmemd's count when the cell ran a daemon, else the guest's zswap or zram count.
PANELS: tuple[tuple[str, str, str], ...] = (
    ("guest", "swap", "swap I/O"),
    ("guest", "psi", "pressure stall"),
    ("guest", "memory", "guest memory"),
    ("stored", "stored", "stored pages"),
    ("host", "disk", "guest disk (host view)"),
    ("host", "tmem_ops", "tmem operations"),
    ("host", "qemu_cpu", "QEMU CPU"),
    ("host", "qemu_rss", "QEMU resident memory"),
)


def cell_charts(series: dict[str, Any]) -> list[str]:
    """One line chart per series group the cell has."""
    charts = []
    for side, name, title in PANELS:
        if side == "stored":
            group = series.get("host", {}).get(name) or series.get("guest", {}).get(name)
        else:
            group = series.get(side, {}).get(name)
        if group and group.get("t"):
            charts.append(line_chart(title, group["t"], group["lines"], group.get("unit", "")))
    return charts


def bars(groups: list[Group], metric: str, unit: str, scale: float, title: str) -> str | None:
    """Bars of ``metric`` (mean over repetitions, with their spread) per configuration, side
    by side for each workload, throttle profile and shape (None when no cell has it)."""
    found = []
    for group in groups:
        mean = group.mean(metric)
        if mean is None:
            continue
        spread = group.sd(metric)
        found.append(Bar(f"{group.workload}\n{group.throttle}, {group.shape}", group.label,
                         mean / scale, None if spread is None else spread / scale))
    return bar_chart(title, found, unit) if found else None
