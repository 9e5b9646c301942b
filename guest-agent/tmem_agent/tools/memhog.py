"""``tmem-agent memhog``: fill a userfaultfd region backed by tmem with realistic checksummed
pages, and with ``--verify`` read every page back and check it.

The region (:mod:`tmem_agent.uffd`) keeps at most ``--resident`` bytes in memory; the rest of
``--size`` lives in a tmem pool of its own (``--pool``), reached over the virtio-serial port
``--port`` (or a unix socket, ``--tmem-socket``). Phases:

- ``write``: every page in order, generation 1 (first touches: zero fills; evictions: puts);
- ``update`` (with ``--verify``): one page in 16, in random order, is read, checked, and
  written again as generation 2 (random faults; a page filled from tmem and then written);
- ``verify`` (with ``--verify``): every page in order, compared with what was last written.

An ephemeral pool may drop pages; memhog can make any page again, so it gives the region a
refill function unless ``--no-refill`` (then a dropped page is lost, and the run fails).
One JSON object on stdout: the counts, faults per second per phase, and the verdict.
Exit status 1 when a page was wrong or lost.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections.abc import Callable
from typing import Any

from ..channel.transport import TransportError, greeted
from ..clibase import CommandError, UsageError
from ..service import default_vm_name, open_transport, read_boot_id
from ..status import RUN_DIR
from ..uffd import kernel
from ..uffd.publish import StatsPublisher
from ..uffd.region import MAX_READAHEAD, PageLost, Region
from ..uffd.stats import UffdStats, process_stats
from ..uffd.store import PageStore, StoreError, TmemStore
from ..units import page_size_arg
from .memcontent import PAGE, PageMaker, diagnose

UPDATE_SHARE = 16  # the update phase rewrites one page in this many
SHOWN_BAD = 10  # wrong pages listed in the summary


class Verdict:
    """What the checks found."""

    def __init__(self) -> None:
        self.checked = 0
        self.kinds: dict[str, int] = {}
        self.first: list[tuple[int, str]] = []
        self.lost = 0

    def check(self, page: int, data: bytes | bytearray, expected: bytes, generation: int
              ) -> None:
        self.checked += 1
        if data == expected:
            return
        kind = diagnose(bytes(data), page, generation)
        kind = "other" if kind == "ok" else kind
        self.bad(page, kind)

    def bad(self, page: int, kind: str) -> None:
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if len(self.first) < SHOWN_BAD:
            self.first.append((page, kind))

    def lost_page(self, page: int) -> None:
        self.lost += 1
        self.bad(page, "lost")

    @property
    def mismatches(self) -> int:
        return sum(n for kind, n in self.kinds.items() if kind != "lost")

    def summary(self) -> dict[str, Any]:
        return {"checked": self.checked, "mismatches": self.mismatches, "lost": self.lost,
                "kinds": self.kinds, "first": self.first,
                "passed": not self.kinds and self.checked > 0}


def hog(store: PageStore, size: int, resident: int, *, verify: bool, seed: int = 1,
        readahead: int = 15, refill: bool = True,
        after: Callable[[], dict[str, Any]] | None = None,
        stats: UffdStats | None = None) -> dict[str, Any]:
    """Run the phases through a region on ``store``; the summary. ``after`` is called once the
    region is closed, before the store is: what it returns goes in as ``"daemon"``.
    ``stats``: the counters the region adds to (its own by default)."""
    maker = PageMaker(seed)
    pages = size // PAGE
    generations = bytearray(pages)  # what each page holds now (0: never written)

    def remake(page: int) -> bytes:
        return maker.page(page, generations[page]) if generations[page] else bytes(PAGE)

    region = Region(size, resident, store, readahead=readahead,
                    refill=remake if refill and not store.persistent else None, stats=stats)
    verdict = Verdict()
    phases: dict[str, dict[str, Any]] = {}
    counters = region.stats.counts

    def phase(name: str, body: Callable[[], int]) -> None:
        before = dict(counters)
        started = time.monotonic()
        touched = body()
        seconds = time.monotonic() - started
        delta = {k: counters[k] - before[k] for k in counters}
        phases[name] = {
            "seconds": round(seconds, 3), "pages": touched, "faults": delta["faults"],
            "faults_per_s": round(delta["faults"] / seconds, 1) if seconds else 0.0,
            "pages_per_s": round(touched / seconds, 1) if seconds else 0.0,
            "zero_fills": delta["zero_fills"], "copies": delta["copies"], "puts": delta["puts"],
            "gets": delta["gets"], "evictions": delta["evictions"]}

    def write_all() -> int:
        for page in range(pages):
            try:
                region.write(page * PAGE, maker.page(page, 1))
            except PageLost:
                verdict.lost_page(page)
            generations[page] = 1
        return pages

    def update_some() -> int:
        chosen = random.Random(seed).sample(range(pages), max(1, pages // UPDATE_SHARE))
        for page in chosen:
            try:
                verdict.check(page, region.read(page * PAGE, PAGE), maker.page(page, 1), 1)
                region.write(page * PAGE, maker.page(page, 2))
            except PageLost:
                verdict.lost_page(page)
            generations[page] = 2
        return len(chosen)

    def verify_all() -> int:
        buffer = bytearray(PAGE)
        for page in range(pages):
            try:
                region.read_into(page * PAGE, buffer)
            except PageLost:
                verdict.lost_page(page)
                continue
            verdict.check(page, buffer, maker.page(page, generations[page]),
                          generations[page])
        return pages

    daemon: dict[str, Any] | None = None
    try:
        region.open()
        try:
            phase("write", write_all)
            if verify:
                phase("update", update_some)
                phase("verify", verify_all)
            view = region.counters()
        finally:
            region.close(close_store=False)
        if after is not None:
            daemon = after()
    finally:
        store.close()
    total_s = sum(p["seconds"] for p in phases.values())
    counts = view["counters"]
    return {
        "size": size, "pages": pages, "resident_budget_pages": region.budget_pages,
        "pool": "persistent" if store.persistent else "ephemeral", "readahead": readahead,
        "refill": region.refill is not None, "seed": seed,
        "faults": counts["faults"],
        "faults_per_s": round(counts["faults"] / total_s, 1) if total_s else 0.0,
        "pages_per_s": round(sum(p["pages"] for p in phases.values()) / total_s, 1)
        if total_s else 0.0,
        **{k: counts[k] for k in ("zero_fills", "copies", "puts", "puts_refused", "gets",
                                  "get_misses", "evictions", "clean_drops", "refills",
                                  "faults_wp", "lost_pages")},
        "resident_max": view["region"]["resident_max"],
        "phases": phases,
        "verify": verdict.summary() if verify else None,
        "counters": counts,
        "latency_us": view["latency_us"],
        "daemon": daemon,
    }


def passed(result: dict[str, Any]) -> bool:
    verify = result["verify"]
    return result["lost_pages"] == 0 and (verify is None or verify["passed"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=page_size_arg, required=True,
                        help="region size (4096, 64K, 256M, 1G)")
    parser.add_argument("--resident", type=page_size_arg, required=True,
                        help="resident budget of the region")
    parser.add_argument("--verify", action="store_true",
                        help="after writing, update some pages and verify every page")
    parser.add_argument("--port", default="org.tmem.0", help="virtio-serial port to tmemd")
    parser.add_argument("--tmem-socket", metavar="PATH",
                        help="reach tmemd over this unix socket instead of the port")
    parser.add_argument("--pool", choices=("persistent", "ephemeral"), default="persistent",
                        help="the region's tmem pool")
    parser.add_argument("--no-refill", action="store_true",
                        help="ephemeral pool: a page tmem dropped is lost (the run fails) "
                             "instead of being made again")
    parser.add_argument("--readahead", type=int, default=15,
                        help=f"pages filled beyond a sequential fault (0..{MAX_READAHEAD})")
    parser.add_argument("--seed", type=int, default=1, help="seed of the page contents")
    parser.add_argument("--run-dir", default=RUN_DIR, metavar="DIR",
                        help="where the counters are published for `tmem-agent status` "
                             "(DIR/uffd/PID.json)")
    parser.add_argument("--vm", default=None,
                        help="VM name in the hello; default: tmem.vm= on the kernel command "
                             "line, else the host name")


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every page checked out, 1 when one was wrong or lost."""
    if not 0 <= args.readahead <= MAX_READAHEAD:
        raise UsageError(f"memhog: --readahead must be 0..{MAX_READAHEAD}")
    if args.no_refill and args.pool == "persistent":
        raise UsageError("memhog: --no-refill is for --pool ephemeral")
    reason = kernel.probe()
    if reason is not None:
        raise CommandError(f"userfaultfd regions are not available here: {reason}")
    try:  # no such port: the OSError says so
        transport = greeted(lambda: open_transport(args.port, args.tmem_socket),
                            args.vm or default_vm_name(), read_boot_id(), os.urandom(16))
    except TransportError as exc:
        raise CommandError(f"tmemd: {exc}") from None
    try:
        store = TmemStore(transport, args.pool == "persistent")

        def daemon_view() -> dict[str, Any]:
            client = transport.stats()["client"]
            return {"pages": client.get("pages"), "zbytes": client.get("zbytes"),
                    "compression_ratio": round(client["pages"] * PAGE / client["zbytes"], 2)
                    if client.get("zbytes") else None}

        stats = process_stats()
        with StatsPublisher(stats, args.run_dir, command=f"memhog --size {args.size}"):
            result = hog(store, args.size, args.resident, verify=args.verify, seed=args.seed,
                         readahead=args.readahead, refill=not args.no_refill,
                         after=daemon_view, stats=stats)
    except (TransportError, StoreError) as exc:
        raise CommandError(f"tmemd: {exc}") from None
    finally:
        transport.close()
    print(json.dumps(result))
    return 0 if passed(result) else 1
