"""Pages for a replay whose trace holds no contents: one deterministic page per content hash.

The agent records a content hash and how small zlib (level 1) made the page. A page is made
from a palette of generated pages (the project's corpus generator, :mod:`.pagegen`, plus
variants with a growing share of random bytes or of zeros, so every size from a nearly empty
page's to an incompressible one's has a close match), the palette page whose zlib-1 size is
nearest the recorded one, with the hash written into its first eight bytes: the same hash
always gives the same bytes (dedup and overwrites stay right), different hashes different bytes. A
same-filled page is made as one. Only the estimate is matched: the real codec's size of a
synthetic page differs from the real page's (see docs/trace.md).
"""

from __future__ import annotations

import bisect
import random
import zlib

from .. import PAGE_SIZE
from . import pagegen

PALETTE_SEED = 11
KINDS = ("memory", "text", "code", "binary")
PER_KIND = 64
STEPS = 16  # random-byte shares 0/16 .. 15/16 of a page


class PageSynth:
    """``page(hash, zsize, fill, same_filled)``; the palette is built on first use."""

    def __init__(self, seed: int = PALETTE_SEED) -> None:
        self.seed = seed
        self._sizes: list[int] = []
        self._pages: list[bytes] = []
        self.made = 0
        self._error = 0

    def _build(self) -> None:
        rng = random.Random(self.seed)
        base = pagegen.generate([k for k in KINDS for _ in range(PER_KIND)], rng)
        palette = []
        for i, page in enumerate(base):
            cut = PAGE_SIZE - PAGE_SIZE * (i % STEPS) // STEPS
            noisy = page[:cut] + pagegen.random_bytes(rng, PAGE_SIZE - cut)
            short = page[: PAGE_SIZE * (i % STEPS + 1) // (2 * STEPS)].ljust(PAGE_SIZE, b"\0")
            palette += [(len(zlib.compress(p, 1)), p) for p in (noisy, short)]
        palette.sort(key=lambda item: item[0])
        self._sizes = [size for size, _ in palette]
        self._pages = [page for _, page in palette]

    def page(self, chash: int, zsize: int, fill: int, same_filled: bool) -> bytes:
        if same_filled:
            return bytes((fill,)) * PAGE_SIZE
        if not self._pages:
            self._build()
        at = bisect.bisect_left(self._sizes, zsize)
        if at == len(self._sizes) or (at > 0 and zsize - self._sizes[at - 1]
                                       < self._sizes[at] - zsize):
            at -= 1
        self.made += 1
        self._error += abs(self._sizes[at] - zsize)
        return chash.to_bytes(8, "little") + self._pages[at][8:]

    @property
    def mean_error(self) -> float | None:
        """Mean |palette zlib-1 size - recorded| of the pages made (bytes)."""
        return round(self._error / self.made, 1) if self.made else None
