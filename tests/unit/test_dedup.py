"""Dedup of identical ephemeral pages (store/dedup.py): one copy per client, confirmed byte for
byte, every reference dropped correctly, every holder charged, the counters in the stats."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tmemd import PAGE_SIZE
from tmemd.store import dedup
from tmemd.store.charging import EPHEMERAL_ENTRY_CHARGE, MAX_CHARGE, OBJECT_CHARGE
from tmemd.store.dedup import DEDUP_ENTRY_CHARGE
from tmemd.store.pools import PoolFlags
from tmemd.store.statsreport import CUMULATIVE_KEYS
from tmemd.store.tmem import StoreConfig, TmemStore

OID = (1, 2, 3)


def text(n: int) -> bytes:
    """A distinct page that compresses to about a kilobyte."""
    words = b"".join(b"%d:%d " % (n, i * 7919 % 10007) for i in range(160))
    return (words * (PAGE_SIZE // len(words) + 1))[:PAGE_SIZE]


def fresh(page: bytes) -> bytes:
    """An equal page in a new object, as the wire decoder makes one."""
    return bytes(bytearray(page))


def make_store(frames: int = 256, dedup_on: bool = True) -> TmemStore:
    return TmemStore(StoreConfig(memory_limit_bytes=frames * PAGE_SIZE, dedup=dedup_on))


@pytest.fixture
def store() -> Iterator[TmemStore]:
    s = make_store()
    yield s
    s.close()


def check(store: TmemStore) -> None:
    store.zbud.check_invariants()
    store.meta.check_invariants()
    store.dedup.check_invariants(store.all_pools())


def test_identical_pages_of_one_client_share_one_copy(store: TmemStore) -> None:
    cid = store.new_client("vm")
    pools = [store.new_pool(cid, 0), store.new_pool(cid, 0)]
    page = text(1)
    for pool in pools:
        for index in range(3):
            assert store.put(cid, pool, OID, index, fresh(page))
    check(store)
    stats = store.stats()
    zsize = stats["zbud_curr_zbytes"]
    assert stats["zbud_curr_zpages"] == 1 and stats["curr_eph_pages"] == 6
    assert stats["dedup_hits"] == 5 and stats["dedup_saved_pages"] == 5
    assert stats["dedup_saved_bytes"] == 5 * zsize and stats["dedup_copies"] == 1
    assert store.client_stats(cid)["dedup_saved_pages"] == 5
    assert store.client_stats(cid)["pools"][0]["dedup"] is True
    # exclusive gets take one holder each; the copy stays until the last one goes
    for pool in pools:
        for index in range(3):
            assert store.get(cid, pool, OID, index) == page
            check(store)
    assert store.arena.frames_in_use == 0 and store.stats()["dedup_copies"] == 0
    assert store.stats()["dedup_saved_pages"] == 0 and store.stats()["dedup_saved_bytes"] == 0


def test_no_copy_is_shared_between_clients_or_in_shared_and_persistent_pools(
    store: TmemStore,
) -> None:
    a, b = store.new_client("a"), store.new_client("b")
    page = text(2)
    pa, pb = store.new_pool(a, 0), store.new_pool(b, 0)
    shared = [store.new_pool(c, PoolFlags.SHARED, b"s" * 16) for c in (a, b)]
    persistent = store.new_pool(a, PoolFlags.PERSIST)
    assert store._pool(a, shared[0]).dedup is None and store._pool(a, persistent).dedup is None
    assert store._pool(a, pa).dedup is not store._pool(b, pb).dedup
    for cid, pool in ((a, pa), (b, pb), (a, shared[0]), (b, shared[1]), (a, persistent)):
        for index in range(2):
            assert store.put(cid, pool, OID, index, fresh(page))
    check(store)
    stats = store.stats()
    assert stats["dedup_hits"] == 2  # the second put of a and of b, each in its own pool
    assert stats["zbud_curr_zpages"] == 2 + 2  # one copy per client, two in the shared pool
    assert store._pool(a, shared[0]).entry_charge == EPHEMERAL_ENTRY_CHARGE
    assert store._pool(a, pa).entry_charge == EPHEMERAL_ENTRY_CHARGE + DEDUP_ENTRY_CHARGE


def test_pools_with_other_codecs_keep_their_own_copies(store: TmemStore) -> None:
    cid = store.new_client("vm")
    lzo, lz4 = store.new_pool(cid, 0, codec="lzo"), store.new_pool(cid, 0, codec="lz4")
    for pool in (lzo, lz4, lzo, lz4):
        store.put(cid, pool, OID, pool * 10 + store.ctr.put_total, fresh(text(3)))
    assert store.stats()["zbud_curr_zpages"] == 2 and store.ctr.dedup_hits == 2
    check(store)


def test_a_hash_match_is_confirmed_byte_for_byte(
    store: TmemStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dedup, "page_key", lambda page: 42)  # every page collides
    cid = store.new_client("vm")
    pool = store.new_pool(cid, 0)
    pages = [text(n) for n in range(4)]
    for index, page in enumerate(pages):
        assert store.put(cid, pool, OID, index, fresh(page))
    assert store.ctr.dedup_mismatches == 3 and store.ctr.dedup_hits == 0
    assert store.stats()["zbud_curr_zpages"] == 4 and store.stats()["dedup_copies"] == 1
    assert store.put(cid, pool, OID, 9, fresh(pages[0]))  # the copy the map names: a hit
    assert store.ctr.dedup_hits == 1
    assert store.flush_page(cid, pool, OID, 9) and store.flush_page(cid, pool, OID, 0)
    check(store)  # the named copy is gone: its key is free, the colliding copies still stored
    for index in (1, 2, 3):
        assert store.get(cid, pool, OID, index) == pages[index]
    check(store)


def test_a_put_of_new_content_replaces_only_its_own_handle(store: TmemStore) -> None:
    cid = store.new_client("vm")
    pool = store.new_pool(cid, PoolFlags(0))
    old, new = text(5), text(6)
    for index in range(3):
        store.put(cid, pool, OID, index, fresh(old))
    assert store.put(cid, pool, OID, 1, fresh(new))
    assert store.put(cid, pool, OID, 2, fresh(old))  # the same content again: still one copy
    check(store)
    assert [store.get(cid, pool, OID, i) for i in range(3)] == [old, new, old]
    assert store.arena.frames_in_use == 0


def test_eviction_of_a_shared_copy_drops_every_page_on_it() -> None:
    store = make_store(frames=24)
    try:
        cid = store.new_client("vm")
        pools = [store.new_pool(cid, 0), store.new_pool(cid, 0)]
        shared_page = text(7)
        for pool in pools:
            for index in range(5):
                assert store.put(cid, pool, (9, 9, 9), index, fresh(shared_page))
        for n in range(200):  # distinct pages until the oldest frames are reclaimed
            store.put(cid, pools[0], OID, n, text(100 + n))
            check(store)
        assert store.ctr.dedup_evicted_pages == 10
        assert store.ctr.evicted_pages >= 10
        for pool in pools:
            assert all(store.get(cid, pool, (9, 9, 9), i) is None for i in range(5))
        assert store.put(cid, pools[1], (9, 9, 9), 0, fresh(shared_page))  # a new copy
        assert store.get(cid, pools[1], (9, 9, 9), 0) == shared_page
        check(store)
    finally:
        store.close()


def test_a_put_that_finds_its_content_makes_the_frame_recent() -> None:
    store = make_store(frames=64)
    try:
        cid = store.new_client("vm")
        pool = store.new_pool(cid, 0)
        page = text(8)
        store.put(cid, pool, (1, 0, 0), 0, fresh(page))  # the oldest frame
        for n in range(6):
            store.put(cid, pool, (2, 0, 0), n, text(200 + n))
        store.put(cid, pool, (3, 0, 0), 0, fresh(page))  # a hit: now the newest
        assert store.ctr.dedup_hits == 1
        store.reclaim(PAGE_SIZE)
        assert store.get(cid, pool, (1, 0, 0), 0) == page
        assert store.get(cid, pool, (3, 0, 0), 0) == page
    finally:
        store.close()


def test_a_copy_evicted_while_the_put_makes_room_is_stored_again(store: TmemStore) -> None:
    cid = store.new_client("vm")
    pool = store.new_pool(cid, 0)
    page = text(9)
    store.put(cid, pool, OID, 0, fresh(page))
    meta = store.meta
    real_reserve, real_max = meta.reserve, meta.max_charge

    def reserve() -> bool:  # reclaim picks the copy's frame while the put waits for room
        meta.max_charge = real_max
        assert store.reclaim(PAGE_SIZE)
        return real_reserve()

    meta.max_charge = 1 << 40  # the next put must reserve
    meta.reserve = reserve  # type: ignore[method-assign]
    assert store.put(cid, pool, OID, 1, fresh(page))
    assert store.ctr.dedup_hits == 0 and store.ctr.evicted_pages == 1
    assert store.get(cid, pool, OID, 0) is None
    assert store.get(cid, pool, OID, 1) == page
    check(store)


def test_flush_object_destroy_pool_and_client_drop_their_references(store: TmemStore) -> None:
    cid = store.new_client("vm")
    other = store.new_client("other")
    p0, p1 = store.new_pool(cid, 0), store.new_pool(cid, 0)
    pages = [text(20 + n) for n in range(3)]
    for pool in (p0, p1):
        for obj in range(2):
            for index, page in enumerate(pages):
                store.put(cid, pool, (obj, 0, 0), index, fresh(page))
    po = store.new_pool(other, 0)
    store.put(other, po, OID, 0, fresh(pages[0]))
    assert store.stats()["dedup_saved_pages"] == 9
    assert store.flush_object(cid, p0, (0, 0, 0)) == 3
    check(store)
    assert store.stats()["dedup_saved_pages"] == 6
    store.destroy_pool(cid, p0)
    check(store)
    assert store.stats()["dedup_saved_pages"] == 3
    assert store.get(cid, p1, (1, 0, 0), 2) == pages[2]
    assert store.flush_client(cid) == 5
    check(store)
    store.destroy_client(cid)
    check(store)
    assert store.stats()["zbud_curr_zpages"] == 1  # the other client's page
    assert store.get(other, po, OID, 0) == pages[0]
    assert store.arena.frames_in_use == 0 and store.meta.bytes == 0
    assert store.stats()["dedup_copies"] == 0


def test_every_holder_is_charged_as_if_it_held_the_copy_alone() -> None:
    """Each holder pays its compressed size and entry charge: the quota admits no more pages
    with dedup than without; what shrinks is the host frames."""
    results = {}
    for dedup_on in (False, True):
        store = make_store(dedup_on=dedup_on)
        try:
            cid = store.new_client("vm", quota_bytes=40_000)
            pool = store.new_pool(cid, 0)
            accepted = sum(store.put(cid, pool, OID, i, fresh(text(i % 3))) for i in range(60))
            pool_obj = store._pool(cid, pool)
            refs = list(pool_obj.objects[OID].values())
            assert pool_obj.zbytes == sum(ref & 0xFFF for ref in refs)  # every holder, in full
            entry = EPHEMERAL_ENTRY_CHARGE + (DEDUP_ENTRY_CHARGE if dedup_on else 0)
            charged = store._client(cid).charged_bytes
            assert charged == pool_obj.zbytes + accepted * entry + OBJECT_CHARGE <= 40_000
            assert store.ctr.quota_rejected_puts == 60 - accepted
            results[dedup_on] = (accepted, store.zbud.frames_in_use, len(set(refs)))
            check(store)
        finally:
            store.close()
    (off_pages, off_frames, off_copies), (on_pages, on_frames, on_copies) = results.values()
    assert 0 < on_pages <= off_pages  # the dedup entry charge costs pages, never adds any
    assert on_copies == 3 < off_copies and on_frames < off_frames


def test_dedup_stats_are_declared_and_off_stays_empty() -> None:
    assert {"dedup_hits", "dedup_mismatches", "dedup_evicted_pages"} <= CUMULATIVE_KEYS
    assert not {"dedup_copies", "dedup_saved_pages", "dedup_saved_bytes"} & CUMULATIVE_KEYS
    store = make_store(dedup_on=False)
    try:
        cid = store.new_client("vm")
        pool = store.new_pool(cid, 0)
        for index in range(4):
            store.put(cid, pool, OID, index, fresh(text(1)))
        stats = store.stats()
        assert stats["dedup"] is False and stats["zbud_curr_zpages"] == 4
        assert all(stats[k] == 0 for k in stats if k.startswith("dedup_"))
        assert store._pool(cid, pool).dedup is None
        assert store._pool(cid, pool).entry_charge == EPHEMERAL_ENTRY_CHARGE
        assert store.meta.max_charge == MAX_CHARGE
    finally:
        store.close()
