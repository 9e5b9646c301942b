"""The swap shim proper: NBD requests become tmem operations, frontswap style.

A written page is a put to the persistent swap pool, a read is a get, a discard is a flush.
Swap page ``offset`` (the NBD byte offset / 4096) has the handle zcache gave it: object
``(type << 4) | (offset & 0xF)`` (type 0: the one swap device), index ``offset >> 4``.

- Writes are gathered into PUT_BATCH frames: the pages of every request read in one pass of
  the event loop go out together (at most ``batch_max`` a frame), and many frames may be in
  flight. A write is answered once each of its pages is either acknowledged by tmemd or, if
  tmemd refused it (or is unreachable), written to the fallback file.
- A read is answered with one GET_BATCH for all of its pages that live in tmem; pages in the
  fallback file are read from there, pages never written read as zeros. A page the map places
  in tmem that tmemd does not have fails the whole read with EIO (logged, counted, and the page
  marked lost): never other data. Reads wait (bounded) while tmemd is being reconnected.
- Trims and write-zeroes empty the pages in the map, then flush them in tmem.

The location map says which copy of a page is current; see :mod:`.locmap` for the ordering
that keeps it true across an agent restart.
"""

from __future__ import annotations

import collections
import logging
import time

from ..channel import wire
from .fallback import FallbackWorker, runs
from .locmap import EMPTY, FALLBACK, LOST, TMEM, LocationMap
from .nbdconn import PAGE_SIZE, NbdConnection, PagePool, Request
from .nbdproto import Cmd, Err
from .stats import SwapStats
from .tmemlink import TmemLink

log = logging.getLogger(__name__)

SWAP_TYPE = 0  # frontswap's swap type of the one device
HEAD = wire.BATCH_HEAD
KEY = wire.KEY
READ_WAIT_S = 60.0  # a read of a tmem page waits this long for tmemd to come back
LOG_EVERY = 100  # log one in this many repeated page errors
LATENCY_NAMES: dict[int, str] = {Cmd.READ: "nbd_read", Cmd.WRITE: "nbd_write",
                                 Cmd.TRIM: "nbd_trim"}


def swap_key(offset: int) -> tuple[int, int]:
    """(object id, index) of swap page ``offset``, as zcache mapped frontswap pages."""
    return (SWAP_TYPE << 4) | (offset & 0xF), offset >> 4


def pack_batch_keys(frame: bytearray | memoryview, pool_id: int, pages: list[int]) -> int:
    """A batch's head and the keys of swap pages ``pages`` (:func:`swap_key`) at the start of
    ``frame``; returns where they end. One struct call for the batch: a call per key was a
    good part of a batch's cost in the guest."""
    count = len(pages)
    keys = wire.repeated("Q16xI", count)  # the wire's keys: oid (x, 0, 0), index
    fields = [0] * (2 * count)
    fields[0::2] = [(SWAP_TYPE << 4) | (page & 0xF) for page in pages]
    fields[1::2] = [page >> 4 for page in pages]
    HEAD.pack_into(frame, 0, pool_id, count)
    keys.pack_into(frame, HEAD.size, *fields)
    return HEAD.size + count * KEY.size


class _PutBatch:
    """Pages of one PUT_BATCH frame: (page, slot, request) each."""

    __slots__ = ("shim", "items", "started_ns")

    def __init__(self, shim: SwapShim, items: list[tuple[int, int, Request]]) -> None:
        self.shim, self.items, self.started_ns = shim, items, time.monotonic_ns()

    def done(self, reply: bytes) -> None:
        shim = self.shim
        shim.stats.latency("tmem_put_batch", self.started_ns)
        if len(reply) != len(self.items):
            log.error("tmemd answered a batch of %d puts with %d bytes", len(self.items),
                      len(reply))
            self.failed("error")
            return
        locmap = shim.locmap
        refused = []
        for item, ok in zip(self.items, reply, strict=True):
            if ok == 1:
                locmap.set(item[0], TMEM)  # only now: the tmem copy is acknowledged
                shim.page_done(item[2])
            else:
                refused.append(item)
        shim.stats.add("puts_stored", len(self.items) - len(refused))
        if refused:
            shim.to_fallback(refused, "refused")

    def failed(self, cause: str) -> None:
        self.shim.to_fallback(self.items, cause)


class _FallbackWrite:
    """A run of consecutive pages on its way to the fallback file."""

    __slots__ = ("shim", "items", "started_ns")

    def __init__(self, shim: SwapShim, items: list[tuple[int, int, Request]]) -> None:
        self.shim, self.items, self.started_ns = shim, items, time.monotonic_ns()

    def __call__(self, error: OSError | None) -> None:
        shim, locmap, stats = self.shim, self.shim.locmap, self.shim.stats
        state = FALLBACK if error is None else LOST  # LOST: neither copy is current now
        for page, _, req in self.items:
            locmap.set(page, state)  # after the data: the map never names a partial copy
            if error is not None:
                req.error = Err.EIO
        if error is None:
            stats.latency("fallback_write", self.started_ns)
            stats.add("fallback_writes", len(self.items))
            stats.add("fallback_write_bytes", len(self.items) * PAGE_SIZE)
        else:
            stats.add("io_errors", len(self.items))
            shim._log_error(f"fallback write of pages {self.items[0][0]}+{len(self.items)} "
                            f"failed: {error}")
        for _, _, req in self.items:
            shim.page_done(req)


class _FallbackRead:
    """A run of consecutive pages of one read, coming from the fallback file."""

    __slots__ = ("shim", "req", "first", "count", "started_ns")

    def __init__(self, shim: SwapShim, req: Request, first: int, count: int) -> None:
        self.shim, self.req, self.first, self.count = shim, req, first, count
        self.started_ns = time.monotonic_ns()

    def __call__(self, error: OSError | None) -> None:
        shim = self.shim
        if error is None:
            shim.stats.latency("fallback_read", self.started_ns)
            shim.stats.add("fallback_reads", self.count)
        else:
            self.req.error = Err.EIO
            shim.stats.add("io_errors")
            shim._log_error(f"fallback read of pages {self.first}+{self.count} failed: {error}")
        shim.part_done(self.req)


class _GetBatch:
    """The tmem pages of one read: (page, slot) each."""

    __slots__ = ("shim", "req", "items", "started_ns", "deadline")

    def __init__(self, shim: SwapShim, req: Request, items: list[tuple[int, int]]) -> None:
        self.shim, self.req, self.items = shim, req, items
        self.started_ns = time.monotonic_ns()
        self.deadline = 0.0

    def done(self, reply: bytes) -> None:
        shim, req, items = self.shim, self.req, self.items
        shim.stats.latency("tmem_get_batch", self.started_ns)
        count = len(items)
        hits = sum(reply[:count]) if len(reply) >= count else -1
        if hits < 0 or len(reply) != count + hits * PAGE_SIZE:
            log.error("tmemd answered a batch of %d gets with %d bytes", count, len(reply))
            self.failed("error")
            return
        # The reply is sent from tmemd's pages as they came (no copy into the slots): the
        # request's pages are its slots' views, but for these.
        pages = req.reply_pages(shim.pool.views)
        first, data, at = req.first_page, memoryview(reply), count
        for i, (page, _) in enumerate(items):
            if reply[i]:
                pages[page - first] = data[at : at + PAGE_SIZE]
                at += PAGE_SIZE
            else:
                shim.page_missing(page, req)
        shim.stats.add("get_hits", hits)
        shim.stats.add("get_misses", count - hits)
        shim.part_done(req)

    def failed(self, cause: str) -> None:
        if cause == "disconnected":
            self.shim.wait_for_tmem(self)
            return
        self.shim.stats.add("io_errors")
        self.req.error = Err.EIO
        self.shim.part_done(self.req)


class _FlushBatch:
    __slots__ = ("shim", "req", "started_ns")

    def __init__(self, shim: SwapShim, req: Request) -> None:
        self.shim, self.req, self.started_ns = shim, req, time.monotonic_ns()

    def done(self, reply: bytes) -> None:
        self.shim.stats.latency("tmem_flush_batch", self.started_ns)
        self.shim.part_done(self.req)

    def failed(self, cause: str) -> None:
        self.shim.part_done(self.req)  # the map already says empty: nothing is read back


class SwapShim:
    """The NBD handler: one per agent, shared by its (one at a time) NBD connections."""

    locmap: LocationMap  # set by use_map, before anything is served

    def __init__(self, link: TmemLink, fallback: FallbackWorker, pool: PagePool,
                 stats: SwapStats, *, batch_max: int = wire.MAX_BATCH,
                 read_wait: float = READ_WAIT_S) -> None:
        """Allocates everything the shim needs; the location map comes later
        (:meth:`use_map`), as a standby may build its shim before it may open the map."""
        if not 0 < batch_max <= wire.MAX_BATCH:
            raise ValueError(f"batch_max must be in 1..{wire.MAX_BATCH}")
        self.link, self.fallback = link, fallback
        self.pool, self.stats = pool, stats
        self.batch_max = batch_max
        self.read_wait = read_wait
        self._queued_puts: list[tuple[int, int, Request]] = []
        self._put_frame = bytearray(HEAD.size + batch_max * (KEY.size + PAGE_SIZE))
        self._put_view = memoryview(self._put_frame)
        self._key_frame = bytearray(HEAD.size + batch_max * KEY.size)
        self._key_view = memoryview(self._key_frame)
        self._waiting: collections.deque[_GetBatch] = collections.deque()
        self._error_logs = 0
        link.on_connected = self._tmem_back

    def use_map(self, locmap: LocationMap) -> None:
        """The location map of the swap pages (the link keeps the swap pool's id in it)."""
        self.locmap = self.link.locmap = locmap

    # ----- NBD handler interface -----------------------------------------------------------
    def handle(self, req: Request) -> None:
        cmd = req.cmd
        if cmd == Cmd.WRITE:
            self._write(req)
        elif cmd == Cmd.READ:
            self._read(req)
        elif cmd in (Cmd.TRIM, Cmd.WRITE_ZEROES):
            self._discard(req)
        elif cmd == Cmd.FLUSH:
            self._flush(req)
        else:
            req.error = Err.EINVAL
            req.conn.reply(req)

    def replied(self, req: Request) -> None:
        if req.error:
            self.stats.add("nbd_errors")
        name = LATENCY_NAMES.get(req.cmd)
        if name:
            self.stats.latency(name, req.started_ns)

    def connection_closed(self, conn: NbdConnection) -> None:
        log.info("NBD connection closed (%d requests still in flight)", conn.in_flight)

    # ----- writes --------------------------------------------------------------------------
    def _write(self, req: Request) -> None:
        stats = self.stats
        stats.add("nbd_writes")
        stats.add("nbd_write_pages", req.page_count)
        req.waiting = req.page_count
        first = req.first_page
        if not self.link.connected:
            self.to_fallback([(first + i, slot, req) for i, slot in enumerate(req.slots)],
                             "disconnected")
            return
        queue = self._queued_puts
        for i, slot in enumerate(req.slots):
            queue.append((first + i, slot, req))
            if len(queue) >= self.batch_max:
                self.submit_queued()

    def submit_queued(self) -> None:
        """Send the gathered puts as PUT_BATCH frames (called after each burst of requests)."""
        items, self._queued_puts = self._queued_puts, []
        for start in range(0, len(items), self.batch_max):
            chunk = items[start : start + self.batch_max]
            frame, views, count = self._put_view, self.pool.views, len(chunk)
            data_at = pack_batch_keys(frame, self.link.pool_id, [page for page, _, _ in chunk])
            for j, (_, slot, _) in enumerate(chunk):
                frame[data_at + j * PAGE_SIZE : data_at + (j + 1) * PAGE_SIZE] = views[slot]
            batch = _PutBatch(self, chunk)
            self.stats.add("puts", count)
            self.stats.add("put_batches")
            self.stats.batch_pages["put"].add(count)
            if not self.link.submit(wire.Op.PUT_BATCH, frame[: data_at + count * PAGE_SIZE],
                                    batch):
                batch.failed("disconnected")

    def to_fallback(self, items: list[tuple[int, int, Request]], cause: str) -> None:
        """Write pages (page, slot, request) to the fallback file, a run of consecutive pages
        at a time; each is marked there once written (tmem has no current copy: a refused
        put left its handle empty) and then counts as done for its request."""
        self.stats.refusal(cause, len(items))
        ordered = sorted(items, key=lambda item: item[0])  # stable: a page's writes in order
        views = self.pool.views
        at = 0
        for first, count in runs([page for page, _, _ in ordered]):
            run = ordered[at : at + count]
            at += count
            self.fallback.write(first, [views[slot] for _, slot, _ in run],
                                _FallbackWrite(self, run))

    def page_done(self, req: Request) -> None:
        req.waiting -= 1
        if req.waiting == 0:
            req.conn.reply(req)

    part_done = page_done  # reads and discards count parts (batches) the same way

    # ----- reads ---------------------------------------------------------------------------
    def _read(self, req: Request) -> None:
        stats = self.stats
        stats.add("nbd_reads")
        stats.add("nbd_read_pages", req.page_count)
        in_tmem, in_fallback = self._lookup(req, range(req.page_count))
        if req.error:
            req.conn.reply(req)
            return
        batches = [in_tmem[i : i + self.batch_max]
                   for i in range(0, len(in_tmem), self.batch_max)]
        req.waiting = len(batches)
        self._read_fallback(req, in_fallback)
        if not req.waiting:
            req.conn.reply(req)
            return
        for items in batches:
            self._submit_get(_GetBatch(self, req, items))

    def _lookup(self, req: Request, indexes: range | list[int]) -> tuple[
            list[tuple[int, int]], list[int]]:
        """Zero the never-written pages; return (page, slot) of the pages in tmem and the
        page numbers in the fallback file. A lost page sets the request's error."""
        locmap, views, first = self.locmap, self.pool.views, req.first_page
        in_tmem: list[tuple[int, int]] = []
        in_fallback: list[int] = []
        for i in indexes:
            page = first + i
            state = locmap.get(page)
            if state == TMEM:
                in_tmem.append((page, req.slots[i]))
            elif state == EMPTY:
                views[req.slots[i]][:] = self.pool.zero
                self.stats.add("zero_reads")
            elif state == FALLBACK:
                in_fallback.append(page)
            else:  # LOST
                self.page_missing(page, req, lost=True)
        return in_tmem, in_fallback

    def _read_fallback(self, req: Request, pages: list[int]) -> None:
        """Read these pages of ``req`` from the fallback file, a part per run."""
        views, first_page = self.pool.views, req.first_page
        for first, count in runs(pages):
            req.waiting += 1
            slots = req.slots[first - first_page : first - first_page + count]
            self.fallback.read(first, [views[s] for s in slots],
                               _FallbackRead(self, req, first, count))

    def _submit_get(self, batch: _GetBatch) -> None:
        count = len(batch.items)
        frame = self._key_view
        end = pack_batch_keys(frame, self.link.pool_id, [page for page, _ in batch.items])
        self.stats.add("gets", count)
        self.stats.add("get_batches")
        self.stats.batch_pages["get"].add(count)
        batch.started_ns = time.monotonic_ns()
        if not self.link.submit(wire.Op.GET_BATCH, frame[:end], batch):
            self.wait_for_tmem(batch)

    def page_missing(self, page: int, req: Request, lost: bool = False) -> None:
        """The current copy of ``page`` cannot be had: the read fails, never other data."""
        if not lost:
            self.locmap.set(page, LOST)
        req.error = Err.EIO
        self.stats.add("io_errors")
        why = "was lost by tmemd" if lost else "is missing from tmem"
        self._log_error(f"read of swap page {page} failed: its current copy {why}")

    def wait_for_tmem(self, batch: _GetBatch) -> None:
        if not batch.deadline:
            batch.deadline = time.monotonic() + self.read_wait
        self._waiting.append(batch)

    def _tmem_back(self) -> None:
        """Reconnected: the waiting reads go again (their pages may have become LOST)."""
        waiting, self._waiting = self._waiting, collections.deque()
        for batch in waiting:
            req, first = batch.req, batch.req.first_page
            if req.conn.closed:
                self.part_done(req)
                continue
            batch.items, in_fallback = self._lookup(req, [page - first
                                                          for page, _ in batch.items])
            self._read_fallback(req, in_fallback)
            if batch.items and not req.error:
                self._submit_get(batch)
            else:
                self.part_done(req)

    # ----- discards and flushes ------------------------------------------------------------
    def _discard(self, req: Request) -> None:
        stats = self.stats
        stats.add("nbd_trims" if req.cmd == Cmd.TRIM else "nbd_write_zeroes")
        stats.add("nbd_trim_pages", req.page_count)
        pages, in_fallback = self.locmap.empty_range(req.first_page, req.page_count)
        self.fallback.file.discard(in_fallback)
        if not pages or not self.link.connected:
            req.conn.reply(req)
            return
        chunks = [pages[i : i + self.batch_max] for i in range(0, len(pages), self.batch_max)]
        req.waiting = len(chunks)
        for chunk in chunks:
            frame, count = self._key_view, len(chunk)
            end = pack_batch_keys(frame, self.link.pool_id, chunk)
            stats.add("flushes", count)
            stats.add("flush_batches")
            stats.batch_pages["flush"].add(count)
            batch = _FlushBatch(self, req)
            if not self.link.submit(wire.Op.FLUSH_BATCH, frame[:end], batch):
                batch.failed("disconnected")

    def _flush(self, req: Request) -> None:
        self.stats.add("nbd_flushes")
        try:
            self.fallback.file.sync()
            self.locmap.sync()
        except OSError as exc:
            req.error = Err.EIO
            self._log_error(f"flush failed: {exc}")
        req.conn.reply(req)

    # ----- housekeeping --------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        return self._waiting[0].deadline if self._waiting else None

    def tick(self, now: float) -> None:
        """Reads that waited too long for tmemd fail with EIO."""
        while self._waiting and self._waiting[0].deadline <= now:
            batch = self._waiting.popleft()
            self._log_error(f"tmemd unreachable for {self.read_wait:.0f} s: read of "
                            f"{len(batch.items)} swap pages fails")
            batch.req.error = Err.EIO
            self.stats.add("io_errors")
            self.part_done(batch.req)

    def _log_error(self, message: str) -> None:
        self._error_logs += 1
        if self._error_logs <= 20 or self._error_logs % LOG_EVERY == 0:
            log.error("%s (error %d)", message, self._error_logs)
