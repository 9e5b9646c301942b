"""``tmemd replay``: a small trace recorded by the agent's recorder (no VM, no daemon), replayed
in process: counts and outcomes, recorded and synthetic contents, dedup, a forced store, and
files that are cut short or not traces."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tmem_agent.channel import wire
from tmem_agent.ioworker import IoWorker
from tmem_agent.trace import fileformat as ff
from tmem_agent.trace.recorder import TraceRecorder
from tmemd.cli import main
from tmemd.tools.replay import replay

PAGE = 4096
SWAP, CACHE = 0, 1


def text_page(i: int) -> bytes:
    return (f"line {i} of a page that compresses rather well; ".encode() * 100)[:PAGE]


def record(path: Path, pages: bool) -> None:
    """A swap pool (persistent) and a cache pool (ephemeral, half its pages one content)."""
    worker = IoWorker("replay-test", 1)
    worker.start()
    try:
        rec = TraceRecorder(str(path), worker, {"vm": "t"}, pages=pages)
        hello = wire.HelloReply(wire.HelloStatus.FRESH, 3, bytes(16), "test")
        rec.connected(hello, [(SWAP, 1), (CACHE, 0)])
        swap_keys = [((i & 15, 0, 0), i >> 4) for i in range(64)]
        swap_pages = [text_page(i) for i in range(64)]
        rec.requested(1, wire.Op.PUT_BATCH, wire.batch_request(SWAP, swap_keys, swap_pages))
        rec.completed(1, ff.OK, wire.flags_reply([True] * 64))
        missing = ((9, 9, 9), 0)
        rec.requested(2, wire.Op.GET_BATCH, wire.batch_request(SWAP, [*swap_keys, missing]))
        rec.completed(2, ff.OK, wire.get_batch_reply([*swap_pages, None]))
        rec.requested(3, wire.Op.FLUSH_BATCH, wire.batch_request(SWAP, swap_keys[:10]))
        rec.completed(3, ff.OK, wire.flags_reply([True] * 10))
        cache_keys = [((100, 0, 0), i) for i in range(64)]
        cache_pages = [text_page(1000) if i % 2 else text_page(2000 + i) for i in range(64)]
        rec.requested(4, wire.Op.PUT_BATCH, wire.batch_request(CACHE, cache_keys, cache_pages))
        rec.completed(4, ff.OK, wire.flags_reply([True] * 64))
        rec.requested(5, wire.Op.GET, wire.key_request(CACHE, (100, 0, 0), 1))
        rec.completed(5, ff.OK, cache_pages[1])
        rec.close()
    finally:
        worker.close()


@pytest.fixture(params=[True, False], ids=["pages", "ops"])
def trace(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / "t.tmtrace"
    record(path, request.param)
    return path


def test_the_replay_counts_what_the_trace_recorded(trace: Path) -> None:
    report = replay(str(trace))
    assert report["ops"] == {"put": 128, "get": 66, "flush": 10}
    puts, gets = report["outcomes"]["put"], report["outcomes"]["get"]
    assert puts == {"what": "stored", "replay": 128, "compared": 128, "recorded": 128,
                    "differ": 0}
    assert gets == {"what": "hits", "replay": 65, "compared": 66, "recorded": 65, "differ": 0}
    assert report["outcomes"]["flush"]["differ"] == 0
    assert report["pages_peak"] == 128 - 10 and report["pages_end"] == 128 - 10 - 1
    assert report["frames_end"] > 0 and report["compression_ratio_end"] > 1
    assert report["puts_refused"] == 0 and report["evicted_pages"] == 0
    synthetic = report["contents"] == "synthetic"
    assert synthetic == (report["synthetic_pages"] == 128)
    assert report["warnings"] == [] and report["mean_op_ns"]["put"] > 0


def test_dedup_stores_the_cache_pools_duplicates_once(trace: Path) -> None:
    plain = replay(str(trace))
    dedup = replay(str(trace), dedup=True)
    assert dedup["zbud_frames_end"] < plain["zbud_frames_end"] - 10
    assert dedup["pages_end"] == plain["pages_end"]


def test_a_forced_store_takes_every_pool(trace: Path) -> None:
    zbud = replay(str(trace), store_kind="zbud")
    xv = replay(str(trace), store_kind="xvmalloc")
    assert zbud["store"] == "zbud" and xv["store"] == "xvmalloc"
    assert (zbud["xvmalloc_frames_end"], xv["zbud_frames_end"]) == (0, 0)
    assert xv["xvmalloc_frames_end"] < zbud["zbud_frames_end"]  # small blocks pack densely
    assert zbud["pages_end"] == xv["pages_end"]


def test_a_small_memory_limit_evicts_ephemeral_pages(trace: Path) -> None:
    report = replay(str(trace), memory_limit=64 << 10)
    assert report["evicted_pages"] > 0 and report["pages_end"] < 128 - 11
    assert report["frames_peak"] <= 16


def test_the_command_prints_json_and_a_table(trace: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(trace), "--json", "--store", "xvmalloc", "--codec", "lz4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["codec"] == "lz4" and report["ops"]["put"] == 128
    assert main(["replay", str(trace)]) == 0
    out = capsys.readouterr().out
    assert "put" in out and "frames: peak" in out


def test_a_trace_cut_short_is_replayed_up_to_its_last_good_record(
        trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    size = os.path.getsize(trace)
    with open(trace, "r+b") as f:
        f.truncate(size - 100)
    assert main(["replay", str(trace), "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["warnings"] and "cut short" in report["warnings"][0]
    assert "cut short" in captured.err


def test_a_file_that_is_not_a_trace_is_one_line(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"hello" * 1000)
    assert main(["replay", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"tmemd: error: {bad}: not a tmem trace (bad magic)"]
    assert main(["replay", str(tmp_path / "missing")]) == 1
    assert main(["replay", str(bad), "--store", "zsmalloc"]) == 2
