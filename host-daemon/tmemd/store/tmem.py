"""The tmem store: Xen/zcache semantics over two compressed page stores.

Ephemeral pages are compressed into :class:`~.zbud.ZbudStore` (two per frame, evictable);
persistent pages into :class:`~.xvmalloc.XvmallocStore` (dense, never evicted). Both share
one :class:`~.arena.FrameArena`, whose size is the host-memory limit. Every page and object
is also charged for its bookkeeping (:mod:`.charging`: against the limit, the persistent cap
and the owner's quota). When the arena is full it asks for reclaim, which drops ephemeral
memory least recently stored first: whole zbud frames and same-filled ephemeral pages.

The rules (docs/facts.md, "tmem semantics"):
- a put may fail at any time; a failed put to a handle that held data leaves it flushed;
- a get on a private ephemeral pool is exclusive (a hit flushes the page), unless the pool
  was made with KEEP_ON_GET (ours: an inclusive cache);
- a get on a persistent pool never misses while the store holds the page;
- pages filled with one byte value are kept without a frame (but pay their metadata);
- with dedup on, identical ephemeral pages of one client share one zbud copy (:mod:`.dedup`);
- bad input raises a :class:`~tmemd.store.errors.TmemError` before anything changes.

The store is single-threaded: one thread (the daemon's event loop) calls it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from time import perf_counter_ns
from typing import Any, cast

from .. import PAGE_SIZE
from .arena import FrameArena
from .charging import MAX_CHARGE, OBJECT_CHARGE, MemoryLimits, MetaLedger, Reclaimer
from .codecs import get_codec
from .counters import Counters, PutRefusal
from .dedup import DEDUP_ENTRY_CHARGE, DedupCopy, Deduplicator
from .errors import InvalidArgument, NoSuchClient, TooManyClients
from .pools import (
    UUID_BYTES,
    Client,
    ObjectPages,
    Oid,
    Pool,
    PoolFlags,
    check_quota,
    find_pool,
    page_bytes,
    pool_flags,
    resolve_handle,
)
from .storeconfig import StoreConfig
from .tables import compact
from .xvmalloc import LENGTH_MASK as XV_LENGTH_MASK
from .xvmalloc import XvmallocStore
from .zbud import LENGTH_MASK as HANDLE_LENGTH_MASK
from .zbud import ZbudStore

log = logging.getLogger(__name__)

# Same-filled pages are recognised by comparing with these (memcmp, exits at the first mismatch).
FILLED_PAGES = [bytes([b]) * PAGE_SIZE for b in range(256)]
FILLED_REFS = [-1 - b for b in range(256)]  # one int object per fill byte, shared by every page
# One operation in LATENCY_SAMPLE_EVERY of each kind is timed: reading the clock twice costs
# about as much as the rest of a store's bookkeeping. The histograms are a uniform sample.
LATENCY_SAMPLE_EVERY = 8
LATENCY_SAMPLE_MASK = LATENCY_SAMPLE_EVERY - 1
assert HANDLE_LENGTH_MASK == XV_LENGTH_MASK  # both page stores end a handle in its length


class TmemStore:
    """Clients, pools, objects and pages, with memory policy and statistics."""

    def __init__(self, config: StoreConfig | None = None) -> None:
        self.config = config = config or StoreConfig()
        config.validate()
        self.arena = FrameArena(config.memory_limit_bytes // PAGE_SIZE)
        self.zbud = ZbudStore(self.arena, on_evict=self._evicted)
        self.xv = XvmallocStore(self.arena)  # its max_frames is the persistent cap
        self.meta = MetaLedger(self.arena, self.xv,
                               MAX_CHARGE + DEDUP_ENTRY_CHARGE if config.dedup else MAX_CHARGE)
        self.reclaimer = Reclaimer(self.zbud, self.meta, self._evict_same_filled)
        self._same_filled_lru = self.reclaimer.same_filled
        self.arena.reclaimer = self.reclaimer.reclaim_one
        self.limits = MemoryLimits(self.arena, self.xv, self.meta, self.reclaimer)
        self.ctr = Counters()
        self.dedup = Deduplicator(self.zbud, self.ctr)  # its maps stay empty with dedup off
        self._put_latency = self.ctr.latency["put"]
        self._get_latency = self.ctr.latency["get"]
        self._flush_latency = self.ctr.latency["flush"]
        self._clients: dict[int, Client] = {}
        self._shared: dict[bytes, Pool] = {}
        self._next_client_id = 1
        self.set_persistent_cap(config.persistent_cap_bytes)

    # ----- clients -------------------------------------------------------------------------
    def new_client(self, name: str, quota_bytes: int | None = None) -> int:
        """A new client's id; TooManyClients (nothing changed) at ``max_clients``."""
        check_quota(quota_bytes)
        if len(self._clients) >= self.config.max_clients:
            raise TooManyClients(f"the store already has {len(self._clients)} clients"
                                 f" (max_clients {self.config.max_clients})")
        cid = self._next_client_id
        self._next_client_id += 1
        self._clients[cid] = Client(cid, name, quota_bytes)
        log.debug("new client %d (%s)", cid, name)
        return cid

    def _client(self, client_id: int) -> Client:
        try:
            return self._clients[client_id]
        except (KeyError, TypeError):
            raise NoSuchClient(f"no client {client_id!r}") from None

    def destroy_client(self, client_id: int) -> None:
        client = self._client(client_id)
        for pool_id, pool in enumerate(client.pools):
            if pool is not None:
                self.destroy_pool(client_id, pool_id)
        self.dedup.drop_client(client)
        del self._clients[client_id]

    def clients(self) -> list[int]:
        return list(self._clients)

    def client_list(self) -> list[Client]:
        return list(self._clients.values())

    def client_name(self, client_id: int) -> str:
        return self._client(client_id).name

    def freeze(self, client_id: int) -> None:
        """From now on every put of this client fails (and flushes the handle)."""
        self._client(client_id).frozen = True

    def thaw(self, client_id: int) -> None:
        self._client(client_id).frozen = False

    def set_quota(self, client_id: int, quota_bytes: int | None) -> None:
        check_quota(quota_bytes)
        self._client(client_id).quota_bytes = quota_bytes

    def flush_client(self, client_id: int) -> int:
        """Drop every page of the pools the client owns (not shared pools it only joined);
        the pools stay. Returns pages dropped."""
        client = self._client(client_id)
        owned = [p for p in client.pools if p is not None and p.owner is client]
        return sum(self._flush_pool_pages(p) for p in owned)

    # ----- pools ---------------------------------------------------------------------------
    def new_pool(
        self,
        client_id: int,
        flags: int,
        uuid: bytes = bytes(UUID_BYTES),
        codec: str | None = None,
        pool_id: int | None = None,
    ) -> int:
        """Create (or, for a shared uuid already in use, join) a pool; return its id."""
        client = self._client(client_id)
        pflags = pool_flags(flags, uuid)
        shared = bool(pflags & PoolFlags.SHARED)
        codec_obj = get_codec(codec or self.config.codec)
        slot = client.free_slot(pool_id)
        existing = self._shared.get(bytes(uuid)) if shared else None
        if existing is not None:
            if existing.flags != pflags:
                raise InvalidArgument("shared pool exists with other flags")
            pool = existing
        else:
            store = self.config.page_store  # which page store holds the pool's pages
            in_xv = bool(pflags & PoolFlags.PERSIST) if store == "auto" else store == "xvmalloc"
            max_z = (self.config.max_persistent_zsize if in_xv
                     else min(self.config.max_ephemeral_zsize or PAGE_SIZE, self.zbud.max_size))
            pool = Pool(client, pflags, bytes(uuid), codec_obj, max_z)
            pool.in_xv = in_xv
            if shared:
                self._shared[pool.uuid] = pool
            elif self.config.dedup and not pflags & PoolFlags.PERSIST and not in_xv:
                pool.dedup = self.dedup.table_for(client, codec_obj.name)
                pool.entry_charge += DEDUP_ENTRY_CHARGE
        pool.members.add((client.id, slot))
        client.pools[slot] = pool
        return slot

    def _pool(self, client_id: int, pool_id: int) -> Pool:
        return find_pool(self._clients, client_id, pool_id)

    def destroy_pool(self, client_id: int, pool_id: int) -> int:
        pool = self._pool(client_id, pool_id)
        self._clients[client_id].pools[pool_id] = None
        pool.members.discard((client_id, pool_id))
        if pool.members:  # a shared pool other clients still use
            if all(member != pool.owner.id for member, _ in pool.members):
                pool.hand_over(self._clients[min(pool.members)[0]])
            return 0
        if pool.shared:
            del self._shared[pool.uuid]
        return self._flush_pool_pages(pool)

    def all_pools(self) -> list[Pool]:
        """Every pool once (a shared pool appears in several clients' slots)."""
        unique = {id(p): p for c in self._clients.values() for p in c.pools if p is not None}
        return list(unique.values())

    def pools(self, client_id: int) -> list[dict[str, Any]]:
        client = self._client(client_id)
        return [p.describe(i) for i, p in enumerate(client.pools) if p is not None]

    # ----- pages ---------------------------------------------------------------------------
    def put(self, client_id: int, pool_id: int, oid: Oid, index: int, page: bytes) -> bool:
        """Store a copy of ``page``; False when refused (the handle is then empty)."""
        client, pool = resolve_handle(self._clients, client_id, pool_id, oid, index)
        if type(page) is not bytes or len(page) != PAGE_SIZE:
            page = page_bytes(page)
        ctr = self.ctr
        ctr.put_total += 1
        t0 = 0 if ctr.put_total & LATENCY_SAMPLE_MASK else perf_counter_ns()
        client.puts += 1
        objects = pool.objects
        obj = objects.get(oid)
        had_data = False
        if obj is not None:
            oid = obj.oid  # the object's own copy: records that outlive this call keep it
            if index in obj:
                had_data = True
                self._remove(pool, oid, index)  # never leave old data readable if this put fails
        # Same-filled pages need no frame; others are compressed. Both are charged (charging.py).
        refusal: PutRefusal | None = None
        data = None
        zsize = key = 0
        copy: DedupCopy | None = None
        fill = page[0]
        if client.frozen:  # freeze turns puts into flushes
            refusal = PutRefusal.FROZEN
        elif page == FILLED_PAGES[fill]:
            ctr.same_filled_puts += 1
        elif pool.dedup is None:
            data = pool.codec.compress(page)
            zsize = len(data)
        else:  # a copy of this content, or the page compressed (dedup.py)
            data, key, copy = self.dedup.lookup(pool, page)
            zsize = len(data)
        owner = pool.owner
        quota = owner.quota_bytes
        meta = self.meta
        if refusal is not None:
            pass
        elif zsize > pool.max_zsize:
            refusal = PutRefusal.COMPRESS_POOR
        elif quota is not None and (
            owner.charged_bytes + zsize + pool.entry_charge
            + (OBJECT_CHARGE if obj is None or not obj else 0) > quota
        ):
            refusal = PutRefusal.QUOTA
        elif pool.persistent and meta.pers_bytes + MAX_CHARGE > meta.pers_room and (
            not meta.reserve_persistent()
        ):
            refusal = PutRefusal.CAP
        elif meta.bytes + meta.max_charge > meta.room and not meta.reserve():
            refusal = PutRefusal.NO_MEMORY
        elif data is None:
            ref = FILLED_REFS[fill]
        else:
            if pool.in_xv:
                handle = self.xv.store(data, None)
            elif pool.dedup is None:
                handle = self.zbud.store(data, (pool, oid, index))
            else:
                handle = self.dedup.store(pool, oid, index, data, key, copy)
            if handle is None:
                xv = self.xv
                at_cap = pool.in_xv and xv.frames_in_use + xv.reserved_frames >= xv.max_frames
                refusal = PutRefusal.CAP if at_cap else PutRefusal.NO_MEMORY
            ref = handle  # type: ignore[assignment]
        if refusal is not None:
            self._put_refused(client, pool, had_data, refusal)
            if t0:
                self._put_latency.record(perf_counter_ns() - t0)
            return False
        # Look the object up only now: reclaim above may have emptied and dropped it.
        obj = objects.get(oid)
        charge = pool.entry_charge
        if obj is None:
            obj = objects[oid] = ObjectPages(oid)
            charge += OBJECT_CHARGE
            ctr.curr_obj_count += 1
            if ctr.curr_obj_count > ctr.curr_obj_count_max:
                ctr.curr_obj_count_max = ctr.curr_obj_count
        obj[index] = ref
        pool.pages += 1
        meta.bytes += charge
        if pool.persistent:
            meta.pers_bytes += charge
        if ref < 0:
            pool.same_filled_pages += 1
            if not pool.persistent:
                self._same_filled_lru[(pool, oid, index)] = self.zbud.clock
        else:
            pool.zbytes += zsize
        owner.charged_bytes += zsize + charge
        if t0:
            self._put_latency.record(perf_counter_ns() - t0)
        return True

    def _put_refused(
        self, client: Client, pool: Pool, had_data: bool, cause: PutRefusal
    ) -> None:
        ctr = self.ctr
        ctr.count_refusal(cause)
        client.failed_puts += 1
        meta = self.meta  # a reservation this put made may be more than the charges need
        if meta.bytes <= meta.low:
            meta.shrink()
        if meta.pers_bytes <= meta.pers_low:
            meta.shrink_persistent()
        if pool.persistent:
            ctr.failed_pers_puts += 1
        else:
            ctr.failed_eph_puts += 1
        if had_data:
            ctr.put_to_flush += 1

    def _remove(self, pool: Pool, oid: Oid, index: int) -> None:
        """Drop one page that is known to be present, freeing its storage."""
        ref = self._forget_page(pool, oid, index)
        if ref < 0:
            pool.same_filled_pages -= 1
            if not pool.persistent:
                lru = self._same_filled_lru
                del lru[(pool, oid, index)]
                left = len(lru)
                if left >= 8 and not left & (left - 1):
                    compact(lru)
        elif pool.dedup is not None:
            self.dedup.release(pool, oid, index, ref)
        else:
            (self.xv if pool.in_xv else self.zbud).free(ref)

    def _evicted(self, owner: object) -> None:
        """zbud reclaimed the frame holding this page (or the copy these pages shared):
        forget the pages (they simply vanish)."""
        if type(owner) is DedupCopy:
            holders = self.dedup.evicted(owner)
        else:
            holders = [cast(tuple[Pool, Oid, int], owner)]
        for pool, oid, index in holders:
            self._forget_page(pool, oid, index)
            self._count_eviction(pool)

    def _evict_same_filled(self, pool: Pool, oid: Oid, index: int) -> None:
        """Reclaim chose this ephemeral same-filled page (already off its LRU): it vanishes."""
        self._forget_page(pool, oid, index)
        pool.same_filled_pages -= 1
        self._count_eviction(pool)
        self.ctr.same_filled_evicted += 1

    def _count_eviction(self, pool: Pool) -> None:
        pool.evicted_pages += 1
        pool.owner.evicted_pages += 1
        self.ctr.evicted_pages += 1

    def _forget_page(self, pool: Pool, oid: Oid, index: int) -> int:
        """Take a page's entry out of its object (and an emptied object out of the pool) and
        uncharge it (compressed bytes and metadata); the page's reference, still to be freed."""
        objects = pool.objects
        obj = objects[oid]
        ref = obj.pop(index)
        charge = pool.entry_charge
        left = len(obj)
        if not left:
            del objects[oid]
            self.ctr.curr_obj_count -= 1
            charge += OBJECT_CHARGE
            left = len(objects)
            if not left & (left - 1) and left >= 8:
                compact(objects)  # tables that shrank give their memory back (tables.py)
        elif not left & (left - 1) and left >= 8:
            compact(obj)
        pool.pages -= 1
        meta = self.meta
        meta.bytes -= charge
        if meta.bytes <= meta.low:
            meta.shrink()
        if pool.persistent:
            meta.pers_bytes -= charge
            if meta.pers_bytes <= meta.pers_low:
                meta.shrink_persistent()
        if ref >= 0:
            zsize = ref & HANDLE_LENGTH_MASK  # zbud and xvmalloc handles end in the length
            pool.zbytes -= zsize
            charge += zsize
        pool.owner.charged_bytes -= charge
        return ref

    def _page(self, pool: Pool, ref: int) -> bytes:
        """The page a reference stands for: a same-filled page, or decompressed from its store."""
        if ref < 0:
            return FILLED_PAGES[-1 - ref]
        return pool.codec.decompress((self.xv if pool.in_xv else self.zbud).load(ref))

    def get(self, client_id: int, pool_id: int, oid: Oid, index: int) -> bytes | None:
        """The page stored at this handle, or None. Private ephemeral gets are exclusive."""
        client, pool = resolve_handle(self._clients, client_id, pool_id, oid, index)
        ctr = self.ctr
        ctr.get_total += 1
        t0 = 0 if ctr.get_total & LATENCY_SAMPLE_MASK else perf_counter_ns()
        client.gets += 1
        obj = pool.objects.get(oid)
        ref = obj.get(index) if obj is not None else None
        if ref is None:
            page = None
        else:
            page = self._page(pool, ref)
            if pool.exclusive_gets:
                self._remove(pool, oid, index)
            elif ref >= 0 and not pool.in_xv:
                self.zbud.touch(ref)  # a page that is read stays in memory longest
            ctr.get_hits += 1
            client.get_hits += 1
        if t0:
            self._get_latency.record(perf_counter_ns() - t0)
        return page

    def flush_page(self, client_id: int, pool_id: int, oid: Oid, index: int) -> bool:
        client, pool = resolve_handle(self._clients, client_id, pool_id, oid, index)
        ctr = self.ctr
        ctr.flush_total += 1
        t0 = 0 if ctr.flush_total & LATENCY_SAMPLE_MASK else perf_counter_ns()
        client.flushes += 1
        obj = pool.objects.get(oid)
        found = obj is not None and index in obj
        if found:
            self._remove(pool, oid, index)
            ctr.flush_found += 1
        if t0:
            self._flush_latency.record(perf_counter_ns() - t0)
        return found

    def flush_object(self, client_id: int, pool_id: int, oid: Oid) -> int:
        _, pool = resolve_handle(self._clients, client_id, pool_id, oid, 0)
        self.ctr.flobj_total += 1
        obj = pool.objects.get(oid)
        if obj is None:
            return 0
        count = len(obj)
        for index in list(obj):
            self._remove(pool, oid, index)
        self.ctr.flobj_found += 1
        return count

    def _flush_pool_pages(self, pool: Pool) -> int:
        count = 0
        for oid in list(pool.objects):
            for index in list(pool.objects[oid]):
                self._remove(pool, oid, index)
                count += 1
        return count

    # ----- memory policy (charging.py) -------------------------------------------------------
    def set_memory_limit(self, nbytes: int) -> None:
        """Limit all frames (data and metadata) to ``nbytes``; reclaims ephemeral memory now."""
        self.limits.set_memory_limit(nbytes)

    def set_persistent_cap(self, nbytes: int | None) -> None:
        """Cap the frames persistent pages (and their metadata) may use; None: 3/4 of the limit."""
        self.limits.set_persistent_cap(nbytes)

    @property
    def persistent_cap_frames(self) -> int:
        return self.xv.max_frames

    def reclaim(self, nbytes: int) -> int:
        """Drop ephemeral memory until ``nbytes`` are freed or none is left; returns frames."""
        return self.limits.reclaim(nbytes)

    # ----- introspection -------------------------------------------------------------------
    def iter_persistent(
        self, client_id: int
    ) -> Iterator[tuple[int, int, str, bytes, Oid, int, bytes]]:
        """Every persistent page of a client: (pool id, flags, codec, uuid, oid, index, page)."""
        client = self._client(client_id)
        for pool_id, pool in enumerate(client.pools):
            if pool is None or not pool.persistent or pool.owner is not client:
                continue
            for oid, obj in list(pool.objects.items()):
                for index, ref in list(obj.items()):
                    page = self._page(pool, ref)
                    yield pool_id, int(pool.flags), pool.codec.name, pool.uuid, oid, index, page

    def stats(self) -> dict[str, Any]:
        from .statsreport import store_stats

        return store_stats(self)

    def client_stats(self, client_id: int) -> dict[str, Any]:
        client = self._client(client_id)
        result = client.counters()
        result["pools"] = self.pools(client_id)
        return result

    def close(self) -> None:
        self.arena.close()
