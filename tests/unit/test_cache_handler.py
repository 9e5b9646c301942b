"""The disk cache's handler on fakes: hits without the disk, the stale-read race, flush
failures, tmemd away and back, large discards; plus its keys and guard."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cache_fakes import PAGE, FakeLink, FakeTmem, Rig, page

from tmem_agent.cache.guard import StaleGuard
from tmem_agent.cache.keys import GROUP_BLOCKS, block_key, run_keys, split_range
from tmem_agent.cache.pool import EphemeralPool
from tmem_agent.cache.stats import CacheStats
from tmem_agent.channel import wire
from tmem_agent.swap.nbdproto import Cmd


def test_keys_are_cleancache_shaped_and_ranges_split_into_whole_objects() -> None:
    assert block_key(0) == ((0, 0, 0), 0)
    assert block_key(GROUP_BLOCKS + 5) == ((1, 0, 0), 5)
    assert split_range(10, 5) == ([], [10, 11, 12, 13, 14])
    groups, blocks = split_range(250, 2 * GROUP_BLOCKS + 10)
    assert groups == [1, 2] and blocks == [*range(250, 256), *range(768, 772)]
    assert split_range(256, 512) == ([1, 2], [])


@pytest.mark.parametrize(("first", "count"), [(0, 1), (0, 256), (5, 256), (250, 300),
                                              (GROUP_BLOCKS * 9 + 255, 2), (1 << 30, 17)])
def test_run_keys_are_the_keys_of_each_block_packed(first: int, count: int) -> None:
    expected = b"".join(wire.KEY.pack(*oid, index)
                        for oid, index in map(block_key, range(first, first + count)))
    assert run_keys(first, count) == expected


def test_the_guard_lets_only_untouched_data_through() -> None:
    guard = StaleGuard(16)
    seen = guard.look(3, 2)
    assert guard.may_put(3, seen[0]) and guard.may_put(4, seen[1])
    guard.begin_write(4, 1)
    assert guard.may_put(3, seen[0]) and not guard.may_put(4, seen[1])
    mine = guard.look(4, 1)[0]
    guard.end_write(4, 1)
    assert not guard.may_put(4, seen[1]) and guard.may_put(4, mine + 1)
    assert not guard.may_put(20, seen[0])  # 20 shares 4's stripe: conservative
    guard.begin_write(14, 4)  # wraps around the stripes: 14, 15, 0, 1
    assert [guard.may_put(b, 0) for b in (14, 15, 0, 1, 2)] == [False] * 4 + [True]


@pytest.mark.parametrize("keep_on_get", [False, True])
def test_a_reread_is_served_from_tmem_without_the_disk(keep_on_get: bool) -> None:
    rig = Rig(keep_on_get=keep_on_get)
    rig.link.connect()
    assert rig.keeper.keeps_on_get == keep_on_get
    data = b"".join(page(i) for i in range(16))
    rig.disk.data[:len(data)] = data
    assert rig.read(0, 16) == data
    assert rig.disk.reads == 16 and rig.stats.counts["misses"] == 16
    assert rig.cached() == {i: page(i) for i in range(16)}
    puts_before = rig.stats.counts["puts"]
    for _ in range(3):  # exclusive gets: each hit is put back, so it stays cached
        assert rig.read(0, 16) == data
    assert rig.disk.reads == 16 and rig.stats.counts["hits"] == 48
    # a pool that keeps pages on get needs no put-back: the re-reads send no page to tmemd
    assert rig.stats.counts["puts"] - puts_before == (0 if keep_on_get else 48)
    assert rig.stats.counts["hit_puts"] == (0 if keep_on_get else 48)
    assert rig.stats.counts["disk_bytes_saved"] == 48 * PAGE
    assert rig.stats.counts["get_batches"] == 4 * 2  # batch_max 8
    rig.tmem.evict(1.0)  # ephemeral: all gone, and nothing breaks
    assert rig.read(0, 16) == data and rig.disk.reads == 32


def test_a_read_that_raced_a_write_puts_nothing_stale() -> None:
    rig = Rig()
    rig.link.connect()
    rig.disk.data[:PAGE] = page(1)
    read = rig.issue(Cmd.READ, 0, 1)
    rig.link.serve()  # its get misses
    rig.worker.run()  # the disk read returns the old block ...
    write = rig.issue(Cmd.WRITE, 0, 1, page(2))  # ... a write overtakes it
    rig.settle()
    assert rig.conn.replies[read] == (0, page(1))  # concurrent: the old data is fine
    assert rig.conn.replies[write][0] == 0
    assert rig.stats.counts["stale_read_guards"] >= 1
    assert rig.cached().get(0) in (None, page(2))
    assert rig.read(0, 1) == page(2)


def test_a_hit_put_back_while_a_write_runs_is_dropped() -> None:
    rig = Rig(write_allocate=False)
    rig.link.connect()
    rig.disk.data[:PAGE] = page(1)
    rig.read(0, 1)
    read = rig.issue(Cmd.READ, 0, 1)  # a hit, answered when tmemd answers
    rig.issue(Cmd.WRITE, 0, 1, page(3))
    rig.settle()
    assert rig.conn.replies[read] == (0, page(1))
    assert 0 not in rig.cached()
    assert rig.read(0, 1) == page(3)


def test_writes_go_through_and_are_put_when_they_are_on_the_disk() -> None:
    rig = Rig()
    rig.link.connect()
    rig.write(5, page(7) + page(8))
    assert rig.disk.block(5) == page(7) and rig.cached() == {5: page(7), 6: page(8)}
    rig.write(5, page(9))
    assert rig.cached()[5] == page(9) and rig.read(5, 2) == page(9) + page(8)
    assert rig.disk.reads == 0
    assert rig.call(Cmd.FLUSH, 0, 0)[0] == 0 and rig.disk.syncs == 1


def test_trim_and_write_zeroes_drop_the_cached_copies() -> None:
    rig = Rig(slots=300)
    rig.link.connect()
    rig.write(250, b"".join(page(i) for i in range(270)))  # across objects 0, 1, 2
    assert rig.stats.counts["flush_objects"] == 1  # the whole group 1, for the write
    rig.call(Cmd.TRIM, 250, 270)
    assert rig.cached() == {} and rig.read(250, 8) == bytes(8 * PAGE)
    assert rig.stats.counts["flush_objects"] == 2
    rig.write(0, page(1))
    rig.call(Cmd.WRITE_ZEROES, 0, 1)
    assert 0 not in rig.cached() and rig.read(0, 1) == bytes(PAGE)


def test_a_discard_of_many_objects_resets_the_pool() -> None:
    rig = Rig(blocks=1200, reset_groups=2)
    rig.link.connect()
    old = rig.keeper.pool_id
    rig.write(3, page(3))
    rig.call(Cmd.TRIM, 0, 1200)
    assert rig.keeper.pool_id not in (old, -1) and old not in rig.tmem.pools
    assert rig.stats.counts["pool_resets"] == 1 and rig.read(3, 1) == bytes(PAGE)


def test_a_failed_flush_resets_the_pool_before_the_write_is_answered() -> None:
    rig = Rig(write_allocate=False)
    rig.link.connect()
    rig.disk.data[:PAGE] = page(1)
    rig.read(0, 1)
    old = rig.keeper.pool_id
    rig.tmem.fail_flushes = 1.0  # tmemd answers the flush with an error, flushing nothing
    cookie = rig.issue(Cmd.WRITE, 0, 1, page(2))
    rig.worker.finish_all()
    assert cookie not in rig.conn.replies  # the flush is not answered yet
    rig.link.serve()
    assert rig.conn.replies[cookie][0] == 0 and rig.keeper.pool_id == -1
    rig.tmem.fail_flushes = 0.0
    assert rig.read(0, 1) == page(2)  # the stale copy is never asked for
    rig.settle()
    assert rig.keeper.pool_id not in (old, -1) and old not in rig.tmem.pools
    assert rig.stats.counts["tmem_errors"] == 1 and rig.read(0, 1) == page(2)


def test_without_tmemd_everything_goes_to_the_disk_and_reconnect_starts_empty() -> None:
    rig = Rig()
    rig.link.connect()
    rig.write(0, page(1))
    old = rig.keeper.pool_id
    cookie = rig.issue(Cmd.READ, 0, 1)
    rig.link.disconnect()  # the get in flight fails: a miss, read from the disk
    rig.settle()
    assert rig.conn.replies[cookie] == (0, page(1))
    rig.write(0, page(2))  # not flushed in tmem: the old pool has a stale copy now
    assert rig.read(0, 1) == page(2) and rig.stats.counts["writes_without_tmem"] == 1
    assert rig.tmem.pages_of(old) == {0: page(1)}
    rig.link.connect()  # resumed: the old pool is destroyed, a new one made
    assert old not in rig.tmem.pools and rig.keeper.pool_id not in (old, -1)
    assert rig.read(0, 1) == page(2) and rig.stats.counts["io_errors"] == 0


def test_disk_errors_fail_the_request_and_cache_nothing() -> None:
    rig = Rig()
    rig.link.connect()
    rig.worker.fail_next = True
    assert rig.call(Cmd.WRITE, 0, 1, page(1))[0] == 5
    assert rig.cached() == {}
    rig.worker.fail_next = True
    assert rig.call(Cmd.READ, 0, 1)[0] == 5 and rig.stats.counts["io_errors"] == 2


def test_the_pool_of_an_earlier_agent_is_destroyed_at_connect(tmp_path: Path) -> None:
    tmem = FakeTmem()
    state = str(tmp_path / "pools")
    first = FakeLink(tmem)
    keeper = EphemeralPool(first, CacheStats(), "c", state)  # type: ignore[arg-type]
    first.add_keeper(keeper)
    first.connect()
    old = keeper.pool_id
    assert json.loads(Path(state).read_text())["pools"] == [old]
    second = FakeLink(tmem)  # a restarted agent, same boot
    again = EphemeralPool(second, CacheStats(), "c", state)  # type: ignore[arg-type]
    second.add_keeper(again)
    second.connect(resumed=True)
    assert old not in tmem.pools and again.pool_id in tmem.pools
    other_boot = FakeLink(tmem, boot_id=b"x" * 16)
    fresh = EphemeralPool(other_boot, CacheStats(), "c", state)  # type: ignore[arg-type]
    assert fresh._known == []  # a state file of another boot names nothing
    os.unlink(state)


def test_a_reply_for_a_pool_made_too_late_is_given_back() -> None:
    rig = Rig()
    rig.link.connect()
    rig.keeper.reset("test")  # destroy + new pool in flight
    rig.keeper.reset("again")  # the first new pool will arrive for an old incarnation
    rig.link.serve_all()
    assert rig.tmem.pools == {rig.keeper.pool_id}
    assert rig.link.queue == [] and rig.stats.counts["pool_resets"] == 2


def test_new_pool_reply_is_parsed() -> None:
    assert wire.parse_u32(wire.u32(7)) == 7
