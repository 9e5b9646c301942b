"""Which copy of each swap page is current: none, the one in tmem, or the one in the fallback
file. The map is a file, mapped shared into the agent, so a restarted agent (same boot) finds
it exactly as its predecessor left it: the page cache is shared, so a store the old agent made
is seen by the new one whether or not it reached the disk.

Layout: a 4 KiB header (magic, version, page count, the boot id it belongs to, the tmem pool
id), then one byte per page. A map of another boot, size or version is reset to all-empty
when opened: swap contents never outlive a boot. The writers keep the order that makes a
crash of the agent safe: a page's data is written first (fallback file, or acknowledged by
tmemd), then its byte is flipped; the byte never names a copy that is not complete.
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import struct
from collections.abc import Iterator

log = logging.getLogger(__name__)

EMPTY = 0  # never written, trimmed or zeroed: reads as zeros
TMEM = 1  # the current copy is in tmem (a miss there is an I/O error)
FALLBACK = 2  # the current copy is in the fallback file
LOST = 3  # the current copy was in a tmem that lost it (a fresh daemon): an I/O error
STATE_NAMES = ("empty", "tmem", "fallback", "lost")

MAGIC = b"TMEMSWAPMAP\x00"
VERSION = 1
HEADER_SIZE = 4096
HEADER = struct.Struct("<12sIQ16sq")  # magic, version, pages, boot id, pool id (-1: none)
POOL_OFFSET = struct.calcsize("<12sIQ16s")
POOL = struct.Struct("<q")
SCAN_CHUNK = 4096
_HELD = re.compile(b"[^%c]" % EMPTY)  # a page with a copy somewhere
_IN_FALLBACK = re.compile(b"%c" % FALLBACK)


class LocationMap:
    """A page-state byte per swap page, shared through a mapped file."""

    def __init__(self, path: str, pages: int, boot_id: bytes) -> None:
        if pages <= 0:
            raise ValueError("the map needs at least one page")
        self.path = path
        self.pages = pages
        self.boot_id = boot_id
        size = HEADER_SIZE + pages
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            header = os.pread(fd, HEADER.size, 0)
            self.reset_reason = self._mismatch(header)
            if self.reset_reason:
                os.ftruncate(fd, 0)  # every byte zero again: all pages empty
                os.ftruncate(fd, size)
                os.pwrite(fd, HEADER.pack(MAGIC, VERSION, pages, boot_id, -1), 0)
            self._mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._zero_chunk = bytes(SCAN_CHUNK)
        if self.reset_reason:
            log.info("location map %s started empty (%s)", path, self.reset_reason)
        else:
            log.info("location map %s kept: %s", path, self.census())

    def _mismatch(self, header: bytes) -> str:
        """Why an existing header cannot be kept ("" when it can)."""
        if len(header) < HEADER.size:
            return "new file"
        magic, version, pages, boot_id, _ = HEADER.unpack(header)
        if magic != MAGIC or version != VERSION:
            return "not a map of this version"
        if pages != self.pages:
            return f"made for {pages} pages, now {self.pages}"
        if boot_id != self.boot_id:
            return "made in another boot"
        return ""

    @property
    def fresh(self) -> bool:
        """The map was created or reset when opened (nothing from before is current)."""
        return bool(self.reset_reason)

    @property
    def pool_id(self) -> int:
        """The tmem pool holding this map's TMEM pages (-1: none yet)."""
        return int(POOL.unpack_from(self._mm, POOL_OFFSET)[0])

    @pool_id.setter
    def pool_id(self, value: int) -> None:
        POOL.pack_into(self._mm, POOL_OFFSET, value)

    def get(self, page: int) -> int:
        return self._mm[HEADER_SIZE + page]

    def set(self, page: int, state: int) -> None:
        self._mm[HEADER_SIZE + page] = state

    def census(self) -> dict[str, int]:
        """Pages in each state (reads the whole map: for start-up and status only)."""
        states = self._mm[HEADER_SIZE:]
        return {name: states.count(bytes([i])) for i, name in enumerate(STATE_NAMES)}

    def not_empty(self, first: int, count: int) -> Iterator[int]:
        """Page numbers in [first, first + count) whose state is not EMPTY, in order; skips
        empty stretches a chunk at a time (a whole-device discard on an empty map is quick)."""
        mm, zero = self._mm, self._zero_chunk
        page, end = first, min(first + count, self.pages)
        while page < end:
            stop = min(page + SCAN_CHUNK, end)
            lo, hi = HEADER_SIZE + page, HEADER_SIZE + stop
            if mm[lo:hi] != zero[: stop - page]:
                for p in range(page, stop):
                    if mm[HEADER_SIZE + p]:
                        yield p
            page = stop

    def empty_range(self, first: int, count: int) -> tuple[list[int], list[int]]:
        """Make pages [first, first + count) EMPTY; returns those that were not, and those of
        them whose copy was in the fallback file, in order. A chunk at a time, found by the
        regular expression engine: a discard covers thousands of pages."""
        mm, zero = self._mm, self._zero_chunk
        held: list[int] = []
        in_fallback: list[int] = []
        page, end = first, min(first + count, self.pages)
        while page < end:
            stop = min(page + SCAN_CHUNK, end)
            lo, hi = HEADER_SIZE + page, HEADER_SIZE + stop
            states = mm[lo:hi]
            if states != zero[: stop - page]:
                held += [page + m.start() for m in _HELD.finditer(states)]
                in_fallback += [page + m.start() for m in _IN_FALLBACK.finditer(states)]
                mm[lo:hi] = zero[: stop - page]
            page = stop
        return held, in_fallback

    def mark_tmem_lost(self) -> int:
        """Every TMEM page becomes LOST (tmemd no longer has them); returns how many."""
        mm = self._mm
        lost = 0
        for page in self.not_empty(0, self.pages):
            if mm[HEADER_SIZE + page] == TMEM:
                mm[HEADER_SIZE + page] = LOST
                lost += 1
        return lost

    def sync(self) -> None:
        """Write the map to disk (only a guest crash needs this; a restarted agent sees the
        page cache)."""
        self._mm.flush()

    def close(self) -> None:
        if not self._mm.closed:
            self._mm.close()
