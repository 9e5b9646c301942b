"""The ``tmem-agent`` command line (standard library only: it runs inside the guest).

Subcommands:
- ``ports``: the virtio-serial ports this guest has, with their names;
- ``pagecheck``: round-trip real guest pages through host tmem and verify them
  (see :mod:`tmem_agent.tools.pagecheck`);
- ``run``: the long-running agent, the swap shim (see :mod:`tmem_agent.service`);
- ``cache``: a data disk served as a block device through a tmem ephemeral pool (see
  :mod:`tmem_agent.cache.service`);
- ``status``: the running agent's counters as JSON (see :mod:`tmem_agent.status`);
- ``memhog``: fill and verify a userfaultfd region backed by tmem
  (see :mod:`tmem_agent.tools.memhog`).

The project's CLI conventions (exit codes, one error line, defaults in ``--help``) come from
:mod:`tmem_agent.clibase`, shared with the host's commands. Output stays plain text.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import service, status, supervisor
from .cache import service as cache_service
from .channel.ports import virtio_ports
from .clibase import EXIT_STATUS_HELP, CliParser, CommandError, add_verbose, run
from .tools import memhog, pagecheck

PROG = "tmem-agent"


def _cmd_ports(args: argparse.Namespace) -> int:
    ports = virtio_ports()
    if not ports:
        raise CommandError("no virtio-serial ports in this guest")
    for device, name in ports:
        print(f"{device}\t{name or '-'}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    """The agent itself, or with ``--supervise`` a supervisor that keeps one running."""
    if supervisor.supervise(args) if args.supervise else service.run_agent(args):
        raise CommandError("the swap device could not be attached (see the log above)")
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    if cache_service.run(args):
        raise CommandError("the cache device could not be attached (see the log above)")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    try:
        found = status.gather(args.socket)
    except OSError as exc:
        raise CommandError(f"no agent answers at {args.socket}: {exc}") from None
    print(status.render(found, args.pretty))
    return 0


def build_parser() -> CliParser:
    parser = CliParser(prog=PROG, description="the in-guest side of tmem", epilog=EXIT_STATUS_HELP)
    add_verbose(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("ports", help="list virtio-serial ports and their names").set_defaults(
        func=_cmd_ports
    )
    check = sub.add_parser("pagecheck", help="round-trip real pages through tmemd and verify")
    pagecheck.add_arguments(check)
    check.set_defaults(func=pagecheck.run)
    run = sub.add_parser("run", help="the agent: swap through host tmem, with a disk fallback")
    service.add_arguments(run)
    run.set_defaults(func=_cmd_run)
    cache = sub.add_parser("cache", help="a data disk served through a tmem ephemeral pool")
    cache_service.add_arguments(cache)
    cache.set_defaults(func=_cmd_cache)
    stat = sub.add_parser("status", help="the running agent's counters as JSON")
    stat.add_argument("--socket", default=status.STATUS_SOCKET,
                      help="the agent's status socket (uffd counters: its directory)")
    stat.add_argument("--pretty", action="store_true", help="indented, with sorted keys")
    stat.set_defaults(func=_cmd_status)
    hog = sub.add_parser("memhog", help="fill and verify a userfaultfd region backed by tmem")
    memhog.add_arguments(hog)
    hog.set_defaults(func=memhog.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
