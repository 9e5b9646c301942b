"""The ``tmemh`` command line: a thin dispatcher over the subcommand modules.

Exit codes (see :mod:`tmemd.clikit`): 0 success, 1 runtime failure (a VM, image, SSH or
daemon error), 2 usage error (bad arguments or option values, an invalid VM description or
image option, a bad ``TMEMH_ACCEL``), 130 interrupted. ``tmemh vm ssh`` exits with the guest
command's own status.
"""

from __future__ import annotations

import sys

from tmemd.clikit import build_parser, run
from tmemd.service.controlclient import ControlError
from tmemd.store.errors import TmemError
from tmemh.image.errors import ImageError, InvalidImageOptions
from tmemh.image.manifest import ManifestError
from tmemh.ssh import SSHError
from tmemh.vm.errors import InvalidEnvironment, InvalidVMSpec, VMError

# Modules that each define add_parser(subparsers); add new subcommands here.
SUBCOMMAND_MODULES: tuple[str, ...] = ("tmemh.demo", "tmemh.image_cli", "tmemh.vm_cli")

DESCRIPTION = "tmem test harness: guest images, VMs, workloads, results, reports"

USAGE_ERRORS = (InvalidVMSpec, InvalidEnvironment, InvalidImageOptions)
FAILURES = (VMError, ImageError, ManifestError, SSHError, ControlError, TmemError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("tmemh", DESCRIPTION, SUBCOMMAND_MODULES)
    return run(parser, argv, usage_errors=USAGE_ERRORS, failures=FAILURES)


if __name__ == "__main__":
    sys.exit(main())
