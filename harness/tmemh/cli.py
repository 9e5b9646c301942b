"""The ``tmemh`` command line: a thin dispatcher over the subcommand modules.

Exit codes (see :mod:`tmemd.clikit`): 0 success, 1 runtime failure (a VM, image, SSH or
daemon error), 2 usage error (bad arguments or option values, an invalid VM description or
image option, a bad ``TMEMH_ACCEL``), 130 interrupted. ``tmemh vm ssh`` exits with the guest
command's own status. On a daemon-only install (no ``harness`` extra) it says what to install.
"""

from __future__ import annotations

import sys

from tmemd.clikit import EXIT_FAILURE, build_parser, run

# Modules that each define add_parser(subparsers); add new subcommands here.
SUBCOMMAND_MODULES: tuple[str, ...] = ("tmemh.demo", "tmemh.image_cli", "tmemh.vm_cli",
                                       "tmemh.suite.cli", "tmemh.suite.swapbench",
                                       "tmemh.libvirtd_cli")

DESCRIPTION = "tmem test harness: guest images, VMs, workloads, results, reports"


def main(argv: list[str] | None = None) -> int:
    try:  # the harness's own dependencies come with the 'harness' extra
        from tmemd.service.controlclient import ControlError
        from tmemd.store.errors import TmemError
        from tmemh.image.errors import ImageError, InvalidImageOptions
        from tmemh.image.manifest import ManifestError
        from tmemh.ssh import SSHError
        from tmemh.vm.errors import InvalidEnvironment, InvalidVMSpec, VMError

        parser = build_parser("tmemh", DESCRIPTION, SUBCOMMAND_MODULES)
    except ModuleNotFoundError as exc:
        print(f"tmemh: error: the harness needs {exc.name!r}: install 'tmem-harness[harness]'",
              file=sys.stderr)
        return EXIT_FAILURE
    usage_errors = (InvalidVMSpec, InvalidEnvironment, InvalidImageOptions)
    failures = (VMError, ImageError, ManifestError, SSHError, ControlError, TmemError)
    return run(parser, argv, usage_errors=usage_errors, failures=failures)


if __name__ == "__main__":
    sys.exit(main())
