"""Page contents for ``memhog``: like the memory of a running program, checksummed, and the same
bytes for the same (seed, page, generation) on every machine.

Real memory compresses about 2:1 with lzo, page by page; a repeated pattern (~38:1) flatters any
compressed store. So the pages here are built from templates of the kinds a process holds:
log and program text, arrays of C structs (pointers sharing their high bits, small integers,
flags, short names), integer arrays, pointer tables, and pages only partly in use. Each page
is one template rotated by a per-page amount, stamped with its number and generation at every
512-byte sector, and headed by a checksum:

    b"MHOG" | page u32 | generation u32 | seed u32 | crc32 of bytes 20.. u32 | body ...

so a wrong page says what it is: a torn or corrupted one fails its checksum, a misplaced one
names another page, a stale one an older generation. Templates come from ``random.Random``
(seeded), built once; a page then costs a rotation, eight stamps and a CRC.
"""

from __future__ import annotations

import random
import struct
import zlib

PAGE = 4096
HEADER = struct.Struct("<4sIIII")
MAGIC = b"MHOG"
STAMP = struct.Struct("<IHH")  # page, generation, sector
SECTOR = 512
TEMPLATES = 96

_LEVELS = ("INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR")
_KINDS = ("log", "code", "structs", "ints", "pointers", "mixed", "sparse")


def _words(rng: random.Random, count: int) -> list[str]:
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    words = []
    for _ in range(count):
        size = 2 + int(rng.random() ** 2 * 9)
        words.append("".join(letters[int(rng.random() ** 1.6 * 26)] for _ in range(size)))
    return words


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.vocab = _words(self.rng, 600)
        self.heap = 0x0000_5555_5556_0000 + (self.rng.getrandbits(20) << 12)
        self.stack = 0x0000_7FFC_0000_0000 + (self.rng.getrandbits(28) << 4)

    def word(self) -> str:
        return self.vocab[int(self.rng.random() ** 3 * len(self.vocab))]

    def log_text(self, size: int) -> bytes:
        rng, out = self.rng, []
        total = 0
        t = rng.getrandbits(16)
        while total < size:
            t += rng.getrandbits(6)
            words = " ".join(self.word() for _ in range(2 + rng.getrandbits(2)))
            line = (f"2024-05-{1 + t // 86400 % 28:02d} {t // 3600 % 24:02d}:{t // 60 % 60:02d}:"
                    f"{t % 60:02d}.{rng.getrandbits(10) % 1000:03d} "
                    f"{_LEVELS[rng.getrandbits(8) % len(_LEVELS)]:5} "
                    f"[{self.word()}-{rng.getrandbits(3)}] {self.word()}: {words} "
                    f"status=ok took {rng.getrandbits(7)} ms\n")
            out.append(line)
            total += len(line)
        return "".join(out).encode()[:size]

    def code_text(self, size: int) -> bytes:
        rng, out = self.rng, []
        total, depth = 0, 0
        keywords = ("if", "for", "return", "while", "const", "static", "int", "struct", "else")
        while total < size:
            depth = max(0, min(5, depth + rng.getrandbits(2) - 1))
            ident = "_".join(self.word() for _ in range(1 + rng.getrandbits(1)))
            kw = keywords[rng.getrandbits(4) % len(keywords)]
            line = (" " * 4 * depth + f"{kw} {ident}({self.word()}, {rng.getrandbits(8)});"
                    f"  /* {self.word()} {self.word()} */\n")
            out.append(line)
            total += len(line)
        return "".join(out).encode()[:size]

    def structs(self, size: int) -> bytes:
        rng, out = self.rng, bytearray()
        record = struct.Struct("<QQIHHQ16s")  # next, prev, id, flags, refs, length, name
        ident = rng.getrandbits(20)
        while len(out) < size:
            ident += 1 + rng.getrandbits(2)
            nxt = self.heap + (rng.getrandbits(16) << 6)
            name = self.word().encode()[:15]
            out += record.pack(nxt, nxt - 64 * rng.getrandbits(3), ident,
                               (1, 3, 5, 0x11)[rng.getrandbits(2)], rng.getrandbits(2),
                               rng.getrandbits(12), name)
        return bytes(out[:size])

    def ints(self, size: int) -> bytes:
        rng = self.rng
        values: list[int] = []
        while len(values) < size // 4:  # counters and sizes: small, often repeated, in runs
            value = int(rng.random() ** 4 * 2000)
            values += [value + k * rng.getrandbits(1) for k in range(1 + rng.getrandbits(3))]
        values = values[: size // 4]
        return struct.pack(f"<{len(values)}I", *values)

    def pointers(self, size: int) -> bytes:
        rng = self.rng
        bases = (self.heap, self.stack, 0x0000_7F3A_1C00_0000)
        values = [bases[rng.getrandbits(2) % 3] + (rng.getrandbits(22) << 4)
                  if rng.getrandbits(3) else rng.getrandbits(9) for _ in range(size // 8)]
        return struct.pack(f"<{len(values)}Q", *values)

    def template(self, kind: str) -> bytes:
        rng = self.rng
        if kind == "log":
            body = self.log_text(PAGE)
        elif kind == "code":
            body = self.code_text(PAGE)
        elif kind == "structs":
            body = self.structs(PAGE)
        elif kind == "ints":
            body = self.ints(PAGE)
        elif kind == "pointers":
            body = self.pointers(PAGE)
        elif kind == "mixed":
            split = 1024 + 512 * rng.getrandbits(2)
            body = self.structs(split) + self.log_text(PAGE - split)
        else:  # sparse: the start of the page in use, the rest still zero
            used = 1024 + 512 * rng.getrandbits(2)
            body = self.structs(used // 2) + self.code_text(used - used // 2)
            body += bytes(PAGE - used)
        return body


class PageMaker:
    """Reproducible checksummed pages for (page number, generation)."""

    def __init__(self, seed: int = 1) -> None:
        self.seed = seed & 0xFFFFFFFF
        builder = _Builder(seed)
        self.templates = [builder.template(_KINDS[i % len(_KINDS)]) for i in range(TEMPLATES)]

    def _mix(self, page: int, generation: int) -> int:
        h = (page * 0x9E3779B1 + generation * 0x85EBCA77 + self.seed) & 0xFFFFFFFF
        h ^= h >> 15
        h = (h * 0x2C1B3C6D) & 0xFFFFFFFF
        return h ^ (h >> 12)

    def page(self, page: int, generation: int) -> bytes:
        h = self._mix(page, generation)
        template = self.templates[h % TEMPLATES]
        turn = ((h >> 8) % (PAGE // 8)) * 8
        body = bytearray(template[turn:] + template[:turn])
        for sector in range(1, PAGE // SECTOR):
            STAMP.pack_into(body, sector * SECTOR, page, generation & 0xFFFF, sector)
        crc = zlib.crc32(memoryview(body)[HEADER.size:])
        HEADER.pack_into(body, 0, MAGIC, page, generation, self.seed, crc)
        return bytes(body)


def diagnose(data: bytes, page: int, generation: int) -> str:
    """What is wrong with ``data``, expected as (page, generation): "ok", "zero", "torn" (bad
    checksum or header), "misplaced", "stale" or "other" (another seed, a later generation)."""
    if data == bytes(len(data)):
        return "zero"
    magic, got_page, got_gen, _seed, crc = HEADER.unpack_from(data)
    if magic != MAGIC or zlib.crc32(memoryview(data)[HEADER.size:]) != crc:
        return "torn"
    if got_page != page:
        return "misplaced"
    if got_gen < generation:
        return "stale"
    if got_gen == generation:
        return "ok"
    return "other"
