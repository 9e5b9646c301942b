"""``tmemd bench --dedup-share S ...``: what dedup of ephemeral pages saves and costs.

For each share S, the bench's corpus is turned into one with duplicates: a share S of its
pages (chosen by the seed) are replaced by copies of other pages of the corpus that go through
the compressor (not zero, same-filled or random pages; each copy a new bytes object, as the
wire delivers them). Every round then stores the corpus in an ephemeral pool (zbud) of a
store with dedup off and of one with dedup on, in alternating order (off first in even
rounds, on first in odd ones), each on a fresh store and fresh copies of the pages:

    put every page, get every accepted page (and check it), flush every page.

Reported per share: the frames each store holds after every page was put, from the first
round (``zbud_frames``: data frames; ``host_frames``: data plus metadata frames, the figure
the memory limit bounds), the dedup counters of the store with dedup on, and per round the
rates of dedup on over dedup off (``put_on_vs_off``, ``get_on_vs_off``), median with spread.
A share of 0 measures what dedup costs when nothing repeats.
"""

from __future__ import annotations

import gc
import logging
import random
from collections.abc import Sequence
from statistics import median
from typing import Any

from .. import PAGE_SIZE
from ..store.pools import PoolFlags
from ..store.tmem import StoreConfig, TmemStore
from .benchstats import rate, spread, timed
from .corpus import Corpus, corpus_handles

log = logging.getLogger(__name__)

UNCOMPRESSED_KINDS = frozenset({"zero", "same-filled", "random"})
DEFINITIONS = {
    "duplicate_pages": "pages of the corpus replaced by a copy of another compressible page",
    "zbud_frames": "zbud frames after every page was put (first round)",
    "host_frames": "all arena frames after every page was put: data and metadata (first round)",
    "put_on_vs_off": "per round: put pages/s with dedup on over pages/s with dedup off",
    "get_on_vs_off": "per round: get pages/s with dedup on over pages/s with dedup off",
    "frames_on_vs_off": "host_frames with dedup on over host_frames with dedup off",
}


def with_duplicates(corpus: Corpus, share: float, seed: int) -> tuple[list[bytes], int]:
    """The corpus's pages with a ``share`` of them replaced by copies of compressible pages;
    also how many were replaced."""
    if not 0 <= share < 1:
        raise ValueError(f"a duplicate share must be in [0, 1), got {share}")
    rng = random.Random(seed)
    pages = list(corpus.pages)
    count = round(share * len(pages))
    chosen = set(rng.sample(range(len(pages)), count))
    sources = [i for i, kind in enumerate(corpus.kinds)
               if i not in chosen and kind not in UNCOMPRESSED_KINDS]
    if count and not sources:
        raise ValueError("the corpus has no compressible page to duplicate")
    for i in sorted(chosen):
        pages[i] = bytes(bytearray(pages[rng.choice(sources)]))
    return pages, count


class _DedupRun:
    """One store (dedup on or off) over the pages: put, get and flush every page, timed."""

    def __init__(self, pages: list[bytes], codec: str, dedup: bool) -> None:
        self.pages = pages
        self.codec = codec
        self.dedup = dedup
        self.times: dict[str, float] = {}
        self.accepted = 0
        self.figures: dict[str, Any] = {}

    def run(self) -> None:
        pages = [bytes(bytearray(p)) for p in self.pages]  # no hash cached from an earlier run
        limit = (2 * len(pages) + 64) * PAGE_SIZE  # nothing is evicted
        store = TmemStore(StoreConfig(memory_limit_bytes=limit, codec=self.codec,
                                      dedup=self.dedup))
        try:
            cid = store.new_client("bench")
            pool = store.new_pool(cid, PoolFlags(0))
            handles = corpus_handles(len(pages))
            items = [(oid, idx, page) for (oid, idx), page in zip(handles, pages, strict=True)]
            put, get, flush = store.put, store.get, store.flush_page
            stored: list[bool] = []
            gc.collect()
            self.times["put"] = timed(lambda: stored.extend(
                [put(cid, pool, oid, idx, page) for oid, idx, page in items]))
            stats = store.stats()
            self.figures = {
                "accepted_pages": sum(stored),
                "zbud_frames": stats["ephemeral_host_bytes"] // PAGE_SIZE,
                "host_frames": stats["host_frames"],
                "meta_frames": stats["meta_frames"],
                **{k: stats[k] for k in ("dedup_hits", "dedup_copies", "dedup_saved_pages",
                                         "dedup_saved_bytes", "zbud_curr_zpages")},
            }
            self.accepted = accepted = sum(stored)
            wanted = [h for h, ok in zip(handles, stored, strict=True) if ok]
            got: list[bytes | None] = []
            self.times["get"] = timed(lambda: got.extend([get(cid, pool, *h) for h in wanted]))
            expected = [p for p, ok in zip(self.pages, stored, strict=True) if ok]
            if len(got) != accepted or any(g != p for g, p in zip(got, expected, strict=True)):
                raise RuntimeError("dedup benchmark read back a page that differs")
            for oid, idx in handles:
                flush(cid, pool, oid, idx)
            if store.arena.frames_in_use:
                raise RuntimeError("frames still in use after every page was read")
        finally:
            store.close()


def _share_report(pages: list[bytes], duplicates: int, codec: str, repeat: int) -> dict[str, Any]:
    rounds: list[tuple[_DedupRun, _DedupRun]] = []
    for round_no in range(repeat):
        pair = {flag: _DedupRun(pages, codec, flag) for flag in (False, True)}
        for flag in ((False, True) if round_no % 2 == 0 else (True, False)):
            pair[flag].run()
        rounds.append((pair[False], pair[True]))
    off, on = rounds[0]
    n = len(pages)
    report: dict[str, Any] = {
        "duplicate_pages": duplicates,
        "off": off.figures,
        "on": on.figures,
        "frames_on_vs_off": round(on.figures["host_frames"] / max(1, off.figures["host_frames"]),
                                  4),
        "zbud_frames_on_vs_off": round(
            on.figures["zbud_frames"] / max(1, off.figures["zbud_frames"]), 4),
        "put_on_vs_off": spread([rate(n, b.times["put"]) / rate(n, a.times["put"])
                                 for a, b in rounds]),
        "get_on_vs_off": spread([rate(b.accepted, b.times["get"])
                                 / rate(a.accepted, a.times["get"]) for a, b in rounds]),
    }
    for name, index in (("off", 0), ("on", 1)):
        runs = [pair[index] for pair in rounds]
        report[name]["put_pps"] = round(median(rate(n, r.times["put"]) for r in runs), 1)
        report[name]["get_pps"] = round(median(rate(r.accepted, r.times["get"]) for r in runs), 1)
    return report


def run_dedup_bench(corpus: Corpus, codec: str, repeat: int,
                    shares: Sequence[float]) -> dict[str, Any]:
    """The ``dedup`` section of a bench report: one entry per duplicate share."""
    result: dict[str, Any] = {"definitions": DEFINITIONS, "shares": {}}
    for share in shares:
        log.info("dedup: %d rounds with a duplicate share of %s", repeat, share)
        pages, duplicates = with_duplicates(corpus, share, corpus.seed + 1)
        result["shares"][f"{share:g}"] = _share_report(pages, duplicates, codec, repeat)
    return result
