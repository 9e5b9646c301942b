"""The payload of every tmem op: what hello, pools, pages and batches look like on the wire.

Standard library only. Frames and the stream decoder are in :mod:`tmem_agent.channel.wire`, which
re-exports everything here: callers write ``wire.Hello``, ``wire.batch_request`` and so on.
The layouts are specified in docs/wire-protocol.md. Integers are little-endian.
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

PAGE_SIZE = 4096
MAX_BATCH = 256
# Big enough for a full batch of pages with their keys; anything larger is refused unread.
MAX_PAYLOAD = (1 << 20) + (64 << 10)

KEY = struct.Struct("<QQQI")  # oid (three u64), index
_REPEATED: dict[tuple[str, int], struct.Struct] = {}


def repeated(fmt: str, count: int) -> struct.Struct:
    """``count`` times ``fmt`` (little-endian, unpadded) as one struct, made once per format
    and count: one call packs or unpacks a whole batch (a call per key is slow in a guest)."""
    found = _REPEATED.get((fmt, count))
    if found is None:
        found = _REPEATED[(fmt, count)] = struct.Struct("<" + fmt * count)
    return found

POOL_KEY = struct.Struct("<IQQQI")  # pool id, oid, index
POOL_OID = struct.Struct("<IQQQ")  # pool id, oid
BATCH_HEAD = struct.Struct("<II")  # pool id, page count
U8 = struct.Struct("<B")
U32 = struct.Struct("<I")

# NEW_POOL flags: Xen tmem's, and bit 3 (unused by Xen) of ours: gets on a private
# ephemeral pool leave the page in place (an inclusive cache).
POOL_PERSIST = 1
POOL_SHARED = 2
POOL_KEEP_ON_GET = 8
# Hello reply capabilities: what this daemon takes beyond the base protocol.
CAP_KEEP_ON_GET = 1  # NEW_POOL takes POOL_KEEP_ON_GET

NEW_POOL_HEAD = struct.Struct("<I16sB")  # flags, uuid, codec name length
# page size, reserved, capabilities, boot id, agent session id, vm name length
HELLO_HEAD = struct.Struct("<HHI16s16sH")
HELLO_REPLY_HEAD = struct.Struct("<BBHI16sIII")  # status, pool count, page size, client id,
#                                                  instance id, max payload, max batch, caps
POOL_INFO = struct.Struct("<BI16s")  # pool id, flags, uuid

Payload = bytes | memoryview
Oid = tuple[int, int, int]
Key = tuple[Oid, int]


class HelloStatus(enum.IntEnum):
    FRESH = 0  # a new client: nothing from before is kept
    RESUMED = 1  # same VM and boot id: the client and its pools are as they were


class ProtocolError(ValueError):
    """A payload does not match the layout of its op."""


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
