"""userfaultfd regions on the host, for real (root may use userfaultfd here), with tmem replaced
by a dictionary: eviction and faults back, zero pages, clean pages, ephemeral misses and the
refill function, refusals, lost pages, concurrent writers during eviction, bad arguments."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from uffd_fakes import DictStore

from tmem_agent.uffd import kernel
from tmem_agent.uffd.region import PageLost, Region, RegionError
from tmem_agent.uffd.stats import UffdStats, process_stats
from tmem_agent.uffd.store import StoreError

UNAVAILABLE = kernel.probe()
pytestmark = [pytest.mark.skipif(UNAVAILABLE is not None,
                                 reason=f"userfaultfd is not available: {UNAVAILABLE}"),
              pytest.mark.timeout(120)]

PAGE = 4096
PAGES = 1024
BUDGET = PAGES // 4


def content(page: int, generation: int = 1) -> bytes:
    return hashlib.sha256(b"%d/%d" % (page, generation)).digest() * (PAGE // 32)


@pytest.fixture
def store() -> DictStore:
    return DictStore()


@pytest.fixture
def region(store: DictStore) -> Iterator[Region]:
    with Region(PAGES * PAGE, BUDGET * PAGE, store) as r:
        yield r


def write_all(region: Region, generation: int = 1) -> None:
    for page in range(region.pages):
        region.write(page * PAGE, content(page, generation))


def region_rss_pages(region: Region) -> int:
    """Resident pages of the region's mapping, as the kernel counts them."""
    start = f"{region.address:x}-"
    with open("/proc/self/smaps") as smaps:
        inside = False
        for line in smaps:
            if "-" in line.split()[0] and not line.split()[0].endswith(":"):
                inside = line.startswith(start)
            elif inside and line.startswith("Rss:"):
                return int(line.split()[1]) // 4
    raise AssertionError("the region's mapping is not in /proc/self/smaps")


def test_pages_evicted_to_the_store_fault_back_intact(region: Region,
                                                      store: DictStore) -> None:
    write_all(region)
    slack = region.readahead + 1
    assert region.resident_pages <= BUDGET
    assert region_rss_pages(region) <= BUDGET + slack
    assert len(store.pages) >= PAGES - BUDGET  # the rest went to tmem
    for page in range(PAGES):
        assert region.read(page * PAGE, PAGE) == content(page), page
    counts = region.stats.counts
    assert counts["zero_fills"] == PAGES  # every first touch
    assert counts["copies"] >= PAGES - BUDGET and counts["gets"] == counts["copies"]
    assert counts["evictions"] > PAGES and counts["lost_pages"] == 0
    assert region.counters()["region"]["resident_max"] <= BUDGET + slack
    assert region_rss_pages(region) <= BUDGET + slack


def test_partial_and_unaligned_accesses(region: Region) -> None:
    write_all(region)
    data = bytes(range(256)) * 40  # 10 KiB across page boundaries
    region.write(3 * PAGE + 100, data)
    write_all_but = [p for p in range(PAGES) if p not in (3, 4, 5)]
    for page in write_all_but[::7]:  # push pages 3..5 out
        region.read(page * PAGE, 16)
    assert region.read(3 * PAGE + 100, len(data)) == data
    assert region.read(3 * PAGE, 100) == content(3)[:100]
    assert region.read(0, 0) == b""


def test_clean_pages_drop_without_puts_and_a_write_after_a_fill_survives(
        region: Region, store: DictStore) -> None:
    write_all(region)
    for page in range(PAGES):  # every page filled from tmem, the dirty rest put
        region.read(page * PAGE, 8)
    puts = len(store.puts)
    for page in range(PAGES):  # pages come back clean: dropping them needs no put
        assert region.read(page * PAGE, PAGE) == content(page)
    assert len(store.puts) == puts
    assert region.stats.counts["clean_drops"] > PAGES // 2
    region.write(7 * PAGE + 5, b"changed")  # page 7 came from tmem write-protected
    assert region.stats.counts["wp_resolved"] >= 1
    for page in range(8, PAGES):
        region.read(page * PAGE, 8)
    assert store.puts[puts:].count(7) == 1  # the write made it dirty: put once more
    expected = content(7)[:5] + b"changed" + content(7)[12:]
    assert region.read(7 * PAGE, PAGE) == expected


def test_without_clean_tracking_every_drop_is_a_put(store: DictStore) -> None:
    with Region(PAGES * PAGE, BUDGET * PAGE, store, track_clean=False) as region:
        write_all(region)
        for page in range(PAGES):
            assert region.read(page * PAGE, PAGE) == content(page)
        counts = region.stats.counts
        assert counts["clean_drops"] == 0 and counts["wp_resolved"] == 0
        assert counts["puts"] == counts["evictions"]


def test_never_written_pages_are_zero_pages_and_zero_pages_are_not_put(
        region: Region, store: DictStore) -> None:
    for page in range(PAGES):
        assert region.read(page * PAGE, PAGE) == bytes(PAGE)
    counts = region.stats.counts
    assert counts["zero_fills"] == PAGES and counts["gets"] == 0 and store.puts == []
    assert counts["zero_drops"] > 0 and counts["evictions"] == counts["zero_drops"]
    region.write(0, content(0))  # page 0 gets a copy in tmem, then becomes zero again
    for page in range(1, PAGES):
        region.read(page * PAGE, 1)
    assert 0 in store.pages
    region.write(0, bytes(PAGE))
    for page in range(1, PAGES):
        region.read(page * PAGE, 1)
    assert 0 in store.flushed and 0 not in store.pages  # the stale copy is forgotten
    assert region.read(0, PAGE) == bytes(PAGE)


def test_clock_keeps_a_page_in_use_resident(region: Region, store: DictStore) -> None:
    write_all(region)  # everything written once: the hand has been round
    hot = 5
    gets = len(store.gets)
    for page in range(PAGES):
        region.read(page * PAGE, 8)  # a stream through the whole region ...
        region.read(hot * PAGE, 8)  # ... and one page used between every access
    # The hot page came back once and then had a second chance whenever the hand came by.
    assert store.gets[gets:].count(hot) == 1
    assert len(store.gets) - gets > PAGES // 2


def test_ephemeral_misses_call_the_refill_function() -> None:
    store = DictStore(persistent=False)
    asked: list[int] = []

    def refill(page: int) -> bytes:
        asked.append(page)
        return content(page)

    with Region(PAGES * PAGE, BUDGET * PAGE, store, refill=refill) as region:
        write_all(region)
        dropped = sorted(store.pages)[::3]
        for page in dropped:  # tmem reclaims these
            del store.pages[page]
        for page in range(PAGES):
            assert region.read(page * PAGE, PAGE) == content(page)
        assert set(asked) == set(dropped)
        assert region.stats.counts["refills"] == len(asked)
        assert region.stats.counts["get_misses"] >= len(dropped)
        # Ephemeral gets are exclusive: pages read back are not in tmem any more.
        assert not set(store.pages) & set(range(PAGES)) - set(store.puts)


def test_ephemeral_refusals_drop_the_page_when_a_refill_can_make_it_again() -> None:
    store = DictStore(persistent=False)
    store.refuse = lambda page, data: page % 2 == 0
    with Region(PAGES * PAGE, BUDGET * PAGE, store, refill=content) as region:
        write_all(region)
        assert region.resident_pages <= BUDGET
        for page in range(PAGES):
            assert region.read(page * PAGE, PAGE) == content(page)
        assert region.stats.counts["refills"] >= (PAGES - BUDGET) // 2
        assert region.stats.counts["puts_refused"] > 0


def test_an_ephemeral_miss_without_refill_fails_loudly_until_rewritten() -> None:
    store = DictStore(persistent=False)
    with Region(PAGES * PAGE, BUDGET * PAGE, store) as region:
        write_all(region)
        del store.pages[10]
        with pytest.raises(PageLost) as raised:
            region.read(10 * PAGE + 100, 50)
        assert raised.value.pages == [10] and region.lost_pages == [10]
        with pytest.raises(PageLost):  # still lost, also for a partial write
            region.write(10 * PAGE, b"half a page")
        assert region.read(11 * PAGE, PAGE) == content(11)  # its neighbours are fine
        region.write(10 * PAGE, content(10, 2))  # a whole page written: good again
        assert region.read(10 * PAGE, PAGE) == content(10, 2)
        assert region.lost_pages == [] and region.stats.counts["lost_pages"] == 1


def test_a_persistent_page_tmem_lost_raises(region: Region, store: DictStore) -> None:
    write_all(region)
    del store.pages[3]
    with pytest.raises(PageLost, match="1 page"):
        region.read(0, 8 * PAGE)


def test_refused_pages_stay_resident_and_intact(region: Region, store: DictStore) -> None:
    refused = set(range(0, PAGES, 5))
    store.refuse = lambda page, data: page in refused
    write_all(region)
    assert region.stats.counts["puts_refused"] >= len(refused) - BUDGET
    assert region.resident_pages > BUDGET  # over budget, as the counters say
    for page in range(PAGES):
        assert region.read(page * PAGE, PAGE) == content(page)
    assert not refused & set(store.pages)


def test_a_broken_link_keeps_pages_and_loses_only_what_it_held(
        region: Region, store: DictStore) -> None:
    write_all(region)
    store.fail_puts = True
    changed = range(BUDGET // 2)
    for page in changed:  # dirty pages whose puts now fail: they stay
        region.write(page * PAGE, content(page, 2))
    assert region.stats.counts["tmem_errors"] > 0
    assert region.resident_pages > BUDGET
    store.fail_gets = StoreError("the link is down")
    with pytest.raises(PageLost):  # a page only tmem held
        region.read((PAGES - BUDGET - 1) * PAGE, 8)
    for page in changed:  # still resident, still right
        assert region.read(page * PAGE, PAGE) == content(page, 2)


def test_concurrent_writers_lose_no_write_while_their_pages_are_evicted() -> None:
    """Four threads rewrite and check their own pages while a budget of 8 pages keeps the
    handler evicting exactly those pages: a write between copy-out and drop would be lost."""
    store = DictStore()
    store.latency = 0.0002  # writers run between an eviction's copy and its drop
    threads, per_thread, rounds = 4, 12, 150
    errors: list[str] = []
    with Region(threads * per_thread * PAGE, 8 * PAGE, store, readahead=0,
                evict_batch=4) as region:

        def writer(t: int) -> None:
            mine = range(t * per_thread, (t + 1) * per_thread)
            for n in range(1, rounds + 1):
                for page in mine:
                    region.write(page * PAGE, content(page, n))
                    if region.read(page * PAGE, PAGE) != content(page, n):
                        errors.append(f"page {page} round {n}")
                        return

        workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(100)
        assert not any(w.is_alive() for w in workers)
        assert errors == []
        for page in range(threads * per_thread):
            assert region.read(page * PAGE, PAGE) == content(page, rounds)
        assert region.stats.counts["evictions"] > rounds


LOCKED_PROCESS = r"""
import ctypes, json, sys
from uffd_fakes import DictStore
from test_uffd_region import region_rss_pages
from tmem_agent.uffd.region import Region
assert ctypes.CDLL(None).mlockall(3) == 0  # MCL_CURRENT | MCL_FUTURE, as the agent hardens
with Region(16 << 20, 1 << 20, DictStore()) as region:
    fresh = region_rss_pages(region)
    for page in range(region.pages):
        region.write(page * 4096, bytes([page % 251 + 1]) * 4096)
    intact = all(region.read(page * 4096, 4096) == bytes([page % 251 + 1]) * 4096
                 for page in range(region.pages))
    print(json.dumps({"fresh": fresh, "rss": region_rss_pages(region), "intact": intact,
                      "evictions": region.stats.counts["evictions"]}))
"""


def test_a_region_stays_lazy_in_a_process_that_locks_its_future_memory() -> None:
    """Under mlockall(MCL_FUTURE) a new mapping is locked and populated at once: the region
    unlocks its own before any page is there, so the budget still holds."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", LOCKED_PROCESS], capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["fresh"] == 0 and found["intact"] and found["evictions"] > 0
    assert found["rss"] <= 256 + 64


def test_raw_access_without_the_gil_works(region: Region) -> None:
    write_all(region)
    out = ctypes.create_string_buffer(PAGE)
    ctypes.memmove(out, region.address + 9 * PAGE, PAGE)  # memmove drops the GIL
    assert out.raw == content(9)


def test_a_failed_handler_makes_accesses_raise_instead_of_hanging(
        region: Region, store: DictStore) -> None:
    write_all(region)
    store.fail_gets = ZeroDivisionError("a bug")
    with pytest.raises(RegionError, match="fault handler failed"):
        region.read(0, PAGE)
    with pytest.raises(RegionError):
        region.write(PAGES * PAGE - PAGE, b"x")


def test_close_closes_the_store_and_later_access_is_refused(store: DictStore) -> None:
    region = Region(16 * PAGE, 4 * PAGE, store).open()
    region.write(0, b"x")
    region.close()
    assert store.closed and region.address == 0
    with pytest.raises(RegionError, match="not open"):
        region.read(0, 1)
    region.close()  # twice is fine
    with pytest.raises(RegionError, match="opened once"):
        region.open()


def test_regions_sharing_counters_add_up_and_give_their_gauges_back() -> None:
    shared = UffdStats()
    with Region(64 * PAGE, 16 * PAGE, DictStore(), stats=shared) as a, \
            Region(32 * PAGE, 16 * PAGE, DictStore(), stats=shared) as b:
        for region in (a, b):
            write_all(region)
        snap = json.loads(json.dumps(shared.snapshot()))  # what a status document shows
        assert snap["gauges"]["regions"] == 2 and snap["gauges"]["region_pages"] == 96
        assert snap["gauges"]["budget_pages"] == 32
        # the handler thread may still be evicting: the gauge is bounded, not pinned to a moment
        assert 0 < snap["gauges"]["resident_pages"] <= 96
        assert snap["counters"]["zero_fills"] >= 96 and snap["counters"]["evictions"] > 0
        assert snap["latency_us"]["fault"]["count"] > 0
    assert shared.gauges["regions"] == 0 and shared.gauges["resident_pages"] == 0
    assert process_stats() is process_stats()


@pytest.mark.parametrize(("size", "budget", "options", "message"), [
    (0, PAGE, {}, "size"),
    (PAGE + 1, PAGE, {}, "size"),
    (4 * PAGE, PAGE - 1, {}, "budget"),
    (4 * PAGE, PAGE, {"readahead": -1}, "readahead"),
    (4 * PAGE, PAGE, {"readahead": 256}, "readahead"),
    (4 * PAGE, PAGE, {"evict_batch": 0}, "evict_batch"),
    (4 * PAGE, PAGE, {"refill": content}, "ephemeral"),
])
def test_bad_arguments_are_refused(size: int, budget: int, options: dict[str, object],
                                   message: str, store: DictStore) -> None:
    with pytest.raises(ValueError, match=message):
        Region(size, budget, store, **options)  # type: ignore[arg-type]


def test_accesses_outside_the_region_are_refused(region: Region) -> None:
    for offset, length in ((-1, 1), (PAGES * PAGE, 1), (PAGES * PAGE - 1, 2)):
        with pytest.raises(ValueError, match="outside"):
            region.read(offset, length)
        with pytest.raises(ValueError, match="outside"):
            region.write(offset, b"x" * length)


def test_kernel_layouts_match_linux_userfaultfd_h() -> None:
    assert ctypes.sizeof(kernel.UffdioApi) == 24 and kernel.UFFDIO_API == 0xC018AA3F
    assert ctypes.sizeof(kernel.UffdioRegister) == 32 and kernel.UFFDIO_REGISTER == 0xC020AA00
    assert kernel.UFFDIO_UNREGISTER == 0x8010AA01 and kernel.UFFDIO_WAKE == 0x8010AA02
    assert ctypes.sizeof(kernel.UffdioCopy) == 40 and kernel.UFFDIO_COPY == 0xC028AA03
    assert kernel.UFFDIO_ZEROPAGE == 0xC020AA04 and kernel.UFFDIO_WRITEPROTECT == 0xC018AA06
    assert kernel.MSG_SIZE == 32
