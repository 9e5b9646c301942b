"""The agent's trace recorder, fed the requests and replies a link would give it (no link,
no daemon): records per page, outcomes from replies, buffers, bounds, failures, and the file
read back by the reader."""

from __future__ import annotations

import argparse
import os
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tmem_agent.channel import wire
from tmem_agent.ioworker import IoWorker
from tmem_agent.trace import fileformat as ff
from tmem_agent.trace import options
from tmem_agent.trace.reader import (
    ConnectEvent,
    GapEvent,
    PageEvent,
    PoolEvent,
    ReplyEvent,
    read_all,
)
from tmem_agent.trace.recorder import FAILED, FULL, TraceRecorder

PAGE = 4096


class LaterWorker:
    """Runs jobs at once, their completions only at :meth:`drain` (like the agent's loop)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.waiting: list[tuple[Callable[[OSError | None], None], OSError | None]] = []
        self.jobs = 0

    def submit(self, job: Callable[[], None], done: Callable[[OSError | None], None]) -> None:
        self.jobs += 1
        error = None
        try:
            if self.fail:
                raise OSError(28, "No space left on device")
            job()
        except OSError as exc:
            error = exc
        self.waiting.append((done, error))

    def drain(self) -> None:
        while self.waiting:
            done, error = self.waiting.pop(0)
            done(error)


def hello(resumed: bool = False, pools: list[wire.PoolInfo] | None = None) -> wire.HelloReply:
    status = wire.HelloStatus.RESUMED if resumed else wire.HelloStatus.FRESH
    return wire.HelloReply(status, 7, bytes(16), "test", pools=pools or [])


def page(seed: int) -> bytes:
    return (f"page {seed} ".encode() * 1000)[:PAGE]


def recorder(tmp_path: Path, worker: LaterWorker | IoWorker, **kwargs: object) -> TraceRecorder:
    return TraceRecorder(str(tmp_path / "t.tmtrace"), worker, {"vm": "v1"},
                         **kwargs)  # type: ignore[arg-type]


def test_a_batch_is_recorded_page_by_page_with_its_outcomes(tmp_path: Path) -> None:
    worker = LaterWorker()
    rec = recorder(tmp_path, worker, estimate_every=1)
    rec.connected(hello(), [(0, 1), (1, 0)])
    keys = [((1, 0, 0), i) for i in range(3)]
    pages = [page(0), bytes(PAGE), os.urandom(PAGE)]
    rec.requested(10, wire.Op.PUT_BATCH, memoryview(wire.batch_request(0, keys, pages)))
    rec.completed(10, ff.OK, wire.flags_reply([True, True, False]))
    rec.requested(11, wire.Op.GET_BATCH, wire.batch_request(0, keys))
    rec.completed(11, ff.OK, wire.get_batch_reply([pages[0], None, None]))
    rec.requested(12, wire.Op.FLUSH_BATCH, wire.batch_request(1, keys[:1]))
    rec.completed(12, ff.DISCONNECTED)
    rec.requested(13, wire.Op.STATS, b"")  # not a page op: not recorded
    rec.completed(13, ff.OK, b"{}")
    rec.close()
    meta, events, warnings = read_all(str(tmp_path / "t.tmtrace"))
    assert warnings == [] and meta["vm"] == "v1" and meta["pages"] is False
    assert isinstance(events[0], ConnectEvent) and events[0].client_id == 7
    pools = [e for e in events if isinstance(e, PoolEvent)]
    assert [(p.pool, p.pool_flags) for p in pools] == [(0, 1), (1, 0)]
    puts = [e for e in events if isinstance(e, PageEvent) and e.kind == ff.PUT]
    assert [p.index for p in puts] == [0, 1, 2] and all(p.persistent for p in puts)
    assert puts[0].zsize == len(zlib.compress(pages[0], 1)) and puts[0].page is None
    assert puts[1].flags & ff.F_SAME_FILLED and not puts[0].flags & ff.F_SAME_FILLED
    assert puts[0].hash != puts[2].hash and puts[2].zsize > PAGE
    assert [p.hash for p in puts] == [ff.content_hash(p) for p in pages]
    assert all(p.estimated for p in puts) and meta["estimate_every"] == 1
    replies = [e for e in events if isinstance(e, ReplyEvent)]
    assert [r.outcomes() for r in replies[:2]] == [[True, True, False], [True, False, False]]
    assert replies[2].status == ff.DISCONNECTED and replies[2].op == wire.Op.FLUSH_BATCH
    flush = [e for e in events if isinstance(e, PageEvent) and e.kind == ff.FLUSH_PAGE]
    assert len(flush) == 1 and not flush[0].persistent
    assert rec.status()["records"] == len(events) and rec.status()["dropped"] == 0


def test_the_estimate_is_sampled_by_content_and_same_filled_pages_need_none(
        tmp_path: Path) -> None:
    rec = recorder(tmp_path, LaterWorker(), estimate_every=8)
    rec.connected(hello(), [(0, 1)])
    pages = [page(i) for i in range(200)]
    filled = [bytes((b,)) * PAGE for b in (0, 0xAB)]
    half = [bytes(PAGE // 2) + page(i)[: PAGE // 2] for i in range(40)]  # one half shared
    batch = [*pages, *filled, *half, *pages[:20]]  # the last 20: contents seen before
    keys = [((1, 0, 0), i) for i in range(len(batch))]
    for start in range(0, len(batch), 256):
        rec.requested(start + 1, wire.Op.PUT_BATCH,
                      wire.batch_request(0, keys[start : start + 256], batch[start : start + 256]))
    rec.requested(999, wire.Op.PUT, wire.key_request(0, (2, 0, 0), 0, pages[3]))
    rec.close()
    meta, events, _ = read_all(rec.path)
    assert meta["estimate_every"] == 8 and meta["hash"] == ff.HASH and meta["version"] == 2
    puts = [e for e in events if isinstance(e, PageEvent)]
    assert len(puts) == len(batch) + 1
    for event, data in zip(puts, [*batch, pages[3]], strict=True):
        assert event.hash == ff.content_hash(data) and event.fill == data[0]
        if data in filled:
            assert event.flags & ff.F_SAME_FILLED and event.estimated
            assert event.zsize == len(zlib.compress(data, 1))
        elif ff.sampled(event.hash, 8):
            assert event.estimated and event.zsize == len(zlib.compress(data, 1))
        else:
            assert not event.estimated and event.flags & ff.F_NO_ESTIMATE and event.zsize == 0
    estimated = [e.estimated for e in puts[:200]]
    assert 200 / 8 / 3 < sum(estimated) < 200 / 8 * 3  # about one in 8
    assert 0 < sum(e.estimated for e in puts[202:242]) < 40  # a shared half decides nothing
    assert [e.estimated for e in puts[242:262]] == estimated[:20]  # same content, same choice
    assert puts[-1].estimated == puts[3].estimated


def test_status_bits_match_a_loop() -> None:
    for statuses in (b"", b"\x01", b"\x00\x01\x02\x01", bytes([1, 0] * 128), bytes([1] * 256)):
        assert ff.status_bits(statuses) == sum(1 << i for i, b in enumerate(statuses) if b == 1)


def test_page_contents_are_recorded_when_asked(tmp_path: Path) -> None:
    rec = recorder(tmp_path, LaterWorker(), pages=True)
    rec.connected(hello(), [(0, 1)])
    data = page(3)
    rec.requested(1, wire.Op.PUT, wire.key_request(0, (2, 0, 0), 5, data))
    rec.completed(1, ff.OK, b"\x01")
    rec.requested(2, wire.Op.GET, wire.key_request(0, (2, 0, 0), 5))
    rec.completed(2, ff.OK, data)
    rec.close()
    _, events, _ = read_all(rec.path)
    put = next(e for e in events if isinstance(e, PageEvent) and e.kind == ff.PUT)
    assert put.page == data and put.oid == (2, 0, 0) and put.index == 5
    replies = [e for e in events if isinstance(e, ReplyEvent)]
    assert [r.outcomes() for r in replies] == [[True], [True]]


def test_pools_made_and_destroyed_on_the_stream_are_recorded(tmp_path: Path) -> None:
    rec = recorder(tmp_path, LaterWorker())
    rec.connected(hello(resumed=True, pools=[wire.PoolInfo(0, 1)]), [(0, 1)])
    rec.requested(5, wire.Op.NEW_POOL, wire.new_pool_request(8))
    rec.completed(5, ff.OK, wire.u32(3))
    rec.requested(6, wire.Op.DESTROY_POOL, wire.u32(3))
    rec.close()
    _, events, _ = read_all(rec.path)
    assert events[0] == ConnectEvent(events[0].t_ns, True, 1, 7)
    pools = [(e.kind, e.pool, e.pool_flags, e.flags) for e in events if isinstance(e, PoolEvent)]
    assert pools == [(ff.NEW_POOL, 0, 1, ff.F_EXISTING), (ff.NEW_POOL, 3, 8, 0),
                     (ff.DESTROY_POOL, 3, 8, 0)]


def test_records_are_written_in_the_background_and_dropped_when_both_buffers_are_busy(
        tmp_path: Path) -> None:
    worker = LaterWorker()
    rec = recorder(tmp_path, worker, buffer_size=4 * PAGE)  # 256 records a buffer
    rec.connected(hello(), [(0, 1)])
    keys = [((0, 0, 0), i) for i in range(200)]
    for rid in range(1, 5):  # 800 records: the first buffer is written, the second fills
        rec.requested(rid, wire.Op.GET_BATCH, wire.batch_request(0, keys))
    assert worker.jobs >= 1 and rec.dropped > 0
    dropped = rec.dropped
    worker.drain()  # the write completes: room again, and a GAP record says what was lost
    rec.requested(9, wire.Op.GET_BATCH, wire.batch_request(0, keys[:1]))
    rec.close()
    _, events, warnings = read_all(rec.path)
    assert warnings == []
    gaps = [e for e in events if isinstance(e, GapEvent)]
    assert sum(g.dropped for g in gaps) == dropped
    assert sum(isinstance(e, PageEvent) for e in events) == 801 - dropped


def test_recording_stops_at_its_size_limit(tmp_path: Path) -> None:
    rec = recorder(tmp_path, LaterWorker(), max_bytes=8 * PAGE)
    rec.connected(hello(), [(0, 1)])
    keys = [((0, 0, 0), i) for i in range(256)]
    for rid in range(1, 4):
        rec.requested(rid, wire.Op.FLUSH_BATCH, wire.batch_request(0, keys))
    assert rec.state is FULL and rec.dropped > 0
    rec.close()
    assert os.path.getsize(rec.path) <= 8 * PAGE
    _, events, warnings = read_all(rec.path)
    assert warnings == [] and len(events) == rec.records


def test_a_failed_write_stops_the_recording_and_never_raises(tmp_path: Path) -> None:
    worker = LaterWorker(fail=True)
    rec = recorder(tmp_path, worker, buffer_size=PAGE)
    rec.connected(hello(), [(0, 1)])
    keys = [((0, 0, 0), i) for i in range(64)]
    for rid in range(1, 5):
        rec.requested(rid, wire.Op.GET_BATCH, wire.batch_request(0, keys))
        worker.drain()
    assert rec.state is FAILED and rec.write_errors == 1 and rec.dropped > 0
    rec.close()  # nothing raised


def test_a_malformed_request_stops_the_recording_not_the_caller(tmp_path: Path) -> None:
    rec = recorder(tmp_path, LaterWorker())
    rec.requested(1, wire.Op.PUT_BATCH, b"\x01")
    assert rec.state is FAILED
    rec.close()


def test_a_partial_block_is_written_after_a_second_and_again_when_complete(
        tmp_path: Path) -> None:
    worker = IoWorker("trace-test", 1)
    worker.start()
    try:
        rec = recorder(tmp_path, worker)
        rec.connected(hello(), [(0, 1)])
        rec.requested(1, wire.Op.GET, wire.key_request(0, (0, 0, 0), 1))
        assert rec.next_deadline() is not None
        rec.tick(rec.next_deadline() or 0.0)
        worker.drain()
        _, events, _ = read_all(rec.path)
        assert len(events) == 3  # connect, pool, get: on disk before the end
        rec.completed(1, ff.OK, b"")
        rec.close()
        _, events, _ = read_all(rec.path)
        assert isinstance(events[-1], ReplyEvent) and events[-1].outcomes() == [False]
        assert os.path.getsize(rec.path) == rec.status()["bytes"]
    finally:
        worker.close()


def test_an_earlier_trace_is_kept_beside_the_new_one(tmp_path: Path) -> None:
    path = tmp_path / "t.tmtrace"
    path.write_bytes(b"old")
    rec = recorder(tmp_path, LaterWorker())
    rec.close()
    assert (tmp_path / "t.tmtrace.prev").read_bytes() == b"old"


@pytest.mark.parametrize("pages", [False, True])
def test_trace_size_per_page(tmp_path: Path, pages: bool) -> None:
    rec = recorder(tmp_path, LaterWorker(), pages=pages)
    keys = [((0, 0, 0), i) for i in range(100)]
    rec.requested(1, wire.Op.PUT_BATCH, wire.batch_request(0, keys, [page(i) for i in range(100)]))
    rec.completed(1, ff.OK, bytes([1] * 100))
    rec.close()
    data = os.path.getsize(rec.path) - ff.round_up(len(ff.encode_header({"vm": "v1"})))
    assert data >= 100 * (ff.RECORD_SIZE + (PAGE if pages else 0))
    assert data <= 101 * (ff.RECORD_SIZE + (PAGE if pages else 0)) + PAGE


def test_the_options_default_to_the_kernel_command_line(tmp_path: Path) -> None:
    words = {options.CMDLINE_TRACE: str(tmp_path / "k.tmtrace"), options.CMDLINE_PAGES: "1"}
    parser = argparse.ArgumentParser()
    options.add_arguments(parser, words.get)
    args = parser.parse_args([])
    assert (args.trace, args.trace_pages, args.trace_max) == (words["tmem.trace"], True, 1 << 30)
    plain = argparse.ArgumentParser()
    options.add_arguments(plain, lambda key: None)
    args = plain.parse_args(["--trace-max", "64M"])
    assert (args.trace, args.trace_pages, args.trace_max) == (None, False, 64 << 20)
    assert options.make_recorder(args, LaterWorker(), "vm", bytes(16)) is None
    args.trace = str(tmp_path / "sub" / "t.tmtrace")
    rec = options.make_recorder(args, LaterWorker(), "vm", bytes(16))
    assert rec is not None and rec.max_bytes == 64 << 20
    rec.close()
    meta, _, _ = read_all(args.trace)
    assert meta["vm"] == "vm" and meta["boot_id"] == "00" * 16 and meta["agent_version"]
    assert meta["estimate_every"] == ff.ESTIMATE_EVERY


def test_the_estimate_option_and_its_kernel_word(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    options.add_arguments(parser, {options.CMDLINE_ESTIMATE: "1"}.get)
    assert parser.parse_args([]).trace_estimate_every == 1
    assert parser.parse_args(["--trace-estimate-every", "16"]).trace_estimate_every == 16
    with pytest.raises(SystemExit):
        parser.parse_args(["--trace-estimate-every", "0"])
    bad = argparse.ArgumentParser()
    options.add_arguments(bad, {options.CMDLINE_ESTIMATE: "often"}.get)  # logged, not fatal
    assert bad.parse_args([]).trace_estimate_every == ff.ESTIMATE_EVERY
