"""``tmem-agent memhog`` on the host: its page contents (reproducible, checksummed, about 2:1
with lzo), its phases through a real userfaultfd region on a dictionary store, a verifier that
names what is wrong, and its command line; the agent's size parser."""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence

import pytest
from uffd_fakes import DictStore

from tmem_agent import cli
from tmem_agent.tools import memhog
from tmem_agent.tools.memcontent import PAGE, PageMaker, diagnose
from tmem_agent.uffd import kernel
from tmem_agent.units import page_size_arg, parse_size

UNAVAILABLE = kernel.probe()
needs_uffd = pytest.mark.skipif(UNAVAILABLE is not None,
                                reason=f"userfaultfd is not available: {UNAVAILABLE}")


def test_pages_are_reproducible_distinct_and_checksummed() -> None:
    maker = PageMaker(7)
    pages = [maker.page(i, 1) for i in range(2000)]
    assert all(len(p) == PAGE for p in pages) and len(set(pages)) == len(pages)
    assert PageMaker(7).page(1234, 1) == pages[1234]  # the same bytes again
    assert PageMaker(8).page(1234, 1) != pages[1234]
    assert maker.page(5, 2) != pages[5]
    assert diagnose(pages[5], 5, 1) == "ok"


def test_pages_compress_like_memory_with_lzo() -> None:
    lzo = pytest.importorskip("lzo")
    makers = [PageMaker(1), PageMaker(2)]
    pages = [maker.page(i, 1) for maker in makers for i in range(3000)]
    sizes = [len(lzo.compress(p, 1, False)) for p in pages]
    ratio = len(pages) * PAGE / sum(sizes)
    assert 1.7 <= ratio <= 2.4  # real memory: about 2:1, not a pattern's 38:1
    assert max(sizes) <= 3584  # tmem keeps persistent pages up to 7/8 of a page
    assert statistics.pstdev(sizes) > 150  # pages differ, as real ones do


def test_the_verifier_says_what_is_wrong() -> None:
    maker = PageMaker(3)
    page = maker.page(10, 2)
    torn = page[:2000] + maker.page(10, 1)[2000:]
    assert diagnose(bytes(PAGE), 10, 2) == "zero"
    assert diagnose(torn, 10, 2) == "torn"
    assert diagnose(page[:100] + bytes([page[100] ^ 1]) + page[101:], 10, 2) == "torn"
    assert diagnose(maker.page(11, 2), 10, 2) == "misplaced"
    assert diagnose(maker.page(10, 1), 10, 2) == "stale"
    assert diagnose(maker.page(10, 3), 10, 2) == "other"


@needs_uffd
def test_memhog_writes_updates_and_verifies_through_a_region() -> None:
    store = DictStore()
    result = memhog.hog(store, 8 << 20, 2 << 20, verify=True, seed=3)
    assert memhog.passed(result), result["verify"]
    pages = (8 << 20) // PAGE
    assert result["verify"]["checked"] == pages + pages // memhog.UPDATE_SHARE
    assert result["zero_fills"] == pages and result["puts"] > pages // 2
    assert result["gets"] > pages // 2 and result["faults_wp"] > 0
    assert result["resident_max"] <= result["resident_budget_pages"] + 16
    assert set(result["phases"]) == {"write", "update", "verify"}
    assert all(p["faults_per_s"] > 0 for p in result["phases"].values())
    assert result["latency_us"]["fault"]["count"] > 0
    assert store.closed
    json.dumps(result)


@needs_uffd
def test_memhog_without_verify_only_writes() -> None:
    result = memhog.hog(DictStore(), 1 << 20, 256 << 10, verify=False)
    assert memhog.passed(result) and result["verify"] is None
    assert list(result["phases"]) == ["write"]


class CorruptingStore(DictStore):
    """Gives back a wrong page for some pages: page 7 torn, page 9 another page's bytes."""

    def get(self, pages: Sequence[int]) -> list[bytes | None]:
        got = super().get(pages)
        for i, page in enumerate(pages):
            if page == 7 and got[i] is not None:
                data = got[i]
                assert data is not None
                got[i] = data[:50] + b"?" + data[51:]
            if page == 9:
                got[i] = self.pages.get(300)
        return got


@needs_uffd
def test_memhog_catches_and_names_wrong_pages() -> None:
    result = memhog.hog(CorruptingStore(), 4 << 20, 1 << 20, verify=True, readahead=0)
    verdict = result["verify"]
    assert not memhog.passed(result) and verdict["mismatches"] >= 2
    assert {(7, "torn"), (9, "misplaced")} <= set(verdict["first"])


@needs_uffd
def test_memhog_ephemeral_pages_tmem_drops_are_made_again() -> None:
    store = DictStore(persistent=False)
    store.refuse = lambda page, data: page % 3 == 0  # as if tmem had no room
    result = memhog.hog(store, 4 << 20, 1 << 20, verify=True)
    assert memhog.passed(result) and result["refills"] > 0 and result["pool"] == "ephemeral"


@needs_uffd
def test_memhog_ephemeral_without_refill_fails_loudly() -> None:
    store = DictStore(persistent=False)
    store.reclaim = lambda page: page % 3 == 0  # tmem takes them, then drops them
    result = memhog.hog(store, 4 << 20, 1 << 20, verify=True, refill=False)
    assert not memhog.passed(result)
    assert result["lost_pages"] > 0 and result["verify"]["lost"] > 0
    assert result["verify"]["mismatches"] == 0  # lost, never wrong


@pytest.mark.parametrize(("argv", "message"), [
    (["memhog", "--resident", "1M"], "--size"),
    (["memhog", "--size", "12X", "--resident", "1M"], "not a size"),
    (["memhog", "--size", "1000", "--resident", "1M"], "multiple of 4 KiB"),
    (["memhog", "--size", "1M", "--resident", "1M", "--pool", "shared"], "--pool"),
    (["memhog", "--size", "1M", "--resident", "1M", "--readahead", "999"], "readahead"),
    (["memhog", "--size", "1M", "--resident", "1M", "--no-refill"], "ephemeral"),
])
def test_memhog_usage_errors_exit_2_in_one_line(argv: list[str], message: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tmem-agent: error: ") and err.count("\n") == 1 and message in err


def test_memhog_without_userfaultfd_says_why_in_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(kernel, "probe", lambda: "userfaultfd: Operation not permitted")
    assert cli.main(["memhog", "--size", "1M", "--resident", "256K"]) == 1
    assert capsys.readouterr().err == ("tmem-agent: error: userfaultfd regions are not "
                                       "available here: userfaultfd: Operation not "
                                       "permitted\n")


@needs_uffd
def test_memhog_without_its_port_fails_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["memhog", "--size", "1M", "--resident", "256K", "--port",
                     "org.absent"]) == 1
    assert capsys.readouterr().err == ("tmem-agent: error: no virtio-serial port named "
                                       "'org.absent'\n")


@pytest.mark.parametrize(("text", "size"), [
    ("4096", 4096), ("64K", 64 << 10), ("256M", 256 << 20), ("1G", 1 << 30), ("2T", 2 << 40),
    ("64k", 64 << 10), ("256MiB", 256 << 20), ("1GB", 1 << 30), (" 8M ", 8 << 20), ("0", 0),
])
def test_sizes_parse(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "-1M", "1.5G", "12X", "1 G B", "0x10", "1MM"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_region_sizes_are_whole_pages() -> None:
    assert page_size_arg("64K") == 65536
    for text in ("0", "100", "4097"):
        with pytest.raises(argparse.ArgumentTypeError, match="multiple of 4 KiB"):
            page_size_arg(text)
