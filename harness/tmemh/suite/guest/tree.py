"""A generated file tree shaped like a source tree, and its manifest (size and CRC-32).

:func:`plan_tree` decides names and sizes from a seed: many small files (sizes skewed around a
few KiB, like source files), a few large ones taking the rest of the bytes, and some members
that are already compressed (gzip of realistic text, and incompressible "images"), which no
compressor can shrink further. :func:`write_tree` writes the plan and returns the manifest;
:func:`verify_tree` reads a tree back and compares every file with it.
"""

from __future__ import annotations

import os
import random
import zlib
from dataclasses import dataclass
from typing import TypedDict

from .datagen import ContentPool

ENTRIES_PER_DIR = 48
SMALL_MEDIAN = 3072
SMALL_MAX = 64 * 1024
LARGE_MIN = 1 << 20
LARGE_MAX = 8 << 20
COMPRESSED_EVERY = 33  # one small file in 33 is an already-compressed member
COMPRESSED_MAX = 256 * 1024
_SUFFIXES = (".c", ".h", ".py", ".txt", ".md", ".json", ".S", ".rs")

Manifest = dict[str, list[int]]  # relative path -> [size, crc32]


class TreeCheck(TypedDict):
    files: int
    bytes: int
    bad_files: int
    first_bad: list[str]


@dataclass(frozen=True)
class PlannedFile:
    path: str
    size: int
    kind: str  # "text", "gzip", "noise" or "large"


def _directory(index: int) -> str:
    top, rest = divmod(index // ENTRIES_PER_DIR, ENTRIES_PER_DIR)
    return f"src{top:02d}/mod{rest:02d}"


def plan_tree(seed: int, total_bytes: int, small_files: int) -> list[PlannedFile]:
    """Names, sizes and kinds of the tree's files; the same arguments give the same plan."""
    rng = random.Random(seed)
    plan = []
    used = 0
    for index in range(small_files):
        directory = _directory(index)
        if index % COMPRESSED_EVERY == COMPRESSED_EVERY - 1:
            size = rng.randrange(8192, COMPRESSED_MAX)
            kind, suffix = ("gzip", ".gz") if index % 2 else ("noise", ".png")
        else:
            size = min(SMALL_MAX, max(64, int(rng.lognormvariate(0, 0.9) * SMALL_MEDIAN)))
            kind, suffix = "text", _SUFFIXES[index % len(_SUFFIXES)]
        plan.append(PlannedFile(f"{directory}/f{index:06d}{suffix}", size, kind))
        used += size
    large = 0
    while total_bytes - used >= LARGE_MIN:
        size = min(total_bytes - used, rng.randrange(LARGE_MIN, LARGE_MAX))
        plan.append(PlannedFile(f"data/blob{large:04d}.bin", size, "large"))
        used += size
        large += 1
    return plan


def _contents(pool: ContentPool, planned: PlannedFile) -> bytes:
    if planned.kind == "noise":
        return pool.noise(planned.size)
    if planned.kind == "gzip":
        return zlib.compress(pool.body(planned.size * 2), 6)[:planned.size]
    return pool.body(planned.size)


def write_tree(root: str, pool: ContentPool, plan: list[PlannedFile]) -> Manifest:
    """Write the planned files under ``root``; the manifest of what was written."""
    manifest: Manifest = {}
    made: set[str] = set()
    for planned in plan:
        path = os.path.join(root, planned.path)
        parent = os.path.dirname(path)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        data = _contents(pool, planned)
        with open(path, "wb") as f:
            f.write(data)
        manifest[planned.path] = [len(data), zlib.crc32(data)]
    return manifest


def verify_tree(root: str, manifest: Manifest) -> TreeCheck:
    """Read every file of the manifest under ``root``; counts, bytes and the bad files."""
    bad = []
    read = 0
    for relative, (size, crc) in manifest.items():
        try:
            with open(os.path.join(root, relative), "rb") as f:
                data = f.read()
        except OSError as exc:
            bad.append(f"{relative}: {exc.strerror}")
            continue
        read += len(data)
        if len(data) != size or zlib.crc32(data) != crc:
            bad.append(f"{relative}: {len(data)} bytes, crc {zlib.crc32(data):08x}, "
                       f"expected {size} bytes, crc {crc:08x}")
    return {"files": len(manifest), "bytes": read, "bad_files": len(bad), "first_bad": bad[:10]}
