"""Puts gathered into PUT_BATCH frames.

A block's data is copied into the frame when the put is queued (the page slot it came from
may be reused the moment its NBD reply is sent); the frame goes out when full and at the end
of each loop turn, and at once before any flush (:meth:`PutQueue.send`): a put queued before
a write started then reaches tmemd before that write's flush, which removes it again.
"""

from __future__ import annotations

import logging
import time

from ..channel import wire
from ..swap.tmemlink import TmemLink
from .keys import block_key
from .pool import EphemeralPool
from .stats import CacheStats

log = logging.getLogger(__name__)

PAGE_SIZE = 4096
HEAD, KEY = wire.BATCH_HEAD, wire.KEY


class _PutBatch:
    swap_pool = False
    __slots__ = ("stats", "count", "started_ns")

    def __init__(self, stats: CacheStats, count: int) -> None:
        self.stats, self.count, self.started_ns = stats, count, time.monotonic_ns()

    def done(self, reply: bytes) -> None:
        stored = reply.count(1) if len(reply) == self.count else 0
        self.stats.add("puts_stored", stored)
        self.stats.add("puts_refused", self.count - stored)

    def failed(self, cause: str) -> None:
        if cause == "error":
            self.stats.add("tmem_errors")  # nothing to undo: a failed put stored nothing


class PutQueue:
    """One PUT_BATCH frame being filled."""

    def __init__(self, link: TmemLink, keeper: EphemeralPool, stats: CacheStats,
                 batch_max: int = wire.MAX_BATCH) -> None:
        self.link, self.keeper, self.stats = link, keeper, stats
        self.batch_max = batch_max
        self._pages_at = HEAD.size + batch_max * KEY.size
        self._frame = bytearray(self._pages_at + batch_max * PAGE_SIZE)
        self._view = memoryview(self._frame)
        self._blocks: list[int] = []
        self._incarnation = -1

    def __len__(self) -> int:
        return len(self._blocks)

    def add(self, block: int, data: memoryview | bytes) -> None:
        """Queue a put of ``block`` (its guard already passed)."""
        if not self.keeper.usable:
            return
        if self._blocks and self._incarnation != self.keeper.incarnation:
            self._blocks.clear()  # queued for a pool that is gone
        self._incarnation = self.keeper.incarnation
        at = self._pages_at + len(self._blocks) * PAGE_SIZE
        self._frame[at : at + PAGE_SIZE] = data
        self._blocks.append(block)
        if len(self._blocks) >= self.batch_max:
            self.send()

    def send(self) -> None:
        """Send what is queued."""
        blocks, count = self._blocks, len(self._blocks)
        if not count:
            return
        if self._incarnation != self.keeper.incarnation or not self.keeper.usable:
            blocks.clear()
            return
        start = self._pages_at - count * KEY.size - HEAD.size  # keys end where pages begin
        HEAD.pack_into(self._frame, start, self.keeper.pool_id, count)
        for j, block in enumerate(blocks):
            oid, index = block_key(block)
            KEY.pack_into(self._frame, start + HEAD.size + j * KEY.size, *oid, index)
        blocks.clear()
        self.stats.add("puts", count)
        self.stats.add("put_batches")
        self.link.submit(wire.Op.PUT_BATCH, self._view[start : self._pages_at + count * PAGE_SIZE],
                         _PutBatch(self.stats, count))
