"""The objects the tmem store keeps per guest: clients and their pools.

A *client* is one guest (VM). It owns up to :data:`MAX_POOLS` pool slots. A *pool* holds
objects (keyed by a 192-bit oid, kept as a tuple of three u64) and each object holds pages
(keyed by a 32-bit index). A page reference is an int: ``ref >= 0`` is a handle in the pool's
page store, ``ref < 0`` is a same-filled page whose fill byte is ``-1 - ref`` (no frame used).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from .codecs import Codec
from .statkinds import cumulative

MAX_POOLS = 16
OID_LIMIT = 1 << 64
INDEX_LIMIT = 1 << 32
UUID_BYTES = 16

Oid = tuple[int, int, int]


class PoolFlags(enum.IntFlag):
    """Xen tmem NEW_POOL flags."""

    PERSIST = 1
    SHARED = 2
    PRECOMPRESSED = 4


PAGESIZE_SHIFT = 4  # flags field giving page size as 1 << (12 + field)
PAGESIZE_MASK = 0xF << PAGESIZE_SHIFT
VERSION_SHIFT = 24


@dataclass(eq=False)
class Client:
    """One guest: its pool slots, quota and per-client counters."""

    id: int
    name: str
    quota_bytes: int | None = None
    frozen: bool = False
    pools: list[Pool | None] = field(default_factory=lambda: [None] * MAX_POOLS)
    zbytes: int = 0  # compressed bytes charged to this client (counts against the quota)
    puts: int = cumulative()
    failed_puts: int = cumulative()
    gets: int = cumulative()
    get_hits: int = cumulative()
    flushes: int = cumulative()
    evicted_pages: int = cumulative()

    def counters(self) -> dict[str, Any]:
        return {
            "client_id": self.id,
            "name": self.name,
            "frozen": self.frozen,
            "quota_bytes": self.quota_bytes,
            "zbytes": self.zbytes,
            "puts": self.puts,
            "failed_puts": self.failed_puts,
            "gets": self.gets,
            "get_hits": self.get_hits,
            "flushes": self.flushes,
            "evicted_pages": self.evicted_pages,
            "pages": sum(p.pages for p in self.pools if p is not None and p.owner is self),
        }


@dataclass(eq=False)
class Pool:
    """One tmem pool. Shared pools are referenced from the slots of several clients."""

    owner: Client  # charged for the pool's pages (the creator, for a shared pool)
    flags: PoolFlags
    uuid: bytes
    codec: Codec
    max_zsize: int
    objects: dict[Oid, dict[int, int]] = field(default_factory=dict)
    members: set[tuple[int, int]] = field(default_factory=set)  # (client id, pool id) slots
    pages: int = 0
    same_filled_pages: int = 0
    zbytes: int = 0
    evicted_pages: int = cumulative()

    # Derived from flags once (plain attributes: read on every operation).
    persistent: bool = field(init=False)
    shared: bool = field(init=False)
    exclusive_gets: bool = field(init=False)  # private ephemeral: a get hit also flushes

    def __post_init__(self) -> None:
        self.persistent = bool(self.flags & PoolFlags.PERSIST)
        self.shared = bool(self.flags & PoolFlags.SHARED)
        self.exclusive_gets = not (self.persistent or self.shared)

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
            "evicted_pages": self.evicted_pages,
            "members": sorted(self.members),
        }
