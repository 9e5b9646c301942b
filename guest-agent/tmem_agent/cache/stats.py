"""The disk cache's counters, in the shape of the swap shim's (``tmem-agent status``)."""

from __future__ import annotations

import time
from typing import Any

from ..histogram import LATENCY_BUCKETS, Histogram

PAGE_SIZE = 4096
COUNTERS = (
    # NBD side
    "nbd_reads", "nbd_writes", "nbd_trims", "nbd_write_zeroes", "nbd_flushes",
    "nbd_read_pages", "nbd_write_pages", "nbd_trim_pages", "nbd_errors", "nbd_connections",
    # the cache (pages unless named otherwise)
    "hits", "misses", "gets", "get_batches", "puts", "puts_stored", "puts_refused",
    "put_batches", "hit_puts", "flushes", "flush_batches", "flush_objects", "pool_resets",
    "stale_read_guards", "reads_without_tmem", "writes_without_tmem",
    # the disk
    "disk_reads", "disk_read_bytes", "disk_writes", "disk_write_bytes", "disk_syncs",
    "disk_bytes_saved",
    # failures (the link's own counters too, when the cache has a link of its own)
    "io_errors", "tmem_errors", "remote_errors", "tmem_disconnects", "tmem_reconnects",
    "reply_timeouts", "lost_pages",
)
LATENCIES = ("nbd_read", "nbd_write", "tmem_get_batch", "disk_read", "disk_write")


class CacheStats:
    """Every counter of one disk cache and its latency histograms."""

    def __init__(self) -> None:
        self.started = time.time()
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.latency_us = {name: Histogram(LATENCY_BUCKETS) for name in LATENCIES}

    def add(self, name: str, value: int = 1) -> None:
        self.counts[name] += value

    def latency(self, name: str, started_ns: int) -> None:
        self.latency_us[name].add((time.monotonic_ns() - started_ns) // 1000)

    def snapshot(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        counts = self.counts
        looked = counts["hits"] + counts["misses"]
        out: dict[str, Any] = {
            "uptime_s": round(time.time() - self.started, 1),
            "counters": dict(counts),
            "hit_rate": round(counts["hits"] / looked, 4) if looked else None,
            "latency_us": {k: h.snapshot("us") for k, h in self.latency_us.items()},
        }
        if extra:
            out.update(extra)
        return out
