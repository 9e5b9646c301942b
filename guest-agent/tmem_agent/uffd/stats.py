"""Counters of userfaultfd regions, in the shape of the swap shim's (``tmem-agent status``):
plain integers and fixed-size power-of-two histograms, so counting never allocates. Several
regions of one process may share one :class:`UffdStats`: the long-running agent would give its
regions :func:`process_stats` and put its :meth:`UffdStats.snapshot` in the status document
under ``"uffd"``.
"""

from __future__ import annotations

import time
from typing import Any

from ..histogram import LATENCY_BUCKETS, Histogram

COUNTERS = (
    # faults as the handler thread reads them
    "faults", "faults_write", "faults_wp", "faults_stale",
    # how pages were filled
    "zero_fills", "copies", "readahead_pages", "refills",
    # tmem traffic (pages)
    "gets", "get_hits", "get_misses", "puts", "puts_stored", "puts_refused", "flushes",
    # eviction: pages dropped, and those that needed no put
    "evictions", "clean_drops", "zero_drops", "eviction_rounds",
    # write protection changes
    "wp_resolved",
    # failures
    "lost_pages", "tmem_errors",
)
GAUGES = ("regions", "resident_pages", "resident_max", "budget_pages", "region_pages")


class UffdStats:
    """The counters, gauges and latency histograms of the regions that share it."""

    def __init__(self) -> None:
        self.started = time.time()
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.gauges: dict[str, int] = dict.fromkeys(GAUGES, 0)
        self.latency_us: dict[str, Histogram] = {
            name: Histogram(LATENCY_BUCKETS)
            for name in ("fault", "tmem_get_batch", "tmem_put_batch", "eviction_round")}

    def add(self, name: str, value: int = 1) -> None:
        self.counts[name] += value

    def gauge(self, name: str, delta: int) -> None:
        self.gauges[name] += delta

    def resident(self, delta: int) -> None:
        gauges = self.gauges
        now = gauges["resident_pages"] + delta
        gauges["resident_pages"] = now
        if now > gauges["resident_max"]:
            gauges["resident_max"] = now

    def latency(self, name: str, started_ns: int) -> None:
        self.latency_us[name].add((time.monotonic_ns() - started_ns) // 1000)

    def snapshot(self) -> dict[str, Any]:
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "counters": dict(self.counts),
            "gauges": dict(self.gauges),
            "latency_us": {k: h.snapshot("us") for k, h in self.latency_us.items()},
        }


_PROCESS_STATS: UffdStats | None = None


def process_stats() -> UffdStats:
    """The counters the regions of this process share (made on first use)."""
    global _PROCESS_STATS
    if _PROCESS_STATS is None:
        _PROCESS_STATS = UffdStats()
    return _PROCESS_STATS
