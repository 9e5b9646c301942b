"""``anon``: fill more anonymous memory than the guest has, then verify every page.

``scale`` x guest memory (default 1.5) of private anonymous pages, each written with its
CRC kept aside, then read back in order. ``pages`` is ``realistic`` (about 2:1 with lzo, the
default) or ``random`` (incompressible: the second case). Nothing else competes: the region
itself is the pressure. With ``uffd = MiB`` (and ``uffd_resident``) the run then also drives
a userfaultfd region through tmem, where the VM has the port for it (:mod:`.uffd_beside`).
"""

from __future__ import annotations

from . import uffd_beside
from .common import Context, Report, measured, timed
from .datagen import PAGE
from .memory import Region

KINDS = ("realistic", "random")


def setup(ctx: Context) -> Report:
    kind = ctx.params.get("pages", "realistic")
    if kind not in KINDS:
        raise ValueError(f"pages must be one of {KINDS}, not {kind!r}")
    size, resident = uffd_beside.planned(ctx)
    return {"pages": ctx.scaled_bytes("scale", 1.5) // PAGE, "kind": kind,
            "uffd_mib": size, "uffd_resident_mib": resident}


def run(ctx: Context) -> Report:
    planned = setup(ctx)
    pool = ctx.pool()
    make = pool.page if planned["kind"] == "realistic" else pool.random_page

    def body() -> Report:
        region = Region(planned["pages"])
        try:
            _, fill_s = timed(lambda: region.fill(make))
            bad, verify_s = timed(region.verify)
        finally:
            region.close()
        return {"phases": {"fill_s": round(fill_s, 3), "verify_s": round(verify_s, 3)},
                "pages": planned["pages"], "kind": planned["kind"],
                "bytes": planned["pages"] * PAGE,
                "verification": {"bad_pages": len(bad), "first_bad": bad[:10]},
                "verified": not bad}

    report = measured("anon", ctx, body)
    if planned["uffd_mib"]:  # after the measured run: its time is the swap path's alone
        report["uffd"] = uffd_beside.run_memhog(planned["uffd_mib"],
                                                planned["uffd_resident_mib"])
        report["verified"] = bool(report.get("verified")) and \
            report["uffd"].get("passed", True)
    return report
