"""A randomized coherency model of the disk cache: reads, writes, trims, write-zeroes and
flushes interleaved with tmemd serving, evicting, failing flushes, refusing puts, going away
and coming back, and with disk jobs running and completing in any order. Never stale data:

- a read returns, per block, what the disk held when it was issued or what a change issued
  on that block since (or still in flight then) wrote;
- whenever tmemd is connected, every page of the cache's pool whose block has no change in
  flight equals the disk;
- at the end every block reads back as the disk holds it, and no request ever failed.
"""

from __future__ import annotations

import random

import pytest
from cache_fakes import PAGE, Rig, page

from tmem_agent.swap.nbdproto import Cmd

BLOCKS = 600
ZERO = bytes(PAGE)


class Model:
    def __init__(self, seed: int, faults: bool = True, read_weight: int = 20,
                 stripes: int | None = None) -> None:
        self.faults, self.read_weight = faults, read_weight
        self.rng = rng = random.Random(seed)
        stripes = stripes or rng.choice((16, 1024, 1 << 16))  # 16: mostly collisions
        self.rig = Rig(blocks=BLOCKS, slots=64, batch_max=rng.choice((4, 8, 256)),
                       stripes=stripes, reset_groups=1,
                       write_allocate=rng.random() < 0.7,
                       keep_on_get=seed % 2 == 1)  # odd seeds: hits stay in the pool
        self.rig.tmem.rng = random.Random(seed + 1)
        self.reads: dict[int, tuple[int, list[set[bytes]]]] = {}  # cookie -> first, allowed
        self.changes: dict[int, tuple[int, int, bytes | None]] = {}  # cookie -> first, n, data
        self.tag = seed * 1_000_000
        self.checked_reads = 0

    # ----- issuing ------------------------------------------------------------------------
    def in_flight_values(self, block: int) -> set[bytes]:
        out = set()
        for first, count, data in self.changes.values():
            if first <= block < first + count:
                out.add(data[(block - first) * PAGE : (block - first + 1) * PAGE]
                        if data is not None else ZERO)
        return out

    def issue_read(self) -> None:
        count = self.rng.randint(1, 12)
        first = self.rng.randrange(BLOCKS - count + 1)
        allowed = [{self.rig.disk.block(b)} | self.in_flight_values(b)
                   for b in range(first, first + count)]
        cookie = self.rig.issue(Cmd.READ, first, count)
        if cookie is not None:
            self.reads[cookie] = (first, allowed)

    def issue_change(self, cmd: int) -> None:
        rng = self.rng
        if cmd == Cmd.TRIM and rng.random() < 0.1:
            count = rng.randint(256, BLOCKS)  # whole objects, sometimes a pool reset
        else:
            count = rng.randint(1, 12 if cmd == Cmd.WRITE else 40)
        first = rng.randrange(BLOCKS - count + 1)
        data = None
        if cmd == Cmd.WRITE:
            pages = []
            for _ in range(count):
                self.tag += 1
                pages.append(page(self.tag))
            data = b"".join(pages)
        for read_first, allowed in self.reads.values():  # reads in flight may see it
            for i, values in enumerate(allowed):
                b = read_first + i
                if first <= b < first + count:
                    values.add(data[(b - first) * PAGE : (b - first + 1) * PAGE]
                               if data is not None else ZERO)
        cookie = self.rig.issue(cmd, first, count, data or b"")
        if cookie is not None:
            self.changes[cookie] = (first, count, data)

    # ----- checking -----------------------------------------------------------------------
    def take_replies(self) -> None:
        replies = self.rig.conn.replies
        for cookie in list(replies):
            error, data = replies.pop(cookie)
            assert error == 0, f"request {cookie} failed with {error}"
            if cookie in self.reads:
                first, allowed = self.reads.pop(cookie)
                for i, values in enumerate(allowed):
                    got = data[i * PAGE : (i + 1) * PAGE]
                    assert got in values, f"block {first + i}: stale or foreign data"
                self.checked_reads += 1
            else:
                self.changes.pop(cookie, None)

    def check_pool(self) -> None:
        rig = self.rig
        if not rig.link.connected or rig.keeper.pool_id < 0:
            return
        busy = {b for first, count, _ in self.changes.values()
                for b in range(first, first + count)}
        for block, data in rig.cached().items():
            if block not in busy:
                assert data == rig.disk.block(block), f"pool holds a stale block {block}"

    # ----- one step -----------------------------------------------------------------------
    def step(self) -> None:
        rng, rig = self.rng, self.rig
        action = rng.choices(
            ["read", "write", "trim", "zeroes", "flush", "serve", "run", "complete", "evict",
             "net", "faults"],
            weights=[self.read_weight, 14, 3, 2, 1, 30, 15, 15,
                     *((2, 1, 1) if self.faults else (0, 0, 0))])[0]
        if action == "read":
            self.issue_read()
        elif action == "write":
            self.issue_change(Cmd.WRITE)
        elif action == "trim":
            self.issue_change(Cmd.TRIM)
        elif action == "zeroes":
            self.issue_change(Cmd.WRITE_ZEROES)
        elif action == "flush":
            rig.issue(Cmd.FLUSH, 0, 0)
        elif action == "serve":
            rig.link.serve(rng.randint(1, 3))
        elif action == "run" and rig.worker.jobs:
            rig.worker.run(rng.randrange(len(rig.worker.jobs)))
        elif action == "complete" and rig.worker.ran:
            rig.worker.complete(rng.randrange(len(rig.worker.ran)))
        elif action == "evict":
            rig.tmem.evict(rng.random() * 0.5)
        elif action == "net":
            if rig.link.connected:
                rig.link.serve(rng.randint(0, 3))
                rig.link.disconnect()
            else:
                rig.link.connect(resumed=rng.random() < 0.7)
        elif action == "faults":
            rig.tmem.fail_flushes = rng.choice((0.0, 0.0, 0.3, 1.0))
            rig.tmem.refuse_puts = rng.choice((0.0, 0.2))
        rig.handler.puts.send()  # the loop turn ends
        self.take_replies()
        self.check_pool()

    def finish(self) -> None:
        rig = self.rig
        rig.tmem.fail_flushes = 0.0
        if not rig.link.connected:
            rig.link.connect()
        rig.settle()
        self.take_replies()
        assert not self.reads and not self.changes
        self.check_pool()
        for first in range(0, BLOCKS, 50):
            assert rig.read(first, 50) == bytes(rig.disk.data[first * PAGE : (first + 50) * PAGE])
            rig.settle()
        self.check_pool()


@pytest.mark.parametrize("seed", range(24))
def test_random_interleavings_never_return_stale_data(seed: int) -> None:
    model = Model(seed)
    model.rig.link.connect(resumed=False)
    for _ in range(2500):
        model.step()
    model.finish()
    counts = model.rig.stats.counts
    assert model.checked_reads > 100 and counts["nbd_errors"] == 0 and counts["io_errors"] == 0


@pytest.mark.parametrize("seed", range(4))
def test_without_faults_or_evictions_the_model_hits_and_its_races_trip_the_guard(seed: int) -> None:
    model = Model(seed, faults=False, read_weight=80, stripes=1 << 16)
    model.rig.link.connect(resumed=False)
    for _ in range(2500):
        model.step()
    model.finish()
    counts = model.rig.stats.counts
    assert counts["hits"] > 20 and counts["misses"] > 50 and counts["stale_read_guards"] > 0


def test_the_model_catches_a_cache_without_its_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model has teeth: with the guard always saying yes, stale data shows up."""
    from tmem_agent.cache.guard import StaleGuard

    monkeypatch.setattr(StaleGuard, "may_put", lambda self, block, seen: True)
    failures = 0
    for seed in range(24):
        model = Model(seed)
        model.rig.link.connect(resumed=False)
        try:
            for _ in range(2500):
                model.step()
            model.finish()
        except AssertionError:
            failures += 1
    assert failures > 0
