"""Generators of synthetic 4 KiB pages that compress like the pages of a running system.

Every byte comes from one ``random.Random`` through two of its methods only: ``getrandbits``
and ``random``, the Mersenne Twister's own outputs, which have been stable across Python
versions for a long time. Sampling, shuffling and random bytes are done here on top of them
(not with ``choices``, ``shuffle`` or ``randbytes``), and floats appear only in exactly rounded
arithmetic, so a seed fixes the pages on every machine and every Python >= 3.11.

The kinds of content, and what makes each compress as it does under lzo1x-1:

- ``text``: prose and log lines from a generated vocabulary whose word frequencies follow a
  Zipf law; frequent words and phrases give lzo its matches (real prose: about 1.6:1).
- ``code``: source lines (indentation, keywords, identifiers made of vocabulary words, numbers,
  string literals), drawn from a pool of generated lines in a Python-like or C-like style.
- ``memory``: heap and struct arrays: 8-byte pointers sharing their high bits, small integers,
  flags, counters, padding, short strings; integer arrays; often only part of a page in use.
- ``binary``: machine-code-like streams (common instruction sequences with fresh immediates
  and displacements between them) and the data tables beside code (offsets, string tables).

Pages are built by joining precomputed pieces picked through lookup tables indexed by random
bytes, not byte by byte, so tens of thousands of pages build in a few seconds.
"""

from __future__ import annotations

import logging
import math
import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from operator import itemgetter
from typing import Generic, TypeVar

from .. import PAGE_SIZE

log = logging.getLogger(__name__)

T = TypeVar("T")
TABLE_BITS = 16  # a sampler's lookup table has 2**16 slots


# ----- randomness from getrandbits only -----------------------------------------------------
def random_bytes(rng: random.Random, n: int) -> bytes:
    """``n`` random bytes (what ``Random.randbytes`` returns, spelled out here)."""
    return rng.getrandbits(8 * n).to_bytes(n, "little") if n > 0 else b""


def below(rng: random.Random, n: int) -> int:
    """A uniform integer in ``0 .. n-1`` by rejection on ``getrandbits``."""
    bits = n.bit_length()
    while True:
        r = rng.getrandbits(bits)
        if r < n:
            return r


def pick(rng: random.Random, items: Sequence[T]) -> T:
    return items[below(rng, len(items))]


def shuffle(rng: random.Random, items: list[T]) -> None:
    """Fisher-Yates, in place."""
    for i in range(len(items) - 1, 0, -1):
        j = below(rng, i + 1)
        items[i], items[j] = items[j], items[i]


class Sampler(Generic[T]):
    """Draws items with given weights through a 65,536-slot lookup table (one slot per draw)."""

    def __init__(self, items: Sequence[T], weights: Sequence[float]) -> None:
        cum = list(accumulate(weights))
        total = cum[-1]
        size = 1 << TABLE_BITS
        table: list[T] = []
        for item, edge in zip(items, cum, strict=True):
            table.extend([item] * (int(edge / total * size) - len(table)))
        table.extend([items[-1]] * (size - len(table)))
        self._table = table

    def draw(self, rng: random.Random, k: int) -> list[T]:
        """``k`` draws (``k`` >= 1)."""
        indexes = struct.unpack(f"<{k}H", random_bytes(rng, 2 * k))
        got = itemgetter(*indexes)(self._table)
        return [got] if k == 1 else list(got)


def zipf(n: int, offset: float) -> list[float]:
    """Zipf-like weights 1/(rank + offset) for ranks 1..n."""
    return [1.0 / (rank + offset) for rank in range(1, n + 1)]


def fit(data: bytes) -> bytes:
    """Exactly one page: cut, or padded with zeros."""
    return data[:PAGE_SIZE] if len(data) >= PAGE_SIZE else data.ljust(PAGE_SIZE, b"\0")


# ----- vocabularies -------------------------------------------------------------------------
_ONSETS = ("", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w",
           "st", "tr", "th", "ch", "sh", "pr", "br", "gr", "cl", "sp", "fl")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "ai", "ea", "ou", "ee", "io", "y")
_CODAS = ("", "", "", "n", "r", "s", "t", "l", "nd", "st", "ng", "ck", "m", "rt", "x")
_SYLLABLES = (1, 1, 1, 2, 2, 2, 2, 3, 3, 4)


def _make_words(rng: random.Random, count: int) -> list[str]:
    """``count`` distinct pronounceable words, roughly shortest first (frequent words are short)."""
    words: dict[str, None] = {}
    while len(words) < count:
        word = "".join(pick(rng, _ONSETS) + pick(rng, _VOWELS) + pick(rng, _CODAS)
                       for _ in range(pick(rng, _SYLLABLES)))
        words.setdefault(word, None)
    keyed = [(len(w) + rng.random() * 3, w) for w in words]
    return [w for _, w in sorted(keyed)]


def _with_phrases(rng: random.Random, words: list[str], phrases: int) -> Sampler[str]:
    """Zipf over ``words`` and, for half of the draws, over phrases of 2-5 of those words."""
    word_weights = zipf(len(words), 1.0)
    draw = Sampler(words, word_weights)
    pool = [" ".join(draw.draw(rng, 2 + rng.getrandbits(2))) for _ in range(phrases)]
    phrase_weights = zipf(phrases, 1.0)
    scale = math.fsum(word_weights) / math.fsum(phrase_weights)  # fsum: exact on any Python
    return Sampler(words + pool, word_weights + [w * scale for w in phrase_weights])


_PY_SHAPES = (
    "def {0}(self, {1}, {2}={n}):", "if {0} {op} {1}:", "return self.{0}({1}, {2})",
    "{0} = {1}.{2}({3})", "for {0} in {1}:", "# {w} {v} {0}", "self.{0} = {1}",
    "{0}[{n}] = \"{w}\"", "raise {0}Error(f\"{w} {v}: {{{1}}}\")", "elif {0} is None:",
    "{0} += {n}", "log.{0}(\"{w} %s\", {1})", "{0} = [{1} for {2} in {3}]", "import {0}",
    "@property", "class {0}({1}):", "with {0}({1}) as {2}:", "{0}: {1} = {n}",
)
_C_SHAPES = (
    "static int {0}(struct {1} *{2}, unsigned long {3})", "if ({0}->{1} {op} {n}) {{",
    "return {0}({1}, {2});", "{0}->{1} = {2};", "for ({0} = 0; {0} < {n}; {0}++) {{",
    "/* {w} {v} */", "}}", "{0} = {1}[{2}];", "#define {3} {n}", "goto {0};", "case {n}:",
    "break;", "struct {0} *{1} = {2}({3}, GFP_KERNEL);", "spin_lock(&{0}->{1});",
    "#include <linux/{0}.h>", "}} else {{", "{0} |= {1} << {n};", "err = -{3};",
)
_OPS = ("==", "!=", "<", ">=", "&", "and", "or", "<=")


def _make_lines(rng: random.Random, shapes: tuple[str, ...], idents: Sampler[str],
                words: Sampler[str], count: int) -> list[str]:
    """``count`` source lines filled from ``shapes`` with identifiers, numbers and words."""
    lines = []
    for _ in range(count):
        names = idents.draw(rng, 4)
        w, v = words.draw(rng, 2)
        lines.append(pick(rng, shapes).format(
            *names, n=rng.getrandbits(pick(rng, (1, 3, 4, 8, 12))), op=pick(rng, _OPS), w=w, v=v))
    return lines


_OPCODES = (0x48, 0x48, 0x48, 0x89, 0x8B, 0xE8, 0x0F, 0x41, 0x4C, 0x83, 0x85, 0x74, 0x75,
            0xEB, 0xFF, 0x31, 0xC3, 0x55, 0x5D, 0x53, 0x5B, 0x66, 0xC7, 0x8D, 0x39, 0x49)
_MODRM = (0x45, 0x44, 0x24, 0xC0, 0xC7, 0x05, 0x85, 0x7D, 0xE5, 0xF8, 0x5D, 0x4D, 0x10, 0x08)
_DISP = (0x00, 0x08, 0x10, 0x18, 0x20, 0x28, 0xF8, 0xF0, 0xE8)


def _make_instructions(rng: random.Random, count: int) -> list[bytes]:
    """Instruction-like byte strings: prefix/opcode bytes, a ModRM-like byte, a displacement."""
    found: dict[bytes, None] = {}
    while len(found) < count:
        body = bytes(pick(rng, _OPCODES) for _ in range(1 + rng.getrandbits(1)))
        body += bytes(pick(rng, _MODRM) for _ in range(rng.getrandbits(1) + 1))
        if rng.getrandbits(1):
            body += bytes([pick(rng, _DISP)])
        found.setdefault(body, None)
    return list(found)


@dataclass(frozen=True)
class Vocabulary:
    """What the generators draw from, built once per corpus from its seed."""

    words: list[str]
    prose: list[Sampler[str]]  # words and phrases; over 500, 1500 and 5000 words
    log_words: Sampler[str]
    log_messages: Sampler[str]
    separators: Sampler[str]
    code_lines: list[list[str]]  # a pool of Python-like lines, a pool of C-like lines
    indents: Sampler[str]
    idioms: Sampler[bytes]  # common instruction sequences
    region_bases: list[int]  # where pointers point: a few heap and mmap regions

    @classmethod
    def build(cls, rng: random.Random) -> Vocabulary:
        words = _make_words(rng, 5000)
        log_words = Sampler(words[:1200], zipf(1200, 2.0))
        messages = [" ".join(log_words.draw(rng, 2 + rng.getrandbits(3))) for _ in range(400)]
        idents_list: dict[str, None] = {}
        while len(idents_list) < 1200:
            parts = [pick(rng, words[:1500]) for _ in range(pick(rng, (1, 1, 2, 2, 2, 3)))]
            idents_list.setdefault("_".join(parts), None)
        idents = Sampler(list(idents_list), zipf(len(idents_list), 1.0))
        comment_words = Sampler(words[:2000], zipf(2000, 2.0))
        instructions = _make_instructions(rng, 300)
        insn = Sampler(instructions, zipf(len(instructions), 3.0))
        idioms = [b"".join(insn.draw(rng, 1 + rng.getrandbits(2))) for _ in range(800)]
        return cls(
            words=words,
            prose=[_with_phrases(rng, words[:n], 2000) for n in (500, 1500, 5000)],
            log_words=log_words,
            log_messages=Sampler(messages, zipf(len(messages), 2.0)),
            separators=Sampler(_SEPARATORS, _SEPARATOR_WEIGHTS),
            code_lines=[_make_lines(rng, shapes, idents, comment_words, 6000)
                        for shapes in (_PY_SHAPES, _C_SHAPES)],
            indents=Sampler([" " * (4 * d) for d in range(6)], (4, 8, 7, 4, 2, 1)),
            idioms=Sampler(idioms, zipf(len(idioms), 3.0)),
            region_bases=[0x5500_0000_0000 | rng.getrandbits(32) << 12 for _ in range(4)]
            + [0x7F00_0000_0000 | rng.getrandbits(28) << 12 for _ in range(8)],
        )


# ----- text ---------------------------------------------------------------------------------
_SEPARATORS = (" ", ", ", ". ", ".\n", "\n", "; ", ": ", " (", ") ", " - ", ".\n\n", "? ")
_SEPARATOR_WEIGHTS = (620, 60, 70, 25, 45, 8, 8, 6, 6, 6, 10, 3)
_LEVELS = ("INFO", "INFO", "INFO", "DEBUG", "WARNING", "ERROR")


def _interleave(a: list[str], b: list[str]) -> str:
    parts = [""] * (len(a) + len(b))
    parts[::2] = a
    parts[1::2] = b
    return "".join(parts)


def _prose(rng: random.Random, vocab: Vocabulary) -> bytes:
    k = 1200
    words = pick(rng, vocab.prose).draw(rng, k)
    return fit(_interleave(words, vocab.separators.draw(rng, k)).encode())


def _log_lines(rng: random.Random, vocab: Vocabulary) -> bytes:
    """Syslog-like lines: one host, a few daemons with their pids, recurring messages."""
    host = pick(rng, vocab.words[:300])
    daemons = [f"{host} {pick(rng, vocab.words[:800])}[{rng.getrandbits(12)}]: "
               for _ in range(4)]
    t = rng.getrandbits(30)
    lines = []
    size = 0
    while size < PAGE_SIZE:
        t += rng.getrandbits(4)
        line = (f"{t // 3600 % 24:02d}:{t // 60 % 60:02d}:{t % 60:02d} {pick(rng, daemons)}"
                f"{pick(rng, _LEVELS)} {vocab.log_messages.draw(rng, 1)[0]}"
                f"{'' if rng.getrandbits(1) else f' ({rng.getrandbits(16)})'}\n")
        lines.append(line)
        size += len(line)
    return fit("".join(lines).encode())


def text_page(rng: random.Random, vocab: Vocabulary) -> bytes:
    return _log_lines(rng, vocab) if rng.getrandbits(2) == 0 else _prose(rng, vocab)


# ----- source code --------------------------------------------------------------------------
def code_page(rng: random.Random, vocab: Vocabulary) -> bytes:
    pool = pick(rng, vocab.code_lines)
    window = pick(rng, (60, 400, 400, len(pool), len(pool), len(pool)))  # how varied the page is
    first = below(rng, len(pool) - window + 1)
    k = 140
    starts = struct.unpack(f"<{k}H", random_bytes(rng, 2 * k))
    lines = itemgetter(*(first + s % window for s in starts))(pool)
    indents = vocab.indents.draw(rng, k)
    return fit("".join([i + line + "\n" for i, line in zip(indents, lines, strict=True)]).encode())


# ----- memory -------------------------------------------------------------------------------
_FIELDS = ("ptr", "ptr_or_null", "small", "int", "flags", "pad", "counter", "name", "double")
_FIELD_WEIGHTS = (20, 12, 20, 5, 10, 10, 5, 10, 3)
_FIELD_FORMATS = {"ptr": "Q", "ptr_or_null": "Q", "small": "I", "int": "q", "flags": "H",
                  "pad": "4x", "counter": "Q", "name": "16s", "double": "d"}
_FIELD_SAMPLER = Sampler(_FIELDS, _FIELD_WEIGHTS)


def _column(kind: str, n: int, rng: random.Random, vocab: Vocabulary) -> list[object]:
    """``n`` values of one struct field."""
    bits = rng.getrandbits
    if kind in ("ptr", "ptr_or_null"):
        base = pick(rng, vocab.region_bases)
        spread = pick(rng, (8, 12, 16, 20))
        if kind == "ptr":
            return [base + (bits(spread) << 4) for _ in range(n)]
        return [base + (bits(spread) << 4) if bits(2) else 0 for _ in range(n)]
    if kind == "small":
        width = pick(rng, (1, 3, 6, 10, 16))
        return [bits(width) for _ in range(n)]
    if kind == "int":
        width = pick(rng, (8, 16, 32))
        return [bits(width) - (1 << (width - 1)) for _ in range(n)]
    if kind == "flags":
        values = [bits(16) for _ in range(3)]
        return [values[0] if bits(1) else pick(rng, values) for _ in range(n)]
    if kind == "counter":
        start, step = bits(32), pick(rng, (1, 1, 8, 64, 4096))
        return [start + i * step for i in range(n)]
    if kind == "name":
        return [w.encode()[:15] for w in vocab.log_words.draw(rng, n)]
    doubles = [float(bits(10)) * 0.25 for _ in range(4)]  # a few distinct values
    return [pick(rng, doubles) for _ in range(n)]


def _struct_array(rng: random.Random, vocab: Vocabulary) -> bytes:
    """Records of 2-9 fields, like a slab of objects; some slots may be free (zeroed)."""
    fields = _FIELD_SAMPLER.draw(rng, 2 + rng.getrandbits(3))
    record = struct.Struct("<" + "".join(_FIELD_FORMATS[f] for f in fields))
    n = -(-PAGE_SIZE // record.size)
    columns = [_column(f, n, rng, vocab) for f in fields if f != "pad"]
    flat = [v for row in zip(*columns, strict=True) for v in row]
    data = struct.pack("<" + record.format[1:] * n, *flat)
    free_bits = pick(rng, (0, 0, 1, 2))  # a slot is free with probability 0, 1/2 or 1/4
    if free_bits:
        empty = bytes(record.size)
        rows = [data[i : i + record.size] for i in range(0, len(data), record.size)]
        data = b"".join([empty if rng.getrandbits(free_bits) == 0 else row for row in rows])
    return data[:PAGE_SIZE]


def _int_array(rng: random.Random, vocab: Vocabulary) -> bytes:
    width = pick(rng, (1, 3, 6, 10, 16))
    return struct.pack(f"<{PAGE_SIZE // 4}I",
                       *(rng.getrandbits(width) for _ in range(PAGE_SIZE // 4)))


def memory_page(rng: random.Random, vocab: Vocabulary) -> bytes:
    data = _int_array(rng, vocab) if rng.getrandbits(3) == 0 else _struct_array(rng, vocab)
    if rng.getrandbits(3) < 3:  # only part of the page in use, the rest still zero
        data = data[: (rng.getrandbits(12) | 256) & ~15]
    return fit(data)


# ----- binary -------------------------------------------------------------------------------
# Fresh (random) bytes after each idiom, like immediates and displacements: one of these
# tables per page, from plain code (the first) to code mixed with packed data (the last).
_FRESH_LEVELS = (
    (0, 0, 0, 1, 2, 4), (0, 0, 1, 2, 4), (0, 1, 2, 4, 8), (1, 4, 8, 16), (4, 8, 16, 32)
)
_FRESH_PICKS = (0, 0, 0, 0, 0, 1, 1, 2, 3, 4)


def _machine_code(rng: random.Random, vocab: Vocabulary) -> bytes:
    k = 700
    parts = vocab.idioms.draw(rng, k)
    level = _FRESH_LEVELS[pick(rng, _FRESH_PICKS)]
    sizes = [level[b % len(level)] for b in random_bytes(rng, k)]
    fresh = random_bytes(rng, sum(sizes))
    offsets = accumulate(sizes, initial=0)  # one more than sizes: the end
    return fit(b"".join([p + fresh[o : o + s]
                         for p, o, s in zip(parts, offsets, sizes, strict=False)]))


def _data_table(rng: random.Random, vocab: Vocabulary) -> bytes:
    """A string table (symbol names) or a relocation table (offset, info, addend)."""
    if rng.getrandbits(1):
        return fit(b"\0".join(w.encode() for w in vocab.prose[0].draw(rng, 1600)))
    n = -(-PAGE_SIZE // 24)
    offset, step = rng.getrandbits(24) << 3, pick(rng, (8, 8, 16, 24))
    kinds = [pick(rng, (1, 6, 7, 8)) for _ in range(3)]
    values: list[int] = []
    for i in range(n):
        symbol = rng.getrandbits(pick(rng, (0, 4, 10)))
        values += (offset + i * step, symbol << 32 | kinds[i % 3], rng.getrandbits(12) & ~7)
    return fit(struct.pack(f"<{3 * n}Q", *values))


def binary_page(rng: random.Random, vocab: Vocabulary) -> bytes:
    return _data_table(rng, vocab) if rng.getrandbits(3) == 0 else _machine_code(rng, vocab)


# ----- special pages ------------------------------------------------------------------------
def zero_page(rng: random.Random, vocab: Vocabulary) -> bytes:
    return bytes(PAGE_SIZE)


def filled_page(rng: random.Random, vocab: Vocabulary) -> bytes:
    value = 0xFF if rng.getrandbits(1) else 1 + below(rng, 254)
    return bytes([value]) * PAGE_SIZE


def random_page(rng: random.Random, vocab: Vocabulary) -> bytes:
    return random_bytes(rng, PAGE_SIZE)


GENERATORS: dict[str, Callable[[random.Random, Vocabulary], bytes]] = {
    "text": text_page,
    "code": code_page,
    "memory": memory_page,
    "binary": binary_page,
    "zero": zero_page,
    "same-filled": filled_page,
    "random": random_page,
}


def generate(kinds: Sequence[str], rng: random.Random) -> list[bytes]:
    """One page of each kind in ``kinds``, in order, all from ``rng`` (the vocabulary first)."""
    vocab = Vocabulary.build(rng)
    return [GENERATORS[kind](rng, vocab) for kind in kinds]
