"""``pagecache``: re-read a file set larger than the guest's memory, checking every file.

Setup writes ``scale`` x guest memory (default 1.5) as 16 MiB files of realistic contents.
The run reads the whole set ``passes`` times (default 3) in the same order, so each pass
finds the page cache holding the wrong end of the set: every pass goes to the disk unless
something below the guest keeps the evicted pages. ``ballast`` defaults to 0 here.
"""

from __future__ import annotations

import shutil

from . import sysinfo
from .common import Context, Report, measured, run_with_ballast, timed
from .tree import Manifest, PlannedFile, verify_tree, write_tree

FILE_BYTES = 16 << 20


def setup(ctx: Context) -> Report:
    shutil.rmtree(ctx.path("set"), ignore_errors=True)
    total = ctx.scaled_bytes("scale", 1.5)
    plan = [PlannedFile(f"part{i:04d}.bin", min(FILE_BYTES, total - i * FILE_BYTES), "large")
            for i in range((total + FILE_BYTES - 1) // FILE_BYTES)]
    manifest = write_tree(ctx.path("set"), ctx.pool(), plan)
    ctx.save_state("manifest.json", manifest)
    sysinfo.sync_and_drop_caches()
    return {"files": len(manifest), "bytes": total}


def run(ctx: Context) -> Report:
    manifest: Manifest = ctx.load_state("manifest.json")
    passes = int(ctx.number("passes", 3))
    ctx.params.setdefault("ballast", 0)
    ctx.pool()

    def body() -> Report:
        phases = {}
        bad = 0
        read = 0
        first_bad: list[str] = []
        for number in range(1, passes + 1):
            checked, seconds = timed(lambda: verify_tree(ctx.path("set"), manifest))
            phases[f"pass{number}_s"] = round(seconds, 3)
            bad += checked["bad_files"]
            read += checked["bytes"]
            first_bad += checked["first_bad"]
        return {"phases": phases, "files": len(manifest), "bytes": read, "passes": passes,
                "verification": {"bad_reads": bad, "first_bad": first_bad[:10]},
                "verified": bad == 0}

    return measured("pagecache", ctx, lambda: run_with_ballast(ctx, body))
