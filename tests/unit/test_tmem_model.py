"""Model-based test: random operation sequences on the real store, checked against the tmem rules.

The reference model is a dict from handle to page bytes. What the model allows:
- persistent pages: a get returns exactly the last page put, never misses while it is held;
- ephemeral pages: a get returns the page or misses, and may miss only after some eviction
  happened since the page was put; private ephemeral gets are exclusive;
- a put may fail only for a counted reason, and then the handle is empty;
- after every step both page stores pass their own invariant checks.
The memory limit is small so reclaim and failed allocations happen often.

And the charging arithmetic (store/charging.py), recomputed from what the store holds:
- every page costs its pool's entry charge and every object the object charge; the ledger, each
  pool and each client (compressed bytes + metadata) agree with that;
- data frames plus ceil(metadata / 4096) stay within the memory limit, persistent frames plus
  ceil(persistent metadata / 4096) within the persistent cap;
- a client's charge stays within its quota, a put refused for the quota really would exceed it,
  one refused for the cap really finds the cap full, and one refused for memory comes only once
  nothing ephemeral (zbud frame or same-filled page) is left to reclaim.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from tmemd import PAGE_SIZE
from tmemd.store.charging import MAX_CHARGE, OBJECT_CHARGE
from tmemd.store.codecs import CODEC_NAMES, get_codec
from tmemd.store.errors import InvalidArgument
from tmemd.store.pools import MAX_POOLS, Pool, PoolFlags
from tmemd.store.tmem import FILLED_PAGES, StoreConfig, TmemStore

_rng = random.Random(1234)
_text = b"".join(b"line %d: the quick brown fox %d\n" % (i, i * 7) for i in range(400))


def _page(kind: int) -> bytes:
    if kind == 0:
        return bytes(PAGE_SIZE)
    if kind == 1:
        return bytes([0xA5]) * PAGE_SIZE
    if kind == 2:
        return _rng.randbytes(PAGE_SIZE)  # incompressible
    if kind == 3:  # compresses to a bit over half a page: one per zbud frame
        return _rng.randbytes(PAGE_SIZE * 9 // 16) + bytes(PAGE_SIZE * 7 // 16)
    start = _rng.randrange(0, len(_text) - PAGE_SIZE)
    return _text[start : start + PAGE_SIZE]


PAGES = [_page(k % 5) for k in range(25)]
ARENA_FRAMES = 48
REJECT_COUNTERS = (
    "compress_poor",
    "failed_alloc",
    "cap_rejected_puts",
    "quota_rejected_puts",
    "frozen_rejected_puts",
)


class TmemModel(RuleBasedStateMachine):
    pools = Bundle("pools")
    DEDUP = False  # test_dedup_model runs these rules on a store with dedup on

    @initialize(
        target=pools,
        limit_frames=st.integers(3, 24),
        codec=st.sampled_from(CODEC_NAMES),
    )
    def setup(self, limit_frames: int, codec: str) -> MultipleResults[tuple[int, int]]:
        self.store = TmemStore(StoreConfig(
            memory_limit_bytes=ARENA_FRAMES * PAGE_SIZE, persistent_cap_bytes=16 * PAGE_SIZE,
            dedup=self.DEDUP,
        ))
        self.store.set_memory_limit(limit_frames * PAGE_SIZE)
        self.clients = [self.store.new_client("a"), self.store.new_client("b")]
        self.frozen: set[int] = set()
        # Upper bound of each client's charge: its quota, or more where the quota was set (or a
        # shared pool handed over) below what the client already held.
        self.charge_bound: dict[int, int | None] = dict.fromkeys(self.clients)
        # Frames in use beyond the limit (or persistent frames beyond the cap) that a lower
        # limit or cap left behind: persistent pages and their metadata are never dropped.
        self.limit_overhang = 0
        self.cap_overhang = 0
        # model: pool key -> {(oid, index): (page, evictions seen at put time)}
        self.model: dict[object, dict[tuple[tuple[int, int, int], int], tuple[bytes, int]]] = {}
        # key -> does a get hit remove the page (a private ephemeral pool without KEEP_ON_GET)
        self.exclusive: dict[object, bool] = {}
        # Every client starts with a persistent and an ephemeral private pool, both with a
        # shared ephemeral pool, so that page operations are possible from the first step.
        start = [self._new_pool(cid, persistent, False, codec) for cid in self.clients
                 for persistent in (True, False)]
        start += [self._new_pool(cid, False, True, codec) for cid in self.clients]
        return multiple(*start)

    def teardown(self) -> None:
        if hasattr(self, "store"):
            self.store.close()

    def _key(self, client: int, pool_id: int) -> object:
        pool = self.store._pool(client, pool_id)
        return ("shared", pool.uuid) if pool.shared else (client, pool_id)

    def _evictions(self) -> int:
        return self.store.ctr.evicted_pages

    @rule(
        target=pools,
        client=st.sampled_from([0, 1]),
        persistent=st.booleans(),
        shared=st.booleans(),
        codec=st.sampled_from(CODEC_NAMES),
        keep=st.booleans(),
    )
    def new_pool(self, client: int, persistent: bool, shared: bool, codec: str,
                 keep: bool) -> tuple[int, int]:
        return self._new_pool(self.clients[client], persistent, shared, codec, keep)

    def _new_pool(self, cid: int, persistent: bool, shared: bool, codec: str,
                  keep: bool = False) -> tuple[int, int]:
        flags = ((PoolFlags.PERSIST if persistent else 0) | (PoolFlags.SHARED if shared else 0)
                 | (PoolFlags.KEEP_ON_GET if keep else 0))
        uuid = bytes([1 + persistent]) * 16 if shared else bytes(16)
        if sum(p is not None for p in self.store._client(cid).pools) == MAX_POOLS:
            return (cid, -1)
        if (shared and persistent) or (keep and (shared or persistent)):
            with pytest.raises(InvalidArgument):
                self.store.new_pool(cid, flags, uuid, codec)
            return (cid, -1)
        pool_id = self.store.new_pool(cid, flags, uuid, codec)
        key = self._key(cid, pool_id)
        self.model.setdefault(key, {})
        self.exclusive[key] = not (persistent or shared or keep)
        return (cid, pool_id)

    @rule(pool=pools, obj=st.integers(0, 1), index=st.integers(0, 3), page=st.integers(0, 24))
    def put(self, pool: tuple[int, int], obj: int, index: int, page: int) -> None:
        cid, pool_id = pool
        if pool_id >= 0 and self.store._client(cid).pools[pool_id] is not None:
            self._put(cid, pool_id, obj, index, page)

    @rule(pool=pools, filled=st.booleans(), count=st.integers(8, 48))
    def flood(self, pool: tuple[int, int], filled: bool, count: int) -> None:
        """Many pages with distinct handles in object 2: same-filled or text (small once
        compressed), so that the metadata charge alone fills the limit, the cap or a quota."""
        cid, pool_id = pool
        if pool_id >= 0 and self.store._client(cid).pools[pool_id] is not None:
            for index in range(count):
                self._put(cid, pool_id, 2, index, index % 2 if filled else 4 + 5 * (index % 5))

    def _put(self, cid: int, pool_id: int, obj: int, index: int, page: int) -> None:
        key = self._key(cid, pool_id)
        store_pool = self.store._pool(cid, pool_id)
        owner_charge, new_charge = self._charges_of_put(store_pool, (obj, 7, 0), index, page)
        before = {name: getattr(self.store.ctr, name) for name in REJECT_COUNTERS}
        ok = self.store.put(cid, pool_id, (obj, 7, 0), index, PAGES[page])
        entries = self.model[key]
        if ok:
            assert cid not in self.frozen
            entries[((obj, 7, 0), index)] = (PAGES[page], self._evictions())
            return
        entries.pop(((obj, 7, 0), index), None)
        after = {name: getattr(self.store.ctr, name) for name in REJECT_COUNTERS}
        grew = [n for n in REJECT_COUNTERS if after[n] == before[n] + 1]
        assert len(grew) == 1, f"put failed without one counted reason: {before} -> {after}"
        if grew == ["compress_poor"]:
            assert page % 5 in (2, 3), "a compressible page was called poor"
        elif grew == ["quota_rejected_puts"]:
            quota = store_pool.owner.quota_bytes
            assert quota is not None and owner_charge + new_charge > quota, "refused within quota"
        elif grew == ["cap_rejected_puts"]:
            assert store_pool.persistent
            xv, meta = self.store.xv, self.store.meta
            need = xv.frames_in_use + -(-(meta.pers_bytes + MAX_CHARGE) // PAGE_SIZE)
            assert need + 2 * meta.batch > xv.max_frames, "refused below the cap"
        elif grew == ["failed_alloc"]:  # no memory: only once nothing ephemeral is left
            assert self.store.zbud.frames_in_use == 0, "refused with zbud frames to reclaim"
            assert not self.store.reclaimer.same_filled, "refused with same-filled pages to drop"

    def _charges_of_put(
        self, pool: Pool, oid: tuple[int, int, int], index: int, page: int
    ) -> tuple[int, int]:
        """What the pool's owner is charged once the handle's old page is gone, and what this
        put adds (compressed size, entry charge, and the object charge for a new object)."""
        owner_charge = pool.owner.charged_bytes
        obj = pool.objects.get(oid)
        new_object = obj is None or set(obj) == {index}
        if obj is not None and index in obj:
            ref = obj[index]
            owner_charge -= pool.entry_charge + (OBJECT_CHARGE if new_object else 0)
            owner_charge -= (ref & 0xFFF) if ref >= 0 else 0
        data = PAGES[page]
        same_filled = data == FILLED_PAGES[data[0]]
        zsize = 0 if same_filled else len(get_codec(pool.codec.name).compress(data))
        return owner_charge, zsize + pool.entry_charge + (OBJECT_CHARGE if new_object else 0)

    @rule(pool=pools, obj=st.integers(0, 1), index=st.integers(0, 3))
    def get(self, pool: tuple[int, int], obj: int, index: int) -> None:
        cid, pool_id = pool
        if pool_id >= 0 and self.store._client(cid).pools[pool_id] is not None:
            self._check_get(cid, pool_id, obj, index)

    @precondition(lambda self: any(self.model.values()))
    @rule(data=st.data())
    def get_held(self, data: st.DataObject) -> None:
        """Get a handle the model holds (random handles are mostly empty)."""
        held = [
            (cid, pool_id, oid[0], index)
            for cid in self.clients
            for pool_id, pool in enumerate(self.store._client(cid).pools)
            if pool is not None
            for (oid, index) in self.model[self._key(cid, pool_id)]
        ]
        if held:
            self._check_get(*data.draw(st.sampled_from(held)))

    def _check_get(self, cid: int, pool_id: int, obj: int, index: int) -> None:
        key = self._key(cid, pool_id)
        persistent = self.store._pool(cid, pool_id).persistent
        entries = self.model[key]
        expected = entries.get(((obj, 7, 0), index))
        got = self.store.get(cid, pool_id, (obj, 7, 0), index)
        if expected is None:
            assert got is None, "get returned data for an empty handle"
            return
        page, evictions_at_put = expected
        if got is None:
            assert not persistent, "a persistent page was lost"
            assert self._evictions() > evictions_at_put, "ephemeral miss without any eviction"
            del entries[((obj, 7, 0), index)]
            return
        assert got == page, "get returned wrong data"
        if self.exclusive[key]:
            del entries[((obj, 7, 0), index)]  # exclusive get

    @rule(pool=pools, obj=st.integers(0, 1), index=st.integers(0, 3))
    def flush_page(self, pool: tuple[int, int], obj: int, index: int) -> None:
        cid, pool_id = pool
        if pool_id < 0 or self.store._client(cid).pools[pool_id] is None:
            return
        entries = self.model[self._key(cid, pool_id)]
        found = self.store.flush_page(cid, pool_id, (obj, 7, 0), index)
        held = entries.pop(((obj, 7, 0), index), None) is not None
        if found:
            assert held, "flush found a page the model does not hold"

    @rule(pool=pools, obj=st.integers(0, 2))
    def flush_object(self, pool: tuple[int, int], obj: int) -> None:
        cid, pool_id = pool
        if pool_id < 0 or self.store._client(cid).pools[pool_id] is None:
            return
        entries = self.model[self._key(cid, pool_id)]
        count = self.store.flush_object(cid, pool_id, (obj, 7, 0))
        held = [h for h in entries if h[0] == (obj, 7, 0)]
        for h in held:
            del entries[h]
        assert count <= len(held)

    @rule(pool=consumes(pools))
    def destroy_pool(self, pool: tuple[int, int]) -> None:
        cid, pool_id = pool
        if pool_id < 0 or self.store._client(cid).pools[pool_id] is None:
            return
        key = self._key(cid, pool_id)
        self.store.destroy_pool(cid, pool_id)
        if not (isinstance(key, tuple) and key[0] == "shared" and key[1] in self.store._shared):
            self.model[key] = {}
        for other in self.clients:  # a shared pool handed over is charged without a quota check
            bound = self.charge_bound[other]
            if bound is not None:
                self.charge_bound[other] = max(bound, self.store._client(other).charged_bytes)

    @rule(client=st.sampled_from([0, 1]), quota=st.sampled_from([None, 0, 1500, 4000, 12000]))
    def set_quota(self, client: int, quota: int | None) -> None:
        cid = self.clients[client]
        self.store.set_quota(cid, quota)
        held = self.store._client(cid).charged_bytes
        self.charge_bound[cid] = None if quota is None else max(quota, held)

    @rule(frames=st.integers(1, ARENA_FRAMES))
    def set_persistent_cap(self, frames: int) -> None:
        self.store.set_persistent_cap(frames * PAGE_SIZE)
        self.cap_overhang = self.store.xv.frames_in_use + self.store.xv.reserved_frames

    def _persistent_frames(self) -> int:
        """Persistent data frames plus the frames persistent metadata needs."""
        return self.store.xv.frames_in_use + -(-self.store.meta.pers_bytes // PAGE_SIZE)

    @rule(client=st.sampled_from([0, 1]), frozen=st.booleans())
    def freeze(self, client: int, frozen: bool) -> None:
        cid = self.clients[client]
        if frozen:
            self.store.freeze(cid)
            self.frozen.add(cid)
        else:
            self.store.thaw(cid)
            self.frozen.discard(cid)

    @rule(frames=st.integers(2, ARENA_FRAMES))
    def set_memory_limit(self, frames: int) -> None:
        store = self.store
        store.set_memory_limit(frames * PAGE_SIZE)
        # Reclaim left nothing but persistent pages and their metadata above the limit.
        if store.arena.frames_in_use > frames:
            assert store.zbud.frames_in_use == 0 and not store.reclaimer.same_filled
            persistent = self._persistent_frames()
            assert store.arena.frames_in_use <= persistent + 1, "reclaim stopped too early"
        self.limit_overhang = store.arena.frames_in_use
        self.cap_overhang = store.xv.frames_in_use + store.xv.reserved_frames

    @invariant()
    def stores_are_consistent(self) -> None:
        if not hasattr(self, "store"):
            return
        self.store.zbud.check_invariants()
        self.store.xv.check_invariants()
        pools = self.store.all_pools()
        for p in pools:
            assert any(member == p.owner.id for member, _ in p.members), "owner left its pool"
        self._check_charges(pools)
        self.store.dedup.check_invariants(pools)
        seen = set()
        for cid in self.clients:
            for pool_id, pool in enumerate(self.store._client(cid).pools):
                if pool is None or id(pool) in seen:
                    continue
                seen.add(id(pool))
                held = len(self.model.get(self._key(cid, pool_id), {}))
                if pool.persistent:
                    assert pool.pages == held, f"persistent pool holds {pool.pages}, model {held}"
                else:
                    assert pool.pages <= held, f"ephemeral pool holds {pool.pages} > model {held}"


    def _check_charges(self, pools: list[Pool]) -> None:
        store, meta = self.store, self.store.meta
        meta.check_invariants()
        expected: dict[bool, int] = {False: 0, True: 0}  # persistent? -> metadata charge
        for p in pools:
            pages = sum(len(obj) for obj in p.objects.values())
            assert pages == p.pages and all(p.objects.values()), "page count or empty object"
            same_filled = sum(ref < 0 for obj in p.objects.values() for ref in obj.values())
            assert same_filled == p.same_filled_pages
            assert p.meta_bytes == p.pages * p.entry_charge + len(p.objects) * OBJECT_CHARGE
            expected[p.persistent] += p.meta_bytes
        assert meta.bytes == expected[False] + expected[True], "ledger != pages and objects"
        assert meta.pers_bytes == expected[True], "persistent ledger != persistent pages"
        eph_same_filled = sum(p.same_filled_pages for p in pools if not p.persistent)
        assert len(store.reclaimer.same_filled) == eph_same_filled, "same-filled LRU out of step"
        for cid in self.clients:  # compressed bytes and metadata, charged to each pool's owner
            client = store._client(cid)
            owned = sum(p.zbytes + p.meta_bytes for p in pools if p.owner is client)
            assert client.charged_bytes == owned, f"client {cid}: {client.charged_bytes} != {owned}"
            bound = self.charge_bound[cid]
            assert bound is None or client.charged_bytes <= bound, "over quota"
        # The limit holds data frames and metadata frames; the cap persistent ones of each.
        meta_frames = -(-meta.bytes // PAGE_SIZE)
        data_frames = store.zbud.frames_in_use + store.xv.frames_in_use
        assert data_frames + meta.frames == store.arena.frames_in_use
        assert meta.frames >= meta_frames
        limit = max(store.arena.limit_frames, self.limit_overhang)
        assert store.arena.frames_in_use <= limit, "over the memory limit"
        cap = max(store.persistent_cap_frames, self.cap_overhang)
        assert self._persistent_frames() <= cap, "over the persistent cap"


TmemModel.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_tmem_model = TmemModel.TestCase
