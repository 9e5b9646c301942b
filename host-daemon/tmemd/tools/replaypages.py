"""Pages for a replay whose trace holds no contents: one deterministic page per content hash.

The agent records a content hash and how small zlib (level 1) made the page. A page is made
from a palette of generated pages (the project's corpus generator, :mod:`.pagegen`, plus
variants with a growing share of random bytes or of zeros, so every size from a nearly empty
page's to an incompressible one's has a close match), the palette page whose zlib-1 size is
nearest the recorded one, with the hash written into its first eight bytes: the same hash
always gives the same bytes (dedup and overwrites stay right), different hashes different bytes. A
same-filled page is made as one. Only the estimate is matched: the real codec's size of a
synthetic page differs from the real page's (see docs/trace.md).

A version 2 trace estimates only a sample of the puts (one in ``estimate_every``, chosen by
content hash). A put without an estimate gets a size drawn from the sampled sizes near it in
the stream (the :data:`WINDOW` samples around it: compressibility changes as a run goes on),
picked by its hash; the first size drawn for a content is kept for it (up to
:data:`MAX_DRAWN` contents), so the same content gets the same size and page.
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
WINDOW = 32  # samples around a put its drawn size comes from
MAX_DRAWN = 1 << 22  # contents whose drawn size is remembered (then forgotten, all at once)


class PageSynth:
    """``page(hash, zsize, fill, same_filled)``; the palette is built on first use."""

    def __init__(self, seed: int = PALETTE_SEED,
                 samples: list[tuple[int, int]] | None = None) -> None:
        """``samples``: (put number, zlib-1 size) of the trace's estimated puts, in order
        (puts numbered from 0 in the order :meth:`page` is called, same-filled ones too)."""
        self.seed = seed
        self._sizes: list[int] = []
        self._pages: list[bytes] = []
        self.samples = [size for _, size in samples or []]
        self._sample_at = [at for at, _ in samples or []]
        self.puts = 0
        self.made = 0
        self.drawn = 0  # pages whose size was drawn from the samples (no estimate recorded)
        self._drawn: dict[int, int] = {}
        self._error = 0
        self._estimated = 0

    def drawn_size(self, chash: int, at: int) -> int:
        """A zlib-1 size for put number ``at``, recorded without one: one of the samples
        around it picked by its hash, or the size drawn for its content before (half a page
        when there are no samples at all)."""
        size = self._drawn.get(chash)
        if size is not None:
            return size
        if not self.samples:
            return PAGE_SIZE // 2
        mid = bisect.bisect_left(self._sample_at, at)
        low = max(0, min(mid - WINDOW // 2, len(self.samples) - WINDOW))
        window = self.samples[low : low + WINDOW]
        size = window[((chash * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF) >> 32) % len(window)]
        if len(self._drawn) >= MAX_DRAWN:
            self._drawn.clear()
        self._drawn[chash] = size
        return size

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

    def page(self, chash: int, zsize: int | None, fill: int, same_filled: bool) -> bytes:
        """The page for a put; ``zsize`` None: it was recorded without an estimate."""
        at = self.puts
        self.puts += 1
        if same_filled:
            return bytes((fill,)) * PAGE_SIZE
        if not self._pages:
            self._build()
        estimated = zsize is not None
        if zsize is None:
            zsize = self.drawn_size(chash, at)
            self.drawn += 1
        at = bisect.bisect_left(self._sizes, zsize)
        if at == len(self._sizes) or (at > 0 and zsize - self._sizes[at - 1]
                                       < self._sizes[at] - zsize):
            at -= 1
        self.made += 1
        if estimated:
            self._estimated += 1
            self._error += abs(self._sizes[at] - zsize)
        return chash.to_bytes(8, "little") + self._pages[at][8:]

    @property
    def mean_error(self) -> float | None:
        """Mean |palette zlib-1 size - recorded| of the pages made for estimated puts (bytes)."""
        return round(self._error / self._estimated, 1) if self._estimated else None
