"""The store's global event counters."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .latency import LatencyHistogram
from .statkinds import cumulative


class PutRefusal(enum.Enum):
    """Why the store refused a put (each cause has its own counter)."""

    FROZEN = enum.auto()  # the client is frozen: puts become flushes
    COMPRESS_POOR = enum.auto()  # compressed larger than the pool's page store accepts
    QUOTA = enum.auto()  # the pool's owner would exceed its quota
    CAP = enum.auto()  # persistent pages are at their cap
    NO_MEMORY = enum.auto()  # no frame to be had (memory limit, nothing to reclaim)


@dataclass
class Counters:
    """Global event counters (and the object gauges); names follow zcache's sysfs statistics."""

    put_total: int = cumulative()
    failed_eph_puts: int = cumulative()
    failed_pers_puts: int = cumulative()
    put_to_flush: int = cumulative()
    compress_poor: int = cumulative()
    failed_alloc: int = cumulative()
    quota_rejected_puts: int = cumulative()
    cap_rejected_puts: int = cumulative()
    frozen_rejected_puts: int = cumulative()
    same_filled_puts: int = cumulative()
    get_total: int = cumulative()
    get_hits: int = cumulative()
    flush_total: int = cumulative()
    flush_found: int = cumulative()
    flobj_total: int = cumulative()
    flobj_found: int = cumulative()
    evicted_pages: int = cumulative()  # zbud buddies and same-filled pages reclaimed
    same_filled_evicted: int = cumulative()  # of which same-filled (no frame, only metadata)
    dedup_hits: int = cumulative()  # puts that found their content stored (dedup.py)
    dedup_mismatches: int = cumulative()  # puts whose hash matched a copy of other content
    dedup_evicted_pages: int = cumulative()  # pages that vanished with a copy they shared
    curr_obj_count: int = 0
    curr_obj_count_max: int = 0
    latency: dict[str, LatencyHistogram] = field(
        default_factory=lambda: {op: LatencyHistogram() for op in ("put", "get", "flush")}
    )

    def count_refusal(self, cause: PutRefusal) -> None:
        match cause:
            case PutRefusal.FROZEN:
                self.frozen_rejected_puts += 1
            case PutRefusal.COMPRESS_POOR:
                self.compress_poor += 1
            case PutRefusal.QUOTA:
                self.quota_rejected_puts += 1
            case PutRefusal.CAP:
                self.cap_rejected_puts += 1
            case PutRefusal.NO_MEMORY:
                self.failed_alloc += 1
