"""The tmem wire protocol: framing, the stream decoder and the payload of every op.

Standard library only: the guest agent and the host daemon both import this one module.
The spec is docs/wire-protocol.md. In short, every frame is a 24-byte header and a payload::

    magic "TMEM" | version u8 | op u8 | flags u16 | request id u32 | length u32 |
    payload crc32 u32 | header crc32 u32 (of the 20 bytes before it)

All integers are little-endian. The header checksum makes a false magic inside garbage harmless,
so the decoder can resynchronise on any byte stream by scanning for the next valid header.
"""

from __future__ import annotations

import enum
import json
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

MAGIC = b"TMEM"
VERSION = 1
PAGE_SIZE = 4096
MAX_BATCH = 256
# Big enough for a full batch of pages with their keys; anything larger is refused unread.
MAX_PAYLOAD = (1 << 20) + (64 << 10)

HEADER = struct.Struct("<4sBBHIIII")
HEADER_SIZE = HEADER.size
_HEADER_BODY = struct.Struct("<4sBBHIII")  # the part the header crc covers

KEY = struct.Struct("<QQQI")  # oid (three u64), index
POOL_KEY = struct.Struct("<IQQQI")  # pool id, oid, index
POOL_OID = struct.Struct("<IQQQ")  # pool id, oid
BATCH_HEAD = struct.Struct("<II")  # pool id, page count
U8 = struct.Struct("<B")
U32 = struct.Struct("<I")
ERROR_HEAD = struct.Struct("<H")
NEW_POOL_HEAD = struct.Struct("<I16sB")  # flags, uuid, codec name length
# page size, reserved, capabilities, boot id, agent session id, vm name length
HELLO_HEAD = struct.Struct("<HHI16s16sH")
HELLO_REPLY_HEAD = struct.Struct("<BBHI16sIII")  # status, pool count, page size, client id,
#                                                  instance id, max payload, max batch, caps
POOL_INFO = struct.Struct("<BI16s")  # pool id, flags, uuid

Payload = bytes | memoryview
Oid = tuple[int, int, int]
Key = tuple[Oid, int]


class Op(enum.IntEnum):
    """Operation codes. A reply carries the op of its request."""

    HELLO = 1
    PING = 2
    STATS = 3
    NEW_POOL = 4
    DESTROY_POOL = 5
    PUT = 6
    GET = 7
    FLUSH_PAGE = 8
    FLUSH_OBJECT = 9
    PUT_BATCH = 10
    GET_BATCH = 11
    FLUSH_BATCH = 12


class Flag(enum.IntFlag):
    REPLY = 1
    ERROR = 2


class ErrorCode(enum.IntEnum):
    GARBAGE = 1  # bytes that are not a frame were skipped
    BAD_HEADER = 2  # a magic with a wrong header checksum
    BAD_CRC = 3  # payload checksum mismatch; the frame was dropped
    BAD_VERSION = 4
    TOO_LARGE = 5  # length above MAX_PAYLOAD
    TIMEOUT = 6  # a partial frame stalled and was dropped
    UNKNOWN_OP = 7
    BAD_REQUEST = 8  # payload malformed for its op
    NOT_READY = 9  # op needs a hello first
    INVALID_ARGUMENT = 10
    NO_SUCH_POOL = 11
    TOO_MANY_POOLS = 12
    SUPERSEDED = 13  # another connection took over this VM
    INTERNAL = 14
    VM_NAME_IN_USE = 15  # another live connection holds this VM name under another boot id


class HelloStatus(enum.IntEnum):
    FRESH = 0  # a new client: nothing from before is kept
    RESUMED = 1  # same VM and boot id: the client and its pools are as they were


class ProtocolError(ValueError):
    """A payload does not match the layout of its op."""


# ---------------------------------------------------------------------------------- framing


def encode_header(
    op: int, request_id: int, payload: bytes | bytearray | memoryview, flags: int = 0
) -> bytes:
    """The 24-byte header for ``payload`` (send the payload right after it)."""
    body = _HEADER_BODY.pack(MAGIC, VERSION, op, flags, request_id, len(payload),
                             zlib.crc32(payload))
    return body + U32.pack(zlib.crc32(body))


def encode_frame(
    op: int, request_id: int, payload: bytes | bytearray | memoryview = b"", flags: int = 0
) -> bytes:
    """One complete frame: header and payload."""
    return encode_header(op, request_id, payload, flags) + bytes(payload)


def error_payload(code: ErrorCode, message: str) -> bytes:
    """Payload of an error reply: the code, then at most 1 KiB of UTF-8 message."""
    return ERROR_HEAD.pack(code) + message.encode("utf-8", "replace")[:1024]


def encode_error(request_id: int, op: int, code: ErrorCode, message: str) -> bytes:
    return encode_frame(op, request_id, error_payload(code, message), Flag.REPLY | Flag.ERROR)


def decode_error(payload: Payload) -> tuple[int, str]:
    if len(payload) < ERROR_HEAD.size:
        raise ProtocolError("error payload too short")
    (code,) = ERROR_HEAD.unpack_from(payload)
    return code, bytes(payload[ERROR_HEAD.size :]).decode("utf-8", "replace")


@dataclass(slots=True)
class Frame:
    """A valid frame. ``payload`` is bytes, or a memoryview from :meth:`FrameDecoder.next_event`."""

    op: int
    flags: int
    request_id: int
    payload: Payload


@dataclass(slots=True)
class FrameError:
    """Something the decoder dropped; ``request_id`` is set when a valid header named it."""

    code: ErrorCode
    request_id: int | None
    op: int
    skipped: int
    detail: str


class FrameDecoder:
    """Turns a byte stream with no boundaries into frames, skipping anything invalid.

    The decoder owns one buffer, allocated up front and never grown: room for the largest
    frame plus one read. Readers either copy bytes in with :meth:`feed` (which returns every
    event with its payload as ``bytes``), or read straight into :meth:`get_buffer`, call
    :meth:`commit` and pull events with :meth:`next_event`; those payloads are memoryviews
    into the buffer, valid until the next :meth:`get_buffer`. Bytes not yet pulled stay
    buffered, which is how a reader applies back-pressure. Nothing here raises on input;
    invalid bytes come out as :class:`FrameError` events, in stream order.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD, read_size: int = 256 << 10) -> None:
        self.max_payload = max_payload
        self.read_size = read_size
        self.capacity = HEADER_SIZE + max_payload + read_size
        self._buf = bytearray(self.capacity)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0

    @property
    def buffered(self) -> int:
        return self._end - self._start

    # ----- reading in ----------------------------------------------------------------------
    def get_buffer(self) -> memoryview:
        """Free space at the end of the buffer for the next read (at least ``read_size``
        bytes whenever fewer than a whole frame's bytes are buffered)."""
        if self.capacity - self._end < self.read_size:
            self._compact()
        return self._view[self._end :]

    def commit(self, nbytes: int) -> None:
        """``nbytes`` were written at the start of the last :meth:`get_buffer` view."""
        if not 0 <= nbytes <= self.capacity - self._end:
            raise ValueError(f"commit of {nbytes} bytes does not fit the buffer")
        self._end += nbytes

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame | FrameError]:
        """Copy ``data`` in and return every event it completes, payloads as bytes."""
        out: list[Frame | FrameError] = []
        data = memoryview(data)
        while True:
            out.extend(self.pop_events())
            if not data:
                return out
            space = self.get_buffer()
            n = min(len(space), len(data))
            if n == 0:  # only possible if the caller left events unpulled
                raise RuntimeError("decoder buffer full of unpulled frames")
            space[:n] = data[:n]
            self.commit(n)
            data = data[n:]

    def pop_events(self) -> list[Frame | FrameError]:
        """Every event the buffered bytes complete, payloads copied out as bytes."""
        out: list[Frame | FrameError] = []
        while (event := self.next_event()) is not None:
            if isinstance(event, Frame):
                event.payload = bytes(event.payload)
            out.append(event)
        return out

    def _compact(self) -> None:
        size = self._end - self._start
        if self._start:
            self._view[:size] = self._view[self._start : self._end]
        self._start, self._end = 0, size

    # ----- events --------------------------------------------------------------------------
    def partial_header(self) -> tuple[int, int] | None:
        """(request id, op) of the incomplete frame at the head of the buffer, if its header
        is valid."""
        start, buf = self._start, self._buf
        if self._end - start < HEADER_SIZE or not buf.startswith(MAGIC, start, self._end):
            return None
        fields = HEADER.unpack_from(buf, start)
        if zlib.crc32(self._view[start : start + 20]) != fields[7]:
            return None
        return fields[4], fields[2]

    def drop_partial(self) -> list[Frame | FrameError]:
        """Give up on a stalled partial frame: skip its magic and rescan what follows."""
        if not self.buffered:
            return []
        named = self.partial_header()
        rid, op = named if named else (None, 0)
        skipped = min(len(MAGIC), self.buffered)
        self._start += skipped
        error = FrameError(ErrorCode.TIMEOUT, rid, op, skipped, "partial frame stalled")
        return [error, *self.pop_events()]

    def next_event(self) -> Frame | FrameError | None:
        """The next frame or error from the buffered bytes; None until more bytes arrive."""
        buf, view, end = self._buf, self._view, self._end
        pos = self._start
        garbage = 0
        event: Frame | FrameError | None = None
        while end - pos >= len(MAGIC):
            if not buf.startswith(MAGIC, pos, end):
                found = buf.find(MAGIC, pos, end)
                nxt = found if found >= 0 else end - len(MAGIC) + 1
                garbage += nxt - pos
                pos = nxt
                continue
            if end - pos < HEADER_SIZE:
                break
            _, version, op, flags, rid, length, pcrc, hcrc = HEADER.unpack_from(buf, pos)
            if zlib.crc32(view[pos : pos + 20]) != hcrc:
                garbage += 1
                pos += 1
                continue
            if garbage:
                break  # report the garbage first; this frame comes with the next call
            if length > self.max_payload:
                event = FrameError(ErrorCode.TOO_LARGE, rid, op, HEADER_SIZE,
                                   f"payload of {length} bytes over {self.max_payload}")
                pos += HEADER_SIZE
                break
            stop = pos + HEADER_SIZE + length
            if stop > end:
                break
            payload = view[pos + HEADER_SIZE : stop]
            pos = stop
            if version != VERSION:
                event = FrameError(ErrorCode.BAD_VERSION, rid, op, length,
                                   f"version {version}, this side speaks {VERSION}")
            elif zlib.crc32(payload) != pcrc:
                event = FrameError(ErrorCode.BAD_CRC, rid, op, length, "payload crc mismatch")
            else:
                event = Frame(op, flags, rid, payload)
            break
        if event is None:
            while end - pos < len(MAGIC) and not MAGIC.startswith(buf[pos:end]):
                garbage += 1  # a short tail is kept only while it may begin a magic
                pos += 1
            if garbage:
                event = FrameError(ErrorCode.GARBAGE, None, 0, garbage, "skipped garbage")
        self._start = pos
        if pos == end:
            self._start = self._end = 0
        return event


# ---------------------------------------------------------------------------------- payloads


def _need(payload: Payload, size: int, what: str) -> None:
    if len(payload) != size:
        raise ProtocolError(f"{what}: expected {size} bytes, got {len(payload)}")


@dataclass
class Hello:
    vm: str
    boot_id: bytes
    session_id: bytes
    page_size: int = PAGE_SIZE
    capabilities: int = 0

    def pack(self) -> bytes:
        name = self.vm.encode()
        return HELLO_HEAD.pack(self.page_size, 0, self.capabilities, self.boot_id,
                               self.session_id, len(name)) + name

    @classmethod
    def unpack(cls, payload: Payload) -> Hello:
        if len(payload) < HELLO_HEAD.size:
            raise ProtocolError("hello: payload too short")
        page_size, _, caps, boot, session, nlen = HELLO_HEAD.unpack_from(payload)
        _need(payload, HELLO_HEAD.size + nlen, "hello")
        try:
            vm = bytes(payload[HELLO_HEAD.size :]).decode()
        except UnicodeDecodeError as exc:
            raise ProtocolError("hello: vm name is not utf-8") from exc
        if not vm or not vm.isprintable():
            raise ProtocolError("hello: vm name must be non-empty printable text")
        return cls(vm, boot, session, page_size, caps)


@dataclass
class PoolInfo:
    pool_id: int
    flags: int
    uuid: bytes = bytes(16)


@dataclass
class HelloReply:
    status: HelloStatus
    client_id: int
    instance_id: bytes
    daemon_version: str
    page_size: int = PAGE_SIZE
    max_payload: int = MAX_PAYLOAD
    max_batch: int = MAX_BATCH
    capabilities: int = 0
    pools: list[PoolInfo] = field(default_factory=list)

    def pack(self) -> bytes:
        version = self.daemon_version.encode()
        parts = [HELLO_REPLY_HEAD.pack(self.status, len(self.pools), self.page_size,
                                       self.client_id, self.instance_id, self.max_payload,
                                       self.max_batch, self.capabilities)]
        parts += [POOL_INFO.pack(p.pool_id, p.flags, p.uuid) for p in self.pools]
        parts.append(U8.pack(len(version)) + version)
        return b"".join(parts)

    @classmethod
    def unpack(cls, payload: Payload) -> HelloReply:
        if len(payload) < HELLO_REPLY_HEAD.size:
            raise ProtocolError("hello reply: payload too short")
        status, npools, page, client, inst, maxp, maxb, caps = HELLO_REPLY_HEAD.unpack_from(
            payload)
        off = HELLO_REPLY_HEAD.size
        pools = []
        for _ in range(npools):
            if off + POOL_INFO.size > len(payload):
                raise ProtocolError("hello reply: truncated pool list")
            pools.append(PoolInfo(*POOL_INFO.unpack_from(payload, off)))
            off += POOL_INFO.size
        if off >= len(payload):
            raise ProtocolError("hello reply: missing version")
        vlen = payload[off]
        _need(payload, off + 1 + vlen, "hello reply")
        version = bytes(payload[off + 1 :]).decode("utf-8", "replace")
        return cls(HelloStatus(status), client, inst, version, page, maxp, maxb, caps, pools)


def new_pool_request(flags: int, uuid: bytes = bytes(16), codec: str = "") -> bytes:
    name = codec.encode()
    return NEW_POOL_HEAD.pack(flags, uuid, len(name)) + name


def parse_new_pool(payload: Payload) -> tuple[int, bytes, str | None]:
    """(flags, uuid, codec or None for the daemon's default)."""
    if len(payload) < NEW_POOL_HEAD.size:
        raise ProtocolError("new pool: payload too short")
    flags, uuid, nlen = NEW_POOL_HEAD.unpack_from(payload)
    _need(payload, NEW_POOL_HEAD.size + nlen, "new pool")
    codec = bytes(payload[NEW_POOL_HEAD.size :]).decode("ascii", "replace")
    return flags, uuid, codec or None


def key_request(pool_id: int, oid: Oid, index: int, page: bytes = b"") -> bytes:
    """Payload of PUT (with page), GET and FLUSH_PAGE (without)."""
    return POOL_KEY.pack(pool_id, *oid, index) + page


def parse_key(payload: Payload, with_page: bool) -> tuple[int, Oid, int, bytes]:
    size = POOL_KEY.size + (PAGE_SIZE if with_page else 0)
    _need(payload, size, "page request")
    pool, o0, o1, o2, index = POOL_KEY.unpack_from(payload)
    return pool, (o0, o1, o2), index, bytes(payload[POOL_KEY.size :])


def object_request(pool_id: int, oid: Oid) -> bytes:
    return POOL_OID.pack(pool_id, *oid)


def parse_object(payload: Payload) -> tuple[int, Oid]:
    _need(payload, POOL_OID.size, "flush object")
    pool, o0, o1, o2 = POOL_OID.unpack(payload)
    return pool, (o0, o1, o2)


def batch_request(pool_id: int, keys: Sequence[Key], pages: Sequence[bytes] = ()) -> bytes:
    """Payload of PUT_BATCH (keys and pages), GET_BATCH and FLUSH_BATCH (keys only)."""
    if pages and len(pages) != len(keys):
        raise ValueError("one page per key")
    pack = KEY.pack
    return b"".join([BATCH_HEAD.pack(pool_id, len(keys)),
                     *[pack(o[0], o[1], o[2], i) for o, i in keys], *pages])


def parse_batch(payload: Payload, with_pages: bool) -> tuple[int, list[Key], list[bytes]]:
    if len(payload) < BATCH_HEAD.size:
        raise ProtocolError("batch: payload too short")
    pool, count = BATCH_HEAD.unpack_from(payload)
    if not 0 < count <= MAX_BATCH:
        raise ProtocolError(f"batch: {count} pages, allowed 1..{MAX_BATCH}")
    keys_end = BATCH_HEAD.size + count * KEY.size
    _need(payload, keys_end + (count * PAGE_SIZE if with_pages else 0), "batch")
    packed_keys = KEY.iter_unpack(payload[BATCH_HEAD.size : keys_end])
    keys = [((o0, o1, o2), i) for o0, o1, o2, i in packed_keys]
    pages: list[bytes] = []
    if with_pages:
        with memoryview(payload) as view:
            pages = [bytes(view[off : off + PAGE_SIZE])
                     for off in range(keys_end, len(payload), PAGE_SIZE)]
    return pool, keys, pages


def get_batch_reply(results: Sequence[bytes | None]) -> bytes:
    """A status byte per key (1 = hit), then the pages of the hits in key order."""
    status = bytes(1 if page is not None else 0 for page in results)
    return b"".join([status, *[page for page in results if page is not None]])


def parse_get_batch_reply(payload: Payload, count: int) -> list[bytes | None]:
    if len(payload) < count:
        raise ProtocolError("get batch reply: too short")
    hits = sum(payload[:count])
    _need(payload, count + hits * PAGE_SIZE, "get batch reply")
    out: list[bytes | None] = []
    off = count
    for hit in payload[:count]:
        if hit:
            out.append(bytes(payload[off : off + PAGE_SIZE]))
            off += PAGE_SIZE
        else:
            out.append(None)
    return out


def flags_reply(results: Sequence[bool]) -> bytes:
    """Reply of PUT_BATCH and FLUSH_BATCH: a byte per key, 1 = stored / found."""
    return bytes(1 if r else 0 for r in results)


def parse_flags_reply(payload: Payload, count: int) -> list[bool]:
    _need(payload, count, "batch reply")
    return [b == 1 for b in payload]


def u32(value: int) -> bytes:
    return U32.pack(value)


def parse_u32(payload: Payload) -> int:
    _need(payload, U32.size, "u32")
    return int(U32.unpack(payload)[0])


def json_payload(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode()
