"""zbud: the ephemeral page store, at most two compressed pages ("buddies") per frame.

Layout of one 4 KiB frame, in 64-byte chunks (as zcache's zbud did)::

    chunk 0        header: u16 size of buddy 0, u16 size of buddy 1 (0 = slot empty)
    chunks 1..     buddy 0, left-justified right after the header
    ..chunk 63     buddy 1, right-justified so it ends at the frame's last byte

A buddy holds 1..3968 bytes (62 chunks), so every frame with one buddy keeps at least one
chunk free. The header is the truth about a frame's contents: freeing and eviction read it.

Python-side bookkeeping, as zcache kept it in kernel lists:

- ``unbuddied[k]``: frames holding one buddy with ``k`` free chunks (plus a bitmap of the
  non-empty lists, so "the fullest frame that still fits" is one bit trick, not a scan);
- ``buddied``: frames holding two buddies;
- an LRU of all frames in use, refreshed when a buddy is stored into a frame; each frame
  carries the ``clock`` of its last store (one count per store), so that other reclaimable
  things can be ordered against frames by age;
- ``owners``: handle -> the owner object given to :meth:`ZbudStore.store`.

A handle is ``(offset << 12) | length``, where ``offset`` is the arena byte offset of the data:
load is one slice. A frame whose last buddy goes is handed straight back to the arena (there
is no unused-frame list, so ``zbpg_unused_list_count`` is always 0).

Re-entrancy: ``arena.alloc_frame()`` may run the reclaimer, which calls
:meth:`ZbudStore.evict_lru_frame`, whose ``on_evict`` callbacks may call :meth:`ZbudStore.free`.
So ``store`` asks for a frame before touching anything, and eviction unlinks the frame
completely before it calls back.
"""

from __future__ import annotations

import logging
import struct
from collections import OrderedDict
from collections.abc import Callable

from .. import PAGE_SHIFT, PAGE_SIZE
from .arena import FrameArena
from .tables import compact

log = logging.getLogger(__name__)

CHUNK_SHIFT = 6
CHUNK_SIZE = 1 << CHUNK_SHIFT  # 64
NCHUNKS = PAGE_SIZE >> CHUNK_SHIFT  # 64 chunks per frame, chunk 0 is the header
USABLE_CHUNKS = NCHUNKS - 1  # 63 chunks for data
MAX_BUDDY_CHUNKS = NCHUNKS - 2  # 62: zcache's limit, keeps one chunk free beside a lone buddy
MAX_SIZE = MAX_BUDDY_CHUNKS * CHUNK_SIZE  # 3968
LENGTH_BITS = 12
LENGTH_MASK = (1 << LENGTH_BITS) - 1

_HEADER = struct.Struct("<HH")  # size of buddy 0, size of buddy 1
_pack_header = _HEADER.pack_into
_unpack_header = _HEADER.unpack_from


def chunks_for(length: int) -> int:
    """Number of 64-byte chunks a buddy of ``length`` bytes occupies."""
    return (length + CHUNK_SIZE - 1) >> CHUNK_SHIFT


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(f"zbud: {message}")


class ZbudStore:
    """Ephemeral compressed pages, two per frame, evicted a whole frame at a time."""

    name = "zbud"
    max_size = MAX_SIZE
    # Keys of stats() that only ever grow (the rest are gauges).
    CUMULATIVE_STATS = frozenset({
        "zbud_cumul_zpages", "zbud_cumul_zbytes", "zbud_cumul_chunk_counts", "evicted_raw_pages",
        "evicted_unbuddied_pages", "evicted_buddied_pages", "failed_get_free_pages",
    })

    def __init__(self, arena: FrameArena, on_evict: Callable[[object], None] | None = None) -> None:
        self._arena = arena
        self._buf = arena.buf
        self._on_evict = on_evict
        self._owners: dict[int, object] = {}
        self._unbuddied: list[dict[int, None]] = [{} for _ in range(NCHUNKS)]
        self._unbuddied_mask = 0  # bit k set <=> unbuddied[k] is not empty
        self._buddied: set[int] = set()
        self._lru: OrderedDict[int, int] = OrderedDict()  # oldest frame first -> its last store
        self.clock = 0  # counts stores; a frame's LRU value is the count at its last store
        self._zbytes = 0
        self._cumul_zbytes = 0
        self._cumul_chunk_counts = [0] * NCHUNKS
        self._evicted_unbuddied = 0
        self._evicted_buddied = 0
        self._failed_get_free_pages = 0

    # ----- the hot path ------------------------------------------------------------------------
    def store(self, data: bytes, owner: object) -> int | None:
        """Copy ``data`` into a buddy slot; its handle, or None when no frame can be had."""
        length = len(data)
        if not 0 < length <= MAX_SIZE:
            raise ValueError(f"zbud stores 1..{self.max_size} bytes, got {length}")
        nchunks = (length + CHUNK_SIZE - 1) >> CHUNK_SHIFT
        buf = self._buf
        fitting = self._unbuddied_mask >> nchunks
        if fitting:
            # The fullest unbuddied frame with room: the lowest non-empty list >= nchunks.
            free_chunks = nchunks + (fitting & -fitting).bit_length() - 1
            group = self._unbuddied[free_chunks]
            frame = group.popitem()[0]
            if not group:
                self._unbuddied_mask ^= 1 << free_chunks
            base = frame << PAGE_SHIFT
            size0, size1 = _unpack_header(buf, base)
            if size0:
                offset = base + PAGE_SIZE - (nchunks << CHUNK_SHIFT)
                _pack_header(buf, base, size0, length)
            else:
                offset = base + CHUNK_SIZE
                _pack_header(buf, base, length, size1)
            self._buddied.add(frame)
            self.clock = clock = self.clock + 1
            lru = self._lru
            lru[frame] = clock
            lru.move_to_end(frame)
        else:
            new_frame = self._arena.alloc_frame()  # may evict: nothing is changed yet
            if new_frame is None:
                self._failed_get_free_pages += 1
                return None
            base = new_frame << PAGE_SHIFT
            offset = base + CHUNK_SIZE
            _pack_header(buf, base, length, 0)
            free_chunks = USABLE_CHUNKS - nchunks
            self._unbuddied[free_chunks][new_frame] = None
            self._unbuddied_mask |= 1 << free_chunks
            self.clock = clock = self.clock + 1
            self._lru[new_frame] = clock
        buf[offset : offset + length] = data
        handle = (offset << LENGTH_BITS) | length
        self._owners[handle] = owner
        self._zbytes += length
        self._cumul_zbytes += length
        self._cumul_chunk_counts[nchunks] += 1
        return handle

    def load(self, handle: int) -> bytes:
        """The exact bytes stored under ``handle``."""
        if handle not in self._owners:
            raise KeyError(f"zbud: no page is stored under handle {handle:#x}")
        offset = handle >> LENGTH_BITS
        return self._buf[offset : offset + (handle & LENGTH_MASK)]

    def owner(self, handle: int) -> object:
        """The owner object given to :meth:`store` with ``handle``."""
        return self._owners[handle]

    def touch(self, handle: int) -> None:
        """Count a store of the page under ``handle`` again without copying it (a put that
        found its content already stored): its frame becomes the most recently stored."""
        frame = (handle >> LENGTH_BITS) >> PAGE_SHIFT
        self.clock = clock = self.clock + 1
        lru = self._lru
        lru[frame] = clock
        lru.move_to_end(frame)

    def size(self, handle: int) -> int:
        if handle not in self._owners:
            raise KeyError(f"zbud: no page is stored under handle {handle:#x}")
        return handle & LENGTH_MASK

    def free(self, handle: int) -> int:
        """Drop one buddy (its frame goes back to the arena when it was the last one);
        returns the length that was stored."""
        owners = self._owners
        try:
            del owners[handle]
        except KeyError:
            raise KeyError(f"zbud: no page is stored under handle {handle:#x}") from None
        remaining = len(owners)
        if remaining >= 8 and not remaining & (remaining - 1):
            compact(owners)  # a table that shrank gives its memory back (tables.py)
        length = handle & LENGTH_MASK
        offset = handle >> LENGTH_BITS
        frame = offset >> PAGE_SHIFT
        base = frame << PAGE_SHIFT
        buf = self._buf
        size0, size1 = _unpack_header(buf, base)
        if offset - base == CHUNK_SIZE:
            other = size1
            _pack_header(buf, base, 0, size1)
        else:
            other = size0
            _pack_header(buf, base, size0, 0)
        self._zbytes -= length
        if other:
            self._buddied.remove(frame)
            free_chunks = USABLE_CHUNKS - chunks_for(other)
            self._unbuddied[free_chunks][frame] = None
            self._unbuddied_mask |= 1 << free_chunks
        else:
            self._unlink_unbuddied(frame, USABLE_CHUNKS - chunks_for(length))
            del self._lru[frame]
            self._arena.free_frame(frame)
        return length

    # ----- reclaim -----------------------------------------------------------------------------
    def evict_lru_frame(self) -> bool:
        """Evict the least recently used frame with both its buddies; False if none is in use.

        The frame is unlinked and returned to the arena first, then ``on_evict(owner)`` is called
        for each buddy it held (buddy 0 first), so callbacks see a consistent store.
        """
        if not self._lru:
            return False
        frame = self._lru.popitem(last=False)[0]
        base = frame << PAGE_SHIFT
        size0, size1 = _unpack_header(self._buf, base)
        evicted: list[object] = []
        owners = self._owners
        for handle in self._handles_in(base, size0, size1):
            evicted.append(owners.pop(handle))
            remaining = len(owners)
            if remaining >= 8 and not remaining & (remaining - 1):
                compact(owners)
        if size0 and size1:
            self._buddied.remove(frame)
            self._evicted_buddied += 1
        else:
            self._unlink_unbuddied(frame, USABLE_CHUNKS - chunks_for(size0 or size1))
            self._evicted_unbuddied += 1
        _pack_header(self._buf, base, 0, 0)
        self._zbytes -= size0 + size1
        self._arena.free_frame(frame)
        log.debug("evicted frame %d holding %d page(s)", frame, len(evicted))
        if self._on_evict is not None:
            for owner in evicted:
                self._on_evict(owner)
        return True

    def oldest_stamp(self) -> int | None:
        """The clock of the least recently stored frame's last store; None without frames."""
        for stamp in self._lru.values():
            return stamp
        return None

    # ----- helpers -----------------------------------------------------------------------------
    def _unlink_unbuddied(self, frame: int, free_chunks: int) -> None:
        group = self._unbuddied[free_chunks]
        del group[frame]
        if not group:
            self._unbuddied_mask &= ~(1 << free_chunks)

    @staticmethod
    def _handles_in(base: int, size0: int, size1: int) -> list[int]:
        """Handles of the buddies a frame header at ``base`` describes."""
        handles = []
        if size0:
            handles.append(((base + CHUNK_SIZE) << LENGTH_BITS) | size0)
        if size1:
            offset = base + PAGE_SIZE - (chunks_for(size1) << CHUNK_SHIFT)
            handles.append((offset << LENGTH_BITS) | size1)
        return handles

    # ----- introspection -----------------------------------------------------------------------
    @property
    def frames_in_use(self) -> int:
        return len(self._lru)

    def stats(self) -> dict[str, int | list[int]]:
        """Counters named as zcache's sysfs files; 'pages' of evicted_* are frames."""
        return {
            "zbud_curr_raw_pages": len(self._lru),
            "zbud_curr_zpages": len(self._owners),
            "zbud_curr_zbytes": self._zbytes,
            "zbud_cumul_zpages": sum(self._cumul_chunk_counts),
            "zbud_cumul_zbytes": self._cumul_zbytes,
            "zbud_buddied_count": len(self._buddied),
            "zbud_unbuddied_list_counts": [len(group) for group in self._unbuddied],
            "zbud_cumul_chunk_counts": list(self._cumul_chunk_counts),
            "zbpg_unused_list_count": 0,
            "evicted_raw_pages": self._evicted_unbuddied + self._evicted_buddied,
            "evicted_unbuddied_pages": self._evicted_unbuddied,
            "evicted_buddied_pages": self._evicted_buddied,
            "failed_get_free_pages": self._failed_get_free_pages,
        }

    def check_invariants(self) -> None:
        """Cross-check frame headers against every list; AssertionError on the first mismatch."""
        expected_handles: set[int] = set()
        zbytes = 0
        in_unbuddied: dict[int, int] = {}
        for free_chunks, group in enumerate(self._unbuddied):
            has_bit = bool(self._unbuddied_mask >> free_chunks & 1)
            _require(has_bit == bool(group), f"bitmap bit {free_chunks} disagrees with its list")
            for frame in group:
                _require(frame not in in_unbuddied, f"frame {frame} is on two unbuddied lists")
                in_unbuddied[frame] = free_chunks
        _require(self._unbuddied_mask >> NCHUNKS == 0, "bitmap has bits beyond the lists")
        for frame in self._lru:
            base = frame << PAGE_SHIFT
            size0, size1 = _unpack_header(self._buf, base)
            where = f"frame {frame} (sizes {size0}, {size1})"
            _require(size0 <= self.max_size and size1 <= self.max_size, f"{where}: size too big")
            _require(size0 > 0 or size1 > 0, f"{where}: empty frame still in use")
            _require(chunks_for(size0) + chunks_for(size1) <= USABLE_CHUNKS, f"{where}: overlap")
            if size0 and size1:
                _require(frame in self._buddied, f"{where}: full but not on the buddied list")
                _require(frame not in in_unbuddied, f"{where}: full but on an unbuddied list")
            else:
                free_chunks = USABLE_CHUNKS - chunks_for(size0 or size1)
                _require(frame not in self._buddied, f"{where}: lone buddy on the buddied list")
                _require(
                    in_unbuddied.get(frame) == free_chunks,
                    f"{where}: should be on unbuddied[{free_chunks}], "
                    f"is on {in_unbuddied.get(frame)}",
                )
            expected_handles.update(self._handles_in(base, size0, size1))
            zbytes += size0 + size1
        listed = set(in_unbuddied) | self._buddied
        _require(listed == set(self._lru), f"listed frames {listed} != LRU {set(self._lru)}")
        _require(
            expected_handles == set(self._owners),
            f"headers describe {len(expected_handles)} buddies, {len(self._owners)} are owned",
        )
        _require(zbytes == self._zbytes, f"zbytes counter {self._zbytes} != headers' {zbytes}")
