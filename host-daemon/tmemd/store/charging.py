"""What a stored page costs besides its compressed bytes, who pays for it, and what reclaim drops.

The charging model ("every byte is charged"):

- Every page the store keeps is an *entry* (compressed or same-filled, ephemeral or persistent)
  and every object (oid) that holds entries is one more record. Both cost Python memory: dict
  slots, the index and handle ints, the oid tuple, zbud's owner record, the same-filled LRU. Each
  entry is charged a fixed :data:`EPHEMERAL_ENTRY_CHARGE` or :data:`PERSISTENT_ENTRY_CHARGE` and
  each object a fixed :data:`OBJECT_CHARGE`: what this implementation measurably spends on them
  (measured, see below), so the charge tracks the real cost, not an estimate of C structs.
- The charge counts against the **memory limit**: metadata reserves whole arena frames, so
  ``data frames + metadata frames <= limit frames`` where metadata frames are at least
  ``ceil(metadata bytes / 4096)``. A reserved frame's memory is given back to the kernel (the
  Python objects it pays for live on the heap), so the limit bounds data and metadata together.
- Persistent entries also count against the **persistent cap**: ``xvmalloc frames +
  ceil(persistent metadata bytes / 4096) <= cap frames`` (the cap's reserved frames are only a
  count; they are part of the metadata frames above).
- And against the pool owner's **quota**: the quota bounds compressed bytes plus metadata charge.
- Same-filled pages take no frame for their data, but pay their entry and object like any page.
- With dedup on (dedup.py), each entry of a deduplicating pool pays ``DEDUP_ENTRY_CHARGE`` more
  (its copy record, map slot and holder set), and every entry that shares a copy is charged
  its compressed size as if it held the copy alone: dedup saves frames, never quota.
- Reclaim, when a frame is needed under the limit, drops ephemeral memory least recently stored
  first: the oldest zbud frame (both buddies) or the oldest ephemeral same-filled page, whichever
  was stored earlier (zbud's store clock orders the two). Persistent pages are never dropped: a
  persistent put that cannot be charged is refused (``cap_rejected_puts`` or ``failed_alloc``).
- The number of entries and objects needs no bound of its own: the charge bounds it (at most
  ``limit / entry charge`` entries). Clients are bounded by ``max_clients``, pools by 16 each.

Reserved frames are taken a batch at a time when a put would need more than the reserve holds
and given back with a batch of slack (see :class:`MetaLedger`); when no metadata is left, none is
kept.

Measured on Python 3.11, every put with a fresh oid tuple and fresh ints as the wire decoder
makes them, in bytes per entry; "dense": one object for all pages, "sparse": one object per page
(so entry plus object). Growing: 88,000..175,000 puts into a large store. Churned: ephemeral puts
four times what an 8..32 MiB limit holds, persistent puts with the oldest flushed beyond
30,000..60,000 entries::

                              tracemalloc, tables   RSS, tables churned by reclaim or flushes
    kind                      growing: dense        dense          sparse
    ephemeral compressed       345                  490 .. 610     960 .. 1112
    ephemeral same-filled      271                  405 .. 458     840 .. 1013
    persistent compressed      184                  245 .. 309     694 .. 757
    persistent same-filled      91                  124 .. 155     572 .. 602

tracemalloc counts requested sizes while the allocator rounds up (a 36-byte int takes 48), and a
table churned by inserts and deletes runs emptier than a growing one, so the charges follow the
RSS figures (RSS growth plus the metadata frames given back), rounded up: 512 for an ephemeral
entry (with the same-filled LRU record or zbud's owner record), 320 for a persistent one, 512
for an object (its dict, the oid tuple and its three 64-bit ints, a slot in the pool's dict).
With 480 for both instead, a 16 or 32 MiB store flooded with zero pages in objects of their own
and then with tiny pages reached 1.16 x its limit above the bare interpreter (pymalloc keeps the
freed records' arenas); with 512 it stays within 1.07 x.
The ephemeral compressed figures include zbud's own per-frame lists (about 370 bytes a frame, 185
an entry at two per frame), which are not charged: they add up to 9% to a frame's 4096 bytes.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .. import PAGE_SIZE
from .arena import FrameArena
from .errors import InvalidArgument
from .pools import (  # noqa: F401 - the charges are defined beside what they charge
    EPHEMERAL_ENTRY_CHARGE,
    OBJECT_CHARGE,
    PERSISTENT_ENTRY_CHARGE,
    Oid,
    Pool,
)
from .tables import compact
from .xvmalloc import XvmallocStore
from .zbud import ZbudStore

log = logging.getLogger(__name__)

# Room a put makes before it stores anything: one entry and one (possibly new) object.
MAX_CHARGE = max(EPHEMERAL_ENTRY_CHARGE, PERSISTENT_ENTRY_CHARGE) + OBJECT_CHARGE


MAX_BATCH = 16  # frames reserved or given back at a time, at most


class MetaLedger:
    """The store-wide metadata charge and the frames reserved for it.

    ``bytes``/``pers_bytes`` are the charges (all entries; persistent ones); ``room`` and
    ``pers_room`` what the reserved frames cover. The store updates the charges inline on its hot
    path and calls :meth:`reserve` / :meth:`reserve_persistent` before a put when a charge could
    exceed its room, :meth:`shrink` / :meth:`shrink_persistent` when one falls to its low water.

    Frames are reserved and given back ``batch`` at a time (1 frame per 256 frames of limit, at
    most :data:`MAX_BATCH`), so that the hot path calls out only every hundred entries or so: the
    slack stays between ``batch - 1`` and ``2 * batch`` frames (at least room for one more entry
    and object, which a put relies on while reclaim runs), and is given back entirely when no
    metadata is left, unless reclaim is running (``reclaiming``: a put may be waiting for a
    frame with its charge reserved).
    """

    def __init__(self, arena: FrameArena, xv: XvmallocStore, max_charge: int = MAX_CHARGE) -> None:
        self._arena = arena
        self._xv = xv
        # Room a put makes before it stores anything (more when deduplicating pools charge
        # more per entry, see dedup.py); persistent charges keep MAX_CHARGE.
        self.max_charge = max_charge
        self._frames: list[int] = []  # arena frames reserved for metadata
        self.bytes = 0
        self.pers_bytes = 0
        self.room = 0
        self.low = -1
        self.pers_room = 0
        self.pers_low = -1
        self.batch = 1
        self.reclaiming = False
        self.set_batch(arena.limit_frames)

    @property
    def frames(self) -> int:
        """Arena frames reserved for metadata."""
        return len(self._frames)

    def set_batch(self, limit_frames: int) -> None:
        """Size the batches for a memory limit of ``limit_frames``."""
        self.batch = max(1, min(MAX_BATCH, limit_frames >> 8))
        self._set_room()
        self._set_pers_room()

    def reserve(self) -> bool:
        """Reserve arena frames (reclaiming if need be) until one more entry and object fit,
        plus the rest of a batch when the arena has it; False when not even that one fits."""
        frames = self._frames
        arena = self._arena
        taken: list[int] = []
        while self.room < self.bytes + self.max_charge + (self.batch - 1) * PAGE_SIZE:
            frame = arena.alloc_frame()  # may reclaim, which may call shrink()
            if frame is None:
                break
            if self.room >= self.bytes + self.max_charge + (self.batch - 1) * PAGE_SIZE:
                arena.free_frame(frame)  # reclaim dropped enough metadata meanwhile
                break
            taken.append(frame)
            frames.append(frame)
            self._set_room()
        if taken:
            arena.give_back(taken)
        return self.bytes + self.max_charge <= self.room

    def reserve_persistent(self) -> bool:
        """Set aside frames of the persistent cap until one more persistent entry and object
        fit; False at the cap (persistent data is never evicted to make room)."""
        xv = self._xv
        while self.pers_room < self.pers_bytes + MAX_CHARGE + (self.batch - 1) * PAGE_SIZE:
            if xv.frames_in_use + xv.reserved_frames >= xv.max_frames:
                return self.pers_bytes + MAX_CHARGE <= self.pers_room
            xv.reserved_frames += 1
            self._set_pers_room()
        return True

    def shrink(self) -> None:
        """Give back reserved frames down to one batch of slack (all of them when no metadata
        is left and no put is waiting for reclaim)."""
        frames = self._frames
        keep = 0 if not self.bytes and not self.reclaiming else self.batch * PAGE_SIZE
        while frames and (len(frames) - 1) * PAGE_SIZE - self.bytes >= keep:
            self._arena.free_frame(frames.pop())
        if not self.bytes and not self.reclaiming and frames:
            self._arena.free_frame(frames.pop())
        self._set_room()

    def shrink_persistent(self) -> None:
        xv = self._xv
        keep = 0 if not self.pers_bytes and not self.reclaiming else self.batch * PAGE_SIZE
        while xv.reserved_frames and (xv.reserved_frames - 1) * PAGE_SIZE - self.pers_bytes >= keep:
            xv.reserved_frames -= 1
        if not self.pers_bytes and not self.reclaiming:
            xv.reserved_frames = 0
        self._set_pers_room()

    def trim(self) -> None:
        """Keep only the frames the charges need, without slack (the limit or cap went down)."""
        frames = self._frames
        while frames and self.bytes <= (len(frames) - 1) * PAGE_SIZE:
            self._arena.free_frame(frames.pop())
        self._set_room()
        xv = self._xv
        while xv.reserved_frames and self.pers_bytes <= (xv.reserved_frames - 1) * PAGE_SIZE:
            xv.reserved_frames -= 1
        self._set_pers_room()

    def _low_water(self, room: int) -> int:
        """Charge at or below which :meth:`shrink` has frames to give back."""
        return max(room - 2 * self.batch * PAGE_SIZE, 0) if room else -1

    def _set_room(self) -> None:
        self.room = len(self._frames) * PAGE_SIZE
        self.low = self._low_water(self.room)

    def _set_pers_room(self) -> None:
        self.pers_room = self._xv.reserved_frames * PAGE_SIZE
        self.pers_low = self._low_water(self.pers_room)

    def stats(self) -> dict[str, int]:
        return {
            "meta_bytes": self.bytes,
            "persistent_meta_bytes": self.pers_bytes,
            "meta_frames": len(self._frames),
            "persistent_meta_frames": self._xv.reserved_frames,
            "meta_host_bytes": len(self._frames) * PAGE_SIZE,
        }

    def check_invariants(self) -> None:
        """Every charge fits its reserved frames; AssertionError otherwise."""
        assert 0 <= self.pers_bytes <= self.bytes, (self.pers_bytes, self.bytes)
        assert self.bytes <= self.room == len(self._frames) * PAGE_SIZE, (self.bytes, self.room)
        assert self.pers_bytes <= self.pers_room == self._xv.reserved_frames * PAGE_SIZE
        assert len(set(self._frames)) == len(self._frames), "a frame is reserved twice"
        slack = 2 * self.batch * PAGE_SIZE  # what reserve() and shrink() allow
        assert self.room <= self.bytes + self.max_charge + slack, (self.room, self.bytes)
        assert self.pers_room <= self.pers_bytes + MAX_CHARGE + slack, (self.pers_room,
                                                                         self.pers_bytes)


class Reclaimer:
    """Picks what reclaim drops: the least recently stored ephemeral memory, zbud frame or
    same-filled page (see the module docstring). Installed as the arena's reclaimer.

    ``same_filled`` maps (pool, oid, index) of every ephemeral same-filled page to zbud's store
    clock when it was put, oldest first; the store adds and removes entries inline.
    """

    def __init__(
        self,
        zbud: ZbudStore,
        meta: MetaLedger,
        evict_same_filled: Callable[[Pool, Oid, int], None],
    ) -> None:
        self._zbud = zbud
        self._meta = meta
        self._evict_same_filled = evict_same_filled
        self.same_filled: OrderedDict[tuple[Any, Any, int], int] = OrderedDict()

    def reclaim_one(self) -> bool:
        """Drop the oldest zbud frame or same-filled page; False when there is neither."""
        self._meta.reclaiming = True
        try:
            lru = self.same_filled
            if lru:
                for key, stamp in lru.items():
                    oldest_frame = self._zbud.oldest_stamp()
                    if oldest_frame is None or stamp < oldest_frame:
                        del lru[key]
                        left = len(lru)
                        if left >= 8 and not left & (left - 1):
                            compact(lru)
                        self._evict_same_filled(*key)
                        return True
                    break
            return self._zbud.evict_lru_frame()
        finally:
            self._meta.reclaiming = False


class MemoryLimits:
    """The memory limit and the persistent cap, as the operator sets them at run time."""

    def __init__(
        self, arena: FrameArena, xv: XvmallocStore, meta: MetaLedger, reclaimer: Reclaimer
    ) -> None:
        self._arena = arena
        self._xv = xv
        self._meta = meta
        self._reclaimer = reclaimer
        self._default_cap = True

    def set_memory_limit(self, nbytes: int) -> None:
        """Limit all frames to ``nbytes`` (at most the arena size); reclaims ephemeral memory
        until data and metadata fit (persistent pages above the new limit stay)."""
        arena = self._arena
        frames = nbytes // PAGE_SIZE
        if not 0 < frames <= arena.nframes:
            raise InvalidArgument(
                f"memory limit must be between {PAGE_SIZE} and {arena.nframes * PAGE_SIZE}"
            )
        arena.set_limit(frames)
        self._meta.set_batch(frames)
        if self._default_cap:
            self.set_persistent_cap(None)  # 3/4 of the new limit
        self._meta.trim()
        while arena.frames_in_use > frames and self._reclaimer.reclaim_one():
            self._meta.trim()

    def set_persistent_cap(self, nbytes: int | None) -> None:
        """Cap the frames persistent pages may use; None means 3/4 of the memory limit (and
        follows later changes of the limit), as zcache capped persistent pages."""
        if nbytes is not None and nbytes < 0:
            raise InvalidArgument("persistent cap must not be negative")
        self._default_cap = nbytes is None
        if nbytes is None:
            self._xv.max_frames = self._arena.limit_frames * 3 // 4
        else:
            self._xv.max_frames = nbytes // PAGE_SIZE

    def reclaim(self, nbytes: int) -> int:
        """Drop ephemeral memory until ``nbytes`` of frames are free again or nothing is left
        to drop; returns the frames freed."""
        arena = self._arena
        start = arena.frames_in_use
        while (start - arena.frames_in_use) * PAGE_SIZE < nbytes:
            if not self._reclaimer.reclaim_one():
                break
            self._meta.trim()
        return max(0, start - arena.frames_in_use)
