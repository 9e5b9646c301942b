"""Timing helpers the benchmarks share: a timed call, a rate, a median with its spread."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def spread(values: list[float]) -> dict[str, Any]:
    """The median of ``values`` with its spread: min, quartiles, max and every value."""
    ordered = sorted(values)
    if len(ordered) > 1:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {
        "median": round(statistics.median(ordered), 3),
        "min": round(ordered[0], 3),
        "q1": round(q1, 3),
        "q3": round(q3, 3),
        "max": round(ordered[-1], 3),
        "rounds": [round(v, 3) for v in values],
    }


def timed(fn: Callable[[], Any]) -> float:
    """Seconds ``fn()`` took."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")
