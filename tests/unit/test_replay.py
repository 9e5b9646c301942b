"""``tmemd replay``: a small trace recorded by the agent's recorder (no VM, no daemon), replayed
in process: counts and outcomes, recorded and synthetic contents, dedup, a forced store, and
files that are cut short or not traces."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from tmem_agent.channel import wire
from tmem_agent.ioworker import IoWorker
from tmem_agent.trace import fileformat as ff
from tmem_agent.trace.recorder import TraceRecorder
from tmemd.cli import main
from tmemd.tools.replay import prescan, replay
from tmemd.tools.replaypages import PageSynth

PAGE = 4096
SWAP, CACHE = 0, 1


def text_page(i: int) -> bytes:
    return (f"line {i} of a page that compresses rather well; ".encode() * 100)[:PAGE]


def record(path: Path, pages: bool, estimate_every: int = 4) -> None:
    """A swap pool (persistent) and a cache pool (ephemeral, half its pages one content)."""
    worker = IoWorker("replay-test", 1)
    worker.start()
    try:
        rec = TraceRecorder(str(path), worker, {"vm": "t"}, pages=pages,
                            estimate_every=estimate_every)
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


def mixed_page(i: int) -> bytes:
    """Pages from nearly all text to nearly random, by ``i``; the same every run (with
    os.urandom which pages the sampling picked changed from run to run, and with it how far
    the drawn sizes' frames came from the full estimates': one run in three or so went past
    the bound the test checks)."""
    noise = (i % 16) * PAGE // 16
    return random.Random(i).randbytes(noise) + text_page(i)[: PAGE - noise]


def record_mixed(path: Path, estimate_every: int) -> list[bytes]:
    pages = [mixed_page(i) for i in range(1024)]
    rec = TraceRecorder(str(path), LaterWorker(), {"vm": "m"}, estimate_every=estimate_every)
    rec.connected(wire.HelloReply(wire.HelloStatus.FRESH, 3, bytes(16), "test"), [(SWAP, 1)])
    for b in range(0, len(pages), 128):
        keys = [((b, 0, 0), i) for i in range(128)]
        rec.requested(b + 1, wire.Op.PUT_BATCH, wire.batch_request(SWAP, keys, pages[b : b + 128]))
        rec.completed(b + 1, ff.OK, wire.flags_reply([True] * 128))
    rec.close()
    return pages


class LaterWorker:
    def submit(self, job: Callable[[], None], done: Callable[[OSError | None], None]) -> None:
        job()
        done(None)

    def drain(self) -> None:
        pass


def test_puts_without_an_estimate_draw_sizes_from_the_sampled_ones(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[
                                                                        str]) -> None:
    full, sampled = tmp_path / "full.tmtrace", tmp_path / "sampled.tmtrace"
    record_mixed(full, 1)
    record_mixed(sampled, 8)
    assert not prescan(str(full))[1] or len(prescan(str(full))[1]) == 1024
    samples = prescan(str(sampled))[1]
    assert 1024 / 8 / 2 < len(samples) < 1024 / 8 * 2
    a, b = replay(str(full)), replay(str(sampled))
    assert a["synthetic_sizes_drawn"] == 0 and a["estimate_every"] == 1
    assert b["estimate_every"] == 8 and b["estimate_samples"] == len(samples)
    assert b["synthetic_sizes_drawn"] == 1024 - len(samples)
    assert b == {**replay(str(sampled)), "wall_s": b["wall_s"], "ops_per_s": b["ops_per_s"],
                 "mean_op_ns": b["mean_op_ns"]}  # deterministic
    # the drawn sizes follow the sampled distribution: the store's frames come out close
    assert abs(b["frames_end"] - a["frames_end"]) < 0.15 * a["frames_end"]
    assert main(["replay", str(sampled)]) == 0
    assert "had no estimate (one in 8 was sampled)" in capsys.readouterr().out


def test_drawn_sizes_come_from_samples_nearby_and_stay_with_their_content() -> None:
    early, late = [(i, 100 + i % 3) for i in range(100)], [(i, 3000 + i % 3) for i in range(
        1000, 1100)]
    synth = PageSynth(samples=early + late)
    assert {synth.drawn_size(h, 50) for h in range(200)} == {100, 101, 102}
    assert {synth.drawn_size(h, 1050) for h in range(1000, 1200)} == {3000, 3001, 3002}
    assert synth.drawn_size(7, 1050) == synth.drawn_size(7, 50)  # the same content: kept
    assert synth.page(77, None, 0, False) == synth.page(77, None, 0, False)
    assert PageSynth().drawn_size(5, 0) == PAGE // 2 and synth.drawn == 2 and synth.puts == 2


def test_a_file_that_is_not_a_trace_is_one_line(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"hello" * 1000)
    assert main(["replay", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"tmemd: error: {bad}: not a tmem trace (bad magic)"]
    assert main(["replay", str(tmp_path / "missing")]) == 1
    assert main(["replay", str(bad), "--store", "zsmalloc"]) == 2
