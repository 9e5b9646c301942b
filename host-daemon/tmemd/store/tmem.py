"""The tmem store: Xen/zcache semantics over two compressed page stores.

Ephemeral pages are compressed into :class:`~.zbud.ZbudStore` (two per frame, evictable);
persistent pages into :class:`~.xvmalloc.XvmallocStore` (dense, never evicted). Both share
one :class:`~.arena.FrameArena`, whose size is the host-memory limit; when it is full the
arena asks for reclaim, which evicts whole zbud frames least recently used first.

The rules (docs/facts.md, "tmem semantics"):
- a put may fail at any time; a failed put to a handle that held data leaves it flushed;
- a get on a private ephemeral pool is exclusive (a hit flushes the page);
- a get on a persistent pool never misses while the store holds the page;
- pages filled with one byte value are kept without a frame;
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
from .codecs import get_codec
from .counters import Counters, PutRefusal
from .errors import InvalidArgument, NoSuchClient, NoSuchPool, TooManyPools
from .pools import (
    INDEX_LIMIT,
    MAX_POOLS,
    OID_LIMIT,
    PAGESIZE_MASK,
    UUID_BYTES,
    VERSION_SHIFT,
    Client,
    Oid,
    Pool,
    PoolFlags,
)
from .storeconfig import StoreConfig
from .xvmalloc import XvmallocStore
from .zbud import ZbudStore

log = logging.getLogger(__name__)

# Same-filled pages are recognised by comparing with these (memcmp, exits at the first mismatch).
FILLED_PAGES = [bytes([b]) * PAGE_SIZE for b in range(256)]
# One operation in LATENCY_SAMPLE_EVERY of each kind is timed: reading the clock twice costs
# about as much as the rest of a store's bookkeeping. The histograms are a uniform sample.
LATENCY_SAMPLE_EVERY = 8
LATENCY_SAMPLE_MASK = LATENCY_SAMPLE_EVERY - 1
_KNOWN_FLAGS = PoolFlags.PERSIST | PoolFlags.SHARED | PAGESIZE_MASK | (0xFF << VERSION_SHIFT)


def _page_bytes(page: object) -> bytes:
    """The page as bytes of exactly one page; InvalidArgument otherwise."""
    if not isinstance(page, bytes | bytearray | memoryview):
        raise InvalidArgument(f"page must be bytes, not {type(page).__name__}")
    if len(page) != PAGE_SIZE:
        raise InvalidArgument(f"page must be {PAGE_SIZE} bytes, got {len(page)}")
    return bytes(page)


def _check_quota(quota_bytes: int | None) -> None:
    if quota_bytes is not None and quota_bytes < 0:
        raise InvalidArgument("quota must not be negative")


class TmemStore:
    """Clients, pools, objects and pages, with memory policy and statistics."""

    def __init__(self, config: StoreConfig | None = None) -> None:
        self.config = config = config or StoreConfig()
        config.validate()
        self.arena = FrameArena(config.memory_limit_bytes // PAGE_SIZE)
        self.zbud = ZbudStore(self.arena, on_evict=self._evicted)
        self.xv = XvmallocStore(self.arena)  # its max_frames is the persistent cap
        self._default_cap = True
        self.arena.reclaimer = self.zbud.evict_lru_frame
        self.ctr = Counters()
        self._put_latency = self.ctr.latency["put"]
        self._get_latency = self.ctr.latency["get"]
        self._flush_latency = self.ctr.latency["flush"]
        self._clients: dict[int, Client] = {}
        self._shared: dict[bytes, Pool] = {}
        self._next_client_id = 1
        self.set_persistent_cap(config.persistent_cap_bytes)

    # ----- clients -------------------------------------------------------------------------
    def new_client(self, name: str, quota_bytes: int | None = None) -> int:
        _check_quota(quota_bytes)
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
        del self._clients[client_id]

    def clients(self) -> list[int]:
        return list(self._clients)

    def client_name(self, client_id: int) -> str:
        return self._client(client_id).name

    def freeze(self, client_id: int) -> None:
        """From now on every put of this client fails (and flushes the handle)."""
        self._client(client_id).frozen = True

    def thaw(self, client_id: int) -> None:
        self._client(client_id).frozen = False

    def set_quota(self, client_id: int, quota_bytes: int | None) -> None:
        _check_quota(quota_bytes)
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
        if not isinstance(flags, int) or flags < 0 or flags & ~_KNOWN_FLAGS:
            raise InvalidArgument(f"unsupported pool flags {flags!r}")
        if flags & PAGESIZE_MASK:
            raise InvalidArgument("only 4 KiB pages are supported (page size field must be 0)")
        if not isinstance(uuid, bytes | bytearray) or len(uuid) != UUID_BYTES:
            raise InvalidArgument("pool uuid must be 16 bytes")
        pflags = PoolFlags(flags & (PoolFlags.PERSIST | PoolFlags.SHARED))
        shared = bool(pflags & PoolFlags.SHARED)
        if shared and not any(uuid):
            raise InvalidArgument("a shared pool needs a non-zero uuid")
        if shared and pflags & PoolFlags.PERSIST:
            # As in Xen: persistent pages count against one client's quota and must survive
            # that client's departure, which a pool owned by several guests cannot promise.
            raise InvalidArgument("shared pools must be ephemeral (shared persistent refused)")
        codec_obj = get_codec(codec or self.config.codec)
        slot = self._free_slot(client, pool_id)
        existing = self._shared.get(bytes(uuid)) if shared else None
        if existing is not None:
            if existing.flags != pflags:
                raise InvalidArgument("shared pool exists with other flags")
            pool = existing
        else:
            max_z = (
                self.config.max_persistent_zsize
                if pflags & PoolFlags.PERSIST
                else min(self.config.max_ephemeral_zsize or PAGE_SIZE, self.zbud.max_size)
            )
            pool = Pool(client, pflags, bytes(uuid), codec_obj, max_z)
            if shared:
                self._shared[pool.uuid] = pool
        pool.members.add((client.id, slot))
        client.pools[slot] = pool
        return slot

    def _free_slot(self, client: Client, wanted: int | None) -> int:
        if wanted is not None:
            if not isinstance(wanted, int) or not 0 <= wanted < MAX_POOLS:
                raise InvalidArgument(f"pool id must be in 0..{MAX_POOLS - 1}")
            if client.pools[wanted] is not None:
                raise InvalidArgument(f"pool id {wanted} is in use")
            return wanted
        for slot, pool in enumerate(client.pools):
            if pool is None:
                return slot
        raise TooManyPools(f"client {client.id} already has {MAX_POOLS} pools")

    def _pool(self, client_id: int, pool_id: int) -> Pool:
        client = self._client(client_id)
        pool = client.pools[pool_id] if type(pool_id) is int and 0 <= pool_id < MAX_POOLS else None
        if pool is None:
            raise NoSuchPool(f"client {client_id} has no pool {pool_id!r}")
        return pool

    def _resolve(self, client_id: int, pool_id: int, oid: Oid, index: int) -> tuple[Client, Pool]:
        """The client and pool of a page operation, after checking every argument.

        Written as one flat test because it runs on every operation.
        """
        client = self._clients.get(client_id) if type(client_id) is int else None
        if (
            client is not None
            and type(pool_id) is int
            and 0 <= pool_id < MAX_POOLS
            and type(oid) is tuple
            and len(oid) == 3
            and type(index) is int
            and 0 <= index < INDEX_LIMIT
        ):
            pool = client.pools[pool_id]
            a, b, c = oid
            if (
                pool is not None
                and type(a) is int
                and type(b) is int
                and type(c) is int
                and 0 <= a < OID_LIMIT
                and 0 <= b < OID_LIMIT
                and 0 <= c < OID_LIMIT
            ):
                return client, pool
        self._pool(client_id, pool_id)  # raises NoSuchClient / NoSuchPool if that is the fault
        raise InvalidArgument(
            f"bad handle: oid must be 3 x u64, index a u32: {oid!r}, {index!r}"
        )

    def destroy_pool(self, client_id: int, pool_id: int) -> int:
        pool = self._pool(client_id, pool_id)
        self._clients[client_id].pools[pool_id] = None
        pool.members.discard((client_id, pool_id))
        if pool.members:  # a shared pool other clients still use
            if all(member != pool.owner.id for member, _ in pool.members):
                self._hand_over(pool, self._clients[min(pool.members)[0]])
            return 0
        if pool.shared:
            del self._shared[pool.uuid]
        return self._flush_pool_pages(pool)

    @staticmethod
    def _hand_over(pool: Pool, heir: Client) -> None:
        """The owner of a shared pool left it: charge its pages to a remaining member."""
        pool.owner.zbytes -= pool.zbytes
        heir.zbytes += pool.zbytes
        pool.owner = heir

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
        client, pool = self._resolve(client_id, pool_id, oid, index)
        if type(page) is not bytes or len(page) != PAGE_SIZE:
            page = _page_bytes(page)
        ctr = self.ctr
        ctr.put_total += 1
        t0 = 0 if ctr.put_total & LATENCY_SAMPLE_MASK else perf_counter_ns()
        client.puts += 1
        objects = pool.objects
        obj = objects.get(oid)
        had_data = obj is not None and index in obj
        if had_data:
            self._remove(pool, oid, index)  # never leave old data readable if this put fails
        if client.frozen:  # freeze turns puts into flushes
            self._put_refused(client, pool, had_data, PutRefusal.FROZEN)
            if t0:
                self._put_latency.record(perf_counter_ns() - t0)
            return False
        # Store the page: same-filled pages need no frame; others are compressed and placed.
        fill = page[0]
        if page == FILLED_PAGES[fill]:
            ref = -1 - fill
            zsize = 0
            ctr.same_filled_puts += 1
        else:
            data = pool.codec.compress(page)
            zsize = len(data)
            owner = pool.owner
            quota = owner.quota_bytes
            if zsize > pool.max_zsize:
                refusal: PutRefusal | None = PutRefusal.COMPRESS_POOR
            elif quota is not None and owner.zbytes + zsize > quota:
                refusal = PutRefusal.QUOTA
            else:
                refusal = None
            if refusal is None:
                if pool.persistent:
                    handle = self.xv.store(data, None)
                else:
                    handle = self.zbud.store(data, (pool, oid, index, zsize))
                if handle is None:
                    refusal = self._no_frame_reason(pool)
            if refusal is not None:
                self._put_refused(client, pool, had_data, refusal)
                if t0:
                    self._put_latency.record(perf_counter_ns() - t0)
                return False
            ref = handle  # type: ignore[assignment]
        # Look the object up only now: reclaim inside store() may have emptied and dropped it.
        obj = objects.get(oid)
        if obj is None:
            obj = objects[oid] = {}
            ctr.curr_obj_count += 1
            if ctr.curr_obj_count > ctr.curr_obj_count_max:
                ctr.curr_obj_count_max = ctr.curr_obj_count
        obj[index] = ref
        pool.pages += 1
        if ref < 0:
            pool.same_filled_pages += 1
        else:
            pool.zbytes += zsize
            owner.zbytes += zsize
        if t0:
            self._put_latency.record(perf_counter_ns() - t0)
        return True

    def _no_frame_reason(self, pool: Pool) -> PutRefusal:
        if pool.persistent and self.xv.frames_in_use >= self.xv.max_frames:
            return PutRefusal.CAP
        return PutRefusal.NO_MEMORY

    def _put_refused(
        self, client: Client, pool: Pool, had_data: bool, cause: PutRefusal
    ) -> None:
        ctr = self.ctr
        ctr.count_refusal(cause)
        client.failed_puts += 1
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
        else:
            self._uncharge(pool, (self.xv if pool.persistent else self.zbud).free(ref))

    def _evicted(self, owner: object) -> None:
        """zbud reclaimed the frame holding this page: forget the page (it simply vanishes)."""
        pool, oid, index, zsize = cast(tuple[Pool, Oid, int, int], owner)
        self._forget_page(pool, oid, index)
        self._uncharge(pool, zsize)
        pool.evicted_pages += 1
        pool.owner.evicted_pages += 1
        self.ctr.evicted_pages += 1

    def _forget_page(self, pool: Pool, oid: Oid, index: int) -> int:
        """Take a page's entry out of its object (and an emptied object out of the pool)."""
        objects = pool.objects
        obj = objects[oid]
        ref = obj.pop(index)
        if not obj:
            del objects[oid]
            self.ctr.curr_obj_count -= 1
        pool.pages -= 1
        return ref

    @staticmethod
    def _uncharge(pool: Pool, zsize: int) -> None:
        pool.zbytes -= zsize
        pool.owner.zbytes -= zsize

    def _page(self, pool: Pool, ref: int) -> bytes:
        """The page a reference stands for: a same-filled page, or decompressed from its store."""
        if ref < 0:
            return FILLED_PAGES[-1 - ref]
        return pool.codec.decompress((self.xv if pool.persistent else self.zbud).load(ref))

    def get(self, client_id: int, pool_id: int, oid: Oid, index: int) -> bytes | None:
        """The page stored at this handle, or None. Private ephemeral gets are exclusive."""
        client, pool = self._resolve(client_id, pool_id, oid, index)
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
            ctr.get_hits += 1
            client.get_hits += 1
        if t0:
            self._get_latency.record(perf_counter_ns() - t0)
        return page

    def flush_page(self, client_id: int, pool_id: int, oid: Oid, index: int) -> bool:
        client, pool = self._resolve(client_id, pool_id, oid, index)
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
        _, pool = self._resolve(client_id, pool_id, oid, 0)
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

    # ----- memory policy -------------------------------------------------------------------
    def set_memory_limit(self, nbytes: int) -> None:
        """Limit all frames to ``nbytes`` (at most the arena size); evicts ephemeral frames now."""
        frames = nbytes // PAGE_SIZE
        if not 0 < frames <= self.arena.nframes:
            raise InvalidArgument(
                f"memory limit must be between {PAGE_SIZE} and {self.arena.nframes * PAGE_SIZE}"
            )
        self.arena.set_limit(frames)
        if self._default_cap:
            self.set_persistent_cap(None)  # 3/4 of the new limit
        while self.arena.frames_in_use > frames and self.zbud.evict_lru_frame():
            pass

    def set_persistent_cap(self, nbytes: int | None) -> None:
        """Cap the frames persistent pages may use; None means 3/4 of the memory limit (and
        follows later changes of the limit), as zcache capped persistent pages."""
        if nbytes is not None and nbytes < 0:
            raise InvalidArgument("persistent cap must not be negative")
        self._default_cap = nbytes is None
        if nbytes is None:
            self.xv.max_frames = self.arena.limit_frames * 3 // 4
        else:
            self.xv.max_frames = nbytes // PAGE_SIZE

    @property
    def persistent_cap_frames(self) -> int:
        return self.xv.max_frames

    def reclaim(self, nbytes: int) -> int:
        """Evict ephemeral frames until ``nbytes`` are freed or none are left; returns frames."""
        frames = 0
        while frames * PAGE_SIZE < nbytes and self.zbud.evict_lru_frame():
            frames += 1
        return frames

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
