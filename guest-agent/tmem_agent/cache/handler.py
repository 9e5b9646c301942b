"""The disk cache proper: NBD requests become tmem gets, puts and flushes beside disk I/O.

- A read looks all its blocks up with one GET_BATCH (per 256 blocks). Hits are copied into the
  reply; they stay in a KEEP_ON_GET pool, and are put back at once where tmemd's gets are
  exclusive (the guest's page cache will drop its copy again without telling anyone). Misses
  are read from the disk, a run of consecutive blocks per I/O, answered, and put into the pool.
- A write (trim, write-zeroes alike) first sends the puts queued so far, then flushes its
  blocks from the pool (FLUSH_OBJECT for whole groups, FLUSH_BATCH for the rest), writes the
  disk, and is answered once both the disk and tmemd are done; its own data is then put
  (write-allocate: cleancache would have put those pages once the page cache dropped them).
  A flush tmemd fails resets the pool before the reply. A discard too large to flush block by
  block resets the pool instead.
- Every put passes the :class:`~.guard.StaleGuard`: data a write may have overtaken is dropped
  (counted as ``stale_read_guards``), never stored.
- Without tmemd (or without a pool) reads and writes go to the disk only; a failed or lost
  get is a miss. Correctness never depends on a hit: only on tmemd serving one stream in
  order (a put sent before a flush of the same block is removed by that flush).
"""

from __future__ import annotations

import functools
import logging
import time

from ..channel import wire
from ..ioworker import IoWorker
from ..swap.fallback import runs
from ..swap.nbdconn import NbdConnection, PagePool, Request
from ..swap.nbdproto import CMD_FLAG_FUA, Cmd, Err
from ..swap.tmemlink import Pending, TmemLink
from .diskio import DiskFile
from .guard import StaleGuard
from .keys import GROUP_BLOCKS, run_keys, split_range
from .pool import EphemeralPool
from .puts import PutQueue
from .stats import CacheStats

log = logging.getLogger(__name__)

PAGE_SIZE = 4096
HEAD, KEY = wire.BATCH_HEAD, wire.KEY
RESET_GROUPS = 64  # a discard of more whole groups (64 MiB) resets the pool instead
LATENCY_NAMES: dict[int, str] = {Cmd.READ: "nbd_read", Cmd.WRITE: "nbd_write"}
CHANGE_NAMES: dict[int, str] = {Cmd.WRITE: "nbd_writes", Cmd.TRIM: "nbd_trims",
                                Cmd.WRITE_ZEROES: "nbd_write_zeroes"}


class _Read:
    """One NBD read: its gets, then its disk reads; answered when every part is done."""

    __slots__ = ("h", "req", "seen", "waiting")

    def __init__(self, handler: CacheHandler, req: Request) -> None:
        self.h, self.req = handler, req
        self.seen = handler.guard.look(req.first_page, req.page_count)
        self.waiting = 1  # the start itself, so that nothing answers before it is over

    def start(self) -> None:
        h, count = self.h, self.req.page_count
        h.stats.add("nbd_reads")
        h.stats.add("nbd_read_pages", count)
        if h.keeper.usable:
            for lo in range(0, count, h.batch_max):
                part = _GetPart(self, lo, min(count, lo + h.batch_max))
                self.waiting += 1
                if not h.send_keys(wire.Op.GET_BATCH, self.req.first_page + lo, part.hi - lo,
                                   part):
                    part.failed("disconnected")
        else:
            h.stats.add("reads_without_tmem", count)
            self.from_disk(list(range(count)))
        self.part_done()

    def from_disk(self, indexes: list[int]) -> None:
        """Read these blocks of the request from the disk, a job per run."""
        h, req = self.h, self.req
        h.stats.add("misses", len(indexes))
        views = h.pool.views
        for lo, n in runs(indexes):
            self.waiting += 1
            run_views = [views[slot] for slot in req.slots[lo : lo + n]]
            h.worker.submit(functools.partial(h.disk.read, req.first_page + lo, run_views),
                            _DiskRead(self, lo, n, time.monotonic_ns()))

    def keep(self, index: int, page: memoryview | None = None) -> None:
        """Put block ``index`` of the request (``page``, or the data in its slot) if no write
        overtook it."""
        h = self.h
        block = self.req.first_page + index
        if h.guard.may_put(block, self.seen[index]):
            h.puts.add(block, h.pool.views[self.req.slots[index]] if page is None else page)
        else:
            h.stats.add("stale_read_guards")

    def part_done(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.req.conn.reply(self.req)


class _GetPart:
    """The GET_BATCH of blocks lo .. hi - 1 of a read."""

    swap_pool = False
    __slots__ = ("read", "lo", "hi", "incarnation", "started_ns")

    def __init__(self, read: _Read, lo: int, hi: int) -> None:
        self.read, self.lo, self.hi = read, lo, hi
        self.incarnation = read.h.keeper.incarnation
        self.started_ns = time.monotonic_ns()

    def done(self, reply: bytes) -> None:
        read, h = self.read, self.read.h
        h.stats.latency("tmem_get_batch", self.started_ns)
        count = self.hi - self.lo
        hits = sum(reply[:count]) if len(reply) >= count else -1
        if hits < 0 or len(reply) != count + hits * PAGE_SIZE:
            log.error("tmemd answered %d gets with %d bytes", count, len(reply))
            self.failed("error")
            return
        # The reply is sent from tmemd's pages as they came (no copy into the slots).
        data, at, misses = memoryview(reply), count, []
        put_back = not h.keeper.keeps_on_get
        if hits == count == read.req.page_count:
            read.req.data = [data[count:]]  # every page, in order: one view
            if put_back:
                for i in range(count):
                    read.keep(i, data[count + i * PAGE_SIZE : count + (i + 1) * PAGE_SIZE])
        elif hits:
            pages = read.req.reply_pages(h.pool.views)
            for i in range(count):
                index = self.lo + i
                if reply[i]:
                    pages[index] = page = data[at : at + PAGE_SIZE]
                    at += PAGE_SIZE
                    if put_back:
                        read.keep(index, page)
                else:
                    misses.append(index)
        else:
            misses = list(range(self.lo, self.hi))
        h.stats.add("hits", hits)
        if put_back:
            h.stats.add("hit_puts", hits)
        h.stats.add("disk_bytes_saved", hits * PAGE_SIZE)
        if misses:
            read.from_disk(misses)
        read.part_done()

    def failed(self, cause: str) -> None:
        h = self.read.h
        if cause == "error":
            h.stats.add("tmem_errors")
            h.keeper_failed("a get failed", self.incarnation)
        self.read.from_disk(list(range(self.lo, self.hi)))
        self.read.part_done()


class _DiskRead:
    __slots__ = ("read", "lo", "count", "started_ns")

    def __init__(self, read: _Read, lo: int, count: int, started_ns: int) -> None:
        self.read, self.lo, self.count, self.started_ns = read, lo, count, started_ns

    def __call__(self, error: OSError | None) -> None:
        read, h = self.read, self.read.h
        if error is None:
            h.stats.latency("disk_read", self.started_ns)
            h.stats.add("disk_reads", self.count)
            h.stats.add("disk_read_bytes", self.count * PAGE_SIZE)
            for index in range(self.lo, self.lo + self.count):
                read.keep(index)
        else:
            read.req.error = Err.EIO
            h.io_error(f"disk read of blocks {read.req.first_page + self.lo}+{self.count} "
                       f"failed: {error}")
        read.part_done()


class _Change:
    """A write, trim or write-zeroes: flushes in tmem and the disk job, answered when both
    are done. It is also the pending of each of its flush requests."""

    swap_pool = False
    __slots__ = ("h", "req", "mine", "waiting", "incarnation", "started_ns")

    def __init__(self, handler: CacheHandler, req: Request) -> None:
        self.h, self.req = handler, req
        self.mine: list[int] = []
        self.waiting = 1
        self.incarnation = handler.keeper.incarnation
        self.started_ns = 0

    def start(self) -> None:
        h, req = self.h, self.req
        first, count = req.first_page, req.page_count
        h.stats.add(CHANGE_NAMES[req.cmd])
        h.stats.add("nbd_write_pages" if req.cmd == Cmd.WRITE else "nbd_trim_pages", count)
        h.guard.begin_write(first, count)
        self.mine = h.guard.look(first, count)
        h.puts.send()  # queued puts first: this change's flush must come after them
        if h.keeper.usable:
            self.waiting += h.flush_range(first, count, self)
        else:
            h.stats.add("writes_without_tmem", count)
        self.waiting += 1
        self.started_ns = time.monotonic_ns()
        disk = h.disk
        if req.cmd == Cmd.WRITE:
            views = [h.pool.views[slot] for slot in req.slots]
            job = functools.partial(disk.write, first, views, bool(req.flags & CMD_FLAG_FUA))
        elif req.cmd == Cmd.TRIM:
            job = functools.partial(disk.discard, first, count)
        else:
            job = functools.partial(disk.zero, first, count)
        h.worker.submit(job, self.disk_done)
        self.part_done()

    def disk_done(self, error: OSError | None) -> None:
        h, req = self.h, self.req
        first, count = req.first_page, req.page_count
        h.guard.end_write(first, count)
        if error is not None:
            req.error = Err.EIO
            h.io_error(f"disk {Cmd(req.cmd).name.lower()} of blocks {first}+{count} failed: "
                       f"{error}")
        elif req.cmd == Cmd.WRITE:
            h.stats.latency("disk_write", self.started_ns)
            h.stats.add("disk_writes", count)
            h.stats.add("disk_write_bytes", count * PAGE_SIZE)
            if h.write_allocate:
                views, guard = h.pool.views, h.guard
                for i, slot in enumerate(req.slots):
                    if guard.may_put(first + i, self.mine[i] + 1):  # only its own end since
                        h.puts.add(first + i, views[slot])
                    else:
                        h.stats.add("stale_read_guards")
        self.part_done()

    def done(self, reply: bytes) -> None:  # a flush request
        self.part_done()

    def failed(self, cause: str) -> None:  # a flush request
        if cause == "error":  # the pool may still hold the old data: forget it all
            self.h.stats.add("tmem_errors")
            self.h.keeper_failed("a flush failed", self.incarnation)
        self.part_done()  # disconnected: the next connect makes a new, empty pool

    def part_done(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.req.conn.reply(self.req)


class CacheHandler:
    """The NBD handler of one cached disk."""

    def __init__(self, link: TmemLink, keeper: EphemeralPool, disk: DiskFile,
                 worker: IoWorker, pool: PagePool, stats: CacheStats, guard: StaleGuard, *,
                 batch_max: int = wire.MAX_BATCH, write_allocate: bool = True,
                 reset_groups: int = RESET_GROUPS) -> None:
        if not 0 < batch_max <= wire.MAX_BATCH:
            raise ValueError(f"batch_max must be in 1..{wire.MAX_BATCH}")
        self.link, self.keeper, self.disk, self.worker = link, keeper, disk, worker
        self.pool, self.stats, self.guard = pool, stats, guard
        self.batch_max = batch_max
        self.write_allocate = write_allocate
        self.reset_groups = reset_groups
        self.puts = PutQueue(link, keeper, stats, batch_max)
        self._keys = bytearray(HEAD.size + batch_max * KEY.size)
        self._error_logs = 0

    # ----- NBD handler interface -----------------------------------------------------------
    def handle(self, req: Request) -> None:
        cmd = req.cmd
        if cmd == Cmd.READ:
            _Read(self, req).start()
        elif cmd in (Cmd.WRITE, Cmd.TRIM, Cmd.WRITE_ZEROES):
            _Change(self, req).start()
        elif cmd == Cmd.FLUSH:
            self.stats.add("nbd_flushes")
            self.worker.submit(self.disk.sync, lambda error: self._synced(req, error))
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
        log.info("cache NBD connection closed (%d requests still in flight)", conn.in_flight)

    # ----- helpers for the requests ---------------------------------------------------------
    def _synced(self, req: Request, error: OSError | None) -> None:
        self.stats.add("disk_syncs")
        if error is not None:
            req.error = Err.EIO
            self.io_error(f"flush of the disk failed: {error}")
        req.conn.reply(req)

    def send_keys(self, op: int, first: int, count: int, pending: Pending) -> bool:
        """A GET_BATCH or FLUSH_BATCH of blocks first .. first + count - 1 (count at most
        batch_max); False when not sent (not connected)."""
        frame = self._keys
        HEAD.pack_into(frame, 0, self.keeper.pool_id, count)
        frame[HEAD.size : HEAD.size + count * KEY.size] = run_keys(first, count)
        if op == wire.Op.GET_BATCH:
            self.stats.add("gets", count)
            self.stats.add("get_batches")
        else:
            self.stats.add("flushes", count)
            self.stats.add("flush_batches")
        return self.link.submit(op, memoryview(frame)[: HEAD.size + count * KEY.size], pending)

    def flush_range(self, first: int, count: int, pending: _Change) -> int:
        """Flush blocks first .. first + count - 1 from the pool; the requests sent."""
        groups, blocks = split_range(first, count)
        if len(groups) > self.reset_groups:
            self.keeper.reset(f"a discard of {len(groups) * GROUP_BLOCKS * PAGE_SIZE >> 20} MiB")
            return 0
        sent = 0
        for group in groups:
            self.stats.add("flush_objects")
            if not self.link.submit(wire.Op.FLUSH_OBJECT,
                                    wire.object_request(self.keeper.pool_id, (group, 0, 0)),
                                    pending):
                return sent
            sent += 1
        for lo in range(0, len(blocks), self.batch_max):
            chunk = blocks[lo : lo + self.batch_max]
            for start, n in runs(chunk):  # a chunk's blocks are in at most two runs
                if not self.send_keys(wire.Op.FLUSH_BATCH, start, n, pending):
                    return sent
                sent += 1
        return sent

    def keeper_failed(self, why: str, incarnation: int) -> None:
        """A request for pool ``incarnation`` failed: reset it, unless that happened."""
        if incarnation == self.keeper.incarnation and self.keeper.pool_id >= 0:
            self.keeper.reset(why)

    def io_error(self, message: str) -> None:
        self.stats.add("io_errors")
        self._error_logs += 1
        if self._error_logs <= 20 or self._error_logs % 100 == 0:
            log.error("%s (error %d)", message, self._error_logs)
