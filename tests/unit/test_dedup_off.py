"""With dedup off (the default) the store behaves exactly as it did before dedup existed.

A seeded workload (two clients, one with a quota; private ephemeral, persistent and shared
pools; puts, gets, flushes, object and client flushes, memory limit changes, reclaim, freeze)
runs on a small store; every result and the final statistics (all but the new ``dedup*`` keys
and the latencies) are hashed. The digest was recorded on the store of the commit before dedup
was added (lzo codec), so any change of behaviour with dedup off shows here. The same workload
with dedup on must return the same pages for every get that hits.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

from tmemd import PAGE_SIZE
from tmemd.store.pools import PoolFlags
from tmemd.store.tmem import StoreConfig, TmemStore

BEFORE_DEDUP = "c3b5a147d3560d7e0b4f95c5a6172ec28042e595f6f9093ed9b5daf081bc9db9"


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


def _trace(dedup: bool) -> list[Any]:
    rng = random.Random(42)
    pages = _pages(rng)
    store = TmemStore(StoreConfig(memory_limit_bytes=64 * PAGE_SIZE,
                                  persistent_cap_bytes=24 * PAGE_SIZE, dedup=dedup))
    try:
        cids = [store.new_client("a"), store.new_client("b", 60000)]
        pools = [(c, store.new_pool(c, f)) for c in cids for f in (0, 0, PoolFlags.PERSIST)]
        pools += [(c, store.new_pool(c, PoolFlags.SHARED, b"u" * 16)) for c in cids]
        out = [_step(store, rng, pages, pools, cids) for _ in range(6000)]
        if dedup:
            store.dedup.check_invariants(store.all_pools())
        stats = {k: v for k, v in store.stats().items()
                 if k != "latency_ns" and not k.startswith("dedup")}
        clients = [{k: v for k, v in store.client_stats(c).items() if not k.startswith("dedup")}
                   for c in cids]
        for client in clients:
            for pool_stats in client["pools"]:
                pool_stats.pop("dedup")
        return [*out, stats, clients]
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
