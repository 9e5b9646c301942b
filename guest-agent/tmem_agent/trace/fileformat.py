"""The trace file: a header, then fixed-size records (docs/trace.md). Standard library only.

Header (a whole number of 4 KiB blocks, so records start block-aligned for O_DIRECT)::

    magic "TMEMTRCE" | version u16 | reserved u16 | header length u32 | JSON length u32 |
    JSON metadata (utf-8) | zero padding up to the header length

Records, 64 bytes each, little-endian, begin with one common head::

    time ns u64 (CLOCK_MONOTONIC) | kind u8 | flags u8 | epoch u16 | request id u32

``kind`` is the wire op the record stands for (a batch is recorded page by page), or
:data:`REPLY` (the outcome of one request), :data:`GAP` (records dropped before this one).
Kind 0 never starts a record: zero bytes after the last record are padding (a partly filled
block written early), and a reader stops there. A PUT record with :data:`F_PAGE` is followed by
the page's 4096 bytes.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

from ..channel.wire import Op

MAGIC = b"TMEMTRCE"
VERSION = 2
VERSIONS = (1, 2)  # what a reader takes: the records are laid out alike
BLOCK = 4096
PAGE_SIZE = 4096
RECORD_SIZE = 64
SUFFIX = ".tmtrace"  # the name the harness gives trace files

HEADER_HEAD = struct.Struct("<8sHHII")  # magic, version, reserved, header length, json length
HEAD = struct.Struct("<QBBHI")  # time ns, kind, flags, epoch, request id
# A page op: head, pool id, oid (three u64), index, content hash, zlib-1 size, fill byte.
PAGE_REC = struct.Struct("<QBBHII3QIQHH4x")
# A reply: head, page count, op of the request, outcome bitmap (bit i: page i stored / hit /
# found), pages flushed by FLUSH_OBJECT.
REPLY_REC = struct.Struct("<QBBHIHBx32sI8x")
# A pool: head, pool id, NEW_POOL flags.
POOL_REC = struct.Struct("<QBBHIII40x")
# A connect (hello answered): head (request id: tmemd's client id), then nothing.
CONNECT_REC = struct.Struct("<QBBHI48x")
# Records dropped before this one (buffers full or busy), head then the count.
GAP_REC = struct.Struct("<QBBHIQ40x")
assert all(s.size == RECORD_SIZE for s in (PAGE_REC, REPLY_REC, POOL_REC, CONNECT_REC, GAP_REC))

# Kinds: the wire ops of single pages and pools (a batch's pages are recorded one by one)
# plus two of the trace's own. Plain ints: they are written as bytes into records.
CONNECT = int(Op.HELLO)
NEW_POOL = int(Op.NEW_POOL)
DESTROY_POOL = int(Op.DESTROY_POOL)
PUT = int(Op.PUT)
GET = int(Op.GET)
FLUSH_PAGE = int(Op.FLUSH_PAGE)
FLUSH_OBJECT = int(Op.FLUSH_OBJECT)
REPLY = 0x80
GAP = 0x81
PAGE_KINDS = (PUT, GET, FLUSH_PAGE, FLUSH_OBJECT)
POOL_KINDS = (NEW_POOL, DESTROY_POOL)
KINDS = (CONNECT, *POOL_KINDS, *PAGE_KINDS, REPLY, GAP)
KIND_NAMES = {CONNECT: "connect", NEW_POOL: "new_pool", DESTROY_POOL: "destroy_pool",
              PUT: "put", GET: "get", FLUSH_PAGE: "flush", FLUSH_OBJECT: "flush_object",
              REPLY: "reply", GAP: "gap"}

# Flags of a page record.
F_PERSISTENT = 0x01  # the pool is persistent
F_BATCH = 0x02  # one page of a batch request
F_PAGE = 0x04  # the page's bytes follow the record
F_SAME_FILLED = 0x08  # every byte of the page is the fill byte
F_POOL_UNKNOWN = 0x10  # the recorder did not know the pool's flags
F_NO_ESTIMATE = 0x20  # a put not sampled for the zlib-1 estimate: its zsize is 0 (version 2)
# Flags of a pool record.
F_EXISTING = 0x01  # a pool tmemd already had at connect (a resumed client), not a new one
# Flags of a connect record.
F_RESUMED = 0x01  # tmemd resumed the client (same boot): its pools are as they were
# Status of a reply (its flags byte).
OK = 0
REMOTE_ERROR = 1  # tmemd answered with an error
DISCONNECTED = 2  # the stream broke before the reply
STATUS_NAMES = {OK: "ok", REMOTE_ERROR: "error", DISCONNECTED: "disconnected"}
MAX_BITMAP_PAGES = 256  # the bitmap's bits (wire.MAX_BATCH)

PERSIST = 1  # NEW_POOL flag
HASH = "crc32x2-64"  # the content hash (version 1: "blake2b-64")
ESTIMATE = "zlib-1"  # what the compressibility estimate (zsize) is
ESTIMATE_EVERY = 64  # one put in this many (by content hash) gets the estimate, by default
_HALF = PAGE_SIZE // 2


def content_hash(page: Any) -> int:
    """A page's 64-bit identity: CRC-32 of its first half, and (high word) of its second half.

    About 1 µs a page on the host, where blake2b took 3. Two pages that differ in both halves
    collide with chance ~2^-64, pages that differ in one half only with ~2^-32 (and never when
    that difference is one burst of at most 32 bits). Not collision-resistant against a
    chosen input: it is an identity for replay (dedup, overwrites), not a checksum."""
    with memoryview(page) as view:
        return zlib.crc32(view[:_HALF]) | zlib.crc32(view[_HALF:]) << 32


def sampled(chash: int, every: int) -> bool:
    """Whether a put of this content gets the zlib-1 estimate: one in ``every`` (at least 1),
    by bits 32-63 of the hash times a 64-bit odd constant. Identical pages agree. (CRCs are
    linear: an XOR of the two halves' CRCs would pick periodic pages all alike; the product
    mixes every bit of both.)"""
    return (chash * MIX >> 32 & 0xFFFFFFFF) % every == 0


MIX = 0x9E3779B97F4A7C15


# Same-filled pages, known by their hash: hash -> (fill byte, zlib-1 size).
SAME_FILLED: dict[int, tuple[int, int]] = {
    content_hash(bytes((b,)) * PAGE_SIZE): (b, len(zlib.compress(bytes((b,)) * PAGE_SIZE, 1)))
    for b in range(256)}


class TraceError(ValueError):
    """A file that is not a trace this reader can read (one line)."""


def round_up(n: int, block: int = BLOCK) -> int:
    return -(-n // block) * block


def encode_header(meta: dict[str, Any]) -> bytes:
    """The header block(s) for ``meta``, zero-padded to a whole number of blocks."""
    text = json.dumps({"record_size": RECORD_SIZE, "page_size": PAGE_SIZE,
                       "estimate": ESTIMATE, "estimate_every": ESTIMATE_EVERY, "hash": HASH,
                       **meta},
                      sort_keys=True).encode()
    length = round_up(HEADER_HEAD.size + len(text))
    head = HEADER_HEAD.pack(MAGIC, VERSION, 0, length, len(text))
    return (head + text).ljust(length, b"\0")


def decode_header(data: bytes) -> tuple[dict[str, Any], int]:
    """(metadata, offset of the first record) from the file's first bytes (at least the whole
    header); :class:`TraceError` for anything else. The metadata gains ``version``; a
    version 1 file's ``estimate_every`` is 1 (every put estimated)."""
    if len(data) < HEADER_HEAD.size or not data.startswith(MAGIC):
        raise TraceError("not a tmem trace (bad magic)")
    _, version, _, length, json_len = HEADER_HEAD.unpack_from(data)
    if version not in VERSIONS:
        raise TraceError(f"trace version {version} (this reader knows "
                         f"{', '.join(map(str, VERSIONS))})")
    if length % BLOCK or length < HEADER_HEAD.size + json_len:
        raise TraceError(f"corrupt trace header (length {length}, metadata {json_len})")
    if len(data) < length:
        raise TraceError("trace header truncated")
    try:
        meta = json.loads(data[HEADER_HEAD.size : HEADER_HEAD.size + json_len])
    except ValueError as exc:
        raise TraceError(f"corrupt trace header: {exc}") from None
    if not isinstance(meta, dict):
        raise TraceError("corrupt trace header: metadata is not an object")
    meta["version"] = version
    if version == 1:
        meta.setdefault("estimate_every", 1)
    return meta, length


# A reply's per-page status bytes (1: stored / hit / found) as the digits of a binary number.
_BINARY_DIGITS = bytes(0x31 if b == 1 else 0x30 for b in range(256))


def status_bits(statuses: bytes) -> int:
    """The bitmap (bit i: ``statuses[i] == 1``) of at most 256 status bytes, in C."""
    return int(statuses[::-1].translate(_BINARY_DIGITS), 2) if statuses else 0


def bitmap_bits(bitmap: bytes, count: int) -> list[bool]:
    """The first ``count`` outcome bits of a reply's bitmap."""
    return [bool(bitmap[i >> 3] >> (i & 7) & 1) for i in range(min(count, MAX_BITMAP_PAGES))]
