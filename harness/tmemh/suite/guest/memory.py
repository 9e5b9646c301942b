"""Anonymous memory with a CRC-32 per page: filled, touched, verified.

A :class:`Region` is private anonymous memory (mmap) the guest kernel may swap; every page's
CRC is kept in a separate array, so a page that comes back from swap changed is found.
:class:`Ballast` is a region held by a thread while a file workload runs: an application's
working set that keeps being read and partly rewritten at a bounded rate, so that page cache
and anonymous memory compete and the kernel swaps; it is verified when the workload ends.
"""

from __future__ import annotations

import array
import mmap
import random
import threading
import time
import zlib
from collections.abc import Callable

from .datagen import PAGE, ContentPool

PageMaker = Callable[[int], bytearray]


class Region:
    """``pages`` pages of private anonymous memory and their CRCs."""

    def __init__(self, pages: int) -> None:
        if pages <= 0:
            raise ValueError(f"a region needs at least one page, not {pages}")
        self.pages = pages
        self.memory = mmap.mmap(-1, pages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.crcs = array.array("I", bytes(4 * pages))

    def write(self, index: int, page: bytearray) -> None:
        self.crcs[index] = zlib.crc32(page)
        self.memory[index * PAGE:(index + 1) * PAGE] = page

    def check(self, index: int) -> bool:
        return zlib.crc32(self.memory[index * PAGE:(index + 1) * PAGE]) == self.crcs[index]

    def fill(self, make_page: PageMaker) -> None:
        for index in range(self.pages):
            self.write(index, make_page(index))

    def verify(self) -> list[int]:
        """Indices of the pages whose contents no longer match their CRC."""
        return [index for index in range(self.pages) if not self.check(index)]

    def close(self) -> None:
        self.memory.close()


class Ballast(threading.Thread):
    """A working set of ``pages`` realistic pages, touched at ``touch_pages_s`` pages per
    second (one in four rewritten) until :meth:`finish`, which verifies every page."""

    SLICES_PER_S = 16

    def __init__(self, pool: ContentPool, pages: int, touch_pages_s: int, seed: int) -> None:
        super().__init__(name="ballast", daemon=True)
        self.pool = pool
        self.region = Region(pages)
        self.touch_pages_s = touch_pages_s
        self._rng = random.Random(seed)
        self._halt = threading.Event()
        self.touched = 0
        self.rewritten = 0
        self.bad: list[int] = []
        self.error: str | None = None
        self.fill_s = 0.0

    def fill(self) -> None:
        started = time.monotonic()
        self.region.fill(self.pool.page)
        self.fill_s = time.monotonic() - started

    def run(self) -> None:
        per_slice = max(1, self.touch_pages_s // self.SLICES_PER_S)
        try:
            while not self._halt.wait(1.0 / self.SLICES_PER_S):
                for _ in range(per_slice):
                    index = self._rng.randrange(self.region.pages)
                    if not self.region.check(index):
                        self.bad.append(index)
                    elif self.touched % 4 == 0:
                        self.region.write(index, self.pool.page(index))
                        self.rewritten += 1
                    self.touched += 1
        except Exception as exc:  # reported by finish(), never silently lost
            self.error = f"{type(exc).__name__}: {exc}"

    def finish(self) -> dict[str, object]:
        """Stop touching, verify every page; the ballast's own report."""
        self._halt.set()
        if self.is_alive():
            self.join()
        started = time.monotonic()
        bad = sorted(set(self.bad) | set(self.region.verify()))
        verify_s = time.monotonic() - started
        self.region.close()
        return {"pages": self.region.pages, "fill_s": round(self.fill_s, 3),
                "verify_s": round(verify_s, 3), "touched": self.touched,
                "rewritten": self.rewritten, "bad_pages": len(bad), "first_bad": bad[:10],
                "error": self.error}


def ballast_pages(available_bytes: int, fraction: float) -> int:
    """Pages of ballast: ``fraction`` of the memory available when the workload starts."""
    return max(0, int(available_bytes * fraction) // PAGE)
