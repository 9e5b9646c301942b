"""Every byte is charged: same-filled pages and per-page bookkeeping count against the memory
limit, the persistent cap and quotas; ephemeral same-filled pages are reclaimed; clients are
bounded. Each test here failed before the charge existed (2.4M free zero pages, 215k tiny pages
doubling RSS, unbounded clients)."""

from __future__ import annotations

import gc
import sys
import tracemalloc
from collections.abc import Iterator

import pytest

from tmemd import PAGE_SIZE
from tmemd.store.charging import (
    EPHEMERAL_ENTRY_CHARGE,
    OBJECT_CHARGE,
    PERSISTENT_ENTRY_CHARGE,
)
from tmemd.store.errors import TooManyClients
from tmemd.store.pools import PoolFlags
from tmemd.store.storeconfig import StoreConfig
from tmemd.store.tables import DICT_BYTES_PER_ENTRY, SLACK_BYTES
from tmemd.store.tmem import TmemStore

LIMIT = 1 << 20  # 256 frames
ZERO = bytes(PAGE_SIZE)


def tiny(n: int) -> bytes:
    """A distinct page that compresses to a few dozen bytes."""
    return (b"%016x" % n) + bytes(PAGE_SIZE - 16)


def text(n: int) -> bytes:
    """A distinct page that compresses to a bit over a kilobyte (two or three per zbud frame)."""
    words = b"".join(b"%d:%d " % (n, i * 7919 % 10007) for i in range(160))
    return (words * (PAGE_SIZE // len(words) + 1))[:PAGE_SIZE]


@pytest.fixture
def store() -> Iterator[TmemStore]:
    s = TmemStore(StoreConfig(memory_limit_bytes=LIMIT))
    yield s
    s.close()


def limits_hold(store: TmemStore) -> None:
    """Data frames plus the frames the metadata needs fit the limit; persistent ones the cap."""
    meta, xv = store.meta, store.xv
    meta.check_invariants()
    assert store.zbud.frames_in_use + xv.frames_in_use + meta.frames == store.arena.frames_in_use
    assert store.arena.frames_in_use <= store.arena.limit_frames
    assert xv.frames_in_use + -(-meta.pers_bytes // PAGE_SIZE) <= xv.max_frames


def test_ephemeral_zero_pages_with_distinct_handles_are_bounded_and_reclaimed(
    store: TmemStore,
) -> None:
    cid = store.new_client("vm")
    pool = store.new_pool(cid, 0)
    count = 20_000
    assert all(store.put(cid, pool, (i, 1 << 63, 7), 0, ZERO) for i in range(count))
    stats = store.stats()
    held = stats["curr_pages"]
    most = LIMIT // (EPHEMERAL_ENTRY_CHARGE + OBJECT_CHARGE)
    assert most // 2 < held <= most  # the limit, not the number of puts, bounds them
    assert stats["same_filled_evicted"] == stats["evicted_pages"] == count - held
    assert stats["meta_bytes"] == held * (EPHEMERAL_ENTRY_CHARGE + OBJECT_CHARGE)
    assert store.get(cid, pool, (count - 1, 1 << 63, 7), 0) == ZERO  # the newest stay
    assert store.get(cid, pool, (0, 1 << 63, 7), 0) is None  # the oldest went first
    limits_hold(store)


def test_persistent_zero_pages_are_refused_at_the_cap_and_never_evicted(
    store: TmemStore,
) -> None:
    cid = store.new_client("vm")
    eph, pers = store.new_pool(cid, 0), store.new_pool(cid, PoolFlags.PERSIST)
    for i in range(300):  # ephemeral memory to be reclaimed for persistent metadata
        store.put(cid, eph, (1, 0, 0), i, text(i))
    count = 20_000
    accepted = [i for i in range(count) if store.put(cid, pers, (i, 0, 0), 0, ZERO)]
    cap = store.persistent_cap_frames * PAGE_SIZE
    assert len(accepted) <= cap // (PERSISTENT_ENTRY_CHARGE + OBJECT_CHARGE)
    assert len(accepted) > cap // (PERSISTENT_ENTRY_CHARGE + OBJECT_CHARGE) * 9 // 10
    assert accepted == list(range(len(accepted)))  # refused only once the cap was full
    assert store.ctr.cap_rejected_puts == count - len(accepted)
    assert store.ctr.evicted_pages > 0  # ephemeral pages made room
    assert all(store.get(cid, pers, (i, 0, 0), 0) == ZERO for i in accepted)
    for i in range(300):  # more ephemeral pages evict ephemeral memory only
        store.put(cid, eph, (2, 0, 0), i, text(i))
    assert all(store.get(cid, pers, (i, 0, 0), 0) == ZERO for i in accepted)
    limits_hold(store)


def test_zero_pages_count_against_the_quota(store: TmemStore) -> None:
    per_page = PERSISTENT_ENTRY_CHARGE + OBJECT_CHARGE  # each page in an object of its own
    cid = store.new_client("vm", quota_bytes=10 * per_page + per_page // 2)
    pers = store.new_pool(cid, PoolFlags.PERSIST)
    accepted = sum(store.put(cid, pers, (i, 0, 0), 0, ZERO) for i in range(100))
    assert accepted == 10
    assert store.ctr.quota_rejected_puts == 90
    client = store.client_stats(cid)
    assert client["charged_bytes"] == client["meta_bytes"] == 10 * per_page
    assert client["zbytes"] == 0
    eph = store.new_pool(cid, 0)  # the quota counts ephemeral pages too
    assert not store.put(cid, eph, (0, 0, 0), 0, ZERO)
    store.flush_object(cid, pers, (0, 0, 0))  # room for one again
    assert store.put(cid, eph, (0, 0, 0), 0, ZERO)


def test_many_tiny_pages_are_bounded_by_their_metadata(store: TmemStore) -> None:
    cid = store.new_client("vm")
    eph, pers = store.new_pool(cid, 0), store.new_pool(cid, PoolFlags.PERSIST)
    count = 20_000
    stored = sum(store.put(cid, pers, (1, 2, 3), i, tiny(i)) for i in range(count))
    # Dozens of tiny pages share an xvmalloc frame: uncharged, 20,000 of them fit in the cap.
    stats = store.stats()
    cap = store.persistent_cap_frames * PAGE_SIZE
    assert stored == stats["curr_pers_pages"] < cap // PERSISTENT_ENTRY_CHARGE
    assert stats["persistent_meta_bytes"] == stored * PERSISTENT_ENTRY_CHARGE + OBJECT_CHARGE
    assert stats["xv_curr_pages"] * PAGE_SIZE + stats["persistent_meta_bytes"] <= cap
    assert all(store.put(cid, eph, (4, 5, 6), i, tiny(i)) for i in range(count))
    stats = store.stats()
    held = stats["curr_eph_pages"]
    assert held * EPHEMERAL_ENTRY_CHARGE + stats["zbud_curr_raw_pages"] * PAGE_SIZE <= LIMIT
    assert stats["host_frames"] <= LIMIT // PAGE_SIZE
    limits_hold(store)


def test_metadata_frames_come_and_go_with_the_entries(store: TmemStore) -> None:
    cid = store.new_client("vm")
    pool = store.new_pool(cid, PoolFlags.PERSIST)
    for i in range(1000):
        assert store.put(cid, pool, (7, 7, 7), i, ZERO)
    assert store.xv.frames_in_use == 0
    assert store.meta.frames >= -(-1000 * PERSISTENT_ENTRY_CHARGE // PAGE_SIZE)
    assert store.stats()["meta_host_bytes"] == store.meta.frames * PAGE_SIZE
    store.flush_object(cid, pool, (7, 7, 7))
    assert store.arena.frames_in_use == 0 and store.meta.bytes == 0


def test_reclaim_drops_the_least_recently_stored_first() -> None:
    store = TmemStore(StoreConfig(memory_limit_bytes=64 * PAGE_SIZE))
    try:
        cid = store.new_client("vm")
        pool = store.new_pool(cid, 0)
        for i in range(20):  # the oldest: same-filled pages
            assert store.put(cid, pool, (1, 0, 0), i, ZERO)
        i = 0
        while not store.ctr.evicted_pages:  # then compressed pages until reclaim starts
            assert store.put(cid, pool, (2, 0, 0), i, text(i))
            i += 1
        # The same-filled pages were stored first, so they go first (one page at a time),
        # every one of them before the first zbud frame.
        assert store.ctr.same_filled_evicted == store.ctr.evicted_pages
        while not store.zbud.stats()["evicted_raw_pages"]:
            assert store.put(cid, pool, (2, 0, 0), i, text(i))
            i += 1
        assert store.ctr.same_filled_evicted == 20 and not store.reclaimer.same_filled
        assert store.put(cid, pool, (1, 0, 0), 99, ZERO)  # now newer than every frame
        while store.zbud.stats()["evicted_raw_pages"] < 4:
            assert store.put(cid, pool, (2, 0, 0), i, text(i))
            i += 1
        assert store.get(cid, pool, (2, 0, 0), 0) is None  # the oldest frames went
        assert store.get(cid, pool, (1, 0, 0), 99) == ZERO  # the newer same-filled page stayed
    finally:
        store.close()


def test_too_many_clients_are_refused_and_nothing_changes() -> None:
    store = TmemStore(StoreConfig(memory_limit_bytes=LIMIT, max_clients=4))
    try:
        ids = [store.new_client(f"vm{i}") for i in range(4)]
        with pytest.raises(TooManyClients, match="max_clients 4"):
            store.new_client("vm4")
        assert store.clients() == ids and store.stats()["clients"] == 4
        store.destroy_client(ids[0])
        assert store.new_client("vm5") not in ids
    finally:
        store.close()


def test_tables_that_shrank_are_rebuilt(store: TmemStore) -> None:
    cid = store.new_client("vm")
    pool = store.new_pool(cid, PoolFlags.PERSIST)
    for i in range(2000):
        store.put(cid, pool, (i, 0, 0), 0, tiny(i))
        store.put(cid, pool, (5000, 0, 0), i, ZERO)
    objects = store._pool(cid, pool).objects
    big_object, owners = objects[(5000, 0, 0)], store.xv._owners
    full = [sys.getsizeof(table) for table in (objects, big_object, owners)]
    for i in range(2000 - 8):
        store.flush_page(cid, pool, (i, 0, 0), 0)
        store.flush_page(cid, pool, (5000, 0, 0), i)
    shrunk = [sys.getsizeof(table) for table in (objects, big_object, owners)]
    bound = DICT_BYTES_PER_ENTRY * 8 + SLACK_BYTES  # what 8 entries may keep (tables.py)
    assert all(small <= bound and small * 8 < big for small, big in zip(shrunk, full, strict=True))


@pytest.mark.parametrize("persistent", [False, True])
@pytest.mark.parametrize("filled", [False, True])
def test_the_charges_cover_what_entries_and_objects_cost(persistent: bool, filled: bool) -> None:
    """tracemalloc over a few thousand entries, kept churning where ephemeral pages are reclaimed
    (the measurement behind the constants is in charging.py); fresh oid tuples and ints per put,
    as the wire decoder makes them."""
    charge = PERSISTENT_ENTRY_CHARGE if persistent else EPHEMERAL_ENTRY_CHARGE
    for sparse in (False, True):
        store = TmemStore(StoreConfig(memory_limit_bytes=4 << 20, persistent_cap_bytes=4 << 20))
        try:
            cid = store.new_client("vm")
            pool = store.new_pool(cid, PoolFlags.PERSIST if persistent else 0)
            gc.collect()
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            for i in range(12_000):
                h = i * 0x9E3779B97F4A7C15 % (1 << 64)
                oid = (h, h ^ 0x5555, h | 1 << 63) if sparse else (1 << 63 | 3, 1 << 62, 1 << 61)
                store.put(cid, pool, oid, h >> 32, ZERO if filled else tiny(i))
            gc.collect()
            used = tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
        entries = store.stats()["curr_pages"]
        objects = store.stats()["curr_obj_count"]
        frames = store.zbud.frames_in_use + store.xv.frames_in_use
        frame_overhead = 400 * frames  # the page stores' own lists, not charged per entry
        store.close()
        assert used <= entries * charge + objects * OBJECT_CHARGE + frame_overhead, (
            sparse, used / entries, entries
        )
