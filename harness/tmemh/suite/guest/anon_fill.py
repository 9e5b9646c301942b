"""``anon``: fill more anonymous memory than the guest has, then verify every page.

``scale`` x guest memory (default 1.5) of private anonymous pages, each written with its
CRC kept aside, then read back in order. ``pages`` is ``realistic`` (about 2:1 with lzo, the
default) or ``random`` (incompressible: the second case). Nothing else competes: the region
itself is the pressure.
"""

from __future__ import annotations

from .common import Context, Report, measured, timed
from .datagen import PAGE
from .memory import Region

KINDS = ("realistic", "random")


def setup(ctx: Context) -> Report:
    kind = ctx.params.get("pages", "realistic")
    if kind not in KINDS:
        raise ValueError(f"pages must be one of {KINDS}, not {kind!r}")
    return {"pages": ctx.scaled_bytes("scale", 1.5) // PAGE, "kind": kind}


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

    return measured("anon", ctx, body)
