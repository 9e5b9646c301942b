"""Reading a trace file: the header, then its records as events, in file order.

Both file versions are read (:data:`~.fileformat.VERSIONS`: the records are laid out alike;
``meta["version"]`` says which, ``meta["hash"]`` which content hash). A trace cut short (a
partial record or page at the end: the agent was still writing, or a copy was interrupted)
and a record of an unknown kind both end the events early with a warning in
:attr:`TraceReader.warnings`: everything before them is good. A file that is not a trace at
all raises :class:`~.fileformat.TraceError` when opened. Standard library only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from . import fileformat as ff

READ_CHUNK = 1 << 20


@dataclass(slots=True)
class PageEvent:
    """One page operation (a page of a batch is one event of its own)."""

    t_ns: int
    kind: int  # PUT, GET, FLUSH_PAGE, FLUSH_OBJECT
    flags: int
    epoch: int
    rid: int
    pool: int
    oid: tuple[int, int, int]
    index: int
    hash: int  # content hash of a put (meta["hash"] says which: version 2 two CRC-32s)
    zsize: int  # zlib-1 size of a put's page, 0 when not estimated (see estimated)
    fill: int
    page: bytes | None = None

    @property
    def persistent(self) -> bool:
        return bool(self.flags & ff.F_PERSISTENT)

    @property
    def estimated(self) -> bool:
        """A put whose zlib-1 size was recorded (version 2 samples them; version 1 has all)."""
        return self.kind == ff.PUT and not self.flags & ff.F_NO_ESTIMATE


@dataclass(slots=True)
class ReplyEvent:
    t_ns: int
    status: int  # OK, REMOTE_ERROR, DISCONNECTED
    epoch: int
    rid: int
    count: int
    op: int
    bitmap: bytes
    flushed: int

    def outcomes(self) -> list[bool]:
        return ff.bitmap_bits(self.bitmap, self.count)


@dataclass(slots=True)
class PoolEvent:
    t_ns: int
    kind: int  # NEW_POOL, DESTROY_POOL
    flags: int  # F_EXISTING for a pool found at connect
    epoch: int
    pool: int
    pool_flags: int


@dataclass(slots=True)
class ConnectEvent:
    t_ns: int
    resumed: bool
    epoch: int
    client_id: int


@dataclass(slots=True)
class GapEvent:
    t_ns: int
    epoch: int
    dropped: int


Event = PageEvent | ReplyEvent | PoolEvent | ConnectEvent | GapEvent


class TraceReader:
    """A trace file opened for reading: :attr:`meta`, then :meth:`events` once."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by close()
        try:
            first = self._file.read(ff.BLOCK)
            if first.startswith(ff.MAGIC) and len(first) >= ff.HEADER_HEAD.size:
                length = ff.HEADER_HEAD.unpack_from(first)[3]
                if ff.BLOCK < length <= 64 * ff.BLOCK:
                    first += self._file.read(length - len(first))
            self.meta: dict[str, Any]
            self.meta, self.data_offset = ff.decode_header(first)
        except BaseException:
            self._file.close()
            raise
        self.warnings: list[str] = []
        self.records = 0  # records read so far
        self.end_offset = self.data_offset  # where the good records end

    def __enter__(self) -> TraceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def events(self) -> Iterator[Event]:
        f = self._file
        f.seek(self.data_offset)
        buf = memoryview(b"")
        pos = 0
        offset = self.data_offset
        while True:
            if len(buf) - pos < ff.RECORD_SIZE + ff.PAGE_SIZE:
                rest = bytes(buf[pos:])
                more = f.read(READ_CHUNK)
                buf, pos = memoryview(rest + more), 0
                if len(buf) < ff.RECORD_SIZE:
                    if len(buf) and any(buf):
                        self._warn(f"trace cut short: a partial record at byte {offset}")
                    return
            kind = buf[pos + 8]
            if kind == 0:
                if any(buf[pos : pos + ff.RECORD_SIZE]):
                    self._warn(f"corrupt record at byte {offset} (kind 0 with data)")
                return
            event = self._decode(kind, buf, pos, offset)
            if event is None:
                return
            size = ff.RECORD_SIZE
            if type(event) is PageEvent and event.flags & ff.F_PAGE:
                start = pos + ff.RECORD_SIZE
                if len(buf) - start < ff.PAGE_SIZE:
                    self._warn(f"trace cut short: a partial page at byte {offset + size}")
                    return
                event.page = bytes(buf[start : start + ff.PAGE_SIZE])
                size += ff.PAGE_SIZE
            pos += size
            offset += size
            self.records += 1
            self.end_offset = offset
            yield event

    def _decode(self, kind: int, buf: memoryview, pos: int, offset: int) -> Event | None:
        if kind in ff.PAGE_KINDS:
            (t, _, flags, epoch, rid, pool, o0, o1, o2, index, chash, zsize,
             fill) = ff.PAGE_REC.unpack_from(buf, pos)
            return PageEvent(t, kind, flags, epoch, rid, pool, (o0, o1, o2), index, chash,
                             zsize, fill)
        if kind == ff.REPLY:
            t, _, status, epoch, rid, count, op, bitmap, flushed = ff.REPLY_REC.unpack_from(
                buf, pos)
            return ReplyEvent(t, status, epoch, rid, count, op, bitmap, flushed)
        if kind in ff.POOL_KINDS:
            t, _, flags, epoch, _, pool, pool_flags = ff.POOL_REC.unpack_from(buf, pos)
            return PoolEvent(t, kind, flags, epoch, pool, pool_flags)
        if kind == ff.CONNECT:
            t, _, flags, epoch, client = ff.CONNECT_REC.unpack_from(buf, pos)
            return ConnectEvent(t, bool(flags & ff.F_RESUMED), epoch, client)
        if kind == ff.GAP:
            t, _, _, epoch, _, dropped = ff.GAP_REC.unpack_from(buf, pos)
            return GapEvent(t, epoch, dropped)
        self._warn(f"corrupt record at byte {offset} (unknown kind {kind})")
        return None

    def _warn(self, message: str) -> None:
        self.warnings.append(f"{message}; the {self.records} records before it are used")


def read_all(path: str) -> tuple[dict[str, Any], list[Event], list[str]]:
    """(metadata, events, warnings) of a whole trace (small traces and tests)."""
    with TraceReader(path) as reader:
        events = list(reader.events())
        return reader.meta, events, reader.warnings
