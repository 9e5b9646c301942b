"""The tmem wire protocol: framing and the stream decoder; op payloads via :mod:`.payloads`.

Standard library only: the guest agent and the host daemon both import this one module (it
re-exports every payload codec of :mod:`tmem_agent.channel.payloads`, so ``wire.Hello`` works).
The spec is docs/wire-protocol.md. In short, every frame is a 24-byte header and a payload::

    magic "TMEM" | version u8 | op u8 | flags u16 | request id u32 | length u32 |
    payload crc32 u32 | header crc32 u32 (of the 20 bytes before it)

All integers are little-endian. The header checksum makes a false magic inside garbage harmless,
so the decoder can resynchronise on any byte stream by scanning for the next valid header.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass

from .payloads import (  # noqa: F401 - re-exported: callers use them as wire.<name>
    BATCH_HEAD,
    CAP_KEEP_ON_GET,
    HELLO_HEAD,
    HELLO_REPLY_HEAD,
    KEY,
    MAX_BATCH,
    MAX_PAYLOAD,
    NEW_POOL_HEAD,
    PAGE_SIZE,
    POOL_INFO,
    POOL_KEEP_ON_GET,
    POOL_KEY,
    POOL_OID,
    POOL_PERSIST,
    POOL_SHARED,
    U8,
    U32,
    Hello,
    HelloReply,
    HelloStatus,
    Key,
    Oid,
    Payload,
    PoolInfo,
    ProtocolError,
    batch_request,
    flags_reply,
    get_batch_reply,
    json_payload,
    key_request,
    new_pool_request,
    object_request,
    parse_batch,
    parse_flags_reply,
    parse_get_batch_reply,
    parse_key,
    parse_new_pool,
    parse_object,
    parse_u32,
    repeated,
    u32,
)

MAGIC = b"TMEM"
VERSION = 1

HEADER = struct.Struct("<4sBBHIIII")
HEADER_SIZE = HEADER.size
_HEADER_BODY = struct.Struct("<4sBBHIII")  # the part the header crc covers
ERROR_HEAD = struct.Struct("<H")
MIN_READ = 16 << 10  # the decoder grows its buffer rather than read less than this


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


# The same flags as plain ints, for the per-frame paths (IntFlag arithmetic is ~40x slower).
REPLY = int(Flag.REPLY)
ERROR = int(Flag.ERROR)
ERROR_REPLY = REPLY | ERROR


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
    BUSY = 16  # the daemon serves as many streams as it may; this one is closed
    WRONG_VM = 17  # the hello named a VM this connection does not belong to
    NOT_AUTHORISED = 18  # a shared pool uuid the operator has not allowed this VM to use



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

    The decoder owns one buffer. It starts at ``initial_size`` (an idle or quiet stream costs
    little) and grows when a read would find less than ``MIN_READ`` bytes free, up to room for
    the largest frame plus one read; it never shrinks. Readers either copy bytes in with
    :meth:`feed` (which returns every event with its payload as ``bytes``), or read straight
    into :meth:`get_buffer`, call :meth:`commit` and pull events with :meth:`next_event`; those
    payloads are memoryviews into the buffer, valid until the next :meth:`get_buffer`. Bytes
    not yet pulled stay buffered, which is how a reader applies back-pressure. Nothing here
    raises on input; invalid bytes come out as :class:`FrameError` events, in stream order.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD, read_size: int = 256 << 10,
                 initial_size: int = 64 << 10) -> None:
        self.max_payload = max_payload
        self.read_size = read_size
        self.max_capacity = HEADER_SIZE + max_payload + read_size
        self._buf = bytearray(min(initial_size, self.max_capacity))
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0

    @property
    def buffered(self) -> int:
        return self._end - self._start

    @property
    def capacity(self) -> int:
        """The buffer's size now."""
        return len(self._buf)

    # ----- reading in ----------------------------------------------------------------------
    def get_buffer(self) -> memoryview:
        """Free space at the end of the buffer for the next read: at least ``MIN_READ`` (or
        ``read_size`` if smaller) whenever fewer than a whole frame's bytes are buffered, and
        at least ``read_size`` once the buffer has grown to its full size."""
        if self.capacity - self._end < self.read_size:
            self._compact()
            if (self.capacity - self._end < min(self.read_size, MIN_READ)
                    and self.capacity < self.max_capacity):
                self._grow()
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

    def _grow(self) -> None:
        """A larger buffer with the buffered bytes (at its start, after :meth:`_compact`).
        Views handed out before stay valid: they keep the old buffer alive."""
        size = min(self.max_capacity, max(2 * self.capacity, self._end + self.read_size))
        buf = bytearray(size)
        buf[: self._end] = self._view[: self._end]
        self._buf, self._view = buf, memoryview(buf)

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
