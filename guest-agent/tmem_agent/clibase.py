"""The project's command-line conventions, standard library only.

Shared by the guest's ``tmem-agent`` and the host's ``tmemd`` and ``tmemh`` (whose
``tmemd.clikit`` builds on this module, as the daemon already shares the wire format with the
agent):

- exit codes: 0 success, 1 runtime failure (:class:`CommandError`, OSError), 2 usage error
  (:class:`UsageError`: bad arguments, values or environment variables; also what argparse
  rejects), 130 interrupted (Ctrl-C);
- every error is one line on stderr, ``PROG: error: MESSAGE``; a traceback only with ``-v``;
- ``--help`` shows each option's default (:class:`HelpFormatter`, on every subparser).
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

ErrorTypes = tuple[type[BaseException], ...]

EXIT_STATUS_HELP = ("exit status: 0 success, 1 failure, 2 usage error (bad arguments, values or "
                    "environment), 130 interrupted")


class CommandError(Exception):
    """A runtime failure, reported as one line; exit code 1."""

    exit_code = EXIT_FAILURE


class UsageError(CommandError):
    """Bad arguments, option values or environment variables; exit code 2."""

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
    """Shows ``(default: X)`` after an option's help, also for options without help text;
    not for defaults that say nothing (None, False, an empty list) nor twice."""

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
    """An ArgumentParser with :class:`HelpFormatter` whose errors raise :class:`UsageError`.

    Subparsers are made of the same class (argparse's ``add_subparsers`` uses the parent's
    class), so every subcommand gets the same help and error handling.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        words = self.prog.split(maxsplit=1)
        raise UsageError(f"{words[1]}: {message}" if len(words) > 1 else message)


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and a traceback with an error")


def describe(exc: BaseException) -> str:
    """An exception's message; an OSError as ``FILE: reason`` rather than ``[Errno N] ...``."""
    if isinstance(exc, OSError) and exc.strerror:
        where = ": ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        return f"{where}: {exc.strerror}" if where else exc.strerror
    return str(exc).strip()


def report_error(prog: str, exc: BaseException, *, verbose: bool = False,
                 expected: bool = True) -> None:
    """``PROG: error: MESSAGE`` on stderr; with ``verbose`` the traceback first. An unexpected
    exception is named by its type (its message alone may say little, e.g. a KeyError)."""
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    message = describe(exc)
    if not expected or not message:
        message = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        if not verbose and not expected:
            message += " (-v shows the traceback)"
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None, *,
        usage_errors: ErrorTypes = (), failures: ErrorTypes = ()) -> int:
    """Parse ``argv``, run the chosen subcommand and map what it raises to an exit code.

    ``usage_errors`` are the front end's domain exceptions that mean bad input (exit 2, like
    :class:`UsageError`); ``failures`` those that are runtime failures with a message worth
    showing as it is (exit 1, like :class:`CommandError` and OSError). Anything else is
    reported with its type name and exits 1.
    """
    prog = parser.prog
    usage: ErrorTypes = (UsageError, *usage_errors)
    failed: ErrorTypes = (CommandError, OSError, *failures)
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        report_error(prog, exc)
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    verbose = bool(getattr(args, "verbose", False))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except usage as exc:
        report_error(prog, exc, verbose=verbose)
        return EXIT_USAGE
    except failed as exc:
        report_error(prog, exc, verbose=verbose)
        return EXIT_FAILURE
    except Exception as exc:  # a bug: one line, the traceback with -v
        report_error(prog, exc, verbose=verbose, expected=False)
        return EXIT_FAILURE
