"""The objects the tmem store keeps per guest: clients and their pools.

A *client* is one guest (VM). It owns up to :data:`MAX_POOLS` pool slots. A *pool* holds
objects (keyed by a 192-bit oid, kept as a tuple of three u64) and each object holds pages
(keyed by a 32-bit index). A page reference is an int: ``ref >= 0`` is a handle in the pool's
page store, ``ref < 0`` is a same-filled page whose fill byte is ``-1 - ref`` (no frame used).

Every page (an *entry*) and every object costs Python memory; :mod:`.charging` charges it to the
pool's owner besides the compressed bytes: ``Client.charged_bytes`` counts both (the quota
bounds it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from .. import PAGE_SIZE
from .codecs import Codec
from .errors import InvalidArgument, NoSuchClient, NoSuchPool, TooManyPools
from .statkinds import cumulative

MAX_POOLS = 16
# What an entry and an object cost in Python memory, charged beside the compressed bytes (the
# measurements behind these figures are in charging.py, which applies them).
EPHEMERAL_ENTRY_CHARGE = 512
PERSISTENT_ENTRY_CHARGE = 320
OBJECT_CHARGE = 512
OID_LIMIT = 1 << 64
INDEX_LIMIT = 1 << 32
UUID_BYTES = 16

Oid = tuple[int, int, int]


class PoolFlags(enum.IntFlag):
    """Xen tmem NEW_POOL flags, and one of our own (bit 3, unused by Xen)."""

    PERSIST = 1
    SHARED = 2
    PRECOMPRESSED = 4
    # Ours: gets on a private ephemeral pool leave the page in place (an inclusive cache,
    # for a client that cannot tell when its own copy of a page goes, like a block-layer
    # cache under the guest's page cache). A hit makes the page recent for reclaim.
    KEEP_ON_GET = 8


PAGESIZE_SHIFT = 4  # flags field giving page size as 1 << (12 + field)
PAGESIZE_MASK = 0xF << PAGESIZE_SHIFT
VERSION_SHIFT = 24
KEPT_FLAGS = PoolFlags.PERSIST | PoolFlags.SHARED | PoolFlags.KEEP_ON_GET  # what a pool keeps
_KNOWN_FLAGS = (PoolFlags.PERSIST | PoolFlags.SHARED | PoolFlags.KEEP_ON_GET | PAGESIZE_MASK
                | (0xFF << VERSION_SHIFT))


def pool_flags(flags: object, uuid: object) -> PoolFlags:
    """The flags a new pool keeps, after checking NEW_POOL's flags and uuid; InvalidArgument."""
    if not isinstance(flags, int) or flags < 0 or flags & ~_KNOWN_FLAGS:
        raise InvalidArgument(f"unsupported pool flags {flags!r}")
    if flags & PAGESIZE_MASK:
        raise InvalidArgument("only 4 KiB pages are supported (page size field must be 0)")
    if not isinstance(uuid, bytes | bytearray) or len(uuid) != UUID_BYTES:
        raise InvalidArgument("pool uuid must be 16 bytes")
    pflags = PoolFlags(flags & KEPT_FLAGS)
    if pflags & PoolFlags.KEEP_ON_GET and pflags & (PoolFlags.PERSIST | PoolFlags.SHARED):
        raise InvalidArgument("KEEP_ON_GET is for private ephemeral pools (the others' gets "
                              "keep the page anyway)")
    if pflags & PoolFlags.SHARED and not any(uuid):
        raise InvalidArgument("a shared pool needs a non-zero uuid")
    if pflags & PoolFlags.SHARED and pflags & PoolFlags.PERSIST:
        # As in Xen: persistent pages count against one client's quota and must survive
        # that client's departure, which a pool owned by several guests cannot promise.
        raise InvalidArgument("shared pools must be ephemeral (shared persistent refused)")
    return pflags


def find_pool(clients: dict[int, Client], client_id: int, pool_id: int) -> Pool:
    """The pool in a client's slot; NoSuchClient or NoSuchPool."""
    client = clients.get(client_id) if type(client_id) is int else None
    if client is None:
        raise NoSuchClient(f"no client {client_id!r}")
    pool = client.pools[pool_id] if type(pool_id) is int and 0 <= pool_id < MAX_POOLS else None
    if pool is None:
        raise NoSuchPool(f"client {client_id} has no pool {pool_id!r}")
    return pool


def resolve_handle(
    clients: dict[int, Client], client_id: int, pool_id: int, oid: Oid, index: int
) -> tuple[Client, Pool]:
    """The client and pool of a page operation, after checking every argument.

    Written as one flat test because it runs on every operation.
    """
    client = clients.get(client_id) if type(client_id) is int else None
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
    find_pool(clients, client_id, pool_id)  # raises NoSuchClient / NoSuchPool if that is the fault
    raise InvalidArgument(f"bad handle: oid must be 3 x u64, index a u32: {oid!r}, {index!r}")


def page_bytes(page: object) -> bytes:
    """The page as bytes of exactly one page; InvalidArgument otherwise."""
    if not isinstance(page, bytes | bytearray | memoryview):
        raise InvalidArgument(f"page must be bytes, not {type(page).__name__}")
    if len(page) != PAGE_SIZE:
        raise InvalidArgument(f"page must be {PAGE_SIZE} bytes, got {len(page)}")
    return bytes(page)


def check_quota(quota_bytes: int | None) -> None:
    if quota_bytes is not None and quota_bytes < 0:
        raise InvalidArgument("quota must not be negative")


class ObjectPages(dict[int, int]):
    """One object's pages (index -> page reference), remembering the object's own oid.

    Page operations bring a fresh oid tuple each time; whatever must name the object later (a
    zbud owner record, the same-filled LRU) takes this one instead, so that only one copy of an
    oid stays alive per object.
    """

    __slots__ = ("oid",)

    def __init__(self, oid: Oid) -> None:
        super().__init__()
        self.oid = oid


@dataclass(eq=False)
class Client:
    """One guest: its pool slots, quota and per-client counters."""

    id: int
    name: str
    quota_bytes: int | None = None
    frozen: bool = False
    pools: list[Pool | None] = field(default_factory=lambda: [None] * MAX_POOLS)
    charged_bytes: int = 0  # compressed bytes + metadata charge of its pools (the quota's)
    puts: int = cumulative()
    failed_puts: int = cumulative()
    gets: int = cumulative()
    get_hits: int = cumulative()
    flushes: int = cumulative()
    evicted_pages: int = cumulative()
    dedup_hits: int = cumulative()  # puts that found their content in a copy of this client
    dedup_saved_pages: int = 0  # pages that refer to another page's copy (dedup.py)
    dedup_saved_bytes: int = 0  # their compressed bytes, stored once

    def free_slot(self, wanted: int | None) -> int:
        """The pool id a new pool takes: ``wanted`` if free, else the lowest free one."""
        if wanted is not None:
            if not isinstance(wanted, int) or not 0 <= wanted < MAX_POOLS:
                raise InvalidArgument(f"pool id must be in 0..{MAX_POOLS - 1}")
            if self.pools[wanted] is not None:
                raise InvalidArgument(f"pool id {wanted} is in use")
            return wanted
        for slot, pool in enumerate(self.pools):
            if pool is None:
                return slot
        raise TooManyPools(f"client {self.id} already has {MAX_POOLS} pools")

    def owned_pools(self) -> list[Pool]:
        """The pools this client is charged for, each once."""
        owned = {id(p): p for p in self.pools if p is not None and p.owner is self}
        return list(owned.values())

    def counters(self) -> dict[str, Any]:
        owned = self.owned_pools()
        return {
            "client_id": self.id,
            "name": self.name,
            "frozen": self.frozen,
            "quota_bytes": self.quota_bytes,
            "zbytes": sum(p.zbytes for p in owned),
            "meta_bytes": sum(p.meta_bytes for p in owned),
            "charged_bytes": self.charged_bytes,
            "puts": self.puts,
            "failed_puts": self.failed_puts,
            "gets": self.gets,
            "get_hits": self.get_hits,
            "flushes": self.flushes,
            "evicted_pages": self.evicted_pages,
            "dedup_hits": self.dedup_hits,
            "dedup_saved_pages": self.dedup_saved_pages,
            "dedup_saved_bytes": self.dedup_saved_bytes,
            "pages": sum(p.pages for p in owned),
            "objects": sum(len(p.objects) for p in owned),
        }


@dataclass(eq=False)
class Pool:
    """One tmem pool. Shared pools are referenced from the slots of several clients."""

    owner: Client  # charged for the pool's pages (the creator, for a shared pool)
    flags: PoolFlags
    uuid: bytes
    codec: Codec
    max_zsize: int
    objects: dict[Oid, ObjectPages] = field(default_factory=dict)
    members: set[tuple[int, int]] = field(default_factory=set)  # (client id, pool id) slots
    pages: int = 0
    same_filled_pages: int = 0
    zbytes: int = 0
    evicted_pages: int = cumulative()
    # The map of the owner's dedup domain when this pool deduplicates (private ephemeral pools
    # of a store with dedup on; set by the store at creation, see dedup.py), else None.
    dedup: dict[int, Any] | None = field(default=None, repr=False)

    # Derived from flags once (plain attributes: read on every operation).
    persistent: bool = field(init=False)
    shared: bool = field(init=False)
    exclusive_gets: bool = field(init=False)  # private ephemeral: a get hit also flushes
    entry_charge: int = field(init=False)  # metadata bytes charged per page
    # xvmalloc holds its pages (else zbud): persistent pools, unless StoreConfig.page_store
    in_xv: bool = field(init=False)

    def __post_init__(self) -> None:
        self.persistent = bool(self.flags & PoolFlags.PERSIST)
        self.shared = bool(self.flags & PoolFlags.SHARED)
        self.exclusive_gets = not (self.persistent or self.shared
                                   or self.flags & PoolFlags.KEEP_ON_GET)
        self.entry_charge = PERSISTENT_ENTRY_CHARGE if self.persistent else EPHEMERAL_ENTRY_CHARGE
        self.in_xv = self.persistent

    @property
    def meta_bytes(self) -> int:
        """The metadata charge of this pool's pages and objects (charged to its owner)."""
        return self.pages * self.entry_charge + len(self.objects) * OBJECT_CHARGE

    def hand_over(self, heir: Client) -> None:
        """The owner of a shared pool left it: charge its pages to a remaining member."""
        charged = self.zbytes + self.meta_bytes
        self.owner.charged_bytes -= charged
        heir.charged_bytes += charged
        self.owner = heir

    def describe(self, pool_id: int) -> dict[str, Any]:
        return {
            "pool_id": pool_id,
            "flags": int(self.flags),
            "kind": "persistent" if self.persistent else "ephemeral",
            "shared": self.shared,
            "uuid": self.uuid.hex(),
            "codec": self.codec.name,
            "objects": len(self.objects),
            "pages": self.pages,
            "same_filled_pages": self.same_filled_pages,
            "zbytes": self.zbytes,
            "meta_bytes": self.meta_bytes,
            "evicted_pages": self.evicted_pages,
            "dedup": self.dedup is not None,
            "members": sorted(self.members),
        }
