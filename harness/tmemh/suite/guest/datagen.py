"""Page and file contents made from a seed, so a run can be repeated and verified.

Runs in the guest (standard library only). Real memory is neither all zeros nor all noise:
guest pages compress about 2:1 with lzo (docs/facts.md). :class:`ContentPool` builds a
thousand 512-byte segments of four kinds (text with a skewed vocabulary, arrays of small
records and pointers, mostly empty structures, already-compressed bytes) and makes a page by
joining eight segments picked at random, then stamping the page's number into it. The mix is
tuned so that lzo1x-1 compresses the pages about 2:1 (tests/unit checks it on the host).
Random pages, the second case, come from the same seed.
"""

from __future__ import annotations

import random
import struct

PAGE = 4096
SEGMENT = 512
SEGMENTS_PER_PAGE = PAGE // SEGMENT
POOL_BITS = 10  # 1024 segments: 512 KiB of material (made in ~2 s under TCG)
STAMP = struct.Struct("<QQ")
STAMP_MAGIC = 0x7E57_5EED

# Share of each kind in the pool, out of 16: text, records, sparse, noise.
MIX = (("text", 7), ("records", 4), ("sparse", 3), ("noise", 2))

VOCABULARY = 600
_LETTERS = "etaoinshrdlcumwfgypbvkjxqz"
# Lines of source code and logs: a function reuses a handful of names, as real text does.
_TEMPLATES = (
    "{a} = {b}({c}, {d});", "if ({a} == {b}) {{", "return {a};", "}}", "{a}->{b} = {c};",
    "for (i = 0; i < {a}; i++) {{", "/* {w} {w} {w} {w} */", "{a}({b}, {n});",
    "[{n}.{n}] {w}: {a} {b} {w} {n}", "{a} {w} {w} {b} {w} {c}.",
)


def _word(rng: random.Random) -> str:
    length = min(12, 2 + int(rng.expovariate(0.35)))
    # letters drawn with English-like skew: early letters of _LETTERS are more frequent
    return "".join(_LETTERS[min(25, int(rng.expovariate(0.18)))] for _ in range(length))


def _text_segment(rng: random.Random, vocabulary: list[str], weights: list[float]) -> bytes:
    names = rng.choices(vocabulary, weights, k=5)
    lines = []
    size = 0
    while size < SEGMENT:
        template = _TEMPLATES[rng.randrange(len(_TEMPLATES))]
        line = template.format(a=rng.choice(names), b=rng.choice(names), c=rng.choice(names),
                               d=rng.choice(names), w=rng.choices(vocabulary, weights)[0],
                               n=rng.randrange(1000))
        line = " " * (4 * rng.randrange(4)) + line + "\n"
        lines.append(line)
        size += len(line)
    return "".join(lines).encode()[:SEGMENT]


class ContentPool:
    """Segments made once from ``seed``; pages and file bodies are drawn from them."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self.seed = seed
        vocabulary = [_word(rng) for _ in range(VOCABULARY)]
        weights = [1.0 / (rank + 1) for rank in range(len(vocabulary))]  # Zipf-like
        kinds = [kind for kind, share in MIX for _ in range(share)]
        segments = []
        for index in range(1 << POOL_BITS):
            kind = kinds[index % len(kinds)]
            segments.append(self._segment(rng, kind, vocabulary, weights))
        self.segments: list[bytes] = segments
        self._rng = random.Random(seed ^ 0x5A5A_5A5A)

    @staticmethod
    def _segment(rng: random.Random, kind: str, vocabulary: list[str],
                 weights: list[float]) -> bytes:
        if kind == "text":
            return _text_segment(rng, vocabulary, weights)
        if kind == "records":
            base = rng.getrandbits(32) << 12 | 0x7F00_0000_0000
            out = bytearray()
            ident = rng.randrange(1 << 20)
            while len(out) < SEGMENT:
                ident += rng.randrange(1, 4)
                out += struct.pack("<IHHQQQ", ident, rng.randrange(4), rng.randrange(40),
                                   base + rng.randrange(16) * 64, 0, rng.randrange(3))
            return bytes(out[:SEGMENT])
        if kind == "sparse":
            out = bytearray(SEGMENT)
            for _ in range(rng.randrange(4, 24)):
                at = rng.randrange(0, SEGMENT - 8, 8)
                out[at:at + 8] = rng.getrandbits(64).to_bytes(8, "little")
            return bytes(out)
        return rng.randbytes(SEGMENT)  # noise: already-compressed data

    def page(self, number: int) -> bytearray:
        """The next realistic page (the pool's generator advances), stamped with ``number``."""
        picks = self._rng.getrandbits(POOL_BITS * SEGMENTS_PER_PAGE)
        mask = (1 << POOL_BITS) - 1
        segments = self.segments
        page = bytearray(b"".join(segments[(picks >> (POOL_BITS * i)) & mask]
                                  for i in range(SEGMENTS_PER_PAGE)))
        STAMP.pack_into(page, (number * 64) % (PAGE - STAMP.size), number, STAMP_MAGIC)
        return page

    def random_page(self, number: int) -> bytearray:
        """The next incompressible page, stamped with ``number``."""
        page = bytearray(self._rng.randbytes(PAGE))
        STAMP.pack_into(page, (number * 64) % (PAGE - STAMP.size), number, STAMP_MAGIC)
        return page

    def body(self, size: int) -> bytes:
        """``size`` bytes of realistic file contents (the pool's generator advances)."""
        pages, rest = divmod(size, PAGE)
        parts = [bytes(self.page(self._rng.getrandbits(31))) for _ in range(pages)]
        if rest:
            parts.append(bytes(self.page(self._rng.getrandbits(31)))[:rest])
        return b"".join(parts)

    def noise(self, size: int) -> bytes:
        """``size`` incompressible bytes (an already-compressed file member)."""
        return self._rng.randbytes(size)
