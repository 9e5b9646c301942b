"""Latency histograms with power-of-two nanosecond buckets (cheap enough for every operation)."""

from __future__ import annotations

from typing import Any

BUCKETS = 40  # bucket i counts samples with 2**(i-1) <= ns < 2**i; 2**39 ns is ~9 minutes


class LatencyHistogram:
    """Counts of operation latencies, bucketed by the bit length of the duration in ns."""

    __slots__ = ("counts", "total_ns", "samples")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.total_ns = 0
        self.samples = 0

    def record(self, ns: int) -> None:
        bucket = ns.bit_length()
        self.counts[bucket if bucket < BUCKETS else BUCKETS - 1] += 1
        self.total_ns += ns
        self.samples += 1

    def percentile(self, fraction: float) -> int:
        """Upper bound (ns) of the bucket holding the given fraction of samples; 0 if empty."""
        if not self.samples:
            return 0
        wanted = fraction * self.samples
        seen = 0
        for bucket, count in enumerate(self.counts):
            seen += count
            if seen >= wanted:
                return 1 << bucket
        return 1 << (BUCKETS - 1)

    def to_dict(self) -> dict[str, Any]:
        """Buckets as {upper_bound_ns: count} (non-empty only) plus count, sum and percentiles."""
        return {
            "samples": self.samples,
            "sum_ns": self.total_ns,
            "mean_ns": self.total_ns // self.samples if self.samples else 0,
            "p50_ns": self.percentile(0.50),
            "p99_ns": self.percentile(0.99),
            "buckets": {str(1 << i): c for i, c in enumerate(self.counts) if c},
        }
