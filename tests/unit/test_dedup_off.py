"""With dedup off (the default) the store behaves exactly as it did before dedup existed.

A seeded workload (two clients, one with a quota; private ephemeral, persistent and shared
pools; puts, gets, flushes, object and client flushes, memory limit changes, reclaim, freeze)
runs on a small store; every result and the main figures of the final statistics are hashed.
The digest was recorded on the store of the commit before dedup was added (lzo codec), so any
change of behaviour with dedup off shows here; a deliberate change of the store's behaviour
records a new digest (``_trace(False)`` hashed as below). The same workload with dedup on must
return the same pages for every get that hits.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

from tmemd import PAGE_SIZE
from tmemd.store.pools import PoolFlags
from tmemd.store.tmem import StoreConfig, TmemStore

# Recorded anew when a get hit on a shared ephemeral pool began to make its zbud frame the
# most recent for reclaim (as Xen moves a page it serves to the tail of its LRU): the digest of
# the store before dedup was 4395937776ca5d3def93a78a4ffb9b2c466087fb766990e82c0349cc6f837e08.
BEFORE_DEDUP = "81eea3c2b6b152811397c0f4cf1832b47fc2973330738792525325663a2b52e8"


def _pages(rng: random.Random) -> list[bytes]:
    text = b"".join(b"row %d: value %d\n" % (i, i * 31) for i in range(2000))
    pages = [bytes(PAGE_SIZE), bytes([7]) * PAGE_SIZE, rng.randbytes(PAGE_SIZE)]
    for _ in range(40):
        start = rng.randrange(len(text) - PAGE_SIZE)
        pages.append(text[start : start + PAGE_SIZE])
    pages += [rng.randbytes(PAGE_SIZE * 9 // 16) + bytes(PAGE_SIZE * 7 // 16) for _ in range(10)]
    return pages


def _step(store: TmemStore, rng: random.Random, pages: list[bytes],
          pools: list[tuple[int, int]], cids: list[int]) -> Any:
    cid, pool = rng.choice(pools)
    oid, index = (rng.randrange(3), 1, 2), rng.randrange(10)
    r = rng.random()
    if r < 0.55:
        return store.put(cid, pool, oid, index, bytes(bytearray(rng.choice(pages))))
    if r < 0.8:
        got = store.get(cid, pool, oid, index)
        return None if got is None else hashlib.sha256(got).hexdigest()[:12]
    if r < 0.9:
        return store.flush_page(cid, pool, oid, index)
    if r < 0.95:
        return store.flush_object(cid, pool, oid)
    if r < 0.96:
        store.set_memory_limit(rng.randrange(8, 64) * PAGE_SIZE)
        return None
    if r < 0.97:
        target = rng.choice(cids)
        (store.freeze if rng.random() < 0.5 else store.thaw)(target)
        return None
    if r < 0.975:
        return store.flush_client(rng.choice(cids))
    return store.reclaim(rng.randrange(1, 4) * PAGE_SIZE)


# The figures of the final statistics that the digest covers (a fixed list, so that new
# statistics added later do not change it).
STORE_FIGURES = (
    "put_total", "put_succeeded", "failed_eph_puts", "failed_pers_puts", "put_to_flush",
    "compress_poor", "failed_alloc", "quota_rejected_puts", "cap_rejected_puts",
    "frozen_rejected_puts", "same_filled_puts", "get_hits", "flush_found", "flobj_found",
    "evicted_pages", "same_filled_evicted", "curr_obj_count", "curr_obj_count_max",
    "zbud_curr_raw_pages", "zbud_curr_zpages", "zbud_curr_zbytes", "zbud_cumul_zpages",
    "evicted_raw_pages", "evicted_buddied_pages", "meta_bytes", "persistent_meta_bytes",
    "meta_frames", "persistent_meta_frames", "curr_pers_pages", "curr_eph_pages",
    "curr_same_filled_pages", "zbytes_stored", "host_frames", "memory_limit_bytes",
)
CLIENT_FIGURES = ("zbytes", "meta_bytes", "charged_bytes", "puts", "failed_puts", "gets",
                  "get_hits", "flushes", "evicted_pages", "pages", "objects")


def _trace(dedup: bool) -> list[Any]:
    rng = random.Random(42)
    pages = _pages(rng)
    config = StoreConfig(memory_limit_bytes=64 * PAGE_SIZE, persistent_cap_bytes=24 * PAGE_SIZE)
    config.dedup = dedup
    store = TmemStore(config)
    try:
        cids = [store.new_client("a"), store.new_client("b", 60000)]
        pools = [(c, store.new_pool(c, f)) for c in cids for f in (0, 0, PoolFlags.PERSIST)]
        pools += [(c, store.new_pool(c, PoolFlags.SHARED, b"u" * 16)) for c in cids]
        out = [_step(store, rng, pages, pools, cids) for _ in range(6000)]
        if dedup:
            store.dedup.check_invariants(store.all_pools())
        stats = store.stats()
        clients = [store.client_stats(c) for c in cids]
        return [*out, [stats[k] for k in STORE_FIGURES],
                [[client[k] for k in CLIENT_FIGURES] for client in clients]]
    finally:
        store.close()


def test_dedup_off_behaves_exactly_as_before() -> None:
    trace = _trace(dedup=False)
    digest = hashlib.sha256(json.dumps(trace, sort_keys=True).encode()).hexdigest()
    assert digest == BEFORE_DEDUP


def test_dedup_on_returns_the_same_pages_where_both_hit() -> None:
    off, on = _trace(dedup=False)[:-2], _trace(dedup=True)[:-2]
    # both runs draw the same steps; where a get hits in both, the page is the same
    pairs = [(a, b) for a, b in zip(off, on, strict=True)
             if isinstance(a, str) and isinstance(b, str)]
    assert pairs and all(a == b for a, b in pairs)
