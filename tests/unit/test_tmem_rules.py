"""The tmem rules one by one, and bad input: a clear error and nothing changed."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tmemd import PAGE_SIZE
from tmemd.store.charging import OBJECT_CHARGE, PERSISTENT_ENTRY_CHARGE
from tmemd.store.codecs import get_codec
from tmemd.store.errors import InvalidArgument, NoSuchClient, NoSuchPool, TooManyPools
from tmemd.store.pools import MAX_POOLS, PoolFlags
from tmemd.store.tmem import StoreConfig, TmemStore

TEXT = (b"tmem keeps clean pages and swap pages in compressed host memory. " * 80)[:PAGE_SIZE]
OID = (1, 2, 3)


@pytest.fixture
def store() -> Iterator[TmemStore]:
    s = TmemStore(StoreConfig(memory_limit_bytes=64 * PAGE_SIZE))
    yield s
    s.close()


def page(n: int) -> bytes:
    return (b"%08d" % n + TEXT)[:PAGE_SIZE]


def test_persistent_get_keeps_and_ephemeral_private_get_is_exclusive(store: TmemStore) -> None:
    c = store.new_client("vm")
    pers = store.new_pool(c, PoolFlags.PERSIST)
    eph = store.new_pool(c, 0)
    for pool in (pers, eph):
        assert store.put(c, pool, OID, 5, page(pool))
    assert store.get(c, pers, OID, 5) == page(pers)
    assert store.get(c, pers, OID, 5) == page(pers)
    assert store.get(c, eph, OID, 5) == page(eph)
    assert store.get(c, eph, OID, 5) is None


def test_keep_on_get_pool_keeps_a_page_that_is_read_and_keeps_it_longest() -> None:
    store = TmemStore(StoreConfig(memory_limit_bytes=16 * PAGE_SIZE))
    try:
        c = store.new_client("vm")
        pool = store.new_pool(c, PoolFlags.KEEP_ON_GET)
        assert store.put(c, pool, OID, 0, page(0))
        assert store.get(c, pool, OID, 0) == page(0)
        assert store.get(c, pool, OID, 0) == page(0)  # not exclusive
        for i in range(1, 60):  # page 0 is read between puts: its frame stays recent
            assert store.put(c, pool, OID, i, page(i))
            assert store.get(c, pool, OID, 0) == page(0)
        assert store.ctr.evicted_pages > 0
        # pages put early and never read again went (page 1 may share page 0's frame)
        assert all(store.get(c, pool, OID, i) is None for i in range(2, 10))
        assert store.flush_page(c, pool, OID, 0)  # a flush still removes it
        assert store.get(c, pool, OID, 0) is None
    finally:
        store.close()


def test_pool_flags_are_the_wire_protocol_s() -> None:
    from tmem_agent.channel import wire

    assert (PoolFlags.PERSIST, PoolFlags.SHARED, PoolFlags.KEEP_ON_GET) == (
        wire.POOL_PERSIST, wire.POOL_SHARED, wire.POOL_KEEP_ON_GET)


@pytest.mark.parametrize("other", [PoolFlags.PERSIST, PoolFlags.SHARED])
def test_keep_on_get_is_refused_beside_persist_or_shared(store: TmemStore,
                                                         other: PoolFlags) -> None:
    c = store.new_client("vm")
    with pytest.raises(InvalidArgument, match="KEEP_ON_GET"):
        store.new_pool(c, PoolFlags.KEEP_ON_GET | other, bytes(range(1, 17)))
    assert all(p is None for p in store._client(c).pools)


def test_shared_pool_is_joined_by_uuid_and_gets_are_not_exclusive(store: TmemStore) -> None:
    a, b = store.new_client("a"), store.new_client("b")
    uuid = bytes(range(1, 17))
    pa = store.new_pool(a, PoolFlags.SHARED, uuid)
    pb = store.new_pool(b, PoolFlags.SHARED, uuid)
    assert store.put(a, pa, OID, 0, page(1))
    assert store.get(b, pb, OID, 0) == page(1)
    assert store.get(a, pa, OID, 0) == page(1)
    charged = store.client_stats(a)["zbytes"]
    assert charged > 0 and store.client_stats(b)["zbytes"] == 0
    store.destroy_pool(a, pa)
    assert store.get(b, pb, OID, 0) == page(1)  # b still holds the pool
    assert store.client_stats(b)["zbytes"] == charged  # and is charged for it now
    assert store.client_stats(a)["zbytes"] == 0
    assert store.destroy_pool(b, pb) == 1


def test_overwrite_replaces_and_failed_overwrite_leaves_the_handle_empty(store: TmemStore) -> None:
    c = store.new_client("vm")
    p = store.new_pool(c, PoolFlags.PERSIST)
    assert store.put(c, p, OID, 1, page(1))
    assert store.put(c, p, OID, 1, page(2))
    assert store.get(c, p, OID, 1) == page(2)
    assert not store.put(c, p, OID, 1, os.urandom(PAGE_SIZE))  # compresses poorly: refused
    assert store.get(c, p, OID, 1) is None
    assert store.ctr.put_to_flush == 1 and store.ctr.compress_poor == 1


def test_same_filled_pages_use_no_frame_for_data_but_pay_their_entries(store: TmemStore) -> None:
    c = store.new_client("vm")
    p = store.new_pool(c, PoolFlags.PERSIST)
    for i, fill in enumerate((0, 0xFF, 0x42)):
        assert store.put(c, p, OID, i, bytes([fill]) * PAGE_SIZE)
    assert store.xv.frames_in_use == store.zbud.frames_in_use == 0
    assert store.arena.frames_in_use == store.meta.frames == 1  # the entries' metadata
    assert store.client_stats(c)["meta_bytes"] == 3 * PERSISTENT_ENTRY_CHARGE + OBJECT_CHARGE
    assert store.get(c, p, OID, 2) == b"\x42" * PAGE_SIZE
    store.flush_object(c, p, OID)
    assert store.arena.frames_in_use == 0 and store.client_stats(c)["meta_bytes"] == 0


def test_flush_object_and_destroy_pool_free_every_frame(store: TmemStore) -> None:
    c = store.new_client("vm")
    pers, eph = store.new_pool(c, PoolFlags.PERSIST), store.new_pool(c, 0)
    for i in range(20):
        store.put(c, pers, OID, i, page(i))
        store.put(c, eph, (9, 9, 9), i, page(i + 100))
    assert store.arena.frames_in_use > 0
    assert store.flush_object(c, pers, OID) == 20
    assert store.flush_object(c, pers, OID) == 0
    assert store.destroy_pool(c, eph) == 20
    assert store.arena.frames_in_use == 0
    assert store.ctr.curr_obj_count == 0


def test_memory_limit_evicts_ephemeral_lru_and_persistent_puts_fail_at_cap() -> None:
    config = StoreConfig(memory_limit_bytes=8 * PAGE_SIZE, persistent_cap_bytes=4 * PAGE_SIZE)
    store = TmemStore(config)
    try:
        c = store.new_client("vm")
        eph, pers = store.new_pool(c, 0), store.new_pool(c, PoolFlags.PERSIST)
        for i in range(40):
            store.put(c, eph, OID, i, page(i))
        assert store.ctr.evicted_pages > 0
        assert store.get(c, eph, OID, 39) == page(39)  # most recent survives
        assert store.get(c, eph, OID, 0) is None  # oldest was evicted
        half_random = [os.urandom(1500) + bytes(2596) for _ in range(40)]
        accepted = sum(store.put(c, pers, OID, i, half_random[i]) for i in range(40))
        assert 0 < accepted < 40
        assert store.ctr.cap_rejected_puts > 0
        assert store.xv.frames_in_use <= 5
        for i in range(40):
            got = store.get(c, pers, OID, i)
            assert got is None or len(got) == PAGE_SIZE
    finally:
        store.close()


def test_quota_and_freeze(store: TmemStore) -> None:
    zsize = len(get_codec("lzo").compress(page(0)))
    # The quota bounds compressed bytes and metadata: room for one page (and its object), not two.
    one_page = zsize + PERSISTENT_ENTRY_CHARGE + OBJECT_CHARGE
    c = store.new_client("vm", quota_bytes=one_page + zsize // 2)
    p = store.new_pool(c, PoolFlags.PERSIST)
    assert store.put(c, p, OID, 0, page(0))
    assert not store.put(c, p, OID, 1, page(1))
    assert store.ctr.quota_rejected_puts == 1
    store.set_quota(c, None)
    store.freeze(c)
    assert not store.put(c, p, OID, 0, page(0))
    assert store.get(c, p, OID, 0) is None  # a frozen put turns into a flush
    store.thaw(c)
    assert store.put(c, p, OID, 0, page(0))


def _snapshot(store: TmemStore) -> tuple[object, ...]:
    return (store.ctr.put_total, store.stats()["curr_pers_pages"], store.arena.frames_in_use,
            [store.pools(c) for c in store.clients()])


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda s, c, p: s.put(c, p, OID, 0, b"short"), InvalidArgument),
        (lambda s, c, p: s.put(c, p, OID, 0, bytes(PAGE_SIZE + 1)), InvalidArgument),
        (lambda s, c, p: s.put(c, p, OID, 1 << 32, page(0)), InvalidArgument),
        (lambda s, c, p: s.put(c, p, OID, -1, page(0)), InvalidArgument),
        (lambda s, c, p: s.put(c, p, (1 << 64, 0, 0), 0, page(0)), InvalidArgument),
        (lambda s, c, p: s.put(c, p, (1, 2), 0, page(0)), InvalidArgument),
        (lambda s, c, p: s.put(c, p, (1.5, 2, 3), 0, page(0)), InvalidArgument),
        (lambda s, c, p: s.put(c, p, OID, True, page(0)), InvalidArgument),
        (lambda s, c, p: s.put(c, 7, OID, 0, page(0)), NoSuchPool),
        (lambda s, c, p: s.put(c, 99, OID, 0, page(0)), NoSuchPool),
        (lambda s, c, p: s.get(c, -1, OID, 0), NoSuchPool),
        (lambda s, c, p: s.get(12345, p, OID, 0), NoSuchClient),
        (lambda s, c, p: s.flush_object(c, p, (0, 0, -1)), InvalidArgument),
        (lambda s, c, p: s.new_pool(c, 1 << 4), InvalidArgument),  # 8 KiB pages
        (lambda s, c, p: s.new_pool(c, PoolFlags.SHARED), InvalidArgument),  # zero uuid
        (lambda s, c, p: s.new_pool(c, PoolFlags.SHARED | PoolFlags.PERSIST, b"u" * 16),
         InvalidArgument),
        (lambda s, c, p: s.new_pool(c, 0, b"short"), InvalidArgument),
        (lambda s, c, p: s.new_pool(c, 0, codec="brotli"), Exception),
        (lambda s, c, p: s.set_memory_limit(1 << 40), InvalidArgument),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(store: TmemStore, call, error) -> None:  # type: ignore[no-untyped-def]
    c = store.new_client("vm")
    p = store.new_pool(c, PoolFlags.PERSIST)
    store.put(c, p, OID, 0, page(0))
    before = _snapshot(store)
    with pytest.raises(error):
        call(store, c, p)
    assert _snapshot(store) == before
    assert store.get(c, p, OID, 0) == page(0)


def test_seventeenth_pool_is_refused(store: TmemStore) -> None:
    c = store.new_client("vm")
    for _ in range(MAX_POOLS):
        store.new_pool(c, 0)
    with pytest.raises(TooManyPools):
        store.new_pool(c, 0)
    assert len(store.pools(c)) == MAX_POOLS


def test_stats_report_zcache_counters_and_memory(store: TmemStore) -> None:
    c = store.new_client("vm")
    p = store.new_pool(c, PoolFlags.PERSIST)
    for i in range(10):
        store.put(c, p, OID, i, page(i))
    store.get(c, p, OID, 3)
    store.flush_page(c, p, OID, 4)
    stats = store.stats()
    for name in ("curr_obj_count", "curr_obj_count_max", "flush_total", "flush_found",
                 "flobj_total", "flobj_found", "failed_eph_puts", "failed_pers_puts",
                 "compress_poor", "put_to_flush", "failed_get_free_pages", "failed_alloc",
                 "zbud_curr_raw_pages", "evicted_raw_pages"):
        assert name in stats, name
    assert stats["curr_pages"] == 9 and stats["flush_found"] == 1
    assert stats["compression_ratio"] > 2
    assert stats["latency_ns"]["put"]["samples"] == 10 // stats["latency_sample_every"]
    assert store.client_stats(c)["pools"][0]["pages"] == 9


def test_default_persistent_cap_follows_the_memory_limit() -> None:
    store = TmemStore(StoreConfig(memory_limit_bytes=64 * PAGE_SIZE))
    try:
        assert store.persistent_cap_frames == 48
        store.set_memory_limit(32 * PAGE_SIZE)
        assert store.persistent_cap_frames == 24
        store.set_persistent_cap(10 * PAGE_SIZE)
        store.set_memory_limit(64 * PAGE_SIZE)
        assert store.persistent_cap_frames == 10  # an explicit cap stays
    finally:
        store.close()
