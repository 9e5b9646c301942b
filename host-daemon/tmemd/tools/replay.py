"""``tmemd replay TRACE``: a trace the guest agent recorded (docs/trace.md), replayed in process
against the real store, one client, its pools made as in the trace; with ``--store`` every
pool's pages go to one page store (``auto``: what tmemd serves), so one VM run compares store
designs offline.

Operations are applied in the order the agent sent them (tmemd serves one stream in order);
each reply record of the trace says what tmemd answered then, which the replay's own outcome
is counted against. Pages come from the trace when it holds them, else they are made from
the recorded hash and compressibility estimate (:mod:`.replaypages`; a put recorded without an
estimate gets a size drawn from the trace's sampled ones), and the output says so.
A trace cut short or with a corrupt record is replayed up to its last good record, with a
warning; a file that is not a trace is a one-line error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from typing import Any

from tmem_agent.trace import fileformat as ff
from tmem_agent.trace.reader import (
    ConnectEvent,
    GapEvent,
    PageEvent,
    PoolEvent,
    ReplyEvent,
    TraceReader,
)

from .. import PAGE_SIZE
from ..clikit import CommandError, new_table, print_table, size_arg
from ..store.codecs import CODEC_NAMES, DEFAULT_CODEC
from ..store.errors import TmemError
from ..store.statsreport import store_stats
from ..store.storeconfig import PAGE_STORES
from ..store.tmem import StoreConfig, TmemStore
from .replaypages import PageSynth

log = logging.getLogger(__name__)

MIN_LIMIT = 16 << 20
NAMES = {ff.PUT: "put", ff.GET: "get", ff.FLUSH_PAGE: "flush", ff.FLUSH_OBJECT: "flush_object"}
# What a true outcome means, per kind: a put stored, a get hit, a flush found the page.
OUTCOMES = {ff.PUT: "stored", ff.GET: "hits", ff.FLUSH_PAGE: "found"}


def open_trace(path: str) -> TraceReader:
    try:
        return TraceReader(path)
    except ff.TraceError as exc:
        raise CommandError(f"{path}: {exc}") from None


def prescan(path: str) -> tuple[int, list[tuple[int, int]]]:
    """One pass over the trace before the replay: the pages held at most if every put were
    stored and nothing evicted (the default memory limit is sized from it), and (put number,
    zlib-1 size) of the estimated puts (same-filled pages aside), in order: what a put
    recorded without an estimate draws its size from."""
    live: dict[tuple[int, int, tuple[int, int, int]], set[int]] = {}
    pages = peak = puts = 0
    sizes = []
    with open_trace(path) as reader:
        for event in reader.events():
            if type(event) is not PageEvent:
                continue
            key = (event.epoch, event.pool, event.oid)
            if event.kind == ff.PUT:
                if not event.flags & (ff.F_NO_ESTIMATE | ff.F_SAME_FILLED):
                    sizes.append((puts, event.zsize))
                puts += 1
                indexes = live.setdefault(key, set())
                if event.index not in indexes:
                    indexes.add(event.index)
                    pages += 1
                    peak = max(peak, pages)
            elif event.kind == ff.FLUSH_PAGE and event.index in live.get(key, ()):
                live[key].discard(event.index)
                pages -= 1
            elif event.kind == ff.FLUSH_OBJECT:
                pages -= len(live.pop(key, ()))
    return peak, sizes


class Replay:
    """The replay of one trace against one store."""

    def __init__(self, store: TmemStore, samples: list[tuple[int, int]] | None = None) -> None:
        self.store = store
        self.client = -1
        self.pools: dict[int, int] = {}  # trace pool id -> the store's
        self.synth = PageSynth(samples=samples)
        self.ops: Counter[str] = Counter()
        self.op_ns: Counter[str] = Counter()
        self.replayed: Counter[str] = Counter()  # true outcomes in the replay, per kind
        self.recorded: Counter[str] = Counter()  # ... and in the trace's replies
        self.compared: Counter[str] = Counter()  # outcomes with a recorded one to compare
        self.differ: Counter[str] = Counter()
        self.unanswered = 0  # requests tmemd never answered (stream broke) or refused
        self.dropped = 0
        self.inferred_pools = 0
        self.synthetic = 0
        self.peak = {"pages": 0, "frames": 0}
        self._results: dict[tuple[int, int], list[tuple[int, bool]]] = {}
        self._held: list[Any] = []  # the store's pools (their page counts), after each change

    def run(self, reader: TraceReader) -> None:
        for event in reader.events():
            kind = type(event)
            if kind is PageEvent:
                self._page(event)  # type: ignore[arg-type]
            elif kind is ReplyEvent:
                self._reply(event)  # type: ignore[arg-type]
            elif kind is PoolEvent:
                self._pool(event)  # type: ignore[arg-type]
            elif kind is ConnectEvent:
                self._connect(event)  # type: ignore[arg-type]
            elif kind is GapEvent:
                self.dropped += event.dropped  # type: ignore[union-attr]
        self._sample()

    def _connect(self, event: ConnectEvent) -> None:
        if self.client >= 0 and event.resumed:
            return
        if self.client >= 0:  # tmemd started a fresh client: nothing of the old one is left
            self.store.destroy_client(self.client)
        self.client = self.store.new_client("replay")
        self.pools = {}
        self._held = self.store.all_pools()

    def _pool(self, event: PoolEvent) -> None:
        if self.client < 0:
            self.client = self.store.new_client("replay")
        mine = self.pools.pop(event.pool, None)
        if event.kind == ff.NEW_POOL and event.flags & ff.F_EXISTING and mine is not None:
            self.pools[event.pool] = mine
            return
        if mine is not None:
            self.store.destroy_pool(self.client, mine)
        if event.kind == ff.NEW_POOL:
            self.pools[event.pool] = self.store.new_pool(self.client, event.pool_flags)
        self._held = self.store.all_pools()

    def _resolve(self, event: PageEvent) -> int:
        mine = self.pools.get(event.pool)
        if mine is None:  # a pool the trace never introduced (recording began later)
            self.inferred_pools += 1
            self._pool(PoolEvent(event.t_ns, ff.NEW_POOL, 0, event.epoch, event.pool,
                                 ff.PERSIST if event.persistent else 0))
            mine = self.pools[event.pool]
        return mine

    def _page(self, event: PageEvent) -> None:
        pool = self._resolve(event)
        store, client, kind = self.store, self.client, event.kind
        if kind == ff.PUT:
            page = event.page
            if page is None:
                page = self.synth.page(event.hash, None if event.flags & ff.F_NO_ESTIMATE
                                       else event.zsize, event.fill,
                                       bool(event.flags & ff.F_SAME_FILLED))
                self.synthetic += 1
            t0 = time.perf_counter_ns()
            outcome = store.put(client, pool, event.oid, event.index, page)
        elif kind == ff.GET:
            t0 = time.perf_counter_ns()
            outcome = store.get(client, pool, event.oid, event.index) is not None
        elif kind == ff.FLUSH_PAGE:
            t0 = time.perf_counter_ns()
            outcome = store.flush_page(client, pool, event.oid, event.index)
        else:
            t0 = time.perf_counter_ns()
            outcome = store.flush_object(client, pool, event.oid) > 0
        name = NAMES[kind]
        self.op_ns[name] += time.perf_counter_ns() - t0
        self.ops[name] += 1
        if outcome and kind in OUTCOMES:
            self.replayed[name] += 1
        self._results.setdefault((event.epoch, event.rid), []).append((kind, outcome))
        if outcome and kind == ff.PUT:
            self._sample()

    def _reply(self, event: ReplyEvent) -> None:
        results = self._results.pop((event.epoch, event.rid), None)
        if results is None:
            return  # its page records were dropped
        if event.status != ff.OK:
            self.unanswered += 1
            return
        for (kind, outcome), recorded in zip(results, event.outcomes(), strict=False):
            if kind not in OUTCOMES:
                continue
            name = NAMES[kind]
            self.compared[name] += 1
            self.recorded[name] += recorded
            self.differ[name] += outcome != recorded

    def _sample(self) -> None:
        """Pages and frames held now, for the peaks (they grow only with a stored put)."""
        pages = sum(p.pages for p in self._held)
        self.peak["pages"] = max(self.peak["pages"], pages)
        self.peak["frames"] = max(self.peak["frames"], self.store.arena.frames_in_use)


def replay(path: str, store_kind: str = "auto", codec: str = DEFAULT_CODEC,
           memory_limit: int | None = None, dedup: bool = False) -> dict[str, Any]:
    """Replay the trace at ``path``; the report (what ``--json`` prints)."""
    peak, sizes = prescan(path)
    limit = memory_limit
    if limit is None:  # every page uncompressed, with room for metadata: only density counts
        limit = max(MIN_LIMIT, -(-peak * PAGE_SIZE * 5 // 4 // (1 << 20)) << 20)
    config = StoreConfig(memory_limit_bytes=limit, codec=codec, dedup=dedup,
                         page_store=store_kind,
                         persistent_cap_bytes=limit if memory_limit is None else None)
    samples = None
    with open_trace(path) as reader:
        if not reader.meta.get("pages") and reader.meta.get("estimate_every", 1) != 1:
            samples = sizes
    store = TmemStore(config)
    runner = Replay(store, samples)
    started = time.perf_counter()
    with open_trace(path) as reader:
        try:
            runner.run(reader)
        except TmemError as exc:
            raise CommandError(f"{path}: replay failed after {reader.records} records: "
                               f"{exc}") from None
        meta, warnings, records = reader.meta, reader.warnings, reader.records
    wall = time.perf_counter() - started
    stats = store_stats(store)
    store.close()
    return _report(path, meta, runner, stats, config, wall, warnings, records)


def _report(path: str, meta: dict[str, Any], run: Replay, stats: dict[str, Any],
            config: StoreConfig, wall: float, warnings: list[str],
            records: int) -> dict[str, Any]:
    pages, frames = stats["curr_pages"], stats["host_frames"]
    total_ops = sum(run.ops.values())
    return {
        "trace": path, "vm": meta.get("vm"), "boot_id": meta.get("boot_id"),
        "records": records, "warnings": warnings, "dropped_records": run.dropped,
        "store": config.page_store, "codec": config.codec, "dedup": config.dedup,
        "memory_limit_bytes": config.memory_limit_bytes,
        "contents": "synthetic" if run.synthetic else "recorded",
        "synthetic_pages": run.synthetic,
        "estimate_every": meta.get("estimate_every", 1),
        "estimate_samples": len(run.synth.samples),
        "synthetic_sizes_drawn": run.synth.drawn,
        "synthetic_estimate_error_bytes": run.synth.mean_error,
        "ops": dict(run.ops),
        "outcomes": {NAMES[k]: {"what": what, "replay": run.replayed[NAMES[k]],
                                "compared": run.compared[NAMES[k]],
                                "recorded": run.recorded[NAMES[k]],
                                "differ": run.differ[NAMES[k]]}
                     for k, what in OUTCOMES.items()},
        "unanswered_requests": run.unanswered, "inferred_pools": run.inferred_pools,
        "pages_peak": run.peak["pages"], "frames_peak": run.peak["frames"],
        "pages_end": pages, "frames_end": frames,
        "zbud_frames_end": stats["ephemeral_host_bytes"] // PAGE_SIZE,
        "xvmalloc_frames_end": stats["persistent_host_bytes"] // PAGE_SIZE,
        "compression_ratio_end": stats["compression_ratio"],
        "compression_ratio_peak": round(run.peak["pages"] / run.peak["frames"], 3)
        if run.peak["frames"] else None,
        "refusals": {k: stats[k] for k in ("compress_poor", "cap_rejected_puts",
                                           "failed_alloc", "quota_rejected_puts")},
        "puts_refused": stats["failed_eph_puts"] + stats["failed_pers_puts"],
        "evicted_pages": stats["evicted_pages"],
        "wall_s": round(wall, 3),
        "ops_per_s": round(total_ops / wall) if wall > 0 else None,
        "mean_op_ns": {name: round(run.op_ns[name] / n) for name, n in run.ops.items() if n},
    }


def print_report(report: dict[str, Any]) -> None:
    print(f"{report['trace']}: vm {report['vm']}, {report['records']} records, store "
          f"{report['store']}, codec {report['codec']}, dedup "
          f"{'on' if report['dedup'] else 'off'}, memory limit "
          f"{report['memory_limit_bytes'] >> 20} MiB")
    if report["contents"] == "synthetic":
        print(f"page contents: synthetic ({report['synthetic_pages']} pages made from the "
              "recorded hash and zlib-1 size; the real codec's sizes differ)")
        if report["synthetic_sizes_drawn"]:
            print(f"  {report['synthetic_sizes_drawn']} puts had no estimate (one in "
                  f"{report['estimate_every']} was sampled): their sizes were drawn from the "
                  f"{report['estimate_samples']} sampled ones")
    table = new_table("op", "replayed", "outcome", "replay", "recorded", "differ", "mean ns",
                      right=("replayed", "replay", "recorded", "differ", "mean ns"))
    for name, count in report["ops"].items():
        out = report["outcomes"].get(name, {})
        table.add_row(name, str(count), out.get("what", ""), str(out.get("replay", "")),
                      str(out.get("recorded", "")), str(out.get("differ", "")),
                      str(report["mean_op_ns"].get(name, "")))
    print_table(table)
    print(f"pages held: peak {report['pages_peak']}, end {report['pages_end']}; frames: peak "
          f"{report['frames_peak']}, end {report['frames_end']} (zbud "
          f"{report['zbud_frames_end']}, xvmalloc {report['xvmalloc_frames_end']}, the rest "
          f"metadata); compression ratio: peak "
          f"{report['compression_ratio_peak']}, end {report['compression_ratio_end']}")
    causes = ", ".join(f"{k} {v}" for k, v in report["refusals"].items() if v) or "none"
    print(f"puts refused {report['puts_refused']} ({causes}), "
          f"evicted pages {report['evicted_pages']}, unanswered requests "
          f"{report['unanswered_requests']}, dropped records {report['dropped_records']}")
    print(f"replay: {report['wall_s']} s, {report['ops_per_s']} ops/s")


def run(args: argparse.Namespace) -> int:
    report = replay(args.trace, args.store, args.codec, args.memory_limit, args.dedup)
    for warning in report["warnings"]:
        print(f"tmemd replay: warning: {args.trace}: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("replay", help="replay a guest agent's trace against the store",
                       description=__doc__.splitlines()[0])
    p.add_argument("trace", metavar="TRACE", help="a trace file (tmem-agent run --trace)")
    p.add_argument("--store", choices=PAGE_STORES, default="auto",
                   help="the page store of every pool (auto: xvmalloc for persistent pools, "
                        "zbud for ephemeral ones, as tmemd serves)")
    p.add_argument("--codec", choices=CODEC_NAMES, default=DEFAULT_CODEC)
    p.add_argument("--memory-limit", type=size_arg, default=None, metavar="SIZE",
                   help="the store's memory limit (default: room for the trace's peak of "
                        "pages uncompressed, and no persistent cap below it: only density "
                        "then differs between stores)")
    p.add_argument("--dedup", action="store_true",
                   help="dedup identical ephemeral pages (tmemd serve --dedup)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)
