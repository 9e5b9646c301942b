"""Where a region's evicted pages go: a tmem pool of its own, reached through the agent's
transport, behind a small interface a test can replace with a dictionary.

A region names its pages by number. :class:`TmemStore` keeps them in one pool it creates
(persistent or ephemeral, as the region asks) and destroys when closed; page ``n`` is object
``(n >> 16, 0, 0)``, index ``n & 0xFFFF``. Requests go out as batches, all of a call's
batches pipelined before the first reply is awaited.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from ..channel import wire
from ..channel.transport import Transport, TransportError

log = logging.getLogger(__name__)

OBJECT_SHIFT = 16


class StoreError(Exception):
    """The store could not answer (the link broke, a reply made no sense)."""


class PageStore(Protocol):
    """What a region needs of tmem. Only the region's fault-handler thread calls it while the
    region runs. ``persistent`` says which tmem rules hold: a persistent store keeps a page
    until it is flushed or put again; an ephemeral one may drop any page at any time, and a get
    that hits removes the page."""

    persistent: bool

    def put(self, pages: Sequence[int], data: Sequence[bytes]) -> list[bool]:
        """Store each page; per page, whether it was stored (a refused put leaves the page's
        handle empty, as tmem does)."""
        ...

    def get(self, pages: Sequence[int]) -> list[bytes | None]:
        """Each page's contents, or None on a miss."""
        ...

    def flush(self, pages: Sequence[int]) -> None:
        """Forget the pages."""
        ...

    def close(self) -> None: ...


def page_key(page: int) -> wire.Key:
    return (page >> OBJECT_SHIFT, 0, 0), page & ((1 << OBJECT_SHIFT) - 1)


class TmemStore:
    """A tmem pool of the region's own on a transport that has said hello."""

    def __init__(self, transport: Transport, persistent: bool, codec: str = "",
                 timeout: float = 60.0) -> None:
        self.transport = transport
        self.persistent = persistent
        self.timeout = timeout
        hello = transport.hello_reply
        self.max_batch = min(wire.MAX_BATCH, hello.max_batch if hello else wire.MAX_BATCH)
        try:
            self.pool_id = transport.new_pool(wire.POOL_PERSIST if persistent else 0,
                                              codec=codec)
        except TransportError as exc:
            raise StoreError(f"tmemd gave no pool: {exc}") from exc
        log.info("%s pool %d for a region", "persistent" if persistent else "ephemeral",
                 self.pool_id)

    def _spans(self, count: int) -> list[tuple[int, int]]:
        step = self.max_batch
        return [(a, min(a + step, count)) for a in range(0, count, step)]

    def _pipelined(self, op: int, payloads: list[bytes]) -> list[bytes]:
        try:
            ids = [self.transport.submit(op, p) for p in payloads]
            return [self.transport.result(rid, self.timeout) for rid in ids]
        except TransportError as exc:
            raise StoreError(f"tmem {wire.Op(op).name} failed: {exc}") from exc

    def put(self, pages: Sequence[int], data: Sequence[bytes]) -> list[bool]:
        spans = self._spans(len(pages))
        replies = self._pipelined(wire.Op.PUT_BATCH, [
            wire.batch_request(self.pool_id, [page_key(p) for p in pages[a:b]], data[a:b])
            for a, b in spans])
        try:
            return [ok for (a, b), reply in zip(spans, replies, strict=True)
                    for ok in wire.parse_flags_reply(reply, b - a)]
        except wire.ProtocolError as exc:
            raise StoreError(f"bad PUT_BATCH reply: {exc}") from exc

    def get(self, pages: Sequence[int]) -> list[bytes | None]:
        spans = self._spans(len(pages))
        replies = self._pipelined(wire.Op.GET_BATCH, [
            wire.batch_request(self.pool_id, [page_key(p) for p in pages[a:b]])
            for a, b in spans])
        try:
            return [page for (a, b), reply in zip(spans, replies, strict=True)
                    for page in wire.parse_get_batch_reply(reply, b - a)]
        except wire.ProtocolError as exc:
            raise StoreError(f"bad GET_BATCH reply: {exc}") from exc

    def flush(self, pages: Sequence[int]) -> None:
        self._pipelined(wire.Op.FLUSH_BATCH, [
            wire.batch_request(self.pool_id, [page_key(p) for p in pages[a:b]])
            for a, b in self._spans(len(pages))])

    def close(self) -> None:
        """Destroy the pool (best effort: a broken link has lost it anyway)."""
        try:
            self.transport.destroy_pool(self.pool_id)
        except TransportError as exc:
            log.warning("could not destroy pool %d: %s", self.pool_id, exc)
