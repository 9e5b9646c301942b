"""The ``tmem-agent`` command line (standard library only: it runs inside the guest).

Subcommands:
- ``ports``: the virtio-serial ports this guest has, with their names;
- ``pagecheck``: round-trip real guest pages through host tmem and verify them
  (see :mod:`tmem_agent.tools.pagecheck`).
The long-running agent (swap shim, userfaultfd) is ``tmem-agent run``, added with
:mod:`tmem_agent.service`; the guest's init starts it only once that module exists.
"""

from __future__ import annotations

import argparse
import sys

from .channel.ports import virtio_ports
from .tools import pagecheck


def _cmd_ports(args: argparse.Namespace) -> int:
    ports = virtio_ports()
    for device, name in ports:
        print(f"{device}\t{name or '-'}")
    return 0 if ports else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tmem-agent", description="the in-guest side of tmem")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ports", help="list virtio-serial ports and their names").set_defaults(
        func=_cmd_ports
    )
    check = sub.add_parser("pagecheck", help="round-trip real pages through tmemd", add_help=False)
    check.set_defaults(func=None)
    args, rest = parser.parse_known_args(argv)
    if args.command == "pagecheck":
        return pagecheck.main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
