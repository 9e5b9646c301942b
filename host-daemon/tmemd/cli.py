"""The ``tmemd`` command line: a thin dispatcher over the subcommand modules.

Exit codes (see :mod:`tmemd.clikit`): 0 success, 1 runtime failure, 2 usage error (bad
arguments, option values or configuration), 130 interrupted.
"""

from __future__ import annotations

import sys

from .clikit import build_parser, run
from .service.controlclient import ControlError
from .store.errors import ConfigError, TmemError

# Modules that each define add_parser(subparsers); add new subcommands here.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "tmemd.service.serve", "tmemd.service.config", "tmemd.tools.ctl", "tmemd.tools.statsview",
    "tmemd.tools.bench", "tmemd.tools.loadgen", "tmemd.tools.replay",
)

USAGE_ERRORS = (ConfigError,)
FAILURES = (TmemError, ControlError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("tmemd", "host-side tmem store", SUBCOMMAND_MODULES)
    return run(parser, argv, usage_errors=USAGE_ERRORS, failures=FAILURES)


if __name__ == "__main__":
    sys.exit(main())
