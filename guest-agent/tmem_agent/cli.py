"""The ``tmem-agent`` command line (standard library only: it runs inside the guest).

Subcommands:
- ``ports``: the virtio-serial ports this guest has, with their names;
- ``pagecheck``: round-trip real guest pages through host tmem and verify them
  (see :mod:`tmem_agent.tools.pagecheck`).
The long-running agent (swap shim, userfaultfd) is ``tmem-agent run``, added with
:mod:`tmem_agent.service`; the guest's init starts it only once that module exists.

The conventions of the host's ``tmemd`` and ``tmemh`` (``tmemd.clikit``), mirrored here because
the agent must not import the host's packages: exit 0 on success, 1 on a runtime failure, 2 on a
usage error, 130 when interrupted; every error one line on stderr, ``tmem-agent: error: ...``,
with a traceback only under ``-v``; ``--help`` shows defaults. The agent has no size options
(so no size parser); its output stays plain text.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from .channel.ports import virtio_ports
from .tools import pagecheck

PROG = "tmem-agent"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """A runtime failure, reported as one line; exit code 1."""

    exit_code = EXIT_FAILURE


class UsageError(CommandError):
    """Bad arguments or option values; exit code 2."""

    exit_code = EXIT_USAGE


def _shows_default(action: argparse.Action) -> bool:
    default = action.default
    if default is None or default is False or default is argparse.SUPPRESS:
        return False
    if isinstance(default, list | tuple) and not default:
        return False
    return bool(action.option_strings) or action.nargs in (argparse.OPTIONAL,
                                                           argparse.ZERO_OR_MORE)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``(default: X)`` after an option's help unless the default says nothing or is shown."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "(default" in text or not _shows_default(action):
            return text
        return f"{text} (default: %(default)s)"

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and _shows_default(action):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


class CliParser(argparse.ArgumentParser):
    """Help with defaults; a parse error raises :class:`UsageError` (one line, exit 2)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        words = self.prog.split(maxsplit=1)
        raise UsageError(f"{words[1]}: {message}" if len(words) > 1 else message)


def report_error(exc: BaseException, *, verbose: bool = False, expected: bool = True) -> None:
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    message = str(exc).strip()
    if not expected or not message:
        message = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        if not verbose and not expected:
            message += " (-v shows the traceback)"
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


def _cmd_ports(args: argparse.Namespace) -> int:
    ports = virtio_ports()
    if not ports:
        raise CommandError("no virtio-serial ports in this guest")
    for device, name in ports:
        print(f"{device}\t{name or '-'}")
    return 0


def _cmd_pagecheck(rest: list[str]) -> int:
    """pagecheck parses its own options (a usage error there exits 2 through its parser)."""
    try:
        return pagecheck.main(rest)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        message = str(exc.code)  # pagecheck's own "pagecheck: ..." failure message
        raise CommandError(message.removeprefix("pagecheck: ")) from None


def build_parser() -> CliParser:
    parser = CliParser(prog=PROG, description="the in-guest side of tmem",
                       epilog="exit status: 0 success, 1 failure, 2 usage error, "
                              "130 interrupted")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and a traceback with an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("ports", help="list virtio-serial ports and their names").set_defaults(
        func=_cmd_ports
    )
    check = sub.add_parser("pagecheck", help="round-trip real pages through tmemd "
                                             "(pagecheck --help for its options)",
                           add_help=False)
    check.set_defaults(func=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
        if args.command != "pagecheck" and rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
    except UsageError as exc:
        report_error(exc)
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        if args.command == "pagecheck":
            return _cmd_pagecheck(rest)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except CommandError as exc:
        report_error(exc, verbose=args.verbose)
        return exc.exit_code
    except OSError as exc:
        report_error(exc, verbose=args.verbose)
        return EXIT_FAILURE
    except Exception as exc:  # a bug: one line, the traceback with -v
        report_error(exc, verbose=args.verbose, expected=False)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
