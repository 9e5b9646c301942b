"""``tmemd bench --dedup-share``: the corpus with duplicates, and the report's dedup section.

Only structure and relations are checked (speeds depend on the machine): dedup on holds fewer
zbud frames than off when pages repeat, every duplicate of a stored page is a hit, and nothing
is deduplicated without duplicates.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tmemd.cli import main
from tmemd.tools.benchdedup import UNCOMPRESSED_KINDS, with_duplicates
from tmemd.tools.corpus import make_corpus

PAGES = 800


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    argv = ["bench", "--pages", str(PAGES), "--repeat", "2", "--dedup-share", "0", "0.25",
            "--json", str(out)]
    assert main(argv) == 0
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def test_duplicates_replace_a_share_of_the_pages_with_compressible_ones() -> None:
    corpus = make_corpus(1000, 3)
    pages, count = with_duplicates(corpus, 0.2, 5)
    assert count == 200 and len(pages) == 1000
    changed = [i for i, (a, b) in enumerate(zip(corpus.pages, pages, strict=True)) if a != b]
    assert len(changed) <= count
    compressible = {p for p, k in zip(corpus.pages, corpus.kinds, strict=True)
                    if k not in UNCOMPRESSED_KINDS}
    assert all(pages[i] in compressible for i in changed)
    assert with_duplicates(corpus, 0.2, 5) == (pages, count)  # seeded
    assert with_duplicates(corpus, 0, 5) == (corpus.pages, 0)
    with pytest.raises(ValueError):
        with_duplicates(corpus, 1.0, 5)


def test_the_dedup_section_compares_off_and_on(report: dict[str, Any]) -> None:
    assert set(report["stores"]) == {"zbud", "xvmalloc"}  # the usual report is all there
    assert not any(key.startswith("dedup") for key in report["targets"])
    shares = report["dedup"]["shares"]
    assert set(shares) == {"0", "0.25"}
    none, some = shares["0"], shares["0.25"]
    assert none["duplicate_pages"] == 0 and none["on"]["dedup_hits"] == 0
    assert none["on"]["zbud_frames"] == none["off"]["zbud_frames"]
    assert some["duplicate_pages"] == PAGES // 4
    assert 0 < some["on"]["dedup_hits"] <= some["duplicate_pages"]
    assert some["on"]["dedup_saved_pages"] == some["on"]["dedup_hits"]
    assert some["on"]["zbud_frames"] < some["off"]["zbud_frames"]
    assert some["on"]["accepted_pages"] == some["off"]["accepted_pages"]
    for share in (none, some):
        for key in ("put_on_vs_off", "get_on_vs_off"):
            assert len(share[key]["rounds"]) == 2 and share[key]["median"] > 0
        assert share["frames_on_vs_off"] == round(
            share["on"]["host_frames"] / share["off"]["host_frames"], 4)


def test_a_bad_share_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--pages", "10", "--dedup-share", "1.5"]) == 2
    assert "--dedup-share: must be in [0, 1)" in capsys.readouterr().err
