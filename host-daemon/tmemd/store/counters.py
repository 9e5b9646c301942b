"""The store's global event counters."""

from __future__ import annotations

from dataclasses import dataclass, field

from .latency import LatencyHistogram


@dataclass
class Counters:
    """Global event counters; names follow zcache's sysfs statistics where one exists."""

    put_total: int = 0
    failed_eph_puts: int = 0
    failed_pers_puts: int = 0
    put_to_flush: int = 0
    compress_poor: int = 0
    failed_alloc: int = 0
    quota_rejected_puts: int = 0
    cap_rejected_puts: int = 0
    frozen_rejected_puts: int = 0
    same_filled_puts: int = 0
    get_total: int = 0
    get_hits: int = 0
    flush_total: int = 0
    flush_found: int = 0
    flobj_total: int = 0
    flobj_found: int = 0
    evicted_pages: int = 0
    curr_obj_count: int = 0
    curr_obj_count_max: int = 0
    latency: dict[str, LatencyHistogram] = field(
        default_factory=lambda: {op: LatencyHistogram() for op in ("put", "get", "flush")}
    )
