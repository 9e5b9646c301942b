"""A deterministic corpus of real 4 KiB pages for benchmarks and load tests.

Pages are cut from files on this machine (ELF binaries and libraries, text and documentation,
Python sources), so they compress like real memory does (about 2:1 with lzo), plus zero-filled
pages and random pages (incompressible) in fixed proportions. The same seed on the same machine
gives the same pages in the same order.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path

from .. import PAGE_SIZE

log = logging.getLogger(__name__)

# (name, directories to walk, share of the corpus). Zero and random pages take the remainder.
FILE_SOURCES: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("binary", ("/usr/bin", "/usr/lib/x86_64-linux-gnu"), 0.40),
    ("text", ("/usr/share/doc", "/usr/share/perl", "/usr/share/man", "/etc"), 0.20),
    ("python", ("/usr/lib/python3", "/usr/lib/python3.11"), 0.25),
)
ZERO_SHARE = 0.08
RANDOM_SHARE = 0.07
MAX_FILES_PER_SOURCE = 4000


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


def build_corpus(npages: int, seed: int = 0) -> list[bytes]:
    """Return ``npages`` pages: real file pages, zero pages and random pages, shuffled."""
    if npages <= 0:
        raise ValueError("a corpus needs at least one page")
    rng = random.Random(seed)
    pages: list[bytes] = []
    for name, dirs, share in FILE_SOURCES:
        want = int(npages * share)
        got = 0
        for page in _file_pages(_files_under(dirs), rng):
            if got >= want:
                break
            pages.append(page)
            got += 1
        if got < want:
            log.warning("corpus: only %d of %d %s pages found", got, want, name)
    pages.extend(bytes(PAGE_SIZE) for _ in range(int(npages * ZERO_SHARE)))
    while len(pages) < npages - int(npages * RANDOM_SHARE):
        pages.append(bytes(PAGE_SIZE))  # sources ran short: pad with zero pages
    while len(pages) < npages:
        pages.append(rng.randbytes(PAGE_SIZE))
    rng.shuffle(pages)
    return pages


OBJECT_PAGES = 512  # pages per object, as a swap device spread over objects would lay them out


def corpus_handles(npages: int) -> list[tuple[tuple[int, int, int], int]]:
    """The (oid, index) under which benchmarks and load tests store page ``i`` of a corpus."""
    return [((i // OBJECT_PAGES, 0, 0), i % OBJECT_PAGES) for i in range(npages)]


def describe_corpus(pages: list[bytes]) -> dict[str, int]:
    zero = bytes(PAGE_SIZE)
    return {"pages": len(pages), "zero_pages": sum(1 for p in pages if p == zero)}
