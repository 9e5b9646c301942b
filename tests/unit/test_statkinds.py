"""Counters only grow: the kinds declared beside each statistic hold over a busy, shrinking store.

The Prometheus exporter types a stat as a counter exactly when its definition says it only
grows; a stat declared that way must never go down, and an event count that is not declared
(a name that says it counts events) is caught here.
"""

from __future__ import annotations

import os
import random
from typing import Any

from tmemd import PAGE_SIZE
from tmemd.store.pools import Client, Pool, PoolFlags
from tmemd.store.statkinds import cumulative_fields
from tmemd.store.statsreport import CUMULATIVE_KEYS
from tmemd.store.tmem import StoreConfig, TmemStore

EVENT_WORDS = ("_total", "cumul", "evicted", "failed", "rejected", "_found", "puts", "_allocs")


def page(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.1:
        return bytes(PAGE_SIZE)
    if kind < 0.2:
        return os.urandom(PAGE_SIZE)  # refused: compresses poorly
    return (rng.randbytes(64) * (PAGE_SIZE // 64))[:PAGE_SIZE]


def numbers(stats: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in stats.items():
        if isinstance(value, list):
            out.update({f"{key}[{i}]": v for i, v in enumerate(value)})
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = value
    return out


def test_cumulative_stats_never_decrease_and_event_counts_are_declared() -> None:
    rng = random.Random(7)
    config = StoreConfig(memory_limit_bytes=64 * PAGE_SIZE, persistent_cap_bytes=32 * PAGE_SIZE)
    store = TmemStore(config)
    try:
        cid = store.new_client("vm")
        pools = [store.new_pool(cid, 0), store.new_pool(cid, PoolFlags.PERSIST)]
        before = numbers(store.stats())
        for step in range(3000):
            pool, oid, index = rng.choice(pools), (rng.randrange(16), 0, 0), rng.randrange(64)
            action = rng.random()
            if action < 0.6:
                store.put(cid, pool, oid, index, page(rng))
            elif action < 0.8:
                store.get(cid, pool, oid, index)
            elif action < 0.95:
                store.flush_page(cid, pool, oid, index)
            else:
                store.flush_object(cid, pool, oid)
            if step % 50 == 0:
                now = numbers(store.stats())
                for key, value in now.items():
                    if key.split("[")[0] in CUMULATIVE_KEYS:
                        assert value >= before.get(key, 0), key
                before = now
        stats = store.stats()
        assert stats["evicted_pages"] > 0 and stats["curr_pages"] > 0  # it did shrink and grow
        undeclared = [key for key in stats if any(w in key for w in EVENT_WORDS)
                      and key not in CUMULATIVE_KEYS]
        assert undeclared == []
    finally:
        store.close()


def test_client_and_pool_event_counts_are_declared() -> None:
    assert {"puts", "failed_puts", "gets", "get_hits", "flushes", "evicted_pages"} <= (
        cumulative_fields(Client)
    )
    assert cumulative_fields(Client).isdisjoint({"pages", "zbytes", "quota_bytes"})
    assert cumulative_fields(Pool) == {"evicted_pages"}
