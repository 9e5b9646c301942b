"""Removing build trees safely: never recurse into something still mounted.

debootstrap mounts /proc (and may bind /dev) inside its target; if it fails, those mounts can
be left behind. ``remove_tree`` unmounts everything below a tree (deepest first) and refuses to
delete when a mount remains.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)


def _unescape(field: str) -> str:
    """/proc/self/mountinfo escapes space, tab, newline and backslash as octal."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mounts_below(tree: Path) -> list[Path]:
    """Mount points at or below ``tree``, deepest first."""
    root = Path(tree).resolve()
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = Path(_unescape(line.split()[4]))
        if point == root or root in point.parents:
            found.append(point)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def unmount_below(tree: Path) -> None:
    for point in mounts_below(tree):
        log.warning("unmounting leftover mount %s", point)
        subprocess.run(["umount", "-l", str(point)], check=False)


def remove_tree(tree: Path) -> None:
    """Delete ``tree`` (if it exists) after unmounting anything below it."""
    if not tree.exists() and not tree.is_symlink():
        return
    unmount_below(tree)
    remaining = mounts_below(tree)
    if remaining:
        log.error("not deleting %s: still mounted: %s", tree, remaining)
        return
    if tree.is_dir() and not tree.is_symlink():
        shutil.rmtree(tree, ignore_errors=True)
    else:
        tree.unlink(missing_ok=True)
