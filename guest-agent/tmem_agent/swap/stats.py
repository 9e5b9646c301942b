"""The swap shim's counters: plain integers and fixed-size histograms, so that counting never
allocates once the agent runs. :meth:`SwapStats.snapshot` turns them into JSON-ready data for
``tmem-agent status``.
"""

from __future__ import annotations

import time
from typing import Any

from ..histogram import LATENCY_BUCKETS, Histogram

BATCH_BUCKETS = 10  # bucket i counts batches of at most 2**i pages (1 .. 512)

COUNTERS = (
    # NBD side
    "nbd_reads", "nbd_writes", "nbd_trims", "nbd_flushes", "nbd_write_zeroes",
    "nbd_read_pages", "nbd_write_pages", "nbd_trim_pages", "nbd_errors", "nbd_connections",
    # tmem side (pages unless named otherwise)
    "puts", "puts_stored", "gets", "get_hits", "get_misses", "flushes",
    "put_batches", "get_batches", "flush_batches",
    # where pages went and came from
    "fallback_writes", "fallback_reads", "fallback_write_bytes", "zero_reads",
    # failures
    "io_errors", "lost_pages", "tmem_disconnects", "tmem_reconnects", "reply_timeouts",
    "remote_errors",
)
REFUSAL_CAUSES = ("refused", "disconnected", "error")  # why a page went to the fallback


class SwapStats:
    """Every counter of the shim, the refusals by cause, and the histograms."""

    def __init__(self) -> None:
        self.started = time.time()
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.refusals: dict[str, int] = dict.fromkeys(REFUSAL_CAUSES, 0)
        self.latency_us: dict[str, Histogram] = {
            name: Histogram(LATENCY_BUCKETS)
            for name in ("nbd_read", "nbd_write", "nbd_trim", "tmem_put_batch",
                         "tmem_get_batch", "tmem_flush_batch", "fallback_write",
                         "fallback_read")}
        self.batch_pages: dict[str, Histogram] = {
            name: Histogram(BATCH_BUCKETS) for name in ("put", "get", "flush")}

    def add(self, name: str, value: int = 1) -> None:
        self.counts[name] += value

    def refusal(self, cause: str, pages: int = 1) -> None:
        self.refusals[cause] += pages

    def latency(self, name: str, started_ns: int) -> None:
        self.latency_us[name].add((time.monotonic_ns() - started_ns) // 1000)

    def snapshot(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "uptime_s": round(time.time() - self.started, 1),
            "counters": dict(self.counts),
            "refusals": dict(self.refusals),
            "latency_us": {k: h.snapshot("us") for k, h in self.latency_us.items()},
            "batch_pages": {k: h.snapshot("") for k, h in self.batch_pages.items()},
        }
        if extra:
            out.update(extra)
        return out
