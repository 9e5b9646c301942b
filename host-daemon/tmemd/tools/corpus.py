"""Page corpora for benchmarks, load tests and density tests.

Two corpora, chosen by name:

``synthetic`` (the default)
    Generated from the seed alone (see ``pagegen``): the same bytes on every machine and every
    Python >= 3.11, so a test can pin its digest. The page kinds and their shares
    (``SYNTHETIC_SHARES``; the page counts are the shares rounded by largest remainder, the
    order is a seeded shuffle):

    =============  =====  =========================================================
    memory          34 %  heap and struct arrays, integer arrays, partly used pages
    text            15 %  prose with recurring phrases, syslog-like lines
    code            11 %  Python-like and C-like source lines
    binary          17 %  machine-code-like streams, string and relocation tables
    zero            10 %  all zero
    same-filled      4 %  one repeated non-zero byte (half of them 0xff)
    random           9 %  incompressible (lzo makes them 4116 bytes)
    =============  =====  =========================================================

    Measured with lzo1x-1 (``lzo.compress(page, 1, False)``) on ``build_corpus(20000, 0)``
    (seeds 1 and 7 give the same figures within 1 %): the compressible kinds (memory, text,
    code, binary) compress 2.00:1 overall (total bytes in over total bytes out). Their
    compressed sizes: 10th percentile 886 B, quartiles 1,457 / 2,108 / 2,709 B, 90th
    percentile 2,905 B; 28 % under 1.5 KiB, 47 % under 2 KiB, 50 % from 2 to 3.5 KiB, 3 % over
    3.5 KiB (1.3 % over zbud's 3,968 B limit). Per kind: memory 2.95:1 (median 1,359 B), text
    1.58:1 (2,700 B), code 1.93:1 (2,197 B), binary 1.43:1 (2,741 B; 10 % over 3,570 B). With
    the zero and same-filled pages, 47 % of all pages fit a zbud buddy (31 chunks) or need no
    frame. 20,000 pages build in about 1.6 s here; the digest is the same on Python 3.11, 3.12
    and 3.13.

``host-files``
    Whole pages cut from this machine's files (ELF binaries and libraries, documentation,
    Python sources) plus zero and random pages. Real content, but it differs from machine to
    machine (one measured 1.65:1, another 2.3:1), so nothing may depend on its exact figures.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import PAGE_SIZE
from . import pagegen

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
HOST_FILES = "host-files"
CORPUS_NAMES = (SYNTHETIC, HOST_FILES)
DEFAULT_CORPUS = SYNTHETIC

SYNTHETIC_SHARES: dict[str, float] = {
    "memory": 0.34,
    "text": 0.15,
    "code": 0.11,
    "binary": 0.17,
    "zero": 0.10,
    "same-filled": 0.04,
    "random": 0.09,
}
# The kinds whose pages go through the compressor and usually shrink.
COMPRESSIBLE_KINDS = ("memory", "text", "code", "binary")

# host-files: (kind, directories to walk, share). Zero and random pages take the remainder.
FILE_SOURCES: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("binary", ("/usr/bin", "/usr/lib/x86_64-linux-gnu"), 0.40),
    ("text", ("/usr/share/doc", "/usr/share/perl", "/usr/share/man", "/etc"), 0.20),
    ("python", ("/usr/lib/python3", "/usr/lib/python3.11"), 0.25),
)
HOST_ZERO_SHARE = 0.08
HOST_RANDOM_SHARE = 0.07
MAX_FILES_PER_SOURCE = 4000

OBJECT_PAGES = 512  # pages per object, as a swap device spread over objects would lay them out


class UnknownCorpusError(ValueError):
    """A corpus name that is not one of ``CORPUS_NAMES``."""


@dataclass(frozen=True)
class Corpus:
    """Pages in order, the kind of each page, and what made them."""

    name: str
    seed: int
    pages: list[bytes]
    kinds: list[str]


def kind_counts(npages: int, shares: dict[str, float]) -> dict[str, int]:
    """Pages of each kind: the shares of ``npages`` rounded so that they add up to it.

    Each kind gets the floor of its exact share; the pages left over go to the kinds with the
    largest fractional parts (ties in the order of ``shares``).
    """
    total = sum(shares.values())
    exact = {kind: npages * share / total for kind, share in shares.items()}
    counts = {kind: int(value) for kind, value in exact.items()}
    left = npages - sum(counts.values())
    by_fraction = sorted(shares, key=lambda kind: counts[kind] - exact[kind])
    for kind in by_fraction[:left]:
        counts[kind] += 1
    return counts


def synthetic_corpus(npages: int, seed: int = 0) -> Corpus:
    """``npages`` generated pages in the ``SYNTHETIC_SHARES`` (the same bytes everywhere)."""
    rng = random.Random(seed)
    vocab = pagegen.Vocabulary.build(rng)
    kinds = [kind for kind, count in kind_counts(npages, SYNTHETIC_SHARES).items()
             for _ in range(count)]
    pagegen.shuffle(rng, kinds)
    makers = pagegen.GENERATORS
    pages = [makers[kind](rng, vocab) for kind in kinds]
    return Corpus(SYNTHETIC, seed, pages, kinds)


def _files_under(dirs: tuple[str, ...]) -> list[Path]:
    found: list[Path] = []
    for top in dirs:
        for root, subdirs, files in os.walk(top):
            subdirs.sort()
            for name in sorted(files):
                path = Path(root, name)
                if path.is_file() and not path.is_symlink():
                    found.append(path)
                if len(found) >= MAX_FILES_PER_SOURCE:
                    return found
    return found


def _file_pages(files: list[Path], rng: random.Random) -> Iterator[bytes]:
    """Whole pages from the files in a seeded random order; a short tail page is skipped."""
    order = files[:]
    rng.shuffle(order)
    for path in order:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        for off in range(0, len(data) - PAGE_SIZE + 1, PAGE_SIZE):
            yield data[off : off + PAGE_SIZE]


def host_files_corpus(npages: int, seed: int = 0) -> Corpus:
    """Pages cut from this machine's files, plus zero and random pages, shuffled.

    The same seed on the same machine gives the same pages; another machine gives others.
    """
    rng = random.Random(seed)
    tagged: list[tuple[str, bytes]] = []
    for kind, dirs, share in FILE_SOURCES:
        want = int(npages * share)
        got = 0
        for page in _file_pages(_files_under(dirs), rng):
            if got >= want:
                break
            tagged.append((kind, page))
            got += 1
        if got < want:
            log.warning("corpus: only %d of %d %s pages found", got, want, kind)
    tagged.extend(("zero", bytes(PAGE_SIZE)) for _ in range(int(npages * HOST_ZERO_SHARE)))
    while len(tagged) < npages - int(npages * HOST_RANDOM_SHARE):
        tagged.append(("zero", bytes(PAGE_SIZE)))  # sources ran short: pad with zero pages
    while len(tagged) < npages:
        tagged.append(("random", rng.randbytes(PAGE_SIZE)))
    rng.shuffle(tagged)
    return Corpus(HOST_FILES, seed, [page for _, page in tagged], [kind for kind, _ in tagged])


def make_corpus(npages: int, seed: int = 0, source: str = DEFAULT_CORPUS) -> Corpus:
    """The corpus named ``source`` with ``npages`` pages."""
    if npages <= 0:
        raise ValueError("a corpus needs at least one page")
    if source == SYNTHETIC:
        return synthetic_corpus(npages, seed)
    if source == HOST_FILES:
        return host_files_corpus(npages, seed)
    raise UnknownCorpusError(
        f"unknown corpus {source!r}: choose one of {', '.join(CORPUS_NAMES)}")


def build_corpus(npages: int, seed: int = 0, source: str = DEFAULT_CORPUS) -> list[bytes]:
    """Just the pages of ``make_corpus(npages, seed, source)``."""
    return make_corpus(npages, seed, source).pages


def corpus_digest(pages: list[bytes]) -> str:
    """sha256 (hex) of the pages' bytes, concatenated in order."""
    digest = hashlib.sha256()
    for page in pages:
        digest.update(page)
    return digest.hexdigest()


def describe_corpus(corpus: Corpus) -> dict[str, Any]:
    """What a report says about its corpus: name, seed, size, kinds and their shares, digest."""
    counts = Counter(corpus.kinds)
    npages = len(corpus.pages)
    return {
        "name": corpus.name,
        "seed": corpus.seed,
        "pages": npages,
        "sha256": corpus_digest(corpus.pages),
        "kinds": {kind: {"pages": count, "share": round(count / npages, 4)}
                  for kind, count in sorted(counts.items())},
    }


def corpus_handles(npages: int) -> list[tuple[tuple[int, int, int], int]]:
    """The (oid, index) under which benchmarks and load tests store page ``i`` of a corpus."""
    return [((i // OBJECT_PAGES, 0, 0), i % OBJECT_PAGES) for i in range(npages)]
