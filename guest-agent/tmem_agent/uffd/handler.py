"""The fault-handler thread of a region: fills faulting pages, and evicts with CLOCK.

One thread does everything that changes a region's pages or talks to tmem, so page states need
no lock and the store is used from one thread. The loop: wait for faults (poll, without the GIL),
read the ones waiting, make each faulting page present (which wakes its thread), then run
eviction rounds until the budget holds again, and wait for the next faults. Faults that come
during an eviction wait for the round to end.

Page states (one byte per page):

==========  ========  =====================================================================
state       present   meaning
==========  ========  =====================================================================
NEW         no        all zero (never written, or dropped while zero): zero page on a fault
TMEM        no        the store holds it: get (with readahead), ``UFFDIO_COPY``
SOURCE      no        ephemeral, dropped by tmem: ``refill`` on a fault
LOST        no        gone: zero page on a fault, and the page is marked lost
DIRTY       yes       may differ from any stored copy; writable
CLEAN       yes       the store holds the same bytes; write-protected until written
==========  ========  =====================================================================

Eviction of a DIRTY page: write-protect it, copy it out, put it, drop it (see the contract in
:mod:`tmem_agent.uffd.region` for why no write is lost). A CLEAN page is dropped without a put;
a page that reads all zero is dropped as NEW. A page tmemd refuses is made writable again and
stays (ephemeral pages with a refill function are dropped anyway: their source has them).

The policy is CLOCK, with a small usage count per page instead of one referenced bit (the
clock sweep of PostgreSQL's buffer manager), rather than LRU: a user space handler never sees
the accesses that do not fault, so LRU would degrade to the order of faults, and keeping an LRU
list would cost every access a locked list update. CLOCK needs one byte per page, which the
region's accessors raise (up to ``USAGE_MAX``) with a plain store from any thread and every fill
sets to at least one; the hand lowers the counts it passes and evicts the pages it finds at
zero. The count matters here because the hand may sweep twice before a user thread gets the
GIL back: with a single bit, a page used between every other access would still be lost
whenever two rounds of eviction come back to back.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import select
import time
from typing import TYPE_CHECKING

from ..wakepipe import WakePipe
from . import kernel
from .store import StoreError

if TYPE_CHECKING:
    from .region import Region

log = logging.getLogger(__name__)

PAGE = kernel.PAGE
NEW, TMEM, SOURCE, LOST, DIRTY, CLEAN = range(6)
ZERO_PAGE = bytes(PAGE)
MAX_MESSAGES = 64
MAX_RUN = 256  # pages in one readahead batch
LOG_FIRST, LOG_EVERY = 10, 1000  # errors of one kind: the first ones logged, then one in 1000
USAGE_MAX = 3  # CLOCK: a page used this often survives this many turns of the hand unused


class FaultHandler:
    """The state of a region's pages, and the loop that serves its faults."""

    def __init__(self, region: Region, uffd: kernel.Uffd) -> None:
        self.region = region
        self.uffd = uffd
        self.store = region.store
        self.stats = region.stats
        self.base = region.address
        self.pages = region.pages
        self.state = bytearray(self.pages)  # NEW everywhere
        self.present = bytearray(self.pages)  # 1 for DIRTY and CLEAN (CLOCK looks for these)
        self.stored = bytearray(self.pages)  # 1 if the store may hold a copy
        self.usage = region.usage
        self.resident = 0
        self.resident_max = 0
        self.budget = region.budget_pages
        slack = min(region.evict_batch, max(1, self.budget // 8))
        self.low_water = max(0, self.budget - slack)
        self.hand = 0
        self.retry_at = 0  # after a round freed nothing: wait until this many are resident
        # A fill of more than a quarter of the budget would push out what it just filled.
        self.readahead = min(region.readahead, max(0, self.budget // 4 - 1))
        self.next_expected = 0  # the page after the last fill: a fault there is sequential
        self.stage = ctypes.create_string_buffer(MAX_RUN * PAGE)
        self.stage_view = memoryview(self.stage).cast("B")
        self.stage_addr = ctypes.addressof(self.stage)
        self._wake = WakePipe()
        self._stopping = False
        self._errors: dict[str, int] = {}

    # ----- thread life cycle ---------------------------------------------------------------
    def stop(self) -> None:
        self._stopping = True
        self._wake.wake()

    def close(self) -> None:
        if self.region.failed is None:
            self.uffd.unregister(self.base, self.pages * PAGE)
        self.uffd.close()
        self._wake.close()

    def run(self) -> None:
        poller = select.poll()
        poller.register(self.uffd.fd, select.POLLIN)
        poller.register(self._wake.fileno(), select.POLLIN)
        try:
            while not self._stopping:
                poller.poll(None)
                if self._stopping:
                    break
                faults = self.uffd.read_faults(MAX_MESSAGES)
                if faults:
                    self.serve(faults)
                # Back within the budget before the next faults are read: rounds down to the
                # low-water mark.
                while self.resident > self.budget and self.resident >= self.retry_at:
                    self.evict_round()
        except BaseException as exc:  # a bug or a broken kernel call: fail loudly, hang nobody
            log.exception("the fault handler of the region at %#x failed", self.base)
            self.region.handler_failed(exc)
            try:
                self.uffd.unregister(self.base, self.pages * PAGE)  # wakes every waiter
            except OSError as unreg:
                log.error("could not release the region's waiting threads: %s", unreg)

    def _error(self, kind: str, message: str, *args: object) -> None:
        """Log an error of a kind: the first few, then one in LOG_EVERY (a dead link would
        otherwise log every fault)."""
        seen = self._errors[kind] = self._errors.get(kind, 0) + 1
        if seen <= LOG_FIRST or seen % LOG_EVERY == 0:
            log.error(message + (f" ({seen} so far)" if seen > LOG_FIRST else ""), *args)

    # ----- faults --------------------------------------------------------------------------
    def serve(self, faults: list[tuple[int, int]]) -> None:
        """Make every faulting page present (or writable), waking its waiters."""
        started = time.monotonic_ns()
        stats, state = self.stats, self.state
        seen: set[int] = set()
        for address, flags in faults:
            stats.add("faults")
            if flags & kernel.PAGEFAULT_FLAG_WRITE:
                stats.add("faults_write")
            if flags & kernel.PAGEFAULT_FLAG_WP:
                stats.add("faults_wp")
            page = (address - self.base) // PAGE
            if not 0 <= page < self.pages:
                log.error("fault at %#x is outside the region", address)
                continue
            if page in seen and not flags & kernel.PAGEFAULT_FLAG_WP:
                self.uffd.wake(self.base + page * PAGE, PAGE)
                continue
            seen.add(page)
            st = state[page]
            if st == CLEAN and flags & kernel.PAGEFAULT_FLAG_WP:
                self._make_dirty(page)
            elif st >= DIRTY:  # already present: a fault that was answered meanwhile
                stats.add("faults_stale")
                if flags & kernel.PAGEFAULT_FLAG_WP:
                    self.uffd.writeprotect(self.base + page * PAGE, PAGE, False)
                else:
                    self.uffd.wake(self.base + page * PAGE, PAGE)
            else:
                self._fill(page)
        stats.latency("fault", started)

    def _make_dirty(self, page: int) -> None:
        """A write to a CLEAN page: the stored copy becomes stale; let the write go on."""
        self.state[page] = DIRTY
        self.stats.add("wp_resolved")
        self.uffd.writeprotect(self.base + page * PAGE, PAGE, False)

    def _run_of(self, page: int, st: int) -> int:
        """End of the run of pages in state ``st`` from ``page``: readahead only when the
        fault continues where the last fill ended (a sequential scan); random faults fill
        their own page alone."""
        window = self.readahead if page == self.next_expected else 0
        state, limit = self.state, min(self.pages, page + 1 + window, page + MAX_RUN)
        end = page + 1
        while end < limit and state[end] == st:
            end += 1
        self.next_expected = end
        return end

    def _became_present(self, first: int, end: int, st: int) -> None:
        """Pages ``first..end-1`` are mapped now, and count as used once: the faulting page
        is, and readahead pages are about to be (dropping them first would undo the
        readahead)."""
        count = end - first
        self.state[first:end] = bytes([st]) * count
        self.present[first:end] = b"\x01" * count
        usage = self.usage
        for page in range(first, end):
            if not usage[page]:
                usage[page] = 1
        self.resident += count
        if self.resident > self.resident_max:
            self.resident_max = self.resident
        self.stats.resident(count)

    def _fill(self, page: int) -> None:
        """Fill an absent page (and its readahead run); loops while a get miss changes the
        page's state (to SOURCE or LOST)."""
        while self.state[page] < DIRTY:
            st = self.state[page]
            if st == NEW:
                end = self._run_of(page, NEW)
                self._zeropage(page, end)
                self._became_present(page, end, DIRTY)
                self.stats.add("zero_fills", end - page)
                self.stats.add("readahead_pages", end - page - 1)
            elif st == TMEM:
                self._fill_from_store(page, self._run_of(page, TMEM))
            elif st == SOURCE:
                self._refill(page)
            else:  # LOST
                self.region.lost.add(page)
                self._zeropage(page, page + 1)
                self._became_present(page, page + 1, DIRTY)
                self.stats.add("lost_pages")
                self._error("lost", "page %d of the region at %#x is lost: accesses to it "
                            "will raise", page, self.base)

    def _zeropage(self, first: int, end: int) -> None:
        done, size = 0, (end - first) * PAGE
        for _ in range(5):  # EAGAIN (the mapping changing) may leave part of the range done
            code = self.uffd.zeropage(self.base + first * PAGE + done, size - done)
            if code != errno.EAGAIN:
                break
            done += max(0, self.uffd.zeroed)
        if code:
            raise kernel.UffdError(code, f"zero fill of pages {first}..{end - 1} failed: "
                                         "a page was present, the region's state is broken")

    def _copy(self, first: int, count: int, clean: bool) -> None:
        """Map ``count`` staged pages at page ``first``."""
        done, size = 0, count * PAGE
        for _ in range(5):
            code = self.uffd.copy(self.base + first * PAGE + done, self.stage_addr + done,
                                  size - done, write_protect=clean)
            if code != errno.EAGAIN:
                break
            done += max(0, self.uffd.copied)
        if code:
            raise kernel.UffdError(code, f"copy into pages {first}..{first + count - 1} "
                                         "failed: a page was present, the region's state is "
                                         "broken")
        self.stats.add("copies", count)

    def _fill_from_store(self, first: int, end: int) -> None:
        pages = list(range(first, end))
        started = time.monotonic_ns()
        try:
            got = self.store.get(pages)
        except StoreError as exc:
            self._error("get", "tmem get failed: %s", exc)
            self.stats.add("tmem_errors")
            got = [None] * len(pages)
        self.stats.latency("tmem_get_batch", started)
        stats = self.stats
        stats.add("gets", len(pages))
        persistent = self.store.persistent
        clean = self.region.track_clean
        run_start = -1
        for i, data in enumerate(got + [None]):  # a sentinel ends the last run of hits
            page = first + i
            if data is not None and len(data) == PAGE:
                if run_start < 0:
                    run_start = page
                self.stage_view[(page - run_start) * PAGE:(page - run_start + 1) * PAGE] = data
                if not persistent:
                    self.stored[page] = 0  # an ephemeral hit took the page out of tmem
                continue
            if run_start >= 0:
                self._copy(run_start, page - run_start, clean)
                self._became_present(run_start, page, CLEAN if clean else DIRTY)
                stats.add("get_hits", page - run_start)
                run_start = -1
            if page < end:  # a miss: the page is not in tmem any more
                stats.add("get_misses")
                self.stored[page] = 0
                self.state[page] = SOURCE if self.region.refill is not None else LOST
        stats.add("readahead_pages", max(0, sum(1 for g in got if g is not None) - 1))

    def _refill(self, page: int) -> None:
        refill = self.region.refill
        data: bytes | None = None
        try:
            data = refill(page) if refill is not None else None
        except Exception as exc:
            self._error("refill", "refill of page %d failed: %s", page, exc)
        if data is None or len(data) != PAGE:
            self.state[page] = LOST
            return
        self.stage_view[:PAGE] = data
        self._copy(page, 1, False)
        self._became_present(page, page + 1, DIRTY)
        self.stats.add("refills")

    # ----- eviction ------------------------------------------------------------------------
    def select_victims(self, count: int) -> list[int]:
        """CLOCK: up to ``count`` present pages whose usage count the hand finds at zero;
        it lowers the others as it passes. The hand goes round at most once per call. Only
        when a whole turn finds no page at zero are pages taken in the hand's order (all were
        used alike: the budget must still hold)."""
        present, usage, pages = self.present, self.usage, self.pages
        victims: list[int] = []
        passed: list[int] = []
        start = hand = self.hand
        end, lapped = pages, False
        while len(victims) < count:
            page = present.find(1, hand, end)
            if page < 0:
                if lapped:
                    break
                hand, end, lapped = 0, start, True  # the rest of the turn: 0 .. start
                continue
            hand = page + 1
            if usage[page]:
                usage[page] -= 1
                passed.append(page)
            else:
                victims.append(page)
        if not victims:  # no page at zero: the order of the hand decides
            victims = passed[:count]
            hand = victims[-1] + 1 if victims else hand
        self.hand = hand if hand < pages else 0
        return victims

    def evict_round(self) -> None:
        """Put and drop one batch of CLOCK's victims."""
        started = time.monotonic_ns()
        want = min(self.resident - self.low_water, self.region.evict_batch)
        victims = sorted(self.select_victims(want))
        if not victims:
            self.retry_at = self.resident + self.region.evict_batch
            return
        stats, state = self.stats, self.state
        stats.add("eviction_rounds")
        dirty = [p for p in victims if state[p] == DIRTY]
        for first, end in _runs(dirty):
            self.uffd.writeprotect(self.base + first * PAGE, (end - first) * PAGE, True)
        to_put: list[int] = []
        data: list[bytes] = []
        drop_zero: list[int] = []
        for page in dirty:
            content = ctypes.string_at(self.base + page * PAGE, PAGE)
            if content == ZERO_PAGE:
                drop_zero.append(page)
            else:
                to_put.append(page)
                data.append(content)
        clean = [p for p in victims if state[p] == CLEAN]
        stored_ok = self._put(to_put, data)
        refused = [p for p, ok in zip(to_put, stored_ok, strict=True) if not ok]
        keep = refused if self.region.refill is None else []
        keep_set = set(keep)
        dropped = [p for p in victims if p not in keep_set]
        for first, end in _runs(dropped):
            kernel.madvise(self.base + first * PAGE, (end - first) * PAGE,
                           kernel.MADV_DONTNEED)
        for first, end in _runs(keep):  # make them writable again, waking waiting writers
            self.uffd.writeprotect(self.base + first * PAGE, (end - first) * PAGE, False)
            self.usage[first:end] = bytes([USAGE_MAX]) * (end - first)
        for page, ok in zip(to_put, stored_ok, strict=True):
            self.stored[page] = 1 if ok else 0
            if ok:
                state[page] = TMEM
            elif page not in keep_set:
                state[page] = SOURCE
        for page in clean:
            state[page] = TMEM
        for page in drop_zero:
            state[page] = NEW
        self._flush([p for p in drop_zero if self.stored[p]])
        for page in dropped:
            self.present[page] = 0
        self.resident -= len(dropped)
        stats.resident(-len(dropped))
        stats.add("evictions", len(dropped))
        stats.add("clean_drops", len(clean))
        stats.add("zero_drops", len(drop_zero))
        # Refused pages stay: try again only once a batch more has become resident.
        self.retry_at = self.resident + self.region.evict_batch if keep else 0
        stats.latency("eviction_round", started)

    def _put(self, pages: list[int], data: list[bytes]) -> list[bool]:
        if not pages:
            return []
        started = time.monotonic_ns()
        try:
            results = self.store.put(pages, data)
        except StoreError as exc:
            self._error("put", "tmem put failed (the pages stay resident): %s", exc)
            self.stats.add("tmem_errors")
            results = [False] * len(pages)
        self.stats.latency("tmem_put_batch", started)
        stored = sum(results)
        self.stats.add("puts", len(pages))
        self.stats.add("puts_stored", stored)
        self.stats.add("puts_refused", len(pages) - stored)
        return results

    def _flush(self, pages: list[int]) -> None:
        """Forget stale stored copies of pages that are now zero."""
        if not pages:
            return
        try:
            self.store.flush(pages)
        except StoreError as exc:
            self._error("flush", "tmem flush failed: %s", exc)
            self.stats.add("tmem_errors")
        for page in pages:
            self.stored[page] = 0
        self.stats.add("flushes", len(pages))


def _runs(pages: list[int]) -> list[tuple[int, int]]:
    """Sorted page numbers as (first, end) runs of consecutive pages."""
    runs: list[tuple[int, int]] = []
    for page in pages:
        if runs and runs[-1][1] == page:
            runs[-1] = (runs[-1][0], page + 1)
        else:
            runs.append((page, page + 1))
    return runs
