"""``python3 -m tmemh_guest.main PHASE WORKLOAD``: one phase of one workload, in the guest.

    python3 -m tmemh_guest.main setup rsync --workdir /var/tmp/tmemh-work --seed 1 \\
        --params '{"scale": 0.75}'

Prints one JSON object (the phase's report) as the last line of stdout. Exit status: 0 when
the phase finished and (for ``run``) everything read back verified; 1 when a verification
failed (the report says which data); 2 for bad arguments; 3 when the phase broke (the error
is on stderr and in the report's ``error``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable
from types import ModuleType

from . import anon_fill, pagecache_reread, rsync_copy, tar_extract
from .common import Context, Report

WORKLOADS: dict[str, ModuleType] = {
    "rsync": rsync_copy, "tar": tar_extract, "anon": anon_fill, "pagecache": pagecache_reread,
}
EXIT_VERIFY_FAILED = 1
EXIT_USAGE = 2
EXIT_BROKEN = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tmemh_guest.main")
    parser.add_argument("phase", choices=("setup", "run"))
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--params", default="{}", help="the workload's parameters as JSON")
    args = parser.parse_args(argv)
    try:
        params = json.loads(args.params)
        if not isinstance(params, dict):
            raise ValueError("--params must be a JSON object")
    except ValueError as exc:
        print(f"tmemh_guest: {exc}", file=sys.stderr)
        return EXIT_USAGE
    os.makedirs(args.workdir, exist_ok=True)
    ctx = Context(args.workdir, args.seed, params)
    phase: Callable[[Context], Report] = getattr(WORKLOADS[args.workload], args.phase)
    try:
        report = phase(ctx)
    except Exception as exc:
        traceback.print_exc()
        print(json.dumps({"workload": args.workload, "phase": args.phase,
                          "error": f"{type(exc).__name__}: {exc}"}))
        return EXIT_BROKEN
    report["phase"] = args.phase
    print(json.dumps(report, sort_keys=True))
    if args.phase == "run" and not report.get("verified"):
        return EXIT_VERIFY_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
