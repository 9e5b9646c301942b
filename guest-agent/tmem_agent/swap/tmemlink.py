"""The agent's connection to tmemd: hello with the guest's boot id, the persistent pool
that holds the swap pages, requests in flight, and reconnecting after the stream breaks.

Other users of the same stream (a disk cache's ephemeral pool, :mod:`tmem_agent.cache`) add a
:class:`PoolKeeper`: it settles its own pool at every connect, and a NO_SUCH_POOL answer to one
of its requests is its business, not the swap pool's. A link without a location map keeps no
swap pool at all.

Which pool is the swap pool is recorded in the location map, so a restarted agent (same
boot) takes its predecessor's pool when tmemd says "resumed" and still has it. When tmemd has
lost it (a crash, or a fresh client), every page the map places in tmem is marked LOST first:
reads of those pages then fail with an I/O error instead of returning anything else.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..channel import wire
from ..channel.transport import RemoteError, Runstate, Transport, TransportError
from ..trace.fileformat import DISCONNECTED, OK, REMOTE_ERROR
from .locmap import LocationMap
from .stats import SwapStats

if TYPE_CHECKING:
    from ..trace.recorder import TraceRecorder

log = logging.getLogger(__name__)

PERSIST = wire.POOL_PERSIST
# tmemd answers in milliseconds. A request it never answers (its bytes lost in a stream that
# is still open) would hold its NBD request, and with it the guest's swap, until the kernel
# gives up on the device: after this long without an answer to the oldest request in flight
# the stream counts as broken (reconnect; puts in flight go to the fallback file).
REPLY_TIMEOUT_S = 20.0
WATCH_EVERY_S = 2.0  # how often the oldest request in flight is looked at


class Pending(Protocol):
    """A request in flight; told its reply, or why there will be none. A request on another
    pool than the swap pool sets a class attribute ``swap_pool = False``."""

    def done(self, reply: bytes) -> None: ...

    def failed(self, cause: str) -> None: ...  # "disconnected" or "error"


class PoolKeeper(Protocol):
    """A pool of its own on the link, settled (kept, or made anew) at every connect."""

    def settle(self, transport: Transport, reply: wire.HelloReply) -> None: ...


class Counters(Protocol):
    def add(self, name: str, value: int = 1) -> None: ...


class _StatsProbe:
    """Keeps the daemon's latest view of this client (asked for now and then)."""

    def __init__(self, link: TmemLink) -> None:
        self.link = link

    def done(self, reply: bytes) -> None:
        try:
            self.link.daemon_view = json.loads(reply)
        except ValueError:
            log.warning("tmemd sent statistics that are not JSON")

    def failed(self, cause: str) -> None:
        pass


class TmemLink:
    """One transport to tmemd at a time, opened again after it breaks."""

    def __init__(self, opener: Callable[[], Transport], vm: str, boot_id: bytes,
                 locmap: LocationMap | None, stats: SwapStats | Counters, *,
                 hello_timeout: float = 10.0, reply_timeout: float = REPLY_TIMEOUT_S,
                 retry_every: float = 2.0, stats_every: float = 5.0) -> None:
        self._opener = opener
        self.vm = vm
        self.boot_id = boot_id
        self.session_id = os.urandom(16)
        self.locmap = locmap
        self.stats = stats
        self.hello_timeout = hello_timeout
        self.retry_every = retry_every
        self.stats_every = stats_every
        self.transport: Transport | None = None
        self.hello: wire.HelloReply | None = None
        self.daemon_view: dict[str, Any] | None = None
        self._pending: dict[int, Pending] = {}
        self._next_attempt = 0.0
        self._next_stats = 0.0
        self._next_watch = 0.0
        self._watched: tuple[int, float] | None = None  # the oldest request in flight, since
        self.reply_timeout = reply_timeout
        self._pool_lost = False
        self.keepers: list[PoolKeeper] = []
        self.on_connected: Callable[[], None] = lambda: None
        self._connected_hooks: list[Callable[[], None]] = []
        self.trace: TraceRecorder | None = None  # records every request (docs/trace.md)

    def add_keeper(self, keeper: PoolKeeper, connected: Callable[[], None] | None = None) -> None:
        """Settle ``keeper``'s pool at every connect; ``connected`` runs after each connect
        (beside :attr:`on_connected`, which the swap shim owns)."""
        self.keepers.append(keeper)
        if connected is not None:
            self._connected_hooks.append(connected)

    @property
    def connected(self) -> bool:
        return self.transport is not None

    @property
    def pool_id(self) -> int:
        """The swap pool (-1: none)."""
        return self.locmap.pool_id if self.locmap is not None else -1

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def fileno(self) -> int:
        return self.transport.fileno() if self.transport is not None else -1

    # ----- connecting ----------------------------------------------------------------------
    def connect(self, hello_timeout: float | None = None) -> bool:
        """Open the stream, say hello and settle the swap pool; False (logged) if tmemd
        cannot be reached now."""
        self._next_attempt = time.monotonic() + self.retry_every
        transport: Transport | None = None
        try:
            transport = self._opener()
            if transport.runstate is Runstate.IDLE:
                transport.open()
            reply = transport.hello(self.vm, self.boot_id, self.session_id,
                                    timeout=hello_timeout or self.hello_timeout)
            self._settle_pool(transport, reply)
            for keeper in self.keepers:
                keeper.settle(transport, reply)
        except (TransportError, OSError, wire.ProtocolError) as exc:
            log.warning("tmemd not reachable: %s", exc)
            if transport is not None:
                transport.close()
            return False
        self.transport, self.hello = transport, reply
        self._next_stats = 0.0
        log.info("connected to tmemd %s as client %d (%s), swap pool %d", reply.daemon_version,
                 reply.client_id, reply.status.name.lower(), self.pool_id)
        if self.trace is not None:
            self.trace.connected(reply, [(self.pool_id, PERSIST)] + [
                (getattr(k, "pool_id", -1), getattr(k, "flags", 0)) for k in self.keepers])
        self.on_connected()
        for hook in self._connected_hooks:
            hook()
        return True

    def _settle_pool(self, transport: Transport, reply: wire.HelloReply) -> None:
        """Keep the map's pool if tmemd still has it, else mark its pages lost and make a
        new one."""
        locmap = self.locmap
        if locmap is None:
            return
        pools = {p.pool_id: p for p in reply.pools}
        mine = pools.get(locmap.pool_id)
        keep = (reply.status == wire.HelloStatus.RESUMED and mine is not None
                and mine.flags & PERSIST and not self._pool_lost)
        if keep:
            return
        if locmap.pool_id >= 0:
            lost = locmap.mark_tmem_lost()
            if lost:
                self.stats.add("lost_pages", lost)
                log.error("tmemd no longer has swap pool %d (%s): %d swapped pages are lost; "
                          "reading them will fail with I/O errors", locmap.pool_id,
                          reply.status.name.lower(), lost)
        locmap.pool_id = -1
        others = sorted(pools)
        if others:
            log.info("tmemd holds other pools of this client, left alone: %s", others)
        locmap.pool_id = transport.new_pool(PERSIST)
        self._pool_lost = False

    def maybe_reconnect(self, now: float) -> None:
        if self.transport is None and now >= self._next_attempt:
            if self.connect(hello_timeout=min(self.hello_timeout, 3.0)):
                self.stats.add("tmem_reconnects")

    def next_deadline(self) -> float | None:
        """When :meth:`tick` has work next (None: only events matter)."""
        if self.transport is None:
            return self._next_attempt
        # Called every turn of the loop: plain comparisons, no list.
        due = self._next_stats if self.stats_every > 0 else None
        if self._pending and (due is None or self._next_watch < due):
            due = self._next_watch
        traced = self.trace.next_deadline() if self.trace is not None else None
        return due if traced is None else traced if due is None else min(due, traced)

    def tick(self, now: float) -> None:
        if self.trace is not None:
            self.trace.tick(now)
        self.maybe_reconnect(now)
        if now >= self._next_watch:
            self._next_watch = now + WATCH_EVERY_S
            self._watch_replies(now)
        if self.transport is not None and self.stats_every > 0 and now >= self._next_stats:
            self._next_stats = now + self.stats_every
            self.submit(wire.Op.STATS, b"", _StatsProbe(self))

    # ----- requests ------------------------------------------------------------------------
    def submit(self, op: int, payload: wire.Payload | bytearray, pending: Pending) -> bool:
        """Send a request; False when not connected (``pending`` is then not kept)."""
        transport = self.transport
        if transport is None:
            return False
        try:
            rid = transport.submit(op, payload)
        except TransportError as exc:
            self._lost(f"sending failed: {exc}")
            return False
        self._pending[rid] = pending
        if self.trace is not None:
            self.trace.requested(rid, op, payload)
        return True

    def on_readable(self) -> None:
        """Take in the replies that arrived and complete their requests."""
        transport = self.transport
        if transport is None:
            return
        try:
            transport.pump()
        except TransportError as exc:
            self._complete_ready(transport)  # replies that came before the break count
            self._lost(f"reading failed: {exc}")
            return
        self._complete_ready(transport)

    def _complete_ready(self, transport: Transport) -> None:
        pending = self._pending
        if not pending:
            return
        for rid in [r for r in pending if transport.ready(r)]:
            waiter = pending.pop(rid)
            try:
                reply = transport.result(rid, timeout=0)
            except RemoteError as exc:
                self.stats.add("remote_errors")
                log.error("tmemd refused a request: %s", exc)
                if self.trace is not None:
                    self.trace.completed(rid, REMOTE_ERROR)
                if exc.code == wire.ErrorCode.NO_SUCH_POOL and getattr(waiter, "swap_pool",
                                                                        True):
                    self._pool_lost = True
                waiter.failed("error")
                continue
            if self.trace is not None:
                self.trace.completed(rid, OK, reply)
            waiter.done(reply)
        if self._pool_lost and self.transport is not None:
            self._lost("the swap pool is gone")

    def _watch_replies(self, now: float) -> None:
        """Give up on the stream when its oldest request has waited ``reply_timeout``."""
        if self.transport is None or not self._pending:
            self._watched = None
            return
        oldest = next(iter(self._pending))  # dicts keep insertion (= submission) order
        if self._watched is None or self._watched[0] != oldest:
            self._watched = (oldest, now)
        elif now - self._watched[1] >= self.reply_timeout:
            self.stats.add("reply_timeouts")
            self._lost(f"no reply to request {oldest} (of {len(self._pending)} in flight) "
                       f"for {now - self._watched[1]:.0f} s")
            self._watched = None

    def _lost(self, reason: str) -> None:
        """The stream broke: every request in flight fails (in the order it was sent)."""
        log.error("connection to tmemd lost: %s; retrying every %.0f s", reason,
                  self.retry_every)
        self.stats.add("tmem_disconnects")
        if self.transport is not None:
            self.transport.close()
        self.transport = None
        self._next_attempt = time.monotonic() + self.retry_every
        pending, self._pending = self._pending, {}
        for rid, waiter in pending.items():  # dicts keep insertion (= submission) order
            if self.trace is not None:
                self.trace.completed(rid, DISCONNECTED)
            waiter.failed("disconnected")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
