"""Saving persistent tmem pages across a daemon restart: the state file's format.

Persistent pages (frontswap's swapped-out memory) must survive a restart of tmemd, or the
guests lose memory. :func:`write_state` writes every client, all its pools (ephemeral ones
too, without pages: the guest holds their pool ids) and every persistent page;
:func:`read_state` puts them back under the same pool ids and returns the saved session
records. Where the file lives and how it is written and opened safely is
:mod:`.statepath`'s business; :func:`save_state` and :func:`load_state` combine the two.

Format (little endian), version 2 (docs/state-file.md)::

    header   "TMEMSTAT" | u16 version | u16 flags (0) | u32 page size | u32 crc32 of the above
    record*  u8 kind | u32 payload length | payload | u32 crc32 of kind, length and payload
    kinds    1 CLIENT   JSON {client_id, name, quota_bytes, frozen, pools: [{pool_id, flags,
                        uuid (hex), codec}]}
             2 PAGE     u32 client_id | u8 pool_id | 3 x u64 oid | u32 index | the page
             3 SESSIONS JSON list of the daemon's session records (opaque objects)
             4 END      JSON {clients, pages}; must be the last record; pages counts both
                        page kinds
             5 FILLED   u32 client_id | u8 pool_id | 3 x u64 oid | u32 index | u8 byte:
                        a page filled with that one byte (version 2 only)

Version 1 is the same without FILLED records (a same-filled page was a whole PAGE record);
both are read. Pages are stored raw, not as the compressed bytes the store holds: the file
then does not depend on the codec or allocator (a restart may change both). The price is size
(a page per 4 KiB, except same-filled ones) and compressing every page again at load.

Loading checks the whole file (every CRC, the structure, the counts) before it touches the
store, and undoes what it created if the store refuses a page.
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from .. import PAGE_SIZE
from ..store.codecs import CODEC_NAMES
from ..store.pools import KEPT_FLAGS, MAX_POOLS, PoolFlags
from .statepath import STATE_FILE_MODE, StateDir, StateFileError

if TYPE_CHECKING:
    from ..store.tmem import TmemStore

__all__ = ["STATE_FILE_MODE", "StateFileError", "SaveSummary", "load_state", "read_state",
           "save_state", "write_state"]

log = logging.getLogger(__name__)

MAGIC = b"TMEMSTAT"
VERSION = 2
READABLE_VERSIONS = (1, 2)
HEADER = struct.Struct("<8sHHI")
CRC = struct.Struct("<I")
RECORD_HEAD = struct.Struct("<BI")
PAGE_HEAD = struct.Struct("<IB3QI")
FILL = struct.Struct("<B")
KIND_CLIENT, KIND_PAGE, KIND_SESSIONS, KIND_END, KIND_FILLED = 1, 2, 3, 4, 5
MAX_JSON_BYTES = 64 << 20
FILLED_PAGES = [bytes([b]) * PAGE_SIZE for b in range(256)]
_PAGE_RECORD_HEAD = RECORD_HEAD.pack(KIND_PAGE, PAGE_HEAD.size + PAGE_SIZE)
_FILLED_RECORD_HEAD = RECORD_HEAD.pack(KIND_FILLED, PAGE_HEAD.size + FILL.size)


@dataclass(frozen=True)
class SaveSummary:
    """What a save wrote."""

    clients: int
    pages: int  # all persistent pages, same-filled ones included
    filled: int  # of which written as one byte


# ----- writing -----------------------------------------------------------------------------
def _record(kind: int, payload: bytes) -> bytes:
    head = RECORD_HEAD.pack(kind, len(payload))
    return head + payload + CRC.pack(zlib.crc32(payload, zlib.crc32(head)))


def _json_record(kind: int, value: Any) -> bytes:
    return _record(kind, json.dumps(value, separators=(",", ":")).encode())


def _client_record(store: TmemStore, client_id: int) -> dict[str, Any]:
    info = store.client_stats(client_id)
    pools = [
        {"pool_id": p["pool_id"], "flags": p["flags"], "uuid": p["uuid"], "codec": p["codec"]}
        for p in store.pools(client_id)
    ]
    return {
        "client_id": client_id,
        "name": store.client_name(client_id),
        "quota_bytes": info.get("quota_bytes"),
        "frozen": bool(info.get("frozen")),
        "pools": pools,
    }


def write_state(stream: IO[bytes], store: TmemStore, sessions: list[dict[str, Any]]
                ) -> SaveSummary:
    """Write the store's clients, pools and persistent pages plus ``sessions`` to ``stream``."""
    header = HEADER.pack(MAGIC, VERSION, 0, PAGE_SIZE)
    stream.write(header + CRC.pack(zlib.crc32(header)))
    write, crc32, pack_crc, pack_head = stream.write, zlib.crc32, CRC.pack, PAGE_HEAD.pack
    page_crc = crc32(_PAGE_RECORD_HEAD)
    filled_crc = crc32(_FILLED_RECORD_HEAD)
    clients = store.clients()
    pages = filled = 0
    for client_id in clients:
        write(_json_record(KIND_CLIENT, _client_record(store, client_id)))
        for pool_id, _flags, _codec, _uuid, oid, index, page in store.iter_persistent(client_id):
            head = pack_head(client_id, pool_id, *oid, index)
            fill = page[0]
            if page == FILLED_PAGES[fill]:
                body = head + FILL.pack(fill)
                write(_FILLED_RECORD_HEAD + body + pack_crc(crc32(body, filled_crc)))
                filled += 1
            else:
                write(_PAGE_RECORD_HEAD + head)
                write(page)
                write(pack_crc(crc32(page, crc32(head, page_crc))))
            pages += 1
    write(_json_record(KIND_SESSIONS, sessions))
    write(_json_record(KIND_END, {"clients": len(clients), "pages": pages}))
    return SaveSummary(len(clients), pages, filled)


def save_state(path: str, store: TmemStore, sessions: list[dict[str, Any]]) -> SaveSummary:
    """Write a state file at ``path`` (checked directory, new temporary file, atomic rename)."""
    with StateDir(path) as directory:
        summary = directory.save(lambda stream: write_state(stream, store, sessions))
    log.info("saved %d persistent pages (%d same-filled) of %d clients to %s",
             summary.pages, summary.filled, summary.clients, path)
    return summary


# ----- reading -----------------------------------------------------------------------------
@dataclass
class _SavedClient:
    client_id: int
    name: str
    quota_bytes: int | None
    frozen: bool
    pools: list[dict[str, Any]]
    persistent_pools: set[int] = field(default_factory=set)


@dataclass
class _Contents:
    """What pass one learnt: everything but the pages, which pass two streams into the store."""

    clients: dict[int, _SavedClient] = field(default_factory=dict)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    pages: int = 0


def _read_header(stream: IO[bytes], path: str) -> int:
    """Check the header; returns the file's version."""
    header = stream.read(HEADER.size + CRC.size)
    if len(header) < HEADER.size + CRC.size:
        raise StateFileError(f"state file {path}: too short for a header")
    magic, version, flags, page_size = HEADER.unpack_from(header)
    if magic != MAGIC:
        raise StateFileError(f"state file {path}: not a tmemd state file (bad magic)")
    if CRC.unpack_from(header, HEADER.size)[0] != zlib.crc32(header[: HEADER.size]):
        raise StateFileError(f"state file {path}: header checksum mismatch")
    if version not in READABLE_VERSIONS or flags != 0 or page_size != PAGE_SIZE:
        raise StateFileError(
            f"state file {path}: version {version}, flags {flags}, page size {page_size};"
            f" this tmemd reads versions {', '.join(map(str, READABLE_VERSIONS))} with"
            f" {PAGE_SIZE}-byte pages"
        )
    return int(version)


def _records(stream: IO[bytes], path: str) -> Iterator[tuple[int, int, bytes]]:
    """(offset, kind, payload) of every record after the header, each CRC checked."""
    offset = HEADER.size + CRC.size
    read, crc32, unpack_head, unpack_crc = stream.read, zlib.crc32, RECORD_HEAD.unpack, CRC.unpack
    while True:
        head = read(RECORD_HEAD.size)
        if not head:
            return
        if len(head) < RECORD_HEAD.size:
            raise StateFileError(f"state file {path}: truncated record at offset {offset}")
        kind, length = unpack_head(head)
        if length > MAX_JSON_BYTES + PAGE_SIZE:
            raise StateFileError(f"state file {path}: record at offset {offset} is too long")
        payload = read(length)
        crc = read(CRC.size)
        if len(payload) < length or len(crc) < CRC.size:
            raise StateFileError(f"state file {path}: truncated record at offset {offset}")
        if unpack_crc(crc)[0] != crc32(payload, crc32(head)):
            raise StateFileError(f"state file {path}: checksum mismatch at offset {offset}")
        yield offset, kind, payload
        offset += RECORD_HEAD.size + length + CRC.size


def _json(payload: bytes, where: str) -> Any:
    try:
        return json.loads(payload)
    except ValueError as exc:
        raise StateFileError(f"{where}: bad JSON: {exc}") from None


def _saved_client(value: Any, where: str) -> _SavedClient:
    try:
        client = _SavedClient(
            int(value["client_id"]), str(value["name"]), value["quota_bytes"],
            bool(value["frozen"]), list(value["pools"]),
        )
        if client.quota_bytes is not None and not isinstance(client.quota_bytes, int):
            raise ValueError("quota_bytes is not an integer")
        seen: set[int] = set()
        for pool in client.pools:
            pool_id, flags, uuid = pool["pool_id"], pool["flags"], bytes.fromhex(pool["uuid"])
            if not (isinstance(pool_id, int) and 0 <= pool_id < MAX_POOLS) or pool_id in seen:
                raise ValueError(f"bad or repeated pool id {pool_id!r}")
            if not isinstance(flags, int) or flags & ~KEPT_FLAGS:
                raise ValueError(f"bad pool flags {flags!r}")
            if len(uuid) != 16 or pool["codec"] not in CODEC_NAMES:
                raise ValueError(f"bad uuid or codec in pool {pool_id}")
            seen.add(pool_id)
            if flags & PoolFlags.PERSIST:
                client.persistent_pools.add(pool_id)
    except (KeyError, TypeError, ValueError) as exc:
        raise StateFileError(f"{where}: bad client record: {exc}") from None
    return client


PageRecord = tuple[int, int, tuple[int, int, int], int, bytes]  # client, pool, oid, index, page


def _page_record(kind: int, payload: bytes, where: str) -> PageRecord:
    """(saved client id, pool id, oid, index, page) of a PAGE or FILLED record."""
    size = PAGE_HEAD.size + (PAGE_SIZE if kind == KIND_PAGE else FILL.size)
    if len(payload) != size:
        raise StateFileError(f"{where}: page record of {len(payload)} bytes")
    client_id, pool_id, oid0, oid1, oid2, index = PAGE_HEAD.unpack_from(payload)
    if kind == KIND_PAGE:
        page = payload[PAGE_HEAD.size:]
    else:
        page = FILLED_PAGES[payload[PAGE_HEAD.size]]
    return client_id, pool_id, (oid0, oid1, oid2), index, page


def _check_contents(stream: IO[bytes], path: str, store: TmemStore) -> _Contents:
    """Pass one: read and check the whole file without touching the store."""
    contents = _Contents()
    handles: set[tuple[int, int, int, int, int, int]] = set()
    end: dict[str, Any] | None = None
    page_kinds = (KIND_PAGE, KIND_FILLED) if _read_header(stream, path) >= 2 else (KIND_PAGE,)
    for offset, kind, payload in _records(stream, path):
        where = f"state file {path}, offset {offset}"
        if end is not None:
            raise StateFileError(f"{where}: data after the end record")
        if kind in page_kinds:
            client_id, pool_id, oid, index, _page = _page_record(kind, payload, where)
            client = contents.clients.get(client_id)
            if client is None or pool_id not in client.persistent_pools:
                raise StateFileError(f"{where}: page of unknown persistent pool {pool_id}")
            handle = (client_id, pool_id, *oid, index)
            if handle in handles:
                raise StateFileError(f"{where}: page saved twice")
            handles.add(handle)
            contents.pages += 1
        elif kind == KIND_CLIENT:
            client = _saved_client(_json(payload, where), where)
            if client.client_id in contents.clients:
                raise StateFileError(f"{where}: client {client.client_id} saved twice")
            contents.clients[client.client_id] = client
        elif kind == KIND_SESSIONS:
            sessions = _json(payload, where)
            if not isinstance(sessions, list) or not all(isinstance(s, dict) for s in sessions):
                raise StateFileError(f"{where}: sessions must be a list of objects")
            contents.sessions = sessions
        elif kind == KIND_END:
            end = _json(payload, where)
        else:
            raise StateFileError(f"{where}: unknown record kind {kind}")
    expected = {"clients": len(contents.clients), "pages": contents.pages}
    if end is None:
        raise StateFileError(f"state file {path}: truncated (no end record)")
    if end != expected:
        raise StateFileError(f"state file {path}: end record says {end}, file holds {expected}")
    taken = {store.client_name(cid) for cid in store.clients()}
    clash = sorted(taken & {c.name for c in contents.clients.values()})
    if clash:
        raise StateFileError(f"state file {path}: the store already has clients {clash}")
    return contents


def _create_clients(store: TmemStore, contents: _Contents, new_ids: dict[int, int]) -> None:
    """Clients and pools with their saved pool ids; fills ``new_ids`` (saved id -> new id)."""
    for saved in contents.clients.values():
        client_id = store.new_client(saved.name, saved.quota_bytes)
        new_ids[saved.client_id] = client_id
        for pool in saved.pools:
            store.new_pool(client_id, pool["flags"], bytes.fromhex(pool["uuid"]), pool["codec"],
                           pool_id=pool["pool_id"])


def _load_pages(stream: IO[bytes], path: str, store: TmemStore, new_ids: dict[int, int]) -> None:
    _read_header(stream, path)
    for offset, kind, payload in _records(stream, path):
        if kind not in (KIND_PAGE, KIND_FILLED):
            continue
        where = f"state file {path}, offset {offset}"
        saved_id, pool_id, oid, index, page = _page_record(kind, payload, where)
        if saved_id not in new_ids:  # pass one saw another file
            raise StateFileError(f"{where}: the file changed while it was loaded")
        if not store.put(new_ids[saved_id], pool_id, oid, index, page):
            raise StateFileError(
                f"{where}: the store refused a page"
                " (memory limit, persistent cap or quota smaller than when saved?)"
            )


def read_state(stream: IO[bytes], path: str, store: TmemStore) -> list[dict[str, Any]]:
    """Recreate the saved clients, pools and pages in ``store``; return the session records.

    ``stream`` is the state file (seekable; ``path`` names it in messages). A session
    record's ``client_id`` is rewritten to the id the client has now; the records are
    otherwise passed through as they were saved. On any error the store is left as it was.
    """
    try:
        contents = _check_contents(stream, path, store)
        stream.seek(0)
        new_ids: dict[int, int] = {}
        try:
            _create_clients(store, contents, new_ids)
            _load_pages(stream, path, store, new_ids)
        except BaseException:
            for client_id in new_ids.values():
                store.destroy_client(client_id)
            raise
    except OSError as exc:
        raise StateFileError(f"cannot read state file {path}: {exc.strerror or exc}") from exc
    for saved in contents.clients.values():
        if saved.frozen:
            store.freeze(new_ids[saved.client_id])
    sessions = [dict(s) for s in contents.sessions]
    for session in sessions:
        if isinstance(session.get("client_id"), int) and session["client_id"] in new_ids:
            session["client_id"] = new_ids[session["client_id"]]
    log.info("loaded %d persistent pages of %d clients from %s", contents.pages, len(new_ids), path)
    return sessions


def load_state(path: str, store: TmemStore) -> list[dict[str, Any]]:
    """Check and open the state file at ``path`` (:class:`~.statepath.StateDir`), then
    :func:`read_state` it. A missing file is an error here; the daemon starts empty instead."""
    with StateDir(path) as directory:
        stream = directory.open_saved()
        if stream is None:
            raise StateFileError(f"cannot read state file {path}: it does not exist")
        with stream:
            return read_state(stream, path, store)
