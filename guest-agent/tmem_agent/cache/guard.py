"""The stale-read guard: a put of a block may only carry data no write has overtaken.

A read that misses reads the disk and then puts the block into the pool; a hit is put back
(a get on a private ephemeral pool removes the page). If a write to the same block started
after that read looked, the data may be old, and a put of it after the write's flush would
leave a stale copy for a later read. So every write (and trim, and write-zeroes) bumps an
epoch of its blocks when it starts and again when it ends, and counts itself in flight
meanwhile; a reader takes the epochs when it starts and may put a block only if the epoch is
unchanged and no write is in flight. A write that puts its own data afterwards expects
exactly its own end's bump.

Epochs live in a fixed array of stripes (block modulo the stripe count): no allocation per
block, and two blocks sharing a stripe only ever cost a put (conservative, never stale).
"""

from __future__ import annotations

from array import array

STRIPES = 1 << 16


class StaleGuard:
    """Write epochs and in-flight counts per stripe of blocks."""

    def __init__(self, stripes: int = STRIPES) -> None:
        if stripes <= 0 or stripes & (stripes - 1):
            raise ValueError("the stripe count must be a power of two")
        self._mask = stripes - 1
        self._epoch = array("Q", bytes(8 * stripes))
        self._writing = array("I", bytes(4 * stripes))

    def _stripes(self, first: int, count: int) -> range | list[int]:
        if count > self._mask:
            return range(self._mask + 1)
        lo, hi = first & self._mask, (first + count) & self._mask
        return range(lo, hi) if lo < hi else [*range(lo, self._mask + 1), *range(hi)]

    def begin_write(self, first: int, count: int) -> None:
        epoch, writing = self._epoch, self._writing
        for s in self._stripes(first, count):
            epoch[s] += 1
            writing[s] += 1

    def end_write(self, first: int, count: int) -> None:
        epoch, writing = self._epoch, self._writing
        for s in self._stripes(first, count):
            epoch[s] += 1
            writing[s] -= 1

    def look(self, first: int, count: int) -> list[int]:
        """The epochs of blocks first .. first + count - 1 now (a reader's token)."""
        epoch, mask = self._epoch, self._mask
        return [epoch[(first + i) & mask] for i in range(count)]

    def may_put(self, block: int, seen: int) -> bool:
        """Whether data of ``block`` read while its epoch was ``seen`` is still current."""
        s = block & self._mask
        return self._writing[s] == 0 and self._epoch[s] == seen
