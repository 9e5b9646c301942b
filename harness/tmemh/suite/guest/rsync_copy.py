"""``rsync``: a generated tree copied to another directory with rsync, then compared.

Setup writes the tree (``scale`` x guest memory in bytes, default 0.75, of which
``files_per_mib`` small files per MiB of guest memory, default 16) and its manifest. The run
copies it with ``rsync -a`` while the ballast holds most of the free memory, then reads every
copied file back against the manifest.
"""

from __future__ import annotations

import shutil

from . import sysinfo
from .common import Context, Report, measured, run_with_ballast, timed
from .tree import Manifest, plan_tree, verify_tree, write_tree


def setup(ctx: Context) -> Report:
    shutil.rmtree(ctx.path("src"), ignore_errors=True)
    files = int(ctx.number("files_per_mib", 16) * ctx.mem_total / (1 << 20))
    plan = plan_tree(ctx.seed, ctx.scaled_bytes("scale", 0.75), files)
    manifest = write_tree(ctx.path("src"), ctx.pool(), plan)
    ctx.save_state("manifest.json", manifest)
    sysinfo.sync_and_drop_caches()
    return {"files": len(manifest), "bytes": sum(size for size, _ in manifest.values())}


def run(ctx: Context) -> Report:
    manifest: Manifest = ctx.load_state("manifest.json")
    shutil.rmtree(ctx.path("dst"), ignore_errors=True)
    ctx.pool()

    def body() -> Report:
        _, copy_s = timed(lambda: sysinfo.run_checked(
            ["rsync", "-a", ctx.path("src") + "/", ctx.path("dst") + "/"]))
        checked, verify_s = timed(lambda: verify_tree(ctx.path("dst"), manifest))
        return {"phases": {"rsync_s": round(copy_s, 3), "verify_s": round(verify_s, 3)},
                "files": checked["files"], "bytes": checked["bytes"],
                "verification": checked, "verified": checked["bad_files"] == 0}

    return measured("rsync", ctx, lambda: run_with_ballast(ctx, body))
