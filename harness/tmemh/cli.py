"""The ``tmemh`` command line: a thin dispatcher over the subcommand modules."""

from __future__ import annotations

import sys

from tmemd.clikit import build_parser, run

# Modules that each define add_parser(subparsers); add new subcommands here.
SUBCOMMAND_MODULES: tuple[str, ...] = ("tmemh.demo", "tmemh.image_cli", "tmemh.vm_cli")

DESCRIPTION = "tmem test harness: guest images, VMs, workloads, results, reports"


def main(argv: list[str] | None = None) -> int:
    return run(build_parser("tmemh", DESCRIPTION, SUBCOMMAND_MODULES), argv)


if __name__ == "__main__":
    sys.exit(main())
