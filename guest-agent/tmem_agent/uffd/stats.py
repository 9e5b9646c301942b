"""Counters of userfaultfd regions, in the shape of the swap shim's (``tmem-agent status``):
plain integers and fixed-size power-of-two histograms, so counting never allocates. Several
regions of one process may share one :class:`UffdStats`; :meth:`UffdStats.snapshot` is what a
status document shows under ``"uffd"``.
"""

from __future__ import annotations

import time
from typing import Any

LATENCY_BUCKETS = 24  # bucket i counts durations below 2**i microseconds (the last: the rest)

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


class Histogram:
    """Counts per power-of-two bucket."""

    __slots__ = ("counts", "total", "sum")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * buckets
        self.total = 0
        self.sum = 0

    def add(self, value: int) -> None:
        bucket = value.bit_length() if value > 0 else 0
        last = len(self.counts) - 1
        self.counts[bucket if bucket < last else last] += 1
        self.total += 1
        self.sum += value

    def snapshot(self, unit: str) -> dict[str, Any]:
        last = len(self.counts) - 1
        buckets = {(f"<{1 << i}{unit}" if i < last else f">={1 << (last - 1)}{unit}"): n
                   for i, n in enumerate(self.counts) if n}
        mean = round(self.sum / self.total, 1) if self.total else 0.0
        return {"count": self.total, "mean": mean, "buckets": buckets}


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
