"""The cache's ephemeral pool: made anew at every connect, reset when it cannot be trusted.

Nothing the cache knows about the pool survives a break in the stream: while tmemd was away,
writes went to the disk without flushing their blocks from the pool, so whatever the old pool
still holds may be stale. At every connect (:meth:`EphemeralPool.settle`, run by the link) the
old pool is destroyed if tmemd still has it (a resumed session; the pool id of an earlier
agent comes from a small state file) and a new, empty one is made. A flush tmemd failed
resets the pool the same way while connected (:meth:`reset`): DESTROY_POOL, then NEW_POOL,
in stream order, the cache off in between. Every pool gets a new *incarnation* number;
replies to requests made for an older incarnation change nothing.

Where tmemd offers it (the hello's CAP_KEEP_ON_GET), the pool is made with KEEP_ON_GET: a
hit stays in the pool, as the block layer cannot tell when the guest's page cache lets its
copy go. Without it a get removes the page, and the handler puts every hit back.
"""

from __future__ import annotations

import logging

from ..channel import wire
from ..channel.transport import Transport, TransportError
from ..jsonfile import read_json_object, write_json
from ..swap.tmemlink import PERSIST, TmemLink
from .stats import CacheStats

log = logging.getLogger(__name__)

EPHEMERAL = 0  # NEW_POOL flags: private, ephemeral, 4 KiB pages (gets are exclusive)


class _Ignored:
    """A request whose outcome changes nothing (destroying a pool no longer used)."""

    swap_pool = False

    def done(self, reply: bytes) -> None:
        pass

    def failed(self, cause: str) -> None:
        pass


class _NewPool:
    swap_pool = False

    def __init__(self, keeper: EphemeralPool, incarnation: int) -> None:
        self.keeper, self.incarnation = keeper, incarnation

    def done(self, reply: bytes) -> None:
        try:
            pool_id = wire.parse_u32(reply)
        except wire.ProtocolError:
            self.failed("error")
            return
        self.keeper.made(pool_id, self.incarnation)

    def failed(self, cause: str) -> None:
        log.warning("no new cache pool (%s): the cache stays off until tmemd reconnects",
                    cause)


class EphemeralPool:
    """The pool id the cache uses now (-1: none, the cache is off)."""

    def __init__(self, link: TmemLink, stats: CacheStats, name: str,
                 state_path: str | None = None) -> None:
        self.link, self.stats, self.name = link, stats, name
        self.state_path = state_path
        self.pool_id = -1
        self.incarnation = 0
        self.keeps_on_get = False  # does a get leave the page in the pool (per connect)
        self._known = self._read_state()  # pools an earlier agent of this boot made

    @property
    def usable(self) -> bool:
        return self.pool_id >= 0 and self.link.connected

    # ----- at connect (the link calls this, synchronously, before anything is sent) -------
    def settle(self, transport: Transport, reply: wire.HelloReply) -> None:
        self.incarnation += 1
        # The file again: a standby agent made this keeper long before it took over.
        stale = {self.pool_id, *self._known, *self._read_state()} - {-1}
        self.pool_id = -1
        if reply.status == wire.HelloStatus.RESUMED:
            for pool in reply.pools:
                if pool.pool_id in stale and not pool.flags & PERSIST:
                    try:
                        transport.destroy_pool(pool.pool_id)
                        log.info("cache %s: destroyed its old pool %d", self.name,
                                 pool.pool_id)
                    except TransportError as exc:  # a broken stream fails the connect
                        log.warning("cache %s: old pool %d not destroyed: %s", self.name,
                                    pool.pool_id, exc)
        self.keeps_on_get = bool(reply.capabilities & wire.CAP_KEEP_ON_GET)
        self.pool_id = transport.new_pool(self.flags)
        self._known = [self.pool_id]
        self._write_state()
        log.info("cache %s: ephemeral pool %d (empty%s)", self.name, self.pool_id,
                 ", gets keep pages" if self.keeps_on_get else "")

    @property
    def flags(self) -> int:
        """NEW_POOL flags for this connection's pools."""
        return wire.POOL_KEEP_ON_GET if self.keeps_on_get else EPHEMERAL

    # ----- while connected ------------------------------------------------------------------
    def reset(self, why: str) -> None:
        """Forget everything the pool holds: destroy it and make a new one."""
        old, self.pool_id = self.pool_id, -1
        self.incarnation += 1
        self.stats.add("pool_resets")
        log.warning("cache %s: resetting pool %d: %s", self.name, old, why)
        if not self.link.connected:
            return  # the next connect makes a new pool anyway
        if old >= 0:  # (-1: a new pool is on its way, for an incarnation now past)
            self.link.submit(wire.Op.DESTROY_POOL, wire.u32(old), _Ignored())
        self.link.submit(wire.Op.NEW_POOL, wire.new_pool_request(self.flags),
                         _NewPool(self, self.incarnation))

    def made(self, pool_id: int, incarnation: int) -> None:
        if incarnation != self.incarnation:  # another reset or connect came since
            self.link.submit(wire.Op.DESTROY_POOL, wire.u32(pool_id), _Ignored())
            return
        self.pool_id = pool_id
        self._known = [pool_id]
        self._write_state()
        log.info("cache %s: ephemeral pool %d (empty)", self.name, pool_id)

    def close(self) -> None:
        """Give the pool back (best effort, the agent is stopping)."""
        transport = self.link.transport
        if self.pool_id >= 0 and transport is not None:
            try:
                transport.destroy_pool(self.pool_id)
                self._known = []
                self._write_state()
            except TransportError as exc:
                log.info("cache %s: pool %d not destroyed: %s", self.name, self.pool_id, exc)
        self.pool_id = -1

    # ----- the state file -------------------------------------------------------------------
    def _read_state(self) -> list[int]:
        if not self.state_path:
            return []
        state = read_json_object(self.state_path)
        if state.get("boot_id") != self.link.boot_id.hex():
            return []  # another boot: tmemd dropped that client's pools already
        return [int(p) for p in state.get("pools", [])]

    def _write_state(self) -> None:
        if not self.state_path:
            return
        write_json(self.state_path, {"boot_id": self.link.boot_id.hex(), "pools": self._known})
