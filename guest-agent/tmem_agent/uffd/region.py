"""A memory region backed by tmem: anonymous memory with a budget of resident pages.

While more pages than the budget are resident, the region's fault-handler thread
(:mod:`tmem_agent.uffd.handler`) picks pages with CLOCK, puts them to tmem and drops them
(``MADV_DONTNEED``); the next access to a dropped page faults, and the handler fills it from tmem
with ``UFFDIO_COPY``. A page never written (or dropped while all zero) is filled with the zero
page (``UFFDIO_ZEROPAGE``). The pool is persistent or ephemeral, per region (see
:class:`Region`).

The contract with whoever uses a region:

- **Touch the memory only without holding the GIL.** The handler is a Python thread: a thread
  that faults while holding the GIL waits for a handler that can never run. :meth:`Region.read`,
  :meth:`Region.read_into` and :meth:`Region.write` copy with ``ctypes.memmove``, which drops
  the GIL; C code and system calls that drop it (``os.readv`` into :attr:`Region.address`, say)
  may use the address too. A ``memoryview`` of the region would not.
- **Any thread, any time.** Eviction needs no help from the region's users: before a page is
  copied out for its put, the handler write-protects it (``UFFDIO_WRITEPROTECT``; anonymous
  memory supports it since Linux 5.7, so also Debian 12's 6.1). A write that comes between the
  copy and the drop waits in the kernel; once the page is dropped it is filled again from the
  copy just stored, and the write goes to that. So no write is lost, and a region refuses to
  start on a kernel without write protection (:class:`~tmem_agent.uffd.kernel.UffdUnavailable`).
  Writes the kernel cannot see are outside this guarantee: DMA into the region (O_DIRECT reads,
  io_uring fixed buffers, vmsplice) while a page is being evicted. The same protection tells
  the handler when a page filled from a persistent pool is first written (one extra fault);
  until then the page is clean and is dropped again without a put (``track_clean``; it relies
  on the kernel keeping a mapped page's write protection, as it does across swap and
  migration).
- **Nothing else changes the mapping**: no ``madvise``, ``mprotect``, ``mremap``, ``munmap`` or
  ``mlock`` on it, and a child process made by ``fork`` sees dropped pages as zeros. A process
  that locked its future memory (``mlockall(MCL_FUTURE)``, as the agent's hardening does) may
  make regions: a region unlocks its own mapping before any page is in it.
- **Lost pages fail loudly.** When a page's copy is gone (tmemd lost a persistent page, an
  ephemeral page was dropped and there is no refill function, the refill failed), the faulting
  access is released with a zero page, the page is marked lost, and the region's methods raise
  :class:`PageLost` for every access that touches it, until a write covers the whole page.
  Raw accesses through :attr:`Region.address` cannot be told; they must not be mixed with lost
  pages (``Region.lost_pages`` lists them).
- **An ephemeral region holds data that can be made again.** tmem may drop an ephemeral page at
  any time; ``refill(page_number)`` must then return the page's current contents (re-read its
  source). The function runs in the handler thread: it must not touch the region.
- **The budget holds between faults.** After serving the faults it has read, the handler
  evicts until the budget holds again; meanwhile the pages those faults filled (each the
  faulting page and at most ``readahead`` neighbours, capped at a quarter of the budget) may
  exceed it. Pages tmemd refuses stay resident (in an ephemeral region with a refill function
  they are dropped anyway): then the region is over budget, which its counters show.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable
from typing import Any

from . import kernel
from .handler import USAGE_MAX, FaultHandler
from .stats import UffdStats
from .store import PageStore

log = logging.getLogger(__name__)

PAGE = kernel.PAGE
MAX_READAHEAD = 255
MAX_EVICT_BATCH = 256

Refill = Callable[[int], bytes | None]


class RegionError(Exception):
    """The region cannot serve this access (its handler failed, it is closed)."""


class PageLost(RegionError):
    """An access touched pages whose contents are gone."""

    def __init__(self, pages: list[int]) -> None:
        shown = ", ".join(str(p) for p in pages[:8]) + (" ..." if len(pages) > 8 else "")
        super().__init__(f"{len(pages)} page(s) of the region are lost: {shown}")
        self.pages = pages


class Region:
    """``size`` bytes of memory of which at most ``budget`` bytes stay resident; the rest live
    in ``store`` (a tmem pool, :class:`~tmem_agent.uffd.store.TmemStore`).

    ``store.persistent`` decides the pool kind. A persistent region keeps the only copy of an
    evicted page in tmem; with ``track_clean`` a page filled from tmem stays write-protected
    until written, so dropping it again needs no put. An ephemeral region needs ``refill`` for
    pages tmem dropped; without one such a page is lost (:class:`PageLost`).

    ``readahead``: neighbours filled along with a fault that continues where the last fill
    ended (a sequential scan): the following pages in the same state, zero pages, or pages in
    tmem fetched in the same batch. ``evict_batch``: pages put and dropped per eviction round.
    Use as a context manager or call :meth:`open` and :meth:`close`.
    """

    def __init__(self, size: int, budget: int, store: PageStore, *, refill: Refill | None = None,
                 readahead: int = 15, evict_batch: int = 64, track_clean: bool = True,
                 stats: UffdStats | None = None) -> None:
        if size <= 0 or size % PAGE:
            raise ValueError(f"region size must be a positive multiple of {PAGE}: {size}")
        if budget < PAGE:
            raise ValueError(f"the resident budget must be at least one page: {budget}")
        if not 0 <= readahead <= MAX_READAHEAD:
            raise ValueError(f"readahead must be 0..{MAX_READAHEAD} pages: {readahead}")
        if not 1 <= evict_batch <= MAX_EVICT_BATCH:
            raise ValueError(f"evict_batch must be 1..{MAX_EVICT_BATCH} pages: {evict_batch}")
        if refill is not None and store.persistent:
            raise ValueError("refill is for ephemeral regions: a persistent pool holds the "
                             "only copy of a page")
        self.size = size
        self.pages = size // PAGE
        self.budget_pages = min(budget // PAGE, self.pages)
        self.store = store
        self.refill = refill
        self.readahead = readahead
        self.evict_batch = evict_batch
        self.track_clean = track_clean and store.persistent
        self.stats = stats or UffdStats()
        self.address = 0
        self.lost: set[int] = set()
        self.failed: BaseException | None = None
        self.usage = bytearray(self.pages)  # CLOCK's usage counts, raised by every access
        self._handler: FaultHandler | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    # ----- life cycle ----------------------------------------------------------------------
    def open(self) -> Region:
        """Map the memory, register it with a new userfaultfd, start the handler thread."""
        if self._handler is not None or self._closed:
            raise RegionError("a region is opened once")
        uffd = kernel.Uffd()
        try:
            self.address = kernel.map_anonymous(self.size)
            # Huge pages would make a drop of one page a split, and a fill a 4 KiB one anyway.
            kernel.madvise(self.address, self.size, kernel.MADV_NOHUGEPAGE)
            uffd.register(self.address, self.size)
        except BaseException:
            uffd.close()
            if self.address:
                kernel.unmap(self.address, self.size)
                self.address = 0
            raise
        self._handler = FaultHandler(self, uffd)
        self._thread = threading.Thread(target=self._handler.run, name="uffd-handler",
                                        daemon=True)
        self.stats.gauge("regions", 1)
        self.stats.gauge("region_pages", self.pages)
        self.stats.gauge("budget_pages", self.budget_pages)
        self._thread.start()
        log.info("region of %d pages at %#x, budget %d pages, %s pool", self.pages,
                 self.address, self.budget_pages,
                 "persistent" if self.store.persistent else "ephemeral")
        return self

    def close(self, close_store: bool = True) -> None:
        """Stop the handler, unmap the memory and close the store (unless ``close_store`` is
        false: its pages stay in tmem). No thread may be touching the region."""
        if self._closed:
            return
        self._closed = True
        handler, thread = self._handler, self._thread
        if handler is not None and thread is not None:
            handler.stop()
            thread.join()
            handler.close()
            self.stats.gauge("regions", -1)
            self.stats.gauge("region_pages", -self.pages)
            self.stats.gauge("budget_pages", -self.budget_pages)
            self.stats.resident(-handler.resident)
        if self.address:
            kernel.unmap(self.address, self.size)
            self.address = 0
        if close_store:
            self.store.close()

    def __enter__(self) -> Region:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- what the handler reports --------------------------------------------------------
    def handler_failed(self, exc: BaseException) -> None:
        """The handler thread died: every later access raises (it has already released the
        threads that were waiting, whose memory is now unbacked)."""
        self.failed = exc

    @property
    def resident_pages(self) -> int:
        return self._handler.resident if self._handler is not None else 0

    @property
    def lost_pages(self) -> list[int]:
        return sorted(self.lost)

    def counters(self) -> dict[str, Any]:
        """This region's view: its stats snapshot with the region's own figures beside."""
        snap = self.stats.snapshot()
        snap["region"] = {"pages": self.pages, "budget_pages": self.budget_pages,
                          "resident_pages": self.resident_pages,
                          "resident_max": self._handler.resident_max if self._handler else 0,
                          "lost_pages": len(self.lost),
                          "pool": "persistent" if self.store.persistent else "ephemeral"}
        return snap

    # ----- access --------------------------------------------------------------------------
    def _span(self, offset: int, length: int) -> tuple[int, int]:
        if self._handler is None or self._closed:
            raise RegionError("the region is not open")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"{offset}+{length} is outside the region (size {self.size})")
        first, end = offset // PAGE, (offset + length + PAGE - 1) // PAGE
        usage = self.usage
        for page in range(first, end):
            if usage[page] < USAGE_MAX:
                usage[page] += 1
        return first, end

    def _check(self, first: int, end: int) -> None:
        if self._closed:  # its pages were released under the access: what it saw is void
            raise RegionError("the region was closed during the access")
        if self.failed is not None:
            raise RegionError(f"the region's fault handler failed: {self.failed!r}")
        if self.lost:
            lost = [p for p in range(first, end) if p in self.lost]
            if lost:
                raise PageLost(lost)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` into the region at ``offset`` (without the GIL)."""
        if not isinstance(data, bytes):
            data = bytes(data)
        first, end = self._span(offset, len(data))
        ctypes.memmove(self.address + offset, data, len(data))
        if self.lost:  # whole pages written are good again
            for page in range(first, end):
                if page * PAGE >= offset and (page + 1) * PAGE <= offset + len(data):
                    self.lost.discard(page)
        self._check(first, end)

    def read_into(self, offset: int, buffer: bytearray) -> None:
        """Fill ``buffer`` from the region at ``offset`` (without the GIL)."""
        length = len(buffer)
        first, end = self._span(offset, length)
        target = (ctypes.c_char * length).from_buffer(buffer)
        ctypes.memmove(target, self.address + offset, length)
        del target
        self._check(first, end)

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes of the region at ``offset``."""
        out = bytearray(length)
        self.read_into(offset, out)
        return bytes(out)
