"""Time series and summary figures from parsed samples, for results and reports.

A series group is ``{"t": [seconds since the run started], "unit": ..., "lines": {label:
[values]}}``; counters become rates between samples. Guest groups use the guest's clock (t0:
the workload's own start), host groups the host's (t0: when the host started the run).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .parsers import Samples

Series = dict[str, Any]
MIB = 1 << 20
PAGE = 4096


def _group(unit: str, times: list[float], lines: dict[str, list[float]]) -> Series:
    return {"unit": unit, "t": [round(t, 2) for t in times],
            "lines": {k: [round(v, 3) for v in vs] for k, vs in lines.items()}}


def _rates(entries: list[tuple[float, Any]], t0: float,
           counters: dict[str, Callable[[Any], float]], scale: float = 1.0
           ) -> tuple[list[float], dict[str, list[float]]]:
    times: list[float] = []
    lines: dict[str, list[float]] = {label: [] for label in counters}
    for (t_prev, prev), (t_now, now) in zip(entries, entries[1:], strict=False):
        span = t_now - t_prev
        if span <= 0:
            continue
        times.append(t_now - t0)
        for label, read in counters.items():
            lines[label].append(max(0.0, (read(now) - read(prev)) / span * scale))
    return times, lines


def _levels(entries: list[tuple[float, Any]], t0: float,
            values: dict[str, Callable[[Any], float | None]]
            ) -> tuple[list[float], dict[str, list[float]]]:
    times = [t - t0 for t, _ in entries]
    lines = {label: [float(read(v) or 0.0) for _, v in entries] for label, read in values.items()}
    return times, lines


def guest_series(samples: Samples, t0: float) -> dict[str, Series]:
    """Swap I/O, pressure, memory and stored pages from the guest's samples."""
    groups: dict[str, Series] = {}
    vmstat = samples.get("vmstat")
    if len(vmstat) > 1:
        times, lines = _rates(vmstat, t0, {
            "swap in": lambda v: v.get("pswpin", 0), "swap out": lambda v: v.get("pswpout", 0),
            "major faults": lambda v: v.get("pgmajfault", 0)})
        groups["swap"] = _group("pages/s", times, lines)
    psi: dict[str, list[float]] = {}
    psi_times: list[float] = []
    for resource in ("memory", "io"):
        entries = samples.get(f"psi-{resource}")
        if entries:
            psi_times = [t - t0 for t, _ in entries]
            for kind in ("some", "full"):
                psi[f"{resource} {kind}"] = [v.get(kind, {}).get("avg10", 0.0)
                                             for _, v in entries]
    if psi:
        groups["psi"] = _group("% (avg10)", psi_times, psi)
    meminfo = samples.get("meminfo")
    if meminfo:
        times, lines = _levels(meminfo, t0, {
            "free": lambda m: m.get("MemFree", 0) / MIB,
            "page cache": lambda m: m.get("Cached", 0) / MIB,
            "anonymous": lambda m: m.get("AnonPages", 0) / MIB,
            "swap used": lambda m: (m.get("SwapTotal", 0) - m.get("SwapFree", 0)) / MIB})
        groups["memory"] = _group("MiB", times, lines)
    stored: dict[str, list[tuple[float, float]]] = {}
    for t, v in samples.get("zswap"):
        stored.setdefault("zswap stored pages", []).append((t - t0, v.get("stored_pages", 0)))
    for t, v in samples.get("zram"):
        stored.setdefault("zram stored pages", []).append(
            (t - t0, v.get("orig_data_size", 0) / PAGE))
    if stored:
        label, points = next(iter(stored.items()))
        groups["stored"] = _group("pages", [p[0] for p in points],
                                  {label: [p[1] for p in points]})
    return groups


def host_series(samples: Samples, t0: float) -> dict[str, Series]:
    """Guest disk throughput, QEMU's CPU and memory, and tmemd's pages from host samples."""
    groups: dict[str, Series] = {}
    blocks = samples.get("blockstats")
    if len(blocks) > 1:
        times, lines = _rates(blocks, t0, {"read": lambda b: b["read_bytes"],
                                           "written": lambda b: b["write_bytes"]}, 1 / MIB)
        groups["disk"] = _group("MiB/s", times, lines)
    cpu = samples.get("qemu-stat")
    if len(cpu) > 1:
        times, lines = _rates(cpu, t0, {"cpu": lambda s: s["cpu_s"]}, 100.0)
        groups["qemu_cpu"] = _group("% of one host CPU", times, lines)
    rss = samples.get("qemu-status")
    if rss:
        times, lines = _levels(rss, t0, {"rss": lambda s: s.get("rss_bytes", 0) / MIB})
        groups["qemu_rss"] = _group("MiB", times, lines)
    tmemd = samples.get("tmemd")
    if tmemd:
        times, lines = _levels(tmemd, t0, {"tmem stored pages":
                                           lambda s: s["client"].get("pages", 0)})
        groups["stored"] = _group("pages", times, lines)
        if len(tmemd) > 1:
            times, lines = _rates(tmemd, t0, {"puts": lambda s: s["client"].get("puts", 0),
                                              "gets": lambda s: s["client"].get("gets", 0)})
            groups["tmem_ops"] = _group("ops/s", times, lines)
    return groups


def _delta(entries: list[tuple[float, Any]], read: Callable[[Any], float]) -> float | None:
    if len(entries) < 2:
        return None
    return read(entries[-1][1]) - read(entries[0][1])


def _peak(entries: list[tuple[float, Any]], read: Callable[[Any], float]) -> float | None:
    return max((read(v) for _, v in entries), default=None)


def _psi_total(kind: str) -> Callable[[Any], float]:
    """Reads the stall time (seconds) of ``kind`` (some, full) from a parsed PSI sample."""
    return lambda v: float(v.get(kind, {}).get("total", 0.0)) / 1e6


def guest_figures(samples: Samples) -> dict[str, Any]:
    """Summary figures of the guest samples: stall time, peaks, the monitor's own cost
    (``collector_cpu_s``: CPU seconds between its first and last sample, start-up aside)."""
    psi_total = _psi_total
    figures: dict[str, Any] = {
        "psi_memory_some_s": _delta(samples.get("psi-memory"), psi_total("some")),
        "psi_memory_full_s": _delta(samples.get("psi-memory"), psi_total("full")),
        "psi_io_full_s": _delta(samples.get("psi-io"), psi_total("full")),
        "swap_used_peak_bytes": _peak(samples.get("meminfo"), lambda m: m.get("SwapTotal", 0)
                                      - m.get("SwapFree", 0)),
        "zswap_stored_pages_peak": _peak(samples.get("zswap"),
                                         lambda v: v.get("stored_pages", 0)),
        "zswap_written_back_pages": _delta(samples.get("zswap"),
                                           lambda v: v.get("written_back_pages", 0)),
        "zram_stored_pages_peak": _peak(samples.get("zram"),
                                        lambda v: v.get("orig_data_size", 0) / PAGE),
        "collector_cpu_s": _delta(samples.get("self"), lambda v: float(v.get("cpu_s", 0))),
        "collector_total_cpu_s": samples.end.get("cpu_s"),
        "collector_samples": len(samples.get("self")),
    }
    return {k: v for k, v in figures.items() if v is not None}


def host_figures(samples: Samples) -> dict[str, Any]:
    """Summary figures of the host samples: QEMU's CPU and peak memory, tmemd's pages, the
    sampler's own cost."""
    figures: dict[str, Any] = {
        "qemu_cpu_s": _delta(samples.get("qemu-stat"), lambda s: s["cpu_s"]),
        "qemu_rss_peak_bytes": _peak(samples.get("qemu-status"),
                                     lambda s: s.get("rss_bytes", 0)),
        "tmem_stored_pages_peak": _peak(samples.get("tmemd"),
                                        lambda s: s["client"].get("pages", 0)),
        "tmem_puts": _delta(samples.get("tmemd"), lambda s: s["client"].get("puts", 0)),
        "tmem_gets": _delta(samples.get("tmemd"), lambda s: s["client"].get("gets", 0)),
        "host_sampler_cpu_s": samples.end.get("cpu_s"),
    }
    return {k: v for k, v in figures.items() if v is not None}
