"""``tmemd bench``: in-process throughput and density of the tmem store on a real-page corpus.

One run measures, on the same corpus and in the same process:
- the bare compressor (``raw_compress_pps`` over every page, ``raw_decompress_pps`` over every
  compressed page), then
- for each page store, through the full tmem API (an ephemeral pool lands in zbud, a persistent
  pool in xvmalloc): ``put_pps`` over every page, ``get_pps`` over the accepted pages,
  ``flush_pps``, and the density figures ``host_bytes``, ``ideal_bytes`` (sum of the compressed
  sizes of the accepted pages) and, for zbud, the frames an optimal pairing would need.

Each figure is the best of ``--repeat`` rounds (the least disturbed by other load). Targets are
ratios within this run, so a slow or busy machine does not fail them by itself.
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
from collections.abc import Callable
from typing import Any

from .. import PAGE_SIZE
from ..clikit import finish_report, target
from ..store.codecs import CODEC_NAMES, DEFAULT_CODEC, get_codec
from ..store.pools import PoolFlags
from ..store.tmem import FILLED_PAGES, StoreConfig, TmemStore
from ..store.zbud import CHUNK_SIZE, USABLE_CHUNKS
from .corpus import build_corpus, corpus_handles, describe_corpus

log = logging.getLogger(__name__)

SCHEMA = "tmemd-bench/1"
TARGET_SPEED_RATIO = 0.7
TARGET_DENSITY_RATIO = 1.10


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else float("inf")


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def optimal_zbud_frames(zsizes: list[int]) -> int:
    """Fewest frames that hold these compressed pages, at most two per frame.

    Bin packing with at most two items per bin is solved exactly by pairing, after sorting, the
    largest remaining page with the smallest one whenever both fit in one frame.
    """
    chunks = sorted((z + CHUNK_SIZE - 1) // CHUNK_SIZE for z in zsizes)
    lo, hi, frames = 0, len(chunks) - 1, 0
    while lo <= hi:
        if lo < hi and chunks[lo] + chunks[hi] <= USABLE_CHUNKS:
            lo += 1
        hi -= 1
        frames += 1
    return frames


def _measure_raw(pages: list[bytes], codec_name: str) -> dict[str, float]:
    codec = get_codec(codec_name)
    compress, decompress = codec.compress, codec.decompress
    packed: list[bytes] = []
    t_c = _timed(lambda: packed.extend(compress(p) for p in pages))
    t_d = _timed(lambda: [decompress(z) for z in packed])
    return {
        "raw_compress_pps": _rate(len(pages), t_c),
        "raw_decompress_pps": _rate(len(packed), t_d),
    }


def _measure_store(pages: list[bytes], codec_name: str, persistent: bool) -> dict[str, Any]:
    config = StoreConfig(
        memory_limit_bytes=(len(pages) + 64) * PAGE_SIZE,
        persistent_cap_bytes=(len(pages) + 64) * PAGE_SIZE,
        codec=codec_name,
    )
    store = TmemStore(config)
    try:
        cid = store.new_client("bench")
        pool = store.new_pool(cid, PoolFlags.PERSIST if persistent else 0)
        handles = corpus_handles(len(pages))
        put, get, flush = store.put, store.get, store.flush_page

        items = [(oid, idx, page) for (oid, idx), page in zip(handles, pages, strict=True)]

        def put_all() -> list[int]:
            """Put every page (a loop as light as the raw compressor's); accepted indexes."""
            stored = [put(cid, pool, oid, idx, page) for oid, idx, page in items]
            return [i for i, ok in enumerate(stored) if ok]

        t0 = time.perf_counter()
        accepted = put_all()
        t_put = time.perf_counter() - t0
        page_store = store.xv if persistent else store.zbud
        host_bytes = page_store.frames_in_use * PAGE_SIZE
        codec = get_codec(codec_name)
        zsizes = [
            len(codec.compress(pages[i])) for i in accepted if pages[i] != FILLED_PAGES[pages[i][0]]
        ]
        got: list[bytes | None] = []
        t_get = _timed(lambda: got.extend(get(cid, pool, *handles[i]) for i in accepted))
        if any(g != pages[i] for g, i in zip(got, accepted, strict=True)):
            raise RuntimeError("benchmark read back a page that differs from what it stored")
        if not persistent:  # gets were exclusive: store the pages again to time flushes
            put_all()
        t_flush = _timed(lambda: [flush(cid, pool, oid, index) for oid, index in handles])
        result: dict[str, Any] = {
            "put_pps": _rate(len(pages), t_put),
            "get_pps": _rate(len(accepted), t_get),
            "flush_pps": _rate(len(pages), t_flush),
            "accepted_pages": len(accepted),
            "same_filled_pages": len(accepted) - len(zsizes),
            "host_bytes": host_bytes,
            "ideal_bytes": sum(zsizes),
        }
        if not persistent:
            result["optimal_frames"] = optimal_zbud_frames(zsizes)
            result["optimal_bytes"] = result["optimal_frames"] * PAGE_SIZE
        if store.arena.frames_in_use:
            raise RuntimeError("frames still in use after flushing every page")
        return result
    finally:
        store.close()


def _best(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Highest rate of each ``*_pps`` key over the rounds; other keys from the first round."""
    best = dict(rounds[0])
    for key in best:
        if key.endswith("_pps"):
            best[key] = max(r[key] for r in rounds)
    return best


def _targets(raw: dict[str, float], stores: dict[str, dict[str, Any]]) -> dict[str, Any]:
    targets: dict[str, Any] = {}
    for name, s in stores.items():
        speed = TARGET_SPEED_RATIO
        checks = {
            "put_vs_raw_compress": (s["put_pps"] / raw["raw_compress_pps"], ">=", speed),
            "get_vs_raw_decompress": (s["get_pps"] / raw["raw_decompress_pps"], ">=", speed),
        }
        bound = s["optimal_bytes"] if name == "zbud" else s["ideal_bytes"]
        checks["host_vs_ideal_bytes"] = (s["host_bytes"] / bound, "<=", TARGET_DENSITY_RATIO)
        for check, (value, op, limit) in checks.items():
            targets[f"{name}.{check}"] = target(value, op, limit)
    return targets


def run_bench(
    npages: int, codec: str = DEFAULT_CODEC, repeat: int = 5, seed: int = 0
) -> dict[str, Any]:
    log.info("building a corpus of %d pages", npages)
    pages = build_corpus(npages, seed)
    raw_rounds: list[dict[str, Any]] = []
    store_rounds: dict[str, list[dict[str, Any]]] = {"zbud": [], "xvmalloc": []}
    for round_no in range(repeat):
        log.info("round %d/%d", round_no + 1, repeat)
        raw_rounds.append(_measure_raw(pages, codec))
        store_rounds["zbud"].append(_measure_store(pages, codec, persistent=False))
        store_rounds["xvmalloc"].append(_measure_store(pages, codec, persistent=True))
    raw = _best(raw_rounds)
    stores = {name: _best(rounds) for name, rounds in store_rounds.items()}
    return {
        "schema": SCHEMA,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "python": platform.python_version(),
        "codec": codec,
        "repeat": repeat,
        "corpus": describe_corpus(pages) | {"seed": seed},
        **raw,
        "stores": stores,
        "targets": _targets(raw, stores),
    }


def _cmd_bench(args: argparse.Namespace) -> int:
    result = run_bench(args.pages, args.codec, args.repeat, args.seed)
    return finish_report(result, args.json, args.strict)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure store throughput and density on real pages")
    p.add_argument("--pages", type=int, default=20000, help="corpus size in pages")
    p.add_argument("--codec", choices=CODEC_NAMES, default=DEFAULT_CODEC)
    p.add_argument("--repeat", type=int, default=5, help="rounds; each figure is the best")
    p.add_argument("--seed", type=int, default=0, help="corpus seed")
    p.add_argument("--json", metavar="FILE", help="also write the result to FILE")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.set_defaults(func=_cmd_bench)
