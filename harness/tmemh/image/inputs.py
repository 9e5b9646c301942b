"""Cache keys: a hash of every input of a build, and of the slow debootstrap stage alone.

The image key covers the release, mirror, package list, kernel version, disk size, host name,
the recipe files, the agent's source files and the builder's own source; the stage key covers
only what debootstrap sees (release, mirror, packages), so changing the agent or the init script
reuses the stage.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tmemh.image.options import ResolvedOptions

KEY_LENGTH = 16  # hex digits of sha256 kept in directory names
DEBOOTSTRAP_VARIANT = "minbase"
STAGE_FORMAT = 2  # bump when the debootstrap stage is made differently
BUILDER_DIR = Path(__file__).resolve().parent
_SKIPPED_PARTS = {"__pycache__", ".mypy_cache", ".pytest_cache"}


def tree_digest(directory: Path, suffixes: tuple[str, ...] = (),
                skipped_suffixes: tuple[str, ...] = (".pyc",)) -> str:
    """sha256 over the relative names, exec bits and contents of the files under ``directory``.

    Only files ending in one of ``suffixes`` count (all if empty), never ``skipped_suffixes``.
    """
    digest = hashlib.sha256()
    files = sorted(p for p in Path(directory).rglob("*")
                   if p.is_file() and not _SKIPPED_PARTS.intersection(p.parts)
                   and (not suffixes or p.suffix in suffixes)
                   and p.suffix not in skipped_suffixes)
    for path in files:
        rel = path.relative_to(directory).as_posix()
        info = path.stat()
        executable = "x" if info.st_mode & 0o111 else "-"
        digest.update(f"{rel}\0{executable}\0{info.st_size}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _hash_document(document: dict[str, Any]) -> str:
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def stage_inputs(options: ResolvedOptions) -> dict[str, Any]:
    return {
        "stage_format": STAGE_FORMAT,
        "variant": DEBOOTSTRAP_VARIANT,
        "release": options.release,
        "mirror": options.mirror,
        "packages": sorted(options.packages),
    }


def image_inputs(options: ResolvedOptions) -> dict[str, Any]:
    return {
        "stage": stage_inputs(options),
        "kernel_version": options.kernel_version,
        "disk_size_mib": options.disk_size_mib,
        "hostname": options.hostname,
        "recipe": tree_digest(options.recipe_dir, skipped_suffixes=(".md", ".pyc")),
        "agent": tree_digest(options.agent_dir, (".py",)),
        "builder": tree_digest(BUILDER_DIR, (".py",)),
    }


def stage_key(options: ResolvedOptions) -> str:
    return _hash_document(stage_inputs(options))


def image_key(options: ResolvedOptions) -> str:
    return key_of_inputs(image_inputs(options))


def key_of_inputs(inputs: dict[str, Any]) -> str:
    """The image key for inputs already gathered by :func:`image_inputs` (which hashes files)."""
    return _hash_document(inputs)
