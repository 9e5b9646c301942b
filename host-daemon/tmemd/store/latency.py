"""Latency histograms with power-of-two nanosecond buckets (cheap enough for every operation).

Bucket ``i`` counts durations whose bit length is ``i``, i.e. ``2**(i-1) <= ns < 2**i``. Hot
paths add to ``counts[ns.bit_length()]`` directly; 64 buckets hold any 63-bit duration.
"""

from __future__ import annotations

from typing import Any

BUCKETS = 64


class LatencyHistogram:
    """Counts of operation latencies, bucketed by the bit length of the duration in ns."""

    __slots__ = ("counts", "total_ns")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.total_ns = 0

    def record(self, ns: int) -> None:
        self.counts[ns.bit_length()] += 1
        self.total_ns += ns

    @property
    def samples(self) -> int:
        return sum(self.counts)

    def percentile(self, fraction: float) -> int:
        """Upper bound (ns) of the bucket holding the given fraction of samples; 0 if empty."""
        total = self.samples
        if not total:
            return 0
        seen = 0
        for bucket, count in enumerate(self.counts):
            seen += count
            if seen >= fraction * total:
                return 1 << bucket
        return 1 << (BUCKETS - 1)

    def to_dict(self) -> dict[str, Any]:
        """Non-empty buckets as {upper bound ns: count}, plus the count and percentiles."""
        samples = self.samples
        return {
            "samples": samples,
            "sum_ns": self.total_ns,
            "mean_ns": self.total_ns // samples if samples else 0,
            "p50_ns": self.percentile(0.50),
            "p90_ns": self.percentile(0.90),
            "p99_ns": self.percentile(0.99),
            "buckets": {str(1 << i): c for i, c in enumerate(self.counts) if c},
        }
