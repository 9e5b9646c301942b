"""``tmemd bench``: in-process throughput and density of the tmem store on a page corpus.

Speed. For each page store (an ephemeral pool lands in zbud, a persistent pool in xvmalloc)
and each round, every store phase is timed between two passes of the bare codec over the
same pages, so that raw and store runs alternate (raw, store, raw, ...):

    raw compress, put every page, raw compress,
    raw decompress, get every accepted page, raw decompress, then flush every page.

A round's ratio is the store's rate over the mean rate of the two raw passes around it; what
slows the whole machine for a while (other load, frequency changes) slows both and cancels.
Each ratio is reported as the median over the rounds, with its spread (min, quartiles, max,
every round), and the targets (``put_vs_raw_compress`` and ``get_vs_raw_decompress`` >= 0.7)
are judged on the median. Absolute rates (pages/s) are medians over the rounds too. One
untimed codec pass over the corpus comes before the first round.

Density, from the first round only (it does not vary). Frames in use after every page was put
(``host_frames``), against bounds for blocks that cannot span frames (see ``packing``):

- xvmalloc: ``ffd_frames``, a first-fit-decreasing packing of the same blocks (achievable, so
  the target's bound: host frames <= 1.05 x it); beside it ``lower_bound_frames`` (no packing
  uses fewer; may be unreachable) and ``ideal_frames`` (compressed bytes / 4096; unreachable
  whenever most pages compress to over half a frame).
- zbud: ``optimal_frames``, an optimal pairing (exact, the target's bound: <= 1.05 x it),
  beside ``ideal_frames``.

Dedup, with ``--dedup-share S ...`` only: the ephemeral store with dedup off against dedup on,
on the corpus with a share S of its pages duplicated (``benchdedup``; docs/dedup.md).
"""

from __future__ import annotations

import argparse
import gc
import logging
import platform
import statistics
import time
from collections.abc import Sequence
from typing import Any

from .. import PAGE_SIZE
from ..clikit import finish_report, target
from ..store.codecs import CODEC_NAMES, DEFAULT_CODEC, get_codec
from ..store.pools import PoolFlags
from ..store.tmem import FILLED_PAGES, StoreConfig, TmemStore
from .benchdedup import run_dedup_bench
from .benchstats import rate, spread, timed
from .corpus import CORPUS_NAMES, DEFAULT_CORPUS, corpus_handles, describe_corpus, make_corpus
from .packing import xvmalloc_bounds, zbud_bounds

log = logging.getLogger(__name__)

SCHEMA = "tmemd-bench/2"
TARGET_SPEED_RATIO = 0.7
TARGET_DENSITY_RATIO = 1.05
STORES = (("zbud", False), ("xvmalloc", True))  # name, persistent pool
SPEED_RATIOS = ("put_vs_raw_compress", "get_vs_raw_decompress")
DEFINITIONS = {
    "ratios": "per round: store pages/s over the mean raw pages/s of the codec passes just "
              "before and after it; median over the rounds, with min, quartiles, max",
    "host_frames": "frames the store holds after every page was put",
    "ideal_frames": "compressed bytes / 4096 (unreachable for blocks that cannot span frames)",
    "lower_bound_frames": "xvmalloc: no packing of its blocks into frames uses fewer "
                          "(max of the volume bound and Martello-Toth L2); may be unreachable",
    "ffd_frames": "xvmalloc: first-fit-decreasing packing of its blocks (achievable)",
    "optimal_frames": "zbud: optimal pairing of its buddies (exact optimum)",
    "packing_bound": "the bound the density target is judged against",
}


class _StoreRun:
    """One round on one page store: a fresh store, every phase timed between raw passes."""

    def __init__(self, pages: list[bytes], codec_name: str, persistent: bool) -> None:
        self.pages = pages
        self.codec_name = codec_name
        self.persistent = persistent
        self.times: dict[str, float] = {}
        self.accepted: list[int] = []
        self.host_frames = 0

    def run(self) -> None:
        pages = self.pages
        codec = get_codec(self.codec_name)
        compress, decompress = codec.compress, codec.decompress
        limit = (len(pages) + 64) * PAGE_SIZE
        store = TmemStore(StoreConfig(memory_limit_bytes=limit, persistent_cap_bytes=limit,
                                      codec=self.codec_name))
        try:
            cid = store.new_client("bench")
            pool = store.new_pool(cid, PoolFlags.PERSIST if self.persistent else 0)
            handles = corpus_handles(len(pages))
            items = [(oid, idx, page) for (oid, idx), page in zip(handles, pages, strict=True)]
            put, get, flush = store.put, store.get, store.flush_page
            stored: list[bool] = []

            def put_all() -> None:  # a loop as light as the raw one below
                stored[:] = [put(cid, pool, oid, idx, page) for oid, idx, page in items]

            gc.collect()
            times = self.times
            times["raw_c1"] = timed(lambda: [compress(p) for p in pages])
            times["put"] = timed(put_all)
            times["raw_c2"] = timed(lambda: [compress(p) for p in pages])
            self.accepted = accepted = [i for i, ok in enumerate(stored) if ok]
            self.host_frames = (store.xv if self.persistent else store.zbud).frames_in_use
            packed = [compress(pages[i]) for i in accepted]
            wanted = [handles[i] for i in accepted]
            got: list[bytes | None] = []
            times["raw_d1"] = timed(lambda: [decompress(z) for z in packed])
            times["get"] = timed(lambda: got.extend([get(cid, pool, *h) for h in wanted]))
            times["raw_d2"] = timed(lambda: [decompress(z) for z in packed])
            if any(g != pages[i] for g, i in zip(got, accepted, strict=True)):
                raise RuntimeError("benchmark read back a page that differs from what it stored")
            if not self.persistent:  # gets were exclusive: store the pages again to time flushes
                put_all()
            times["flush"] = timed(lambda: [flush(cid, pool, oid, idx) for oid, idx in handles])
            if store.arena.frames_in_use:
                raise RuntimeError("frames still in use after flushing every page")
        finally:
            store.close()

    def rates(self) -> dict[str, float]:
        """Pages/s of each phase and the two per-round ratios."""
        t, n, m = self.times, len(self.pages), len(self.accepted)
        raw_c = rate(n, (t["raw_c1"] + t["raw_c2"]) / 2)
        raw_d = rate(m, (t["raw_d1"] + t["raw_d2"]) / 2)
        put, get = rate(n, t["put"]), rate(m, t["get"])
        return {
            "raw_compress_pps": raw_c,
            "raw_decompress_pps": raw_d,
            "put_pps": put,
            "get_pps": get,
            "flush_pps": rate(n, t["flush"]),
            "put_vs_raw_compress": put / raw_c,
            "get_vs_raw_decompress": get / raw_d,
        }


def _density(run: _StoreRun, codec_name: str) -> dict[str, Any]:
    """Frames the store used against the packing bounds for the pages it accepted."""
    compress = get_codec(codec_name).compress
    pages = run.pages
    zsizes = [len(compress(pages[i])) for i in run.accepted
              if pages[i] != FILLED_PAGES[pages[i][0]]]
    frames = run.host_frames
    result: dict[str, Any] = {
        "accepted_pages": len(run.accepted),
        "same_filled_pages": len(run.accepted) - len(zsizes),
        "host_frames": frames,
        "host_bytes": frames * PAGE_SIZE,
    }
    if run.persistent:
        result |= xvmalloc_bounds(zsizes)
        result["packing_bound"] = "ffd_frames"
        result["host_vs_lower_bound"] = round(frames / max(1, result["lower_bound_frames"]), 4)
    else:
        result |= zbud_bounds(zsizes)
        result["packing_bound"] = "optimal_frames"
    result["host_vs_packing_bound"] = round(frames / max(1, result[result["packing_bound"]]), 4)
    result["host_vs_ideal_bytes"] = round(frames * PAGE_SIZE / max(1, result["ideal_bytes"]), 4)
    return result


def _store_report(runs: list[_StoreRun], codec_name: str) -> dict[str, Any]:
    rounds = [r.rates() for r in runs]
    report: dict[str, Any] = {}
    for key in ("put_pps", "get_pps", "flush_pps", "raw_compress_pps", "raw_decompress_pps"):
        report[key] = round(statistics.median(r[key] for r in rounds), 1)
    for key in SPEED_RATIOS:
        report[key] = spread([r[key] for r in rounds])
    report["density"] = _density(runs[0], codec_name)
    return report


def _targets(stores: dict[str, dict[str, Any]]) -> dict[str, Any]:
    targets: dict[str, Any] = {}
    for name, s in stores.items():
        for key in SPEED_RATIOS:
            targets[f"{name}.{key}"] = target(s[key]["median"], ">=", TARGET_SPEED_RATIO)
        ratio = s["density"]["host_vs_packing_bound"]
        targets[f"{name}.host_vs_packing_bound"] = target(ratio, "<=", TARGET_DENSITY_RATIO)
    return targets


def _warm_up(pages: list[bytes], codec_name: str) -> None:
    """One untimed codec pass, so that the first timed round does not pay for first touches
    (the allocator growing its arenas for the compressed copies)."""
    codec = get_codec(codec_name)
    packed = [codec.compress(p) for p in pages]
    for z in packed:
        codec.decompress(z)


def run_bench(npages: int, codec: str = DEFAULT_CODEC, repeat: int = 5, seed: int = 0,
              corpus: str = DEFAULT_CORPUS, dedup_shares: Sequence[float] = ()) -> dict[str, Any]:
    """Build the corpus, run ``repeat`` interleaved rounds on each store, and report; with
    ``dedup_shares``, also dedup off against on for each share of duplicates (benchdedup)."""
    if repeat < 1:
        raise ValueError("a benchmark needs at least one round")
    log.info("building the %s corpus of %d pages", corpus, npages)
    source = make_corpus(npages, seed, corpus)
    _warm_up(source.pages, codec)
    runs: dict[str, list[_StoreRun]] = {name: [] for name, _ in STORES}
    for round_no in range(repeat):
        log.info("round %d/%d", round_no + 1, repeat)
        for name, persistent in STORES:
            run = _StoreRun(source.pages, codec, persistent)
            run.run()
            runs[name].append(run)
    stores = {name: _store_report(store_runs, codec) for name, store_runs in runs.items()}
    report = {
        "schema": SCHEMA,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "python": platform.python_version(),
        "codec": codec,
        "repeat": repeat,
        "corpus": describe_corpus(source),
        "raw_compress_pps": round(statistics.median(
            r.rates()["raw_compress_pps"] for rs in runs.values() for r in rs), 1),
        "raw_decompress_pps": round(statistics.median(
            r.rates()["raw_decompress_pps"] for rs in runs.values() for r in rs), 1),
        "definitions": DEFINITIONS,
        "stores": stores,
        "targets": _targets(stores),
    }
    if dedup_shares:
        report["dedup"] = run_dedup_bench(source, codec, repeat, dedup_shares)
    return report


def _cmd_bench(args: argparse.Namespace) -> int:
    result = run_bench(args.pages, args.codec, args.repeat, args.seed, args.corpus,
                       args.dedup_share or ())
    return finish_report(result, args.json, args.strict)


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure store throughput and density on a page corpus")
    p.add_argument("--pages", type=_positive, default=20000, help="corpus size in pages")
    p.add_argument("--codec", choices=CODEC_NAMES, default=DEFAULT_CODEC)
    p.add_argument("--repeat", type=_positive, default=5,
                   help="interleaved rounds; ratios are the median over them")
    p.add_argument("--seed", type=int, default=0, help="corpus seed")
    p.add_argument("--corpus", choices=CORPUS_NAMES, default=DEFAULT_CORPUS,
                   help="synthetic: the same pages on every machine; host-files: pages cut "
                        "from this machine's files (differs by machine)")
    p.add_argument("--dedup-share", type=_share, nargs="+", metavar="S",
                   help="also measure dedup of ephemeral pages (off against on) on the corpus "
                        "with this share of its pages duplicated; several shares may be given")
    p.add_argument("--json", metavar="FILE", help="also write the result to FILE")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.set_defaults(func=_cmd_bench)
