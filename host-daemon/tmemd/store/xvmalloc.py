"""xvmalloc: the persistent page store, a TLSF-style allocator packing blocks densely into frames.

Every frame is tiled by blocks; each block starts with a 4-byte header in the arena memory::

    u16 size   payload bytes after the header (a multiple of 4, at least 32)
    u16 prev   frame offset of the previous block (0 for the first), low bits are flags:
               FREE (1) this block is free, PREV_FREE (2) the previous block is free

Blocks never span frames. A new frame starts as one free block of 4092 bytes. Allocation
takes the smallest non-empty free list that surely fits and splits off the remainder when
that can form a block of its own (4 + 32 bytes or more); otherwise the block is handed out
whole. Freeing merges with free neighbours on both sides, so no two free blocks are ever
adjacent, and a frame that becomes one free block is returned to the arena.

Free blocks sit on 508 lists, one every 8 bytes of payload: a free block of size ``s`` is on
list ``(s - 32) // 8`` and a request of ``n`` bytes searches from list ``ceil((n - 32) / 8)``,
so any block found fits without looking at it. A first-level bitmap word has one bit per
second-level word, each second-level word one bit per list; the lowest set bit at or above a
position is found with ``(x & -x).bit_length()``.

A handle is ``(offset << 12) | length``, where ``offset`` is the arena byte offset of the
payload and ``length`` the exact number of bytes stored (the block may be a little larger).
"""

from __future__ import annotations

import logging
import struct

from .. import PAGE_SHIFT, PAGE_SIZE
from .arena import FrameArena
from .tables import compact

log = logging.getLogger(__name__)

HEADER_SIZE = 4  # also the alignment
ALIGN_MASK = HEADER_SIZE - 1
MIN_PAYLOAD = 32
MAX_PAYLOAD = PAGE_SIZE - HEADER_SIZE  # 4092: one block filling a whole frame
MIN_SPLIT = HEADER_SIZE + MIN_PAYLOAD  # a remainder this big becomes a free block of its own
LIST_SHIFT = 3  # a free list every 8 bytes
NUM_FREE_LISTS = ((MAX_PAYLOAD - MIN_PAYLOAD) >> LIST_SHIFT) + 1  # 508
WORD_SHIFT = 6  # 64 lists per second-level bitmap word
WORD_MASK = (1 << WORD_SHIFT) - 1
NUM_WORDS = (NUM_FREE_LISTS + WORD_MASK) >> WORD_SHIFT  # 8
FREE = 1
PREV_FREE = 2
FLAG_MASK = FREE | PREV_FREE
LENGTH_BITS = 12
LENGTH_MASK = (1 << LENGTH_BITS) - 1
OFFSET_MASK = PAGE_SIZE - 1

_HEADER = struct.Struct("<HH")  # size, prev | flags
_pack_header = _HEADER.pack_into
_unpack_header = _HEADER.unpack_from
_pack_u16 = struct.Struct("<H").pack_into


def list_for_free_block(size: int) -> int:
    """The list a free block of ``size`` payload bytes belongs on (rounds down)."""
    return (size - MIN_PAYLOAD) >> LIST_SHIFT


def block_size_for(length: int) -> int:
    """Payload size of the block that holds ``length`` bytes: aligned, at least MIN_PAYLOAD."""
    return max(MIN_PAYLOAD, (length + ALIGN_MASK) & ~ALIGN_MASK)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(f"xvmalloc: {message}")


class XvmallocStore:
    """Persistent compressed pages packed into frames by a two-level segregated-fit allocator."""

    name = "xvmalloc"
    max_size = MAX_PAYLOAD
    # Keys of stats() that only ever grow (the rest are gauges).
    CUMULATIVE_STATS = frozenset({"xv_cumul_allocs", "xv_failed_alloc", "xv_capped_allocs"})

    def __init__(self, arena: FrameArena, max_frames: int | None = None) -> None:
        self._arena = arena
        # At most this many frames (the persistent cap) with reserved_frames; a store needing
        # one more fails. None: only the arena limits it.
        self.max_frames = (1 << 62) if max_frames is None else max_frames
        # Frames of the cap set aside for persistent metadata (charged by the tmem store).
        self.reserved_frames = 0
        self._buf = arena.buf
        self._owners: dict[int, object] = {}  # handle -> owner
        self._free_lists: list[dict[int, None]] = [{} for _ in range(NUM_FREE_LISTS)]
        self._first_level = 0  # bit w set <=> second_level[w] != 0
        self._second_level = [0] * NUM_WORDS  # bit b of word w <=> free list w*64+b non-empty
        self._frames = 0
        self._block_bytes = 0  # headers + payloads of allocated blocks
        self._data_bytes = 0  # exact lengths stored
        self._cumul_allocs = 0
        self._failed_alloc = 0
        self._capped = 0  # stores refused because max_frames was reached

    # ----- the hot path ------------------------------------------------------------------------
    def store(self, data: bytes, owner: object = None) -> int | None:
        """Copy ``data`` into a block; its handle, or None when no frame can be had."""
        length = len(data)
        if not 0 < length <= MAX_PAYLOAD:
            raise ValueError(f"xvmalloc stores 1..{MAX_PAYLOAD} bytes, got {length}")
        need = (length + ALIGN_MASK) & ~ALIGN_MASK
        if need < MIN_PAYLOAD:
            need = MIN_PAYLOAD
        buf = self._buf
        # The smallest non-empty list whose blocks all fit: the lowest non-empty list at or
        # above ``first``, found with the two bitmap levels (inline: the hottest path).
        first = (need - MIN_PAYLOAD + 7) >> LIST_SHIFT
        word = first >> WORD_SHIFT
        second = self._second_level
        bits = second[word] >> (first & WORD_MASK)
        if bits:
            found = first + (bits & -bits).bit_length() - 1
        else:
            words = self._first_level >> (word + 1)
            if words:
                word += (words & -words).bit_length()
                bits = second[word]
                found = (word << WORD_SHIFT) + (bits & -bits).bit_length() - 1
            else:
                found = -1
        if found < 0:
            if self._frames + self.reserved_frames >= self.max_frames:
                self._capped += 1
                return None
            frame = self._arena.alloc_frame()  # may reclaim: nothing is changed yet
            if frame is None:
                self._failed_alloc += 1
                return None
            self._frames += 1
            addr = frame << PAGE_SHIFT
            size = MAX_PAYLOAD
            prev_offset = 0
        else:
            group = self._free_lists[found]
            addr = group.popitem()[0]
            if not group:
                self._clear_bit(found)
            size, prev_offset = _unpack_header(buf, addr)
            prev_offset &= ~FLAG_MASK  # a free block never has a free neighbour
        rest = size - need
        if rest >= MIN_SPLIT:
            split = addr + HEADER_SIZE + need
            _pack_header(buf, split, rest - HEADER_SIZE, (addr & OFFSET_MASK) | FREE)
            index = (rest - HEADER_SIZE - MIN_PAYLOAD) >> LIST_SHIFT
            group = self._free_lists[index]
            if not group:  # the list becomes non-empty: mark it in both bitmap levels
                word = index >> WORD_SHIFT
                second[word] |= 1 << (index & WORD_MASK)
                self._first_level |= 1 << word
            group[split] = None
            size = need
            after = split + rest
            if after & OFFSET_MASK:
                _pack_u16(buf, after + 2, (split & OFFSET_MASK) | PREV_FREE)
        else:
            after = addr + HEADER_SIZE + size
            if after & OFFSET_MASK:
                _pack_u16(buf, after + 2, addr & OFFSET_MASK)
        _pack_header(buf, addr, size, prev_offset)
        start = addr + HEADER_SIZE
        buf[start : start + length] = data
        handle = (start << LENGTH_BITS) | length
        self._owners[handle] = owner
        self._block_bytes += HEADER_SIZE + size
        self._data_bytes += length
        self._cumul_allocs += 1
        return handle

    def load(self, handle: int) -> bytes:
        """The exact bytes stored under ``handle``."""
        if handle not in self._owners:
            raise KeyError(f"xvmalloc: no page is stored under handle {handle:#x}")
        start = handle >> LENGTH_BITS
        return self._buf[start : start + (handle & LENGTH_MASK)]

    def size(self, handle: int) -> int:
        if handle not in self._owners:
            raise KeyError(f"xvmalloc: no page is stored under handle {handle:#x}")
        return handle & LENGTH_MASK

    def free(self, handle: int) -> int:
        """Free one block, merging it with free neighbours (an emptied frame goes back to the
        arena); returns the length that was stored."""
        owners = self._owners
        try:
            del owners[handle]
        except KeyError:
            raise KeyError(f"xvmalloc: no page is stored under handle {handle:#x}") from None
        remaining = len(owners)
        if remaining >= 8 and not remaining & (remaining - 1):
            compact(owners)  # a table that shrank gives its memory back (tables.py)
        buf = self._buf
        addr = (handle >> LENGTH_BITS) - HEADER_SIZE
        size, prev = _unpack_header(buf, addr)
        self._block_bytes -= HEADER_SIZE + size
        self._data_bytes -= handle & LENGTH_MASK
        base = addr & ~OFFSET_MASK
        after = addr + HEADER_SIZE + size
        if after & OFFSET_MASK:
            after_size, after_prev = _unpack_header(buf, after)
            if after_prev & FREE:
                self._unlink(after, after_size)
                size += HEADER_SIZE + after_size
                after += HEADER_SIZE + after_size
        if prev & PREV_FREE:
            before = base + (prev & ~FLAG_MASK)
            before_size, prev = _unpack_header(buf, before)
            self._unlink(before, before_size)
            size += HEADER_SIZE + before_size
            addr = before
        if size == MAX_PAYLOAD:
            self._frames -= 1
            self._arena.free_frame(addr >> PAGE_SHIFT)
            return handle & LENGTH_MASK
        _pack_header(buf, addr, size, (prev & ~FLAG_MASK) | FREE)
        self._push(addr, size)
        if after & OFFSET_MASK:
            _pack_u16(buf, after + 2, (addr & OFFSET_MASK) | PREV_FREE)
        return handle & LENGTH_MASK

    # ----- free lists and bitmaps --------------------------------------------------------------
    def _push(self, addr: int, size: int) -> None:
        index = (size - MIN_PAYLOAD) >> LIST_SHIFT
        group = self._free_lists[index]
        if not group:
            word = index >> WORD_SHIFT
            self._second_level[word] |= 1 << (index & WORD_MASK)
            self._first_level |= 1 << word
        group[addr] = None

    def _unlink(self, addr: int, size: int) -> None:
        index = (size - MIN_PAYLOAD) >> LIST_SHIFT
        group = self._free_lists[index]
        del group[addr]
        if not group:
            self._clear_bit(index)

    def _clear_bit(self, index: int) -> None:
        word = index >> WORD_SHIFT
        bits = self._second_level[word] & ~(1 << (index & WORD_MASK))
        self._second_level[word] = bits
        if not bits:
            self._first_level &= ~(1 << word)

    # ----- introspection -----------------------------------------------------------------------
    @property
    def frames_in_use(self) -> int:
        return self._frames

    def stats(self) -> dict[str, int | list[int]]:
        """xvmalloc's pool numbers plus what shows fragmentation.

        ``xv_curr_bytes`` counts allocated blocks with their headers and rounding;
        ``xv_curr_data_bytes`` the exact lengths stored; ``xv_free_bytes`` the rest of the frames.
        """
        free_blocks = sum(len(group) for group in self._free_lists)
        return {
            "xv_curr_pages": self._frames,
            "xv_curr_bytes": self._block_bytes,
            "xv_curr_data_bytes": self._data_bytes,
            "xv_curr_blocks": len(self._owners),
            "xv_free_blocks": free_blocks,
            "xv_free_bytes": self._frames * PAGE_SIZE - self._block_bytes,
            "xv_cumul_allocs": self._cumul_allocs,
            "xv_failed_alloc": self._failed_alloc,
            "xv_capped_allocs": self._capped,
        }

    def check_invariants(self) -> None:
        """Walk every frame's blocks and cross-check lists, bitmaps, handles and counters."""
        listed: dict[int, int] = {}
        for index, group in enumerate(self._free_lists):
            word, bit = index >> WORD_SHIFT, index & WORD_MASK
            has_bit = bool(self._second_level[word] >> bit & 1)
            _require(has_bit == bool(group), f"bitmap bit for list {index} disagrees with it")
            for addr in group:
                _require(addr not in listed, f"block {addr:#x} is on two free lists")
                listed[addr] = index
        for word, bits in enumerate(self._second_level):
            has_bit = bool(self._first_level >> word & 1)
            _require(has_bit == bool(bits), f"first-level bit {word} disagrees with its word")
            _require(bits >> (1 << WORD_SHIFT) == 0, f"second-level word {word} is too wide")
        _require(self._first_level >> NUM_WORDS == 0, "first-level word has stray bits")
        allocated = {(handle >> LENGTH_BITS) - HEADER_SIZE: handle for handle in self._owners}
        frames = {addr >> PAGE_SHIFT for addr in allocated} | {a >> PAGE_SHIFT for a in listed}
        _require(
            len(frames) == self._frames, f"{len(frames)} frames hold blocks, {self._frames} counted"
        )
        seen_free: set[int] = set()
        seen_allocated: set[int] = set()
        block_bytes = 0
        for frame in sorted(frames):
            block_bytes += self._check_frame(frame, listed, allocated, seen_free, seen_allocated)
        _require(seen_free == set(listed), "a free list holds an address that is no free block")
        _require(seen_allocated == set(allocated), "a handle points at no allocated block")
        _require(block_bytes == self._block_bytes, "allocated byte counter disagrees with blocks")
        data_bytes = sum(handle & LENGTH_MASK for handle in self._owners)
        _require(data_bytes == self._data_bytes, "data byte counter disagrees with handles")

    def _check_frame(
        self,
        frame: int,
        listed: dict[int, int],
        allocated: dict[int, int],
        seen_free: set[int],
        seen_allocated: set[int],
    ) -> int:
        """Check that one frame is tiled by consistent blocks; its allocated bytes."""
        base = frame << PAGE_SHIFT
        offset = 0
        previous_offset = 0
        previous_free = False
        block_bytes = 0
        while offset < PAGE_SIZE:
            addr = base + offset
            size, prev = _unpack_header(self._buf, addr)
            where = f"frame {frame} block at {offset} (size {size}, prev {prev:#x})"
            _require(size >= MIN_PAYLOAD and size & ALIGN_MASK == 0, f"{where}: bad size")
            _require(offset + HEADER_SIZE + size <= PAGE_SIZE, f"{where}: crosses the frame end")
            _require(prev & ~FLAG_MASK == previous_offset, f"{where}: wrong previous offset")
            _require(bool(prev & PREV_FREE) == previous_free, f"{where}: wrong PREV_FREE flag")
            is_free = bool(prev & FREE)
            if is_free:
                _require(not previous_free, f"{where}: two free blocks side by side")
                _require(
                    listed.get(addr) == list_for_free_block(size), f"{where}: not on its free list"
                )
                seen_free.add(addr)
            else:
                handle = allocated.get(addr)
                _require(handle is not None, f"{where}: allocated but no handle")
                assert handle is not None
                length = handle & LENGTH_MASK
                need = block_size_for(length)
                _require(need <= size < need + MIN_SPLIT, f"{where}: wrong size for {length} bytes")
                seen_allocated.add(addr)
                block_bytes += HEADER_SIZE + size
            previous_offset, previous_free = offset, is_free
            offset += HEADER_SIZE + size
        _require(offset == PAGE_SIZE, f"frame {frame}: blocks do not end at the frame end")
        _require(block_bytes > 0, f"frame {frame}: entirely free but not returned")
        return block_bytes
