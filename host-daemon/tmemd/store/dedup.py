"""Deduplication of identical ephemeral pages: one zbud copy for every page of one client that
holds the same content (off by default; ``StoreConfig.dedup``, docs/dedup.md).

Scope. A copy is shared only within one *dedup domain*: the private ephemeral pools of one
client that use one codec. Nothing is ever shared between clients (VMs): a put that finds
another VM's copy would be measurably faster than one that compresses, which would tell a
guest what another guest holds. Shared pools (several VMs by design) and persistent pools
are not deduplicated; same-filled pages need no frame in the first place.

Finding a copy. Each domain maps ``hash(page)`` (the interpreter's keyed SipHash, whose key
is secret and differs per process) to the copy stored first with that hash. A match is
confirmed byte for byte: the copy is decompressed and compared with the new page, so a hash
collision (chance or crafted) only costs a missed dedup, never a wrong page. A colliding
page is stored as a copy of its own that the map does not name. The codecs are functions of
the page, so a confirmed copy holds exactly the compressed bytes the new page would have.

Holders. A copy (:class:`DedupCopy`) is the zbud owner of its buddy and knows every page that
refers to it: ``holders`` is one ``(pool, oid, index)`` tuple while there is one, a set from
the second on. Every holder's entry in its object holds the copy's zbud handle, exactly as an
entry of a pool without dedup does. Dropping a holder (flush, exclusive get, overwrite,
flush_object, destroy_pool, client removal) takes it out of the set; the last one frees the
buddy and takes the copy out of its map. When zbud evicts the copy's frame, every holder
vanishes with it, as any ephemeral page may.

Charging (see :data:`DEDUP_ENTRY_CHARGE` and docs/dedup.md). Every holder is charged as if it
held a copy of its own: its compressed size and its entry charge, plus the dedup entry
charge for the map, the copy record and the holder sets. Quotas therefore bound exactly what
they bound without dedup; what dedup saves is host frames (fewer zbud buddies), which every
client's pages then share under the memory limit.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

from .counters import Counters
from .zbud import LENGTH_MASK, ZbudStore

if TYPE_CHECKING:
    from .pools import Client, Oid, Pool

log = logging.getLogger(__name__)

Holder = tuple["Pool", "Oid", int]
DedupTable = dict[int, "DedupCopy"]

# Metadata charged per entry of a deduplicating pool on top of the ephemeral entry charge:
# the copy record, its map slot and hash, and the holder sets of shared copies. Measured as
# charging.py measures the entry charge, with every page distinct (the worst case: a copy
# record per entry), tiny pages, 4 x an arena of 64 MiB put, one object per 512 pages: RSS
# growth plus metadata frames given back, 557 bytes an entry with dedup off, 846 with dedup
# on (tracemalloc while growing: 310 and 470). 289 more, rounded up to 320. Shared copies cost
# less per entry (two holders: about 500 in all; four: about 320).
DEDUP_ENTRY_CHARGE = 320
FREED = -1  # the handle of a copy whose buddy is gone (freed or evicted)
page_key = hash  # what the maps are keyed by (tests replace it to force collisions)


class DedupCopy:
    """One stored buddy that one or more pages of one dedup domain refer to."""

    __slots__ = ("handle", "key", "table", "holders", "count", "client")

    def __init__(self, key: int, table: DedupTable, holder: Holder) -> None:
        self.handle = FREED  # until zbud has stored it
        self.key = key
        self.table = table
        self.holders: Holder | set[Holder] = holder
        self.count = 1
        self.client: Client = holder[0].owner

    def holder_list(self) -> list[Holder]:
        holders = self.holders
        return list(holders) if isinstance(holders, set) else [holders]


class Deduplicator:
    """The dedup domains of one store and their copies in its zbud (see the module docstring)."""

    def __init__(self, zbud: ZbudStore, ctr: Counters) -> None:
        self._zbud = zbud
        self._ctr = ctr
        self._tables: dict[tuple[int, str], DedupTable] = {}  # (client id, codec) -> map

    def table_for(self, client: Client, codec_name: str) -> DedupTable:
        """The map of one client's dedup domain for a codec (created on first use)."""
        return self._tables.setdefault((client.id, codec_name), {})

    def drop_client(self, client: Client) -> None:
        """Forget a client's maps once all its pools are gone (they are empty by then)."""
        for key in [k for k in self._tables if k[0] == client.id]:
            if self._tables.pop(key):
                raise AssertionError(f"dedup: client {client.id} left copies behind")

    # ----- put ---------------------------------------------------------------------------------
    def lookup(self, pool: Pool, page: bytes) -> tuple[bytes, int, DedupCopy | None]:
        """The page's compressed bytes, its hash and the copy holding the same content, if any.

        On a confirmed match the bytes are the copy's (no compression needed)."""
        key = page_key(page)
        copy = pool.dedup.get(key)  # type: ignore[union-attr]
        codec = pool.codec
        if copy is not None:
            stored = self._zbud.load(copy.handle)
            if codec.decompress(stored) == page:
                return stored, key, copy
            self._ctr.dedup_mismatches += 1
        return codec.compress(page), key, None

    def store(
        self, pool: Pool, oid: Oid, index: int, data: bytes, key: int, copy: DedupCopy | None
    ) -> int | None:
        """Make ``(pool, oid, index)`` a holder of ``copy`` if it is still stored, else store
        ``data`` as a new copy; the handle, or None when zbud has no frame."""
        holder = (pool, oid, index)
        if copy is not None and copy.handle != FREED:  # reclaim may have evicted it meanwhile
            holders = copy.holders
            if isinstance(holders, set):
                holders.add(holder)
            else:
                copy.holders = {holders, holder}
            copy.count += 1
            client = copy.client
            client.dedup_hits += 1
            client.dedup_saved_pages += 1
            client.dedup_saved_bytes += len(data)
            self._ctr.dedup_hits += 1
            self._zbud.touch(copy.handle)  # a put of this content: the frame is recent again
            return copy.handle
        table: DedupTable = pool.dedup  # type: ignore[assignment]
        new = DedupCopy(key, table, holder)
        handle = self._zbud.store(data, new)  # may evict other copies; nothing changed yet
        if handle is None:
            return None
        new.handle = handle
        table.setdefault(key, new)  # a colliding key keeps naming the older copy
        return handle

    # ----- removal -----------------------------------------------------------------------------
    def release(self, pool: Pool, oid: Oid, index: int, handle: int) -> None:
        """The page ``(pool, oid, index)`` no longer refers to ``handle``'s copy."""
        copy: DedupCopy = self._zbud.owner(handle)  # type: ignore[assignment]
        count = copy.count - 1
        if not count:
            self._unlink(copy)
            self._zbud.free(handle)
            return
        copy.count = count
        holders = cast(set[Holder], copy.holders)  # a set from the second holder on
        holders.remove((pool, oid, index))
        if count == 1:
            copy.holders = holders.pop()
        client = copy.client
        client.dedup_saved_pages -= 1
        client.dedup_saved_bytes -= handle & LENGTH_MASK

    def evicted(self, copy: DedupCopy) -> list[Holder]:
        """zbud evicted the copy's frame: the pages that referred to it (each must vanish)."""
        holders = copy.holder_list()
        if copy.count > 1:
            self._ctr.dedup_evicted_pages += copy.count
            client = copy.client
            client.dedup_saved_pages -= copy.count - 1
            client.dedup_saved_bytes -= (copy.count - 1) * (copy.handle & LENGTH_MASK)
        self._unlink(copy)
        return holders

    def _unlink(self, copy: DedupCopy) -> None:
        table = copy.table
        if table.get(copy.key) is copy:
            del table[copy.key]
        copy.handle = FREED
        copy.holders = set()
        copy.count = 0

    # ----- introspection -----------------------------------------------------------------------
    def stats(self, clients: list[Client]) -> dict[str, Any]:
        """The gauges (the event counts are in :class:`~.counters.Counters`)."""
        return {
            "dedup_copies": sum(len(t) for t in self._tables.values()),
            "dedup_saved_pages": sum(c.dedup_saved_pages for c in clients),
            "dedup_saved_bytes": sum(c.dedup_saved_bytes for c in clients),
        }

    def check_invariants(self, pools: list[Pool]) -> None:
        """Every entry of a deduplicating pool is a holder of the copy its handle names, every
        holder is such an entry, and the savings match the holders; AssertionError otherwise."""
        seen: dict[int, list[Holder]] = {}
        for pool in pools:
            if pool.dedup is None:
                continue
            for oid, obj in pool.objects.items():
                for index, ref in obj.items():
                    if ref >= 0:
                        seen.setdefault(ref, []).append((pool, oid, index))
        saved: dict[int, list[int]] = {}
        for handle, entries in seen.items():
            copy = self._zbud.owner(handle)
            assert isinstance(copy, DedupCopy) and copy.handle == handle, "entry without copy"
            holders = copy.holder_list()
            assert copy.count == len(holders) == len(entries), (copy.count, holders, entries)
            assert {(id(p), o, i) for p, o, i in holders} == {
                (id(p), o, i) for p, o, i in entries}, "holders differ from the entries"
            assert all(p.owner is copy.client for p, _, _ in holders), "a copy spans clients"
            pages_bytes = saved.setdefault(copy.client.id, [0, 0])
            pages_bytes[0] += copy.count - 1
            pages_bytes[1] += (copy.count - 1) * (handle & LENGTH_MASK)
        for table in self._tables.values():
            for key, copy in table.items():
                assert copy.key == key and copy.handle in seen, "a map names a freed copy"
        clients = {id(p.owner): p.owner for p in pools}
        for client in clients.values():
            expect = saved.get(client.id, [0, 0])
            assert [client.dedup_saved_pages, client.dedup_saved_bytes] == expect, (
                client.id, client.dedup_saved_pages, client.dedup_saved_bytes, expect)
