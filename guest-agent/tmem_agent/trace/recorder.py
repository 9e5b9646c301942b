"""The agent's trace recorder: every request :class:`~tmem_agent.swap.tmemlink.TmemLink` sends,
page by page, and every reply's outcome, into a trace file (docs/trace.md).

The agent serves the guest's swap device, so it runs in the kernel's memory-reclaim path; the
recorder must neither allocate without bound nor wait for the disk. Records are packed into
one of two fixed buffers (anonymous mappings, page-aligned for O_DIRECT); a buffer that is
half full, or has waited a second, is written by the agent's I/O worker thread while the
other fills, one write in flight at a time. A partly filled last block is written zero-padded
and written again, complete, by the next write (the tail moves to the front of the other
buffer). When both buffers are busy, records are dropped and counted (a GAP record says how
many, when there is room again); past ``max_bytes`` the recording stops and drops are counted.
A failed write, or any error inside the recorder, stops the recording (logged once): it never
fails a request of the agent.
"""

from __future__ import annotations

import functools
import logging
import mmap
import os
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any, Protocol

from ..channel import wire
from . import fileformat as ff

log = logging.getLogger(__name__)

OPS_BUFFER = 256 << 10  # per buffer, pages not recorded
PAGES_BUFFER = 4 << 20  # per buffer, pages recorded (a full batch of 256 pages is 1 MiB)
FLUSH_EVERY_S = 1.0
_ZEROS = memoryview(bytes(ff.BLOCK))
_KEYS = wire.KEY
_BATCH_KINDS: dict[int, int] = {wire.Op.PUT_BATCH: ff.PUT, wire.Op.GET_BATCH: ff.GET,
                wire.Op.FLUSH_BATCH: ff.FLUSH_PAGE}
RECORDING, FULL, FAILED, CLOSED = "recording", "full", "failed", "closed"
_HALF = ff.PAGE_SIZE // 2
_FILLED = [bytes((b,)) * ff.PAGE_SIZE for b in range(256)]  # same-filled pages, by fill byte
# A page record in three parts (ff.PAGE_REC): head and pool, the wire's key, the put's tail.
_PAGE_HEAD = struct.Struct("<QBBHII")  # time, kind, flags, epoch, request id, pool id
_PAGE_TAIL = struct.Struct("<QHH4x")  # content hash, zlib-1 size, fill byte
_PAGE_KEYED = struct.Struct("<QBBHII28sQHH4x")  # ff.PAGE_REC with the key as its 28 bytes
_NO_TAIL = bytes(_PAGE_TAIL.size)
_FLAGS_AT = 9  # offset of a record's flags byte
assert _PAGE_HEAD.size + _KEYS.size + _PAGE_TAIL.size == _PAGE_KEYED.size == ff.RECORD_SIZE
assert _PAGE_KEYED.format.replace("28s", "3QI") == ff.PAGE_REC.format


def _keys(count: int) -> struct.Struct:
    """The keys of a batch of ``count`` pages, as ``count`` 28-byte strings in one call."""
    return wire.repeated("28s", count)


class Worker(Protocol):
    """What the recorder needs of :class:`tmem_agent.ioworker.IoWorker`."""

    def submit(self, job: Callable[[], None], done: Callable[[OSError | None], None]) -> None: ...

    def drain(self) -> None: ...


def _open(path: str) -> tuple[int, bool]:
    """The trace file, empty, with O_DIRECT where the file system allows it. An existing
    trace (an earlier agent of this boot) is kept as PATH.prev."""
    if os.path.exists(path) and os.path.getsize(path) > 0:
        os.replace(path, path + ".prev")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    if hasattr(os, "O_DIRECT"):
        try:
            return os.open(path, flags | os.O_DIRECT, 0o600), True
        except OSError as exc:  # tmpfs and some others refuse O_DIRECT
            log.info("trace %s without O_DIRECT (%s)", path, exc)
    return os.open(path, flags, 0o600), False


class TraceRecorder:
    """Records into ``path``; ``pages``: the contents of put pages too."""

    def __init__(self, path: str, worker: Worker, meta: dict[str, Any], *, pages: bool = False,
                 max_bytes: int = 1 << 30, buffer_size: int | None = None,
                 estimate_every: int = ff.ESTIMATE_EVERY) -> None:
        if estimate_every < 1:
            raise ValueError("estimate_every must be at least 1")
        self.path = path
        self.estimate_every = estimate_every
        self.worker = worker
        self.pages = pages
        self.max_bytes = max_bytes
        size = ff.round_up(buffer_size or (PAGES_BUFFER if pages else OPS_BUFFER))
        self._bufs = [mmap.mmap(-1, size), mmap.mmap(-1, size)]
        self._views = [memoryview(b) for b in self._bufs]
        self._size = size
        self._active = 0
        self._fill = 0  # bytes in the active buffer (from _file_off)
        self._file_off = 0  # where the active buffer's first byte goes in the file
        self._busy = False  # a write in flight (of the other buffer)
        self._dirty = False  # records not yet handed to a write
        self._last_flush = time.monotonic()
        self._gap = 0  # records dropped since the last one recorded
        self._pool_flags: dict[int, int] = {}
        self._ops = bytearray(1 << 16)  # op of each request in flight, by request id
        self._counts = [0] * (1 << 16)  # its page count
        self.epoch = 0
        self.state = RECORDING
        self.records = 0
        self.dropped = 0
        self.bytes_written = 0
        self.write_errors = 0
        self.fd, self.direct = _open(path)
        header = ff.encode_header({**meta, "pages": pages, "direct": self.direct,
                                   "estimate_every": estimate_every})
        view = self._views[0]
        view[: len(header)] = header
        self._fill = len(header)
        self._dirty = True  # the header goes out with the first write

    # ----- hooks, called by the link (never raise) ----------------------------------------
    def connected(self, reply: wire.HelloReply, pools: list[tuple[int, int]]) -> None:
        """A hello was answered; ``pools``: (id, flags) of the pools the link uses now."""
        try:
            self.epoch = (self.epoch + 1) & 0xFFFF
            resumed = reply.status == wire.HelloStatus.RESUMED
            now = time.monotonic_ns()
            view = self._room(ff.RECORD_SIZE)
            if view is not None:
                ff.CONNECT_REC.pack_into(view, self._commit(ff.RECORD_SIZE), now, ff.CONNECT,
                                         ff.F_RESUMED if resumed else 0, self.epoch,
                                         reply.client_id)
            existing = {p.pool_id: p.flags for p in reply.pools} if resumed else {}
            for pool_id, flags in existing.items():
                self._pool(now, ff.NEW_POOL, ff.F_EXISTING, pool_id, flags)
            for pool_id, flags in pools:
                if pool_id >= 0 and pool_id not in existing:
                    self._pool(now, ff.NEW_POOL, 0, pool_id, flags)
        except Exception as exc:
            self._broken(exc)

    def requested(self, rid: int, op: int, payload: wire.Payload | bytearray) -> None:
        """A request was sent (``rid``: its id on this connection)."""
        if self.state is not RECORDING:
            self._note_drop(op, payload)
            return
        try:
            self._requested(rid, op, payload)
            self._maybe_flush()
        except Exception as exc:
            self._broken(exc)

    def completed(self, rid: int, status: int, reply: bytes = b"") -> None:
        """The request's reply came (``status`` OK, REMOTE_ERROR) or never will
        (DISCONNECTED)."""
        try:
            slot = rid & 0xFFFF
            op, count = self._ops[slot], self._counts[slot]
            self._ops[slot] = 0
            if not op:
                return  # a request not recorded (stats, hello)
            if self.state is not RECORDING:
                self.dropped += 1
                return
            self._reply(rid, op, count, status, reply)
            self._maybe_flush()
        except Exception as exc:
            self._broken(exc)

    # ----- records ------------------------------------------------------------------------
    def _requested(self, rid: int, op: int, payload: wire.Payload | bytearray) -> None:
        now = time.monotonic_ns()
        slot = rid & 0xFFFF
        if op in _BATCH_KINDS:
            pool, count = wire.BATCH_HEAD.unpack_from(payload)
            self._batch(now, _BATCH_KINDS[op], rid, pool, count, payload)
        elif op in (wire.Op.PUT, wire.Op.GET, wire.Op.FLUSH_PAGE):
            pool, o0, o1, o2, index = wire.POOL_KEY.unpack_from(payload)
            count = 1
            with memoryview(payload) as view:
                page = view[wire.POOL_KEY.size :] if op == wire.Op.PUT else None
                self._page(now, int(op), 0, rid, pool, o0, o1, o2, index, page)
        elif op == wire.Op.FLUSH_OBJECT:
            pool, o0, o1, o2 = wire.POOL_OID.unpack_from(payload)
            count = 0
            self._page(now, ff.FLUSH_OBJECT, 0, rid, pool, o0, o1, o2, 0, None)
        elif op == wire.Op.DESTROY_POOL:
            (pool,) = wire.U32.unpack_from(payload)
            self._pool(now, ff.DESTROY_POOL, 0, pool, self._pool_flags.pop(pool, 0))
            return
        elif op == wire.Op.NEW_POOL:
            count = wire.NEW_POOL_HEAD.unpack_from(payload)[0]  # its flags, for the reply
        else:
            return
        self._ops[slot], self._counts[slot] = op, count

    def _pool_bits(self, pool: int) -> int:
        pool_flags = self._pool_flags.get(pool)
        if pool_flags is None:
            return ff.F_POOL_UNKNOWN
        return ff.F_PERSISTENT if pool_flags & ff.PERSIST else 0

    def _batch(self, now: int, kind: int, rid: int, pool: int, count: int,
               payload: wire.Payload | bytearray) -> None:
        """A batch's records: room for all of them taken at once, and (without page
        contents) every record's head and key laid down by one join; a put's hash, estimate
        and fill byte are then packed into its last 16 bytes. This is the hot path: what a
        record costs in Python here, the guest's swap pays many times over under TCG."""
        if count <= 0:
            return
        flags = ff.F_BATCH | self._pool_bits(pool)
        put = kind == ff.PUT
        if put and self.pages:
            self._batch_with_pages(now, rid, pool, count, payload, flags | ff.F_PAGE)
            return
        length = ff.RECORD_SIZE * count
        view = self._room(length, count)
        if view is None:
            return
        at = self._commit(length, count)
        head = _PAGE_HEAD.pack(now, kind, flags | ff.F_NO_ESTIMATE if put else flags,
                               self.epoch, rid, pool)
        keys = _keys(count).unpack_from(payload, wire.BATCH_HEAD.size)  # 28-byte strings
        view[at : at + length] = head + (_NO_TAIL + head).join(keys) + _NO_TAIL
        if not put:
            return
        every, filled, crc32, compress = self.estimate_every, ff.SAME_FILLED, zlib.crc32, \
            zlib.compress
        tail, half, page_size, mix = _PAGE_TAIL.pack_into, _HALF, ff.PAGE_SIZE, ff.MIX
        record, tail_at = ff.RECORD_SIZE, _PAGE_HEAD.size + _KEYS.size
        pos = wire.BATCH_HEAD.size + count * _KEYS.size
        with memoryview(payload) as data:
            for _ in range(count):
                mid, end = pos + half, pos + page_size
                lo, hi = crc32(data[pos:mid]), crc32(data[mid:end])  # ff.content_hash, inline
                chash = lo | hi << 32
                same = filled.get(chash)
                if same is not None and data[pos:end] == _FILLED[same[0]]:
                    fill, zsize = same
                    view[at + _FLAGS_AT] = flags | ff.F_SAME_FILLED
                elif (chash * mix >> 32 & 0xFFFFFFFF) % every:  # not ff.sampled (inline)
                    fill, zsize = data[pos], 0
                else:
                    fill, zsize = data[pos], len(compress(data[pos:end], 1))
                    view[at + _FLAGS_AT] = flags
                tail(view, at + tail_at, chash, zsize, fill)
                at += record
                pos = end

    def _batch_with_pages(self, now: int, rid: int, pool: int, count: int,
                          payload: wire.Payload | bytearray, flags: int) -> None:
        size = ff.RECORD_SIZE + ff.PAGE_SIZE
        view = self._room(size * count, count)
        if view is None:
            return
        at = self._commit(size * count, count)
        keys = _keys(count).unpack_from(payload, wire.BATCH_HEAD.size)
        pos = wire.BATCH_HEAD.size + count * _KEYS.size
        with memoryview(payload) as data:
            for key in keys:
                page = data[pos : pos + ff.PAGE_SIZE]
                chash, pflags, zsize, fill = self._put_fields(page, flags)
                _PAGE_KEYED.pack_into(view, at, now, ff.PUT, pflags, self.epoch, rid, pool, key,
                                      chash, zsize, fill)
                view[at + ff.RECORD_SIZE : at + size] = page
                at += size
                pos += ff.PAGE_SIZE

    def _put_fields(self, page: memoryview, flags: int) -> tuple[int, int, int, int]:
        """(content hash, flags, zlib-1 size, fill byte) of a put's page."""
        chash = ff.content_hash(page)
        same = ff.SAME_FILLED.get(chash)
        if same is not None and page == _FILLED[same[0]]:
            return chash, flags | ff.F_SAME_FILLED, same[1], same[0]
        if ff.sampled(chash, self.estimate_every):
            return chash, flags, len(zlib.compress(page, 1)), page[0]
        return chash, flags | ff.F_NO_ESTIMATE, 0, page[0]

    def _page(self, now: int, kind: int, flags: int, rid: int, pool: int, o0: int, o1: int,
              o2: int, index: int, page: memoryview | None) -> None:
        flags |= self._pool_bits(pool)
        chash = zsize = fill = 0
        size = ff.RECORD_SIZE
        if page is not None:
            chash, flags, zsize, fill = self._put_fields(page, flags)
            if self.pages:
                flags |= ff.F_PAGE
                size += ff.PAGE_SIZE
        view = self._room(size)
        if view is None:
            return
        at = self._commit(size)
        ff.PAGE_REC.pack_into(view, at, now, kind, flags, self.epoch, rid, pool, o0, o1, o2,
                              index, chash, zsize, fill)
        if flags & ff.F_PAGE and page is not None:
            view[at + ff.RECORD_SIZE : at + size] = page

    def _pool(self, now: int, kind: int, flags: int, pool: int, pool_flags: int) -> None:
        if kind == ff.NEW_POOL:
            self._pool_flags[pool] = pool_flags
        view = self._room(ff.RECORD_SIZE)
        if view is not None:
            ff.POOL_REC.pack_into(view, self._commit(ff.RECORD_SIZE), now, kind, flags,
                                  self.epoch, 0, pool, pool_flags)

    def _reply(self, rid: int, op: int, count: int, status: int, reply: bytes) -> None:
        now = time.monotonic_ns()
        if op == wire.Op.NEW_POOL:
            if status == ff.OK and len(reply) == 4:
                self._pool(now, ff.NEW_POOL, 0, wire.U32.unpack(reply)[0], count)
            return
        bits = flushed = 0
        if status == ff.OK:
            if op == wire.Op.GET:
                bits = int(len(reply) == ff.PAGE_SIZE)
            elif op == wire.Op.FLUSH_OBJECT:
                flushed = wire.U32.unpack(reply)[0] if len(reply) == 4 else 0
            else:  # batches and PUT, FLUSH_PAGE: a byte per page first, 1 = stored/hit/found
                bits = ff.status_bits(bytes(reply[: min(count, ff.MAX_BITMAP_PAGES)]))
        view = self._room(ff.RECORD_SIZE)
        if view is not None:
            ff.REPLY_REC.pack_into(view, self._commit(ff.RECORD_SIZE), now, ff.REPLY, status,
                                   self.epoch, rid, count, op,
                                   bits.to_bytes(ff.MAX_BITMAP_PAGES // 8, "little"), flushed)

    # ----- buffers ------------------------------------------------------------------------
    def _room(self, size: int, records: int = 1) -> memoryview | None:
        """The active buffer if ``size`` more bytes fit (after a GAP record owed), else None
        (the ``records`` are counted as dropped)."""
        need = size + (ff.RECORD_SIZE if self._gap else 0)
        if self.state is not RECORDING:
            self.dropped += records
            return None
        if self._file_off + self._fill + need > self.max_bytes:
            self.state = FULL
            log.warning("trace %s reached its size limit (%d bytes): recording stopped",
                        self.path, self.max_bytes)
            self.dropped += records
            return None
        if self._fill + need > self._size:
            self._flush()
            if self._fill + need > self._size:
                self.dropped += records
                self._gap += records
                return None
        view = self._views[self._active]
        if self._gap:
            ff.GAP_REC.pack_into(view, self._commit(ff.RECORD_SIZE), time.monotonic_ns(),
                                 ff.GAP, 0, self.epoch, 0, self._gap)
            self._gap = 0
        return view

    def _commit(self, size: int, records: int = 1) -> int:
        at = self._fill
        self._fill += size
        self._dirty = True
        self.records += records
        return at

    def _flush(self) -> None:
        """Hand the active buffer to the worker (unless a write is in flight): its whole
        blocks, and a last partial block zero-padded; that block's bytes move to the front
        of the other buffer, to be written again, complete, next time."""
        if self._busy or not self._dirty or self.state is FAILED:
            return
        fill = self._fill
        length = ff.round_up(fill)
        view = self._views[self._active]
        view[fill:length] = _ZEROS[: length - fill]
        whole = fill - fill % ff.BLOCK
        other = 1 - self._active
        tail = fill - whole
        self._views[other][:tail] = view[whole:fill]
        self._busy = True
        self._dirty = False
        self._last_flush = time.monotonic()
        self.worker.submit(functools.partial(self._write, view[:length], self._file_off),
                           functools.partial(self._written, self._file_off + fill))
        self._active, self._fill = other, tail
        self._file_off += whole

    def _maybe_flush(self) -> None:
        if self._fill * 2 >= self._size:
            self._flush()

    def _write(self, data: memoryview, offset: int) -> None:
        """In the worker's thread."""
        done = 0
        while done < len(data):
            done += os.pwrite(self.fd, data[done:], offset + done)

    def _written(self, end: int, error: OSError | None) -> None:
        self._busy = False
        if error is not None:
            self.write_errors += 1
            if self.state is RECORDING or self.state is FULL:
                log.error("trace %s: write failed, recording stopped: %s", self.path, error)
            self.state = FAILED
            return
        self.bytes_written = max(self.bytes_written, end)
        self._maybe_flush()

    def tick(self, now: float) -> None:
        """Write what waits once it has waited :data:`FLUSH_EVERY_S`, and half-full buffers."""
        if self._dirty and not self._busy and (
                now - self._last_flush >= FLUSH_EVERY_S or self._fill * 2 >= self._size):
            try:
                self._flush()
            except Exception as exc:
                self._broken(exc)

    def next_deadline(self) -> float | None:
        return self._last_flush + FLUSH_EVERY_S if self._dirty and not self._busy else None

    def _note_drop(self, op: int, payload: wire.Payload | bytearray) -> None:
        if op in _BATCH_KINDS:
            self.dropped += wire.BATCH_HEAD.unpack_from(payload)[1]
        elif op in (wire.Op.PUT, wire.Op.GET, wire.Op.FLUSH_PAGE, wire.Op.FLUSH_OBJECT):
            self.dropped += 1

    def _broken(self, exc: Exception) -> None:
        if self.state is RECORDING or self.state is FULL:
            log.error("trace %s: recording stopped after an error: %r", self.path, exc)
        self.state = FAILED

    # ----- the end ------------------------------------------------------------------------
    def close(self) -> None:
        """Write everything recorded, cut the file to its end, close it."""
        if self.fd < 0:
            return
        try:
            self.worker.drain()
            if self.state is not FAILED:
                self._flush()
                self.worker.drain()
            if self.state is not FAILED:
                os.ftruncate(self.fd, self.bytes_written)
                os.fsync(self.fd)
        except OSError as exc:
            log.error("trace %s: closing failed: %s", self.path, exc)
        finally:
            os.close(self.fd)
            self.fd = -1
            if self.state is RECORDING:
                self.state = CLOSED

    def status(self) -> dict[str, Any]:
        return {"path": self.path, "state": self.state, "pages": self.pages,
                "records": self.records, "bytes": self.bytes_written,
                "dropped": self.dropped, "write_errors": self.write_errors,
                "direct": self.direct, "max_bytes": self.max_bytes,
                "pending_bytes": self._file_off + self._fill - self.bytes_written}
