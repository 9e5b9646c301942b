"""The page corpora: the synthetic one is the same bytes everywhere and compresses like memory.

The digest below pins ``build_corpus(2000, seed=0)``. If a change to the generators is meant
to change the pages, re-measure the figures in ``corpus.py``'s docstring and update both.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import lzo
import pytest

from tmemd import PAGE_SIZE
from tmemd.tools import corpus
from tmemd.tools.corpus import (
    COMPRESSIBLE_KINDS,
    HOST_FILES,
    SYNTHETIC,
    SYNTHETIC_SHARES,
    UnknownCorpusError,
    build_corpus,
    corpus_digest,
    describe_corpus,
    kind_counts,
    make_corpus,
)
from tmemd.tools.pagegen import Sampler, below, random_bytes, shuffle

PINNED_PAGES = 2000
PINNED_SHA256 = "a6d9bbb2b6847f35f569da3346f62211890a1693db2b8f2876ae658c4ea24a6e"
RATIO_BAND = (1.7, 2.6)  # lzo1x-1, total in / total out over the compressible kinds


@pytest.fixture(scope="module")
def pinned() -> corpus.Corpus:
    return make_corpus(PINNED_PAGES, seed=0)


def compress(page: bytes) -> int:
    return len(lzo.compress(page, 1, False))


def test_the_default_corpus_is_pinned_by_its_digest(pinned: corpus.Corpus) -> None:
    assert pinned.name == SYNTHETIC
    assert corpus_digest(pinned.pages) == PINNED_SHA256
    assert build_corpus(PINNED_PAGES) == pinned.pages  # the defaults: synthetic, seed 0


def test_the_synthetic_corpus_reads_no_files(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the synthetic corpus must not read the host's files")

    monkeypatch.setattr(os, "walk", refuse)
    monkeypatch.setattr(Path, "read_bytes", refuse)
    assert len(build_corpus(50, seed=1)) == 50


def test_pages_have_the_stated_kinds_in_the_stated_shares(pinned: corpus.Corpus) -> None:
    described = describe_corpus(pinned)
    assert described["name"] == SYNTHETIC and described["seed"] == 0
    assert described["pages"] == PINNED_PAGES
    assert described["sha256"] == PINNED_SHA256
    assert {k: v["share"] for k, v in described["kinds"].items()} == SYNTHETIC_SHARES
    assert all(len(page) == PAGE_SIZE for page in pinned.pages)
    for kind, page in zip(pinned.kinds, pinned.pages, strict=True):
        if kind == "zero":
            assert page == bytes(PAGE_SIZE)
        elif kind == "same-filled":
            assert page == bytes([page[0]]) * PAGE_SIZE and page[0] != 0
        elif kind == "random":
            assert compress(page) > PAGE_SIZE
        else:
            assert page.count(page[0]) != PAGE_SIZE, kind


def test_compressible_pages_compress_about_two_to_one_with_a_spread(
    pinned: corpus.Corpus,
) -> None:
    sizes = [compress(page) for kind, page in zip(pinned.kinds, pinned.pages, strict=True)
             if kind in COMPRESSIBLE_KINDS]
    ratio = len(sizes) * PAGE_SIZE / sum(sizes)
    assert RATIO_BAND[0] <= ratio <= RATIO_BAND[1], ratio
    share = {
        "under 1.5 KiB": sum(z < 1536 for z in sizes) / len(sizes),
        "2 to 3.5 KiB": sum(2048 <= z <= 3584 for z in sizes) / len(sizes),
        "over 3.5 KiB": sum(z > 3584 for z in sizes) / len(sizes),
    }
    assert share["under 1.5 KiB"] >= 0.15, share
    assert share["2 to 3.5 KiB"] >= 0.35, share
    assert share["over 3.5 KiB"] >= 0.005, share


def test_every_kind_is_generated_and_the_order_is_mixed(pinned: corpus.Corpus) -> None:
    assert set(pinned.kinds) == set(SYNTHETIC_SHARES)
    first_half = Counter(pinned.kinds[: PINNED_PAGES // 2])
    assert all(count > 0 for count in first_half.values()) and len(first_half) == 7


def test_another_seed_gives_other_pages(pinned: corpus.Corpus) -> None:
    other = make_corpus(PINNED_PAGES, seed=1)
    assert corpus_digest(other.pages) != corpus_digest(pinned.pages)
    distinct = [p for p in other.pages[:400] if p.count(p[0]) != PAGE_SIZE]
    assert not set(distinct) & set(pinned.pages)


def test_the_same_seed_gives_the_same_pages_again() -> None:
    assert build_corpus(300, seed=5) == build_corpus(300, seed=5)


@pytest.mark.parametrize("npages", [1, 7, 99, 1001])
def test_kind_counts_add_up_to_the_pages(npages: int) -> None:
    counts = kind_counts(npages, SYNTHETIC_SHARES)
    assert sum(counts.values()) == npages
    for kind, share in SYNTHETIC_SHARES.items():
        assert abs(counts[kind] - npages * share) < 1


def test_unknown_corpus_names_and_empty_corpora_are_refused() -> None:
    with pytest.raises(UnknownCorpusError, match="unknown corpus 'usr'.*synthetic, host-files"):
        make_corpus(10, source="usr")
    with pytest.raises(ValueError, match="at least one page"):
        make_corpus(0)


def test_host_files_is_a_named_extra_corpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cut from files, here files the test writes itself (never the host's own)."""
    (tmp_path / "a.txt").write_bytes(b"some text, " * 2000)
    (tmp_path / "b.bin").write_bytes(bytes(range(256)) * 64)
    monkeypatch.setattr(corpus, "FILE_SOURCES", (("text", (str(tmp_path),), 0.5),))
    made = make_corpus(40, seed=2, source=HOST_FILES)
    assert made.name == HOST_FILES and len(made.pages) == 40
    counts = Counter(made.kinds)
    assert counts["text"] == 9  # every whole page of those two files: 5 + 4
    assert counts["random"] == int(40 * corpus.HOST_RANDOM_SHARE)
    for kind, page in zip(made.kinds, made.pages, strict=True):
        assert len(page) == PAGE_SIZE
        if kind == "zero":
            assert page == bytes(PAGE_SIZE)
    assert describe_corpus(made)["kinds"]["text"] == {"pages": 9, "share": 0.225}


def test_the_random_helpers_are_plain_and_reproducible() -> None:
    import random

    rng = random.Random(4)
    assert len(random_bytes(rng, 10)) == 10 and random_bytes(rng, 0) == b""
    assert all(0 <= below(rng, 3) < 3 for _ in range(100))
    items = list(range(20))
    shuffle(rng, items)
    assert sorted(items) == list(range(20)) and items != list(range(20))
    sampler = Sampler(["a", "b"], [3.0, 1.0])
    draws = Counter(sampler.draw(rng, 4000))
    assert 0.7 < draws["a"] / 4000 < 0.8
    assert sampler.draw(rng, 1) in (["a"], ["b"])
