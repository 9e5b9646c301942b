"""One snapshot of a store's statistics as a flat-ish dict (JSON-ready).

Scalar counters keep zcache's sysfs names where one exists; store-specific counters come from
each page store's own ``stats()``; memory figures compare what the guests stored with what the
host spends on it. ``host_bytes`` counts every arena frame in use: data frames and the frames
reserved for metadata (``meta_host_bytes``, see charging.py).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from .. import PAGE_SIZE
from .charging import EPHEMERAL_ENTRY_CHARGE, OBJECT_CHARGE, PERSISTENT_ENTRY_CHARGE
from .counters import Counters
from .statkinds import cumulative_fields
from .tmem import LATENCY_SAMPLE_EVERY
from .xvmalloc import XvmallocStore
from .zbud import ZbudStore

if TYPE_CHECKING:
    from .tmem import TmemStore

# Keys of store_stats() that only ever grow; each is declared cumulative where it is defined.
CUMULATIVE_KEYS: frozenset[str] = (
    cumulative_fields(Counters)
    | ZbudStore.CUMULATIVE_STATS
    | XvmallocStore.CUMULATIVE_STATS
    | {"put_succeeded", "failed_get_free_pages"}
)


def store_stats(store: TmemStore) -> dict[str, Any]:
    ctr = store.ctr
    result: dict[str, Any] = {
        f.name: getattr(ctr, f.name) for f in dataclasses.fields(ctr) if f.name != "latency"
    }
    result.update(store.zbud.stats())
    result.update(store.xv.stats())
    result.update(store.meta.stats())
    result["dedup"] = store.config.dedup
    result.update(store.dedup.stats(store.client_list()))
    pools = store.all_pools()
    pers_pages = sum(p.pages for p in pools if p.persistent)
    pages = sum(p.pages for p in pools)
    result.update(
        {
            "put_succeeded": ctr.put_total - ctr.failed_eph_puts - ctr.failed_pers_puts,
            "curr_pers_pages": pers_pages,
            "curr_eph_pages": pages - pers_pages,
            "curr_same_filled_pages": sum(p.same_filled_pages for p in pools),
            "curr_eph_same_filled_pages": len(store.reclaimer.same_filled),
            "zbytes_stored": sum(p.zbytes for p in pools),
        }
    )
    frames = store.arena.frames_in_use
    host_bytes = frames * PAGE_SIZE
    stored_bytes = pages * PAGE_SIZE
    result.update(
        {
            "clients": len(store.clients()),
            "max_clients": store.config.max_clients,
            "ephemeral_entry_charge": EPHEMERAL_ENTRY_CHARGE,
            "persistent_entry_charge": PERSISTENT_ENTRY_CHARGE,
            "object_charge": OBJECT_CHARGE,
            "curr_pages": pages,
            "stored_bytes": stored_bytes,
            "host_bytes": host_bytes,
            "host_frames": frames,
            "arena_frames": store.arena.nframes,
            "memory_limit_bytes": store.arena.limit_frames * PAGE_SIZE,
            "persistent_cap_bytes": store.persistent_cap_frames * PAGE_SIZE,
            "persistent_host_bytes": store.xv.frames_in_use * PAGE_SIZE,
            "ephemeral_host_bytes": store.zbud.frames_in_use * PAGE_SIZE,
            "compression_ratio": round(stored_bytes / host_bytes, 3) if host_bytes else None,
            "failed_get_free_pages": store.arena.failed_alloc,
            "latency_ns": {op: h.to_dict() for op, h in ctr.latency.items()},
            "latency_sample_every": LATENCY_SAMPLE_EVERY,
        }
    )
    return result
