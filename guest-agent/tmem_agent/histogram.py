"""A histogram for counters that must never allocate: fixed power-of-two buckets.

The agent's long-running parts (the swap shim, userfaultfd regions) count latencies and batch
sizes on their hot paths; :meth:`Histogram.add` is a few integer operations on a list made
once, and :meth:`Histogram.snapshot` turns the counts into JSON-ready data for
``tmem-agent status``.
"""

from __future__ import annotations

from typing import Any

LATENCY_BUCKETS = 24  # bucket i counts durations below 2**i microseconds (the last: the rest)


class Histogram:
    """Counts per power-of-two bucket: bucket ``i`` holds values of bit length ``i``."""

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
        """Bucket upper bounds with their counts (empty buckets left out), count and mean."""
        last = len(self.counts) - 1
        buckets = {(f"<{1 << i}{unit}" if i < last else f">={1 << (last - 1)}{unit}"): n
                   for i, n in enumerate(self.counts) if n}
        mean = round(self.sum / self.total, 1) if self.total else 0.0
        return {"count": self.total, "mean": mean, "buckets": buckets}
