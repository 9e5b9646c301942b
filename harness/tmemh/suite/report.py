"""``tmemh report RUN``: one self-contained HTML page per run, and the summary on the terminal.

The page (template ``templates/report.html.j2``) has no scripts and loads nothing: the
summary table, bars of run time and disk bytes per configuration, the collectors' cost, one
panel of time series per cell (swap I/O, pressure stalls, guest memory, stored pages, the
guest disk as the host saw it) and the resolved configuration. Charts are inline SVG
(:mod:`tmemh.suite.plots`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from tmemd.clikit import print_table

from .plots import bars, cell_charts
from .results import RunResult, load_results
from .summary import COLUMNS, MIB, group_cells, summary_rows, summary_table

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
TEMPLATE = "report.html.j2"
# (metric, unit, divisor, title): the bar charts
BARS = (("time_s", "seconds", 1.0, "run time"),
        ("disk_bytes", "MiB", float(MIB), "guest disk I/O (read + written)"),
        ("swap_and_read_bytes", "MiB", float(MIB),
         "disk I/O of memory pressure (all reads; writes but the workload's own files)"),
        ("swap_out_pages", "MiB", float(MIB / 4096), "swapped out"))
# Figures shown per cell: (metric, label, divisor, unit)
CELL_FIGURES = (("time_s", "run time", 1.0, "s"), ("host_time_s", "run time (host clock)", 1.0,
                                                    "s"),
                ("bytes", "workload bytes", float(MIB), "MiB"),
                ("disk_read_bytes", "disk read", float(MIB), "MiB"),
                ("disk_write_bytes", "disk written", float(MIB), "MiB"),
                ("swap_out_pages", "swapped out", MIB / 4096, "MiB"),
                ("swap_in_pages", "swapped in", MIB / 4096, "MiB"),
                ("psi_memory_some_s", "memory stall (some)", 1.0, "s"),
                ("psi_memory_full_s", "memory stall (full)", 1.0, "s"),
                ("qemu_cpu_s", "QEMU CPU", 1.0, "s"),
                ("qemu_rss_peak_bytes", "QEMU RSS peak", float(MIB), "MiB"),
                ("collector_cpu_s", "guest collector CPU", 1.0, "s"),
                ("host_sampler_cpu_s", "host sampler CPU", 1.0, "s"))


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("tmemh", "templates"),
                              autoescape=True, undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)


def _cell_view(run_dir: Path, cell: Any) -> dict[str, Any]:
    series: dict[str, Any] = {}
    series_path = run_dir / "cells" / cell.id / "series.json"
    if series_path.is_file():
        try:
            series = json.loads(series_path.read_text())
        except ValueError as exc:
            logger.warning("%s: %s", series_path, exc)
    charts = [Markup(svg) for svg in cell_charts(series)]
    figures = []
    for metric, label, scale, unit in CELL_FIGURES:
        value = cell.metrics.get(metric)
        if isinstance(value, (int, float)):
            figures.append((label, f"{value / scale:,.1f} {unit}"))
    return {"cell": cell, "charts": charts, "figures": figures,
            "phases": {k[len("phase_"):]: v for k, v in cell.metrics.items()
                       if k.startswith("phase_")}}


def _overhead(run: RunResult) -> dict[str, Any]:
    """The collectors' cost: their own CPU share per cell, and run time with and without
    collectors where the suite ran both."""
    shares = [c.metrics["collector_share"] for c in run.cells if "collector_share" in c.metrics]
    pairs = []
    groups = {g.key: g for g in group_cells(run)}
    for key, on in groups.items():
        off = groups.get((*key[:4], False))
        if key[4] and off is not None and on.mean("time_s") and off.mean("time_s"):
            on_s, off_s = on.mean("time_s"), off.mean("time_s")
            assert on_s is not None and off_s is not None
            pairs.append({"cell": " ".join(key[:4]), "on_s": on_s, "off_s": off_s,
                          "change": (on_s - off_s) / off_s * 100})
    return {"max_share": max(shares) * 100 if shares else None,
            "mean_share": sum(shares) / len(shares) * 100 if shares else None,
            "pairs": pairs}


def render_report(run_dir: Path) -> str:
    run = load_results(run_dir)
    groups = group_cells(run)
    resolved_path = run_dir / "resolved.json"
    resolved = resolved_path.read_text() if resolved_path.is_file() else "{}"
    charts = []
    for metric, unit, scale, title in BARS:
        svg = bars(groups, metric, unit, scale, title)
        if svg:
            charts.append(Markup(svg))
    return _environment().get_template(TEMPLATE).render(
        run=run, counts=run.counts, headers=[h for h, *_ in COLUMNS], rows=summary_rows(groups),
        bars=charts, cells=[_cell_view(run_dir, c) for c in run.cells],
        overhead=_overhead(run), resolved=resolved)


def write_report(run_dir: Path, output: Path | None = None) -> Path:
    """Write the HTML report (default ``RUN/report.html``) and print the summary table."""
    path = Path(output) if output else Path(run_dir) / REPORT_FILE
    html = render_report(Path(run_dir))
    path.write_text(html)
    run = load_results(run_dir)
    print_table(summary_table(group_cells(run), title=f"{run.id}: {run.status}"))
    return path
