"""Removing cache entries the current inputs no longer use.

Every change to the agent, the recipe or the builder makes a new image entry (~350 MB). Pruning
keeps the current image, debootstrap stage and kernel, and any image whose base disk a running
process (a VM) still has open.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tmemh.image.build import build_lock, image_dir
from tmemh.image.cleanup import remove_tree
from tmemh.image.commands import StepReporter
from tmemh.image.inputs import image_key, stage_key
from tmemh.image.options import ImageOptions, resolve_options

log = logging.getLogger(__name__)


def open_files_below(directory: Path) -> set[Path]:
    """Files below ``directory`` that some process has open (scans /proc/*/fd)."""
    directory = directory.resolve()
    found: set[Path] = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            fds = list(fd_dir.iterdir())
        except OSError:
            continue  # the process ended, or is not ours to look at
        for fd in fds:
            try:
                path = Path(os.readlink(fd))
            except OSError:
                continue  # closed meanwhile (the listing's own descriptor, for one)
            if directory in path.parents:
                found.add(path)
    return found


def prune_cache(cache_dir: Path, options: ImageOptions | None = None) -> list[Path]:
    """Delete unused images, stages and kernels; returns what was deleted."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    resolved = resolve_options(options, cache_dir)
    keep = {
        image_dir(cache_dir, image_key(resolved)),
        cache_dir / "stages" / f"debootstrap-{stage_key(resolved)}",
        cache_dir / "kernels" / resolved.kernel_version,
    }
    removed: list[Path] = []
    with build_lock(cache_dir, StepReporter()):
        in_use = open_files_below(cache_dir)
        for sub in ("images", "stages", "kernels"):
            folder = cache_dir / sub
            if not folder.is_dir():
                continue
            for entry in sorted(folder.iterdir()):
                if entry in keep:
                    continue
                busy = [p for p in in_use if entry in p.parents]
                if busy:
                    log.info("keeping %s: in use (%s)", entry, busy[0])
                    continue
                log.info("removing %s", entry)
                remove_tree(entry)
                removed.append(entry)
    return removed
