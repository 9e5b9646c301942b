"""``tar``: extraction of a generated source-tree-like tarball, then a checksummed read-back.

Setup writes a tree (``scale`` x guest memory, default 0.75; ``files_per_mib`` small files per
MiB of guest memory, default 100: tens of thousands in a few hundred MiB of guest; one in 33
already compressed), packs it with tar (``compression``: none, gzip or xz; default none) and
removes it. The run extracts the tarball while the ballast holds most of the free memory and
reads every extracted file back against the manifest.
"""

from __future__ import annotations

import os
import shutil

from . import sysinfo
from .common import Context, Report, measured, run_with_ballast, timed
from .tree import Manifest, plan_tree, verify_tree, write_tree

COMPRESSION_FLAGS = {"none": "", "gzip": "z", "xz": "J"}


def _flag(ctx: Context) -> str:
    compression = ctx.params.get("compression", "none")
    if compression not in COMPRESSION_FLAGS:
        raise ValueError(f"compression must be one of {sorted(COMPRESSION_FLAGS)}, "
                         f"not {compression!r}")
    return COMPRESSION_FLAGS[compression]


def setup(ctx: Context) -> Report:
    flag = _flag(ctx)
    shutil.rmtree(ctx.path("tree"), ignore_errors=True)
    files = int(ctx.number("files_per_mib", 100) * ctx.mem_total / (1 << 20))
    plan = plan_tree(ctx.seed, ctx.scaled_bytes("scale", 0.75), files)
    manifest = write_tree(ctx.path("tree"), ctx.pool(), plan)
    ctx.save_state("manifest.json", manifest)
    sysinfo.run_checked(["tar", "-C", ctx.workdir, f"-c{flag}f", ctx.path("src.tar"), "tree"])
    shutil.rmtree(ctx.path("tree"))
    sysinfo.sync_and_drop_caches()
    return {"files": len(manifest), "bytes": os.path.getsize(ctx.path("src.tar"))}


def run(ctx: Context) -> Report:
    flag = _flag(ctx)
    manifest: Manifest = ctx.load_state("manifest.json")
    shutil.rmtree(ctx.path("out"), ignore_errors=True)
    os.makedirs(ctx.path("out"))
    ctx.pool()

    def body() -> Report:
        _, extract_s = timed(lambda: sysinfo.run_checked(
            ["tar", "-C", ctx.path("out"), f"-x{flag}f", ctx.path("src.tar")]))
        checked, verify_s = timed(lambda: verify_tree(ctx.path("out", "tree"), manifest))
        return {"phases": {"extract_s": round(extract_s, 3), "verify_s": round(verify_s, 3)},
                "files": checked["files"], "bytes": checked["bytes"],
                "archive_bytes": os.path.getsize(ctx.path("src.tar")),
                "verification": checked, "verified": checked["bad_files"] == 0}

    return measured("tar", ctx, lambda: run_with_ballast(ctx, body))
