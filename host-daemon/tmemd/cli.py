"""The ``tmemd`` command line: a thin dispatcher over the subcommand modules."""

from __future__ import annotations

import sys

from .clikit import build_parser, run

# Modules that each define add_parser(subparsers); add new subcommands here.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "tmemd.service.serve", "tmemd.service.config", "tmemd.tools.ctl", "tmemd.tools.statsview",
    "tmemd.tools.bench", "tmemd.tools.loadgen",
)


def main(argv: list[str] | None = None) -> int:
    return run(build_parser("tmemd", "host-side tmem store", SUBCOMMAND_MODULES), argv)


if __name__ == "__main__":
    sys.exit(main())
