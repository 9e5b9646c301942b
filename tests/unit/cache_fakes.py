"""Fakes for the disk cache's unit tests: a link to an in-memory ephemeral tmem that serves
requests in stream order only when the test says so, a disk in memory, a disk worker whose
jobs run and complete when the test says so, and an NBD connection that records replies.
Together they let a test put every event of the cache in any order it likes."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from tmem_agent.cache.guard import StaleGuard
from tmem_agent.cache.handler import CacheHandler
from tmem_agent.cache.keys import block_key
from tmem_agent.cache.pool import EphemeralPool
from tmem_agent.cache.stats import CacheStats
from tmem_agent.channel import wire
from tmem_agent.swap.nbdconn import PagePool, Request
from tmem_agent.swap.nbdproto import Cmd

PAGE = 4096
Handle = tuple[int, wire.Oid, int]


class FakeTmem:
    """The daemon's side: pools, pages, gets exclusive unless the pool keeps pages on get
    (offered when ``keep_on_get``), injected faults."""

    def __init__(self, keep_on_get: bool = False) -> None:
        self.keep_on_get = keep_on_get
        self.store: dict[Handle, bytes] = {}
        self.pools: set[int] = set()
        self.keeping: set[int] = set()  # pools made with KEEP_ON_GET
        self.next_pool = 0  # never reused: a test can tell pools apart
        self.fail_flushes = 0.0  # share of flushes answered with an error (and not done)
        self.refuse_puts = 0.0
        self.rng = random.Random(0)
        self.ops: list[tuple[int, int]] = []  # (op, pages)

    def new_pool(self, flags: int) -> int:
        assert flags in ((0, wire.POOL_KEEP_ON_GET) if self.keep_on_get else (0,)), flags
        pool, self.next_pool = self.next_pool, self.next_pool + 1
        self.pools.add(pool)
        if flags:
            self.keeping.add(pool)
        return pool

    def destroy_pool(self, pool: int) -> int:
        self.pools.discard(pool)
        gone = [h for h in self.store if h[0] == pool]
        for h in gone:
            del self.store[h]
        return len(gone)

    def evict(self, share: float) -> int:
        victims = [h for h in self.store if self.rng.random() < share]
        for h in victims:
            del self.store[h]
        return len(victims)

    def serve(self, op: int, payload: bytes) -> bytes | None:
        """The reply, or None for an error reply."""
        if op == wire.Op.NEW_POOL:
            return wire.u32(self.new_pool(wire.parse_new_pool(payload)[0]))
        if op == wire.Op.DESTROY_POOL:
            return wire.u32(self.destroy_pool(wire.parse_u32(payload)))
        if op == wire.Op.FLUSH_OBJECT:
            pool, oid = wire.parse_object(payload)
            if pool not in self.pools or self.rng.random() < self.fail_flushes:
                return None
            gone = [h for h in self.store if h[0] == pool and h[1] == oid]
            for h in gone:
                del self.store[h]
            self.ops.append((op, len(gone)))
            return wire.u32(len(gone))
        pool, keys, pages = wire.parse_batch(payload, op == wire.Op.PUT_BATCH)
        self.ops.append((op, len(keys)))
        if pool not in self.pools:
            return None
        handles = [(pool, oid, index) for oid, index in keys]
        if op == wire.Op.GET_BATCH:
            take = self.store.get if pool in self.keeping else self.store.pop
            return wire.get_batch_reply([take(h, None) for h in handles])
        if op == wire.Op.FLUSH_BATCH:
            if self.rng.random() < self.fail_flushes:
                return None
            return wire.flags_reply([self.store.pop(h, None) is not None for h in handles])
        assert op == wire.Op.PUT_BATCH, op
        results = []
        for h, data in zip(handles, pages, strict=True):
            if self.rng.random() < self.refuse_puts:
                self.store.pop(h, None)
                results.append(False)
            else:
                self.store[h] = data
                results.append(True)
        return wire.flags_reply(results)

    def pages_of(self, pool: int) -> dict[int, bytes]:
        """Block number -> page of every page in ``pool``."""
        return {oid[0] * 256 + index: data for (p, oid, index), data in self.store.items()
                if p == pool}


class FakeTransport:
    """What a keeper uses while the link connects: synchronous calls."""

    def __init__(self, tmem: FakeTmem) -> None:
        self.tmem = tmem

    def new_pool(self, flags: int) -> int:
        return self.tmem.new_pool(flags)

    def destroy_pool(self, pool: int) -> int:
        return self.tmem.destroy_pool(pool)


class FakeLink:
    """TmemLink's surface for the cache: requests wait in stream order for :meth:`serve`."""

    def __init__(self, tmem: FakeTmem, boot_id: bytes = b"b" * 16) -> None:
        self.tmem = tmem
        self.boot_id = boot_id
        self.connected = False
        self.transport: FakeTransport | None = None
        self.keepers: list[Any] = []
        self.queue: list[tuple[int, bytes, Any]] = []
        self.hooks: list[Any] = []

    @property
    def in_flight(self) -> int:
        return len(self.queue)

    def add_keeper(self, keeper: Any, connected: Any = None) -> None:
        self.keepers.append(keeper)
        if connected is not None:
            self.hooks.append(connected)

    def connect(self, resumed: bool = True) -> None:
        transport = FakeTransport(self.tmem)
        status = wire.HelloStatus.RESUMED if resumed else wire.HelloStatus.FRESH
        pools = [wire.PoolInfo(p, 0) for p in sorted(self.tmem.pools)] if resumed else []
        reply = wire.HelloReply(status, 1, bytes(16), "fake", pools=pools,
                                capabilities=wire.CAP_KEEP_ON_GET if self.tmem.keep_on_get else 0)
        for keeper in self.keepers:
            keeper.settle(transport, reply)
        self.connected, self.transport = True, transport
        for hook in self.hooks:
            hook()

    def disconnect(self) -> None:
        """The stream breaks: what was not served fails, in order."""
        self.connected, self.transport = False, None
        queue, self.queue = self.queue, []
        for _, _, pending in queue:
            pending.failed("disconnected")

    def submit(self, op: int, payload: Any, pending: Any) -> bool:
        if not self.connected:
            return False
        self.queue.append((op, bytes(payload), pending))
        return True

    def serve(self, count: int = 1) -> int:
        """tmemd serves and answers the oldest ``count`` requests."""
        served = 0
        while self.queue and served < count:
            op, payload, pending = self.queue.pop(0)
            reply = self.tmem.serve(op, payload)
            if reply is None:
                pending.failed("error")
            else:
                pending.done(reply)
            served += 1
        return served

    def serve_all(self) -> None:
        while self.queue:
            self.serve()


class FakeDisk:
    """DiskFile's surface over a bytearray; discard punches a hole (zeros), as in a file."""

    def __init__(self, blocks: int) -> None:
        self.data = bytearray(blocks * PAGE)
        self.size = blocks * PAGE
        self.direct = True
        self.path = "fake"
        self.reads = 0
        self.syncs = 0

    def block(self, n: int) -> bytes:
        return bytes(self.data[n * PAGE : (n + 1) * PAGE])

    def read(self, first: int, views: list[memoryview]) -> None:
        self.reads += len(views)
        for i, view in enumerate(views):
            view[:] = self.data[(first + i) * PAGE : (first + i + 1) * PAGE]

    def write(self, first: int, views: list[memoryview], sync: bool = False) -> None:
        for i, view in enumerate(views):
            self.data[(first + i) * PAGE : (first + i + 1) * PAGE] = view

    def zero(self, first: int, count: int) -> None:
        self.data[first * PAGE : (first + count) * PAGE] = bytes(count * PAGE)

    discard = zero

    def sync(self) -> None:
        self.syncs += 1


class FakeWorker:
    """Disk jobs wait until the test runs them; their completions wait again until it
    completes them (the gap between the I/O and the loop hearing of it)."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Any, Any]] = []
        self.ran: list[tuple[Any, OSError | None]] = []
        self.fail_next = False

    @property
    def pending(self) -> int:
        return len(self.jobs) + len(self.ran)

    def submit(self, job: Any, done: Any) -> None:
        self.jobs.append((job, done))

    def run(self, i: int = 0) -> None:
        job, done = self.jobs.pop(i)
        error = None
        if self.fail_next:
            self.fail_next, error = False, OSError(5, "injected I/O error")
        else:
            job()
        self.ran.append((done, error))

    def complete(self, i: int = 0) -> None:
        done, error = self.ran.pop(i)
        done(error)

    def finish_all(self) -> None:
        while self.jobs:
            self.run()
        while self.ran:
            self.complete()


@dataclass
class FakeConn:
    """Replies as the NBD client sees them (a read's data copied at reply time)."""

    pool: PagePool
    replies: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    closed: bool = False

    def reply(self, req: Request) -> None:
        assert req.cookie not in self.replies, f"{req} answered twice"
        data = b""
        if req.cmd == Cmd.READ and not req.error:
            pages = req.data if req.data is not None else [self.pool.views[s] for s in req.slots]
            data = b"".join(bytes(v) for v in pages)
        self.replies[req.cookie] = (req.error, data)
        self.pool.give(req.slots)
        req.slots = []


class Rig:
    """A CacheHandler on the fakes, and a client that issues requests to it."""

    def __init__(self, blocks: int = 600, slots: int = 128, batch_max: int = 8,
                 stripes: int = 1 << 16, reset_groups: int = 2,
                 write_allocate: bool = True, keep_on_get: bool = False) -> None:
        self.tmem = FakeTmem(keep_on_get)
        self.link = FakeLink(self.tmem)
        self.stats = CacheStats()
        self.keeper = EphemeralPool(self.link, self.stats, "test")  # type: ignore[arg-type]
        self.link.add_keeper(self.keeper)
        self.disk = FakeDisk(blocks)
        self.worker = FakeWorker()
        self.pool = PagePool(slots)
        self.conn = FakeConn(self.pool)
        self.handler = CacheHandler(self.link, self.keeper, self.disk,  # type: ignore[arg-type]
                                    self.worker, self.pool, self.stats,  # type: ignore[arg-type]
                                    StaleGuard(stripes), batch_max=batch_max,
                                    write_allocate=write_allocate, reset_groups=reset_groups)
        self.cookie = 0

    def issue(self, cmd: int, first: int, count: int, data: bytes = b"") -> int | None:
        """Hand a request to the handler; None when the page slots are all taken."""
        slots: list[int] = []
        if cmd in (Cmd.READ, Cmd.WRITE):
            taken = self.pool.take(count)
            if taken is None:
                return None
            slots = taken
        self.cookie += 1
        req = Request(self.conn, self.cookie, cmd, 0, first * PAGE, count * PAGE)  # type: ignore[arg-type]
        req.slots = slots
        for i, slot in enumerate(slots if cmd == Cmd.WRITE else []):
            self.pool.views[slot][:] = data[i * PAGE : (i + 1) * PAGE]
        self.handler.handle(req)
        self.handler.puts.send()  # the loop's turn ends
        return self.cookie

    def settle(self) -> None:
        """Everything in flight finishes."""
        for _ in range(1000):
            if not self.link.queue and not self.worker.pending:
                break
            self.link.serve_all()
            self.worker.finish_all()
            self.handler.puts.send()
        assert not self.link.queue and not self.worker.pending

    def call(self, cmd: int, first: int, count: int, data: bytes = b"") -> tuple[int, bytes]:
        cookie = self.issue(cmd, first, count, data)
        assert cookie is not None
        self.settle()
        return self.conn.replies.pop(cookie)

    def read(self, first: int, count: int) -> bytes:
        error, data = self.call(Cmd.READ, first, count)
        assert error == 0
        return data

    def write(self, first: int, data: bytes) -> None:
        assert self.call(Cmd.WRITE, first, len(data) // PAGE, data)[0] == 0

    def cached(self) -> dict[int, bytes]:
        """The pages the current pool holds, by block."""
        return self.tmem.pages_of(self.keeper.pool_id) if self.keeper.pool_id >= 0 else {}


def page(tag: int) -> bytes:
    return (f"block {tag:010d} ".encode() * 300)[:PAGE]


def key_of(block: int) -> tuple[wire.Oid, int]:
    return block_key(block)
